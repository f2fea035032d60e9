#!/bin/busybox sh
# /init of a kernel-matrix guest (busybox sh, run as PID 1 from the initramfs `cargo xtask
# vm-test` builds). Every check prints `APIFENCE-VM PASS <name>` or `APIFENCE-VM FAIL <name>:
# <why>` on the serial console; the host knows which names to expect and fails on a missing one.
# The lab: the guest's own network namespace is the API server (busybox httpd on 6443, protected,
# and 8080, not), reached over veth pair api0 by namespace `good` (authorized) and over api1 by
# namespace `bad` (not authorized); apifence filters on api0 and api1, in native then skb mode.
# Then IPIP tunnels from both namespaces end on L3 devices here, which apifence refuses.

/bin/busybox --install -s /bin
export PATH=/usr/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
ln -s /run /var/run
# This busybox prefers its own applets to PATH: iproute2's ip (for netns, veth, XDP) by name.
ip() { /usr/sbin/ip "$@"; }

# Seconds a TCP probe may take: it succeeds in milliseconds, a dropped SYN runs it out.
PROBE_SECS=8
AUTHORIZED="198.18.0.0/24, fd00:afde::/64"

say() { echo "APIFENCE-VM $*"; }

# check NAME CMD...: runs CMD with its output in the log; PASS when it exits 0.
check() {
    name=$1
    shift
    echo "--- $name: $* (uptime $(cut -d ' ' -f 1 /proc/uptime) s)"
    if "$@"; then
        say "PASS $name"
    else
        say "FAIL $name: exit $? from: $*"
    fi
}

load_modules() {
    for m in /lib/modules/*.ko; do
        [ -e "$m" ] || continue
        insmod "$m" || return 1
    done
    [ -d /sys/module/veth ] && [ -d /sys/module/ipip ]
}

lab() {
    # No duplicate address detection: addresses are usable at once (no tentative window).
    sysctl -qw net.ipv6.conf.default.accept_dad=0 && ip link set lo up || return 1
    for side in good:0 bad:1; do
        ns=${side%:*}
        n=${side#*:}
        ip netns add "$ns" &&
            ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 &&
            ip link add "api$n" type veth peer name eth0 netns "$ns" &&
            ip addr add "198.18.$n.1/24" dev "api$n" &&
            ip addr add "fd00:afde:$n::1/64" dev "api$n" nodad &&
            ip link set "api$n" up &&
            ip -n "$ns" link set lo up &&
            ip -n "$ns" addr add "198.18.$n.2/24" dev eth0 &&
            ip -n "$ns" addr add "fd00:afde:$n::2/64" dev eth0 nodad &&
            ip -n "$ns" link set eth0 up || return 1
    done
    mkdir -p /www && echo apifence-vm-ok >/www/index.html || return 1
    httpd -p 6443 -h /www && httpd -p 8080 -h /www || return 1
    # Bounded wait for both listeners (dual-stack sockets: `:::6443`).
    for _ in $(seq 50); do
        listening=$(netstat -ltn)
        if echo "$listening" | grep -q ':6443 ' && echo "$listening" | grep -q ':8080 '; then
            ip addr
            return 0
        fi
        sleep 0.2
    done
    echo "servers not listening:"
    netstat -ltn
    return 1
}

# probe NS URL: fetches the page over a real TCP connection from namespace NS.
probe() {
    ip netns exec "$1" timeout "$PROBE_SECS" wget -q -O - "$2" 2>/dev/null | grep -q apifence-vm-ok
}

# probes TAG FILTERED: every client x family x port at once; one check each,
# `tcp-TAG-FAMILY-CLIENT-PORTKIND`. With FILTERED=yes the bad client's protected port must be
# dropped; everything else must answer.
probes() {
    tag=$1
    filtered=$2
    echo "--- tcp-$tag: 8 probes at once (uptime $(cut -d ' ' -f 1 /proc/uptime) s)"
    rm -f /tmp/probe-*
    for spec in good:v4:198.18.0.1 good:v6:[fd00:afde:0::1] bad:v4:198.18.1.1 bad:v6:[fd00:afde:1::1]; do
        who=${spec%%:*}
        rest=${spec#*:}
        fam=${rest%%:*}
        addr=${rest#*:}
        for port in protected:6443 unprotected:8080; do
            kind=${port%:*}
            (
                if probe "$who" "http://$addr:${port#*:}/"; then r=answered; else r=dropped; fi
                echo "$r" >"/tmp/probe-$fam-$who-$kind"
            ) &
        done
    done
    wait
    for fam in v4 v6; do
        for who in good bad; do
            for kind in protected unprotected; do
                want=answered
                if [ "$filtered" = yes ] && [ "$who" = bad ] && [ "$kind" = protected ]; then
                    want=dropped
                fi
                got=$(cat "/tmp/probe-$fam-$who-$kind" 2>/dev/null)
                name="tcp-$tag-$fam-$who-$kind"
                if [ "$got" = "$want" ]; then
                    say "PASS $name"
                else
                    say "FAIL $name: expected $want, got ${got:-nothing}"
                fi
            done
        done
    done
}

# attach MODE: both server-side links in MODE, as the CLI and iproute2 report it.
attach() {
    out=$(apifence attach api0 api1 --xdp-mode "$1" 2>&1)
    rc=$?
    echo "$out"
    [ $rc -eq 0 ] || return 1
    [ "$(echo "$out" | grep -c "($1 mode)")" -eq 2 ] || return 1
    # iproute2 names the attach mode after the MTU: `mtu 1500 xdp` or `mtu 1500 xdpgeneric`.
    word=xdp
    [ "$1" = skb ] && word=xdpgeneric
    for link in api0 api1; do
        shown=$(ip link show "$link")
        echo "$shown"
        echo "$shown" | grep -q "mtu [0-9]* $word " || return 1
    done
}

set_ranges() {
    apifence ranges set "$AUTHORIZED" || return 1
    shown=$(apifence ranges show --json)
    echo "$shown"
    echo "$shown" | grep -q '198.18.0.0/24' && echo "$shown" | grep -q 'fd00:afde::/64'
}

# counter JSON NAME: the value of "NAME": N in `apifence stats --json` output.
counter() {
    echo "$1" | sed -n "s/.*\"$2\": *\([0-9][0-9]*\).*/\1/p" | head -n 1
}

# stats_after_traffic: what the probes must have left in the counters.
stats_after_traffic() {
    json=$(apifence stats --json) || return 1
    echo "$json"
    text=$(apifence stats) || return 1
    echo "$text"
    dropped=$(counter "$json" dropped)
    authorized=$(counter "$json" passed_authorized)
    unprotected=$(counter "$json" passed_unprotected)
    would=$(counter "$json" would_drop)
    v4_hits=$(echo "$text" | awk '$1 == "198.18.0.0/24" { print $2 }')
    v6_hits=$(echo "$text" | awk '$1 == "fd00:afde::/64" { print $2 }')
    echo "dropped=$dropped authorized=$authorized unprotected=$unprotected would_drop=$would v4_hits=$v4_hits v6_hits=$v6_hits"
    [ "${dropped:-0}" -ge 2 ] && [ "${authorized:-0}" -ge 2 ] && [ "${unprotected:-0}" -ge 4 ] &&
        [ "${would:-1}" -eq 0 ] && [ "${v4_hits:-0}" -ge 1 ] && [ "${v6_hits:-0}" -ge 1 ]
}

# nothing_left: no XDP on the links, no pin in the bpffs, no BPF program or map loaded (nothing
# else in this guest loads any). Bounded wait: the kernel releases unpinned objects after an RCU
# grace period.
nothing_left() {
    for _ in $(seq 50); do
        if ! ip link show api0 | grep -q xdp && ! ip link show api1 | grep -q xdp &&
            [ -z "$(ls -A /sys/fs/bpf)" ] && [ -z "$(bpftool prog show)" ] &&
            [ -z "$(bpftool map show)" ]; then
            return 0
        fi
        sleep 0.2
    done
    ip link show
    ls -laR /sys/fs/bpf
    bpftool prog show
    bpftool map show
    return 1
}

# test_binary NAME: a cargo integration test binary, privileged tests required, its output in
# the log; passes when it ran at least one test and none failed or was ignored.
test_binary() {
    out=$(APIFENCE_REQUIRE_PRIVILEGED_TESTS=1 "/bin/$1" --nocapture --test-threads=1 2>&1)
    rc=$?
    echo "$out"
    [ $rc -eq 0 ] && echo "$out" | grep -q 'test result: ok\. [1-9][0-9]* passed; 0 failed; 0 ignored'
}

# prog_info: the verifier's figures for this kernel, on one line for the host's report.
prog_info() {
    out=$(test_binary program_info)
    rc=$?
    echo "$out"
    # libtest's `test NAME ... ` may precede the line.
    figures=$(echo "$out" | sed -n 's/.*verifier figures: //p')
    [ -n "$figures" ] && say "PROG $figures"
    [ $rc -eq 0 ] && [ -n "$figures" ]
}

# ipip_lab: an IPIP tunnel from each client namespace over its veth pair, ending here on ipg
# (from good, inner 198.19.0.2 -> 198.19.0.1) and ipb (from bad, 198.19.1.2 -> 198.19.1.1), link
# type ARPHRD_TUNNEL; the tunnel carries real TCP.
ipip_lab() {
    for side in good:0:g bad:1:b; do
        ns=${side%%:*}
        rest=${side#*:}
        n=${rest%:*}
        t=${rest#*:}
        ip link add "ip$t" type ipip local "198.18.$n.1" remote "198.18.$n.2" &&
            ip addr add "198.19.$n.1" peer "198.19.$n.2" dev "ip$t" &&
            ip link set "ip$t" up &&
            ip -n "$ns" link add ipt type ipip local "198.18.$n.2" remote "198.18.$n.1" &&
            ip -n "$ns" addr add "198.19.$n.2" peer "198.19.$n.1" dev ipt &&
            ip -n "$ns" link set ipt up || return 1
    done
    cat /sys/class/net/ipg/type
    [ "$(cat /sys/class/net/ipg/type)" = 768 ] && probe bad "http://198.19.1.1:6443/"
}

# ipip_refused: attaching to an IPIP device is refused, naming it and its link type (on 5.10
# generic XDP there does not see the inner packet from its IP header), and leaves nothing.
ipip_refused() {
    out=$(apifence attach ipg 2>&1)
    rc=$?
    echo "$out"
    [ $rc -ne 0 ] && echo "$out" | grep -q 'interface "ipg" has link type ARPHRD_TUNNEL (768)' &&
        ! ip link show ipg | grep -q xdp
}

say "KERNEL $(uname -r)"
check modules load_modules
check lab lab
probes baseline no
for mode in native skb; do
    check "attach-$mode" attach "$mode"
    check "ranges-$mode" set_ranges
    probes "$mode" yes
    check "stats-$mode" stats_after_traffic
    check "detach-$mode" apifence detach --all
    check "clean-$mode" nothing_left
done
check ipip-lab ipip_lab
check ipip-refused ipip_refused
check ipip-clean nothing_left
check verdicts test_binary verdicts
check prog-info prog_info
say "DONE $(cut -d ' ' -f 1 /proc/uptime)"
sync
poweroff -f
