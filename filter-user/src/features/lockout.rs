//! The lockout guard: which established TCP connections to protected local ports a new policy
//! would cut, so that `apifence ranges set/add/remove` and `apifence mode` can refuse (unless
//! `--force`) and name them.
//!
//! Connections come from `/proc/thread-self/net/tcp` and `tcp6`, which describe the network
//! namespace of the calling thread (`/proc/net` would follow the process's main thread).
//! Addresses there are written as the kernel's in-memory `__be32` words printed with `%08X`,
//! that is, in host byte order word by word; ports are in host byte order.

use std::{
    fmt,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::policy::verdict::{VerdictModel, is_loopback};

/// `st` of an established TCP socket in `/proc/net/tcp`.
const TCP_ESTABLISHED: u8 = 0x01;

/// At most this many connections are named in a [`LockoutError::WouldCut`] message.
const MAX_NAMED: usize = 20;

/// One TCP connection of this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Connection {
    /// Local address and port (the protected server side).
    pub local: SocketAddr,
    /// Remote address and port, IPv4-mapped IPv6 shown as IPv4.
    pub remote: SocketAddr,
    /// Owner uid of the socket.
    pub uid: u32,
    /// Socket inode (to find the owning process through `/proc/*/fd`).
    pub inode: u64,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.remote, self.local)
    }
}

/// Which address family a `/proc/net` file describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `/proc/net/tcp`.
    V4,
    /// `/proc/net/tcp6`.
    V6,
}

/// Why the guard could not decide, or refuses.
#[derive(Debug, thiserror::Error)]
pub enum LockoutError {
    /// A connection table can't be read.
    #[error(
        "reading {}: {source}; the lockout guard can't see established connections, so the change \
         was not applied; repeat with --force to apply it without the check",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a connection table is not in the kernel's format.
    #[error(
        "{}, line {line}: {problem} in \"{text}\"; the lockout guard can't read established \
         connections, so the change was not applied; repeat with --force to apply it without the check",
        path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// The change would cut these connections.
    #[error("{}", would_cut_message(.0))]
    WouldCut(Vec<Connection>),
}

fn would_cut_message(cut: &[Connection]) -> String {
    let mut named: Vec<String> = cut
        .iter()
        .take(MAX_NAMED)
        .map(ToString::to_string)
        .collect();
    if cut.len() > MAX_NAMED {
        named.push(format!("and {} more", cut.len() - MAX_NAMED));
    }
    let mut sources: Vec<IpAddr> = cut.iter().map(|c| c.remote.ip()).collect();
    sources.sort_unstable();
    sources.dedup();
    let sources: Vec<String> = sources.iter().map(ToString::to_string).collect();
    format!(
        "refusing: this change would cut {} established connection{} to protected ports ({}); \
         authorize {} first (apifence ranges add {}), or repeat with --force to cut {}",
        cut.len(),
        if cut.len() == 1 { "" } else { "s" },
        named.join(", "),
        if sources.len() == 1 {
            "that source"
        } else {
            "those sources"
        },
        sources.join(","),
        if cut.len() == 1 { "it" } else { "them" },
    )
}

/// Parses the text of `/proc/net/tcp` (`Family::V4`) or `tcp6` and returns its established
/// connections. `path` names the text in errors. The header line is skipped.
pub fn parse_established(
    text: &str,
    family: Family,
    path: &Path,
) -> Result<Vec<Connection>, LockoutError> {
    let mut connections = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |problem| LockoutError::Malformed {
            path: path.to_owned(),
            line: index + 1,
            text: line.trim().to_owned(),
            problem,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [
            _sl,
            local,
            remote,
            state,
            _queues,
            _timer,
            _retransmits,
            uid,
            _timeout,
            inode,
            ..,
        ] = fields.as_slice()
        else {
            return Err(malformed("fewer than 10 fields"));
        };
        let state = u8::from_str_radix(state, 16).map_err(|_| malformed("bad state"))?;
        if state != TCP_ESTABLISHED {
            continue;
        }
        let local = parse_endpoint(local, family).ok_or_else(|| malformed("bad local address"))?;
        let remote =
            parse_endpoint(remote, family).ok_or_else(|| malformed("bad remote address"))?;
        connections.push(Connection {
            local,
            remote,
            uid: uid.parse().map_err(|_| malformed("bad uid"))?,
            inode: inode.parse().map_err(|_| malformed("bad inode"))?,
        });
    }
    Ok(connections)
}

/// Parses `ADDR:PORT` as printed by the kernel: address words in host byte order, hex.
fn parse_endpoint(text: &str, family: Family) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = match family {
        Family::V4 => 1,
        Family::V6 => 4,
    };
    if addr.len() != words * 8 || !addr.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for word in 0..words {
        let value = u32::from_str_radix(&addr[word * 8..word * 8 + 8], 16).ok()?;
        bytes[word * 4..word * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    }
    let ip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical(),
    };
    Some(SocketAddr::new(ip, port))
}

/// The connection table of the calling thread's network namespace for `family`.
fn table_path(family: Family) -> PathBuf {
    let file = match family {
        Family::V4 => "tcp",
        Family::V6 => "tcp6",
    };
    let thread_self = Path::new("/proc/thread-self/net").join(file);
    if Path::new("/proc/thread-self").exists() {
        thread_self
    } else {
        // Kernels before 3.17 have no thread-self; the process's namespace is the best guess.
        Path::new("/proc/self/net").join(file)
    }
}

/// Established TCP connections (IPv4 and IPv6) whose local port is one of `ports`, in the
/// calling thread's network namespace. A missing `tcp6` (IPv6 disabled) counts as empty.
pub fn established(ports: &[u16]) -> Result<Vec<Connection>, LockoutError> {
    let mut all = Vec::new();
    for family in [Family::V4, Family::V6] {
        let path = table_path(family);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if family == Family::V6 && e.kind() == ErrorKind::NotFound => continue,
            Err(source) => return Err(LockoutError::Read { path, source }),
        };
        all.extend(
            parse_established(&text, family, &path)?
                .into_iter()
                .filter(|c| ports.contains(&c.local.port())),
        );
    }
    Ok(all)
}

/// Which traffic the guard considers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardOptions {
    /// The filter is attached to `lo`, so local connections (from `127.0.0.1`, `::1` or the
    /// host's own addresses) are filtered too. Otherwise they never cross an attached
    /// interface and can't be cut.
    pub loopback_filtered: bool,
}

impl GuardOptions {
    /// The options for a filter attached to `interfaces`.
    pub fn for_interfaces<S: AsRef<str>>(interfaces: &[S]) -> Self {
        Self {
            loopback_filtered: interfaces.iter().any(|i| i.as_ref() == "lo"),
        }
    }
}

/// The connections among `connections` that going from `before` (what the filter enforces now;
/// a disabled policy when no filter is loaded) to `after` would cut: `after` drops them and
/// `before` does not. One that `before` drops already (cut by an earlier, forced change) holds
/// up no later change.
pub fn would_cut(
    connections: &[Connection],
    before: &VerdictModel,
    after: &VerdictModel,
    options: GuardOptions,
) -> Vec<Connection> {
    connections
        .iter()
        .filter(|c| {
            let local_only = is_loopback(c.remote.ip()) || c.remote.ip() == c.local.ip();
            options.loopback_filtered || !local_only
        })
        .filter(|c| {
            let (source, port) = (c.remote.ip(), c.local.port());
            after.drops(source, port) && !before.drops(source, port)
        })
        .copied()
        .collect()
}

/// The guard: `Ok` with nothing cut, or [`LockoutError::WouldCut`] naming the connections that
/// going from `before` to `after` would cut, among those established now in this thread's
/// network namespace.
pub fn check(
    before: &VerdictModel,
    after: &VerdictModel,
    ports: &[u16],
    options: GuardOptions,
) -> Result<(), LockoutError> {
    let cut = would_cut(&established(ports)?, before, after, options);
    if cut.is_empty() {
        Ok(())
    } else {
        Err(LockoutError::WouldCut(cut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, Policy};

    const HEADER4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
    const HEADER6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    /// An address as the kernel prints it: each 4-byte word read in host order, `%08X`.
    fn hex(ip: IpAddr) -> String {
        let bytes: Vec<u8> = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        bytes
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    }

    fn line(n: usize, local: &str, remote: &str, state: u8) -> String {
        let (local, remote): (SocketAddr, SocketAddr) =
            (local.parse().unwrap(), remote.parse().unwrap());
        format!(
            "{n:4}: {}:{:04X} {}:{:04X} {state:02X} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0000000000000000 20 4 30 10 -1",
            hex(local.ip()),
            local.port(),
            hex(remote.ip()),
            remote.port(),
            1000 + n
        )
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn reads_real_kernel_lines() {
        // Taken from a real x86-64 /proc/net/tcp and tcp6.
        let v4 = format!(
            "{HEADER4}\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 23456 1 0000000000000000 100 0 0 10 0\n   1: 0F02000A:1922 0702000A:D431 01 00000000:00000000 02:000A7E2B 00000000  1000        0 34567 2 0000000000000000 20 4 30 10 -1\n"
        );
        let got = parse_established(&v4, Family::V4, Path::new("tcp")).unwrap();
        assert_eq!(
            got,
            [Connection {
                local: sa("10.0.2.15:6434"),
                remote: sa("10.0.2.7:54321"),
                uid: 1000,
                inode: 34567,
            }]
        );
        let v6 = format!(
            "{HEADER6}\n   0: 00000000000000000000000000000000:192B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4567 1 0000000000000000 100 0 0 10 0\n   1: B80D0120000000000000000001000000:192B B80D0120000000000000000005000000:C350 01 00000000:00000000 00:00000000 00000000     0        0 5678 1 0000000000000000 20 4 30 10 -1\n   2: 0000000000000000FFFF00000F02000A:01BB 0000000000000000FFFF00000702000A:A000 01 00000000:00000000 00:00000000 00000000     0        0 6789 1 0000000000000000 20 4 30 10 -1\n"
        );
        let got = parse_established(&v6, Family::V6, Path::new("tcp6")).unwrap();
        let pairs: Vec<(SocketAddr, SocketAddr)> =
            got.iter().map(|c| (c.local, c.remote)).collect();
        assert_eq!(
            pairs,
            [
                (sa("[2001:db8::1]:6443"), sa("[2001:db8::5]:50000")),
                // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; shown as IPv4.
                (sa("10.0.2.15:443"), sa("10.0.2.7:40960")),
            ]
        );
    }

    #[test]
    fn keeps_established_only_and_round_trips_addresses() {
        let text = [
            HEADER6.to_owned(),
            line(0, "[::]:6443", "[::]:0", 0x0A),
            line(1, "[2001:db8::1]:6443", "[2001:db8:ffff::abcd]:1234", 0x01),
            line(2, "[2001:db8::1]:6443", "[2001:db8::9]:1235", 0x06),
            line(3, "[fe80::1]:443", "[fe80::2]:65535", 0x01),
        ]
        .join("\n");
        let got = parse_established(&text, Family::V6, Path::new("tcp6")).unwrap();
        let remotes: Vec<SocketAddr> = got.iter().map(|c| c.remote).collect();
        assert_eq!(
            remotes,
            [sa("[2001:db8:ffff::abcd]:1234"), sa("[fe80::2]:65535")]
        );
        assert_eq!(got[0].inode, 1001);
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let text = format!("{HEADER4}\n   0: 0100007F:1F90 zz:0000 01 0 0 0 0 0 0\n");
        let error = parse_established(&text, Family::V4, Path::new("/proc/net/tcp"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "/proc/net/tcp, line 2: bad remote address in \"0: 0100007F:1F90 zz:0000"
            ),
            "{error}"
        );
        assert!(
            error.ends_with("repeat with --force to apply it without the check"),
            "{error}"
        );
        let short = format!("{HEADER4}\n   0: 0100007F:1F90\n");
        assert!(matches!(
            parse_established(&short, Family::V4, Path::new("tcp")),
            Err(LockoutError::Malformed {
                problem: "fewer than 10 fields",
                ..
            })
        ));
        // An IPv6-length address in the IPv4 table is refused, not misread.
        let wrong = [HEADER4.to_owned(), line(0, "[::1]:6443", "[::2]:1", 1)].join("\n");
        assert!(parse_established(&wrong, Family::V4, Path::new("tcp")).is_err());
    }

    fn conn(local: &str, remote: &str) -> Connection {
        Connection {
            local: sa(local),
            remote: sa(remote),
            uid: 0,
            inode: 0,
        }
    }

    #[test]
    fn finds_who_would_be_cut() {
        let connections = [
            conn("10.0.0.1:6443", "192.0.2.7:50000"),
            conn("10.0.0.1:6443", "198.51.100.7:50001"),
            conn("10.0.0.1:22", "192.0.2.7:50002"),
            conn("127.0.0.1:6443", "127.0.0.1:50003"),
            conn("10.0.0.1:443", "10.0.0.1:50004"),
            conn("[2001:db8::1]:443", "[2001:db8:2::9]:50005"),
        ];
        let policy = |ranges: &str, mode| Policy {
            ranges: ranges.parse().unwrap(),
            always_allow: vec!["198.51.100.7/32".parse().unwrap()],
            mode,
            ..Policy::default()
        };
        let before = VerdictModel::from_policy(&policy("", Mode::Enforce));
        let after = VerdictModel::from_policy(&policy("203.0.113.0/24", Mode::Enforce));
        let cut = would_cut(&connections, &before, &after, GuardOptions::default());
        assert_eq!(cut, [connections[0], connections[5]]);
        let with_lo = would_cut(
            &connections,
            &before,
            &after,
            GuardOptions::for_interfaces(&["eth0", "lo"]),
        );
        assert_eq!(
            with_lo,
            [
                connections[0],
                connections[3],
                connections[4],
                connections[5]
            ]
        );

        let monitor = VerdictModel::from_policy(&policy("203.0.113.0/24", Mode::Monitor));
        assert!(would_cut(&connections, &before, &monitor, GuardOptions::default()).is_empty());
        let disabled = VerdictModel::from_policy(&policy("", Mode::Enforce));
        assert!(would_cut(&connections, &before, &disabled, GuardOptions::default()).is_empty());
        let covering =
            VerdictModel::from_policy(&policy("192.0.2.0/24 2001:db8::/32", Mode::Enforce));
        assert!(would_cut(&connections, &before, &covering, GuardOptions::default()).is_empty());
        // Connections that the list before drops already are not cut again: a forced cut
        // (or a connection older than the filter) holds up no later change.
        let narrower = VerdictModel::from_policy(&policy("203.0.113.0/25", Mode::Enforce));
        assert!(would_cut(&connections, &after, &narrower, GuardOptions::default()).is_empty());
        // In one change, a connection dropped already is left out and a newly cut one named.
        let only_first = VerdictModel::from_policy(&policy("192.0.2.0/24", Mode::Enforce));
        assert_eq!(
            would_cut(&connections, &only_first, &after, GuardOptions::default()),
            [connections[0]]
        );
        let from_monitor = VerdictModel::from_policy(&policy("203.0.113.0/24", Mode::Monitor));
        assert_eq!(
            would_cut(&connections, &from_monitor, &after, GuardOptions::default()),
            cut,
            "monitor mode drops nothing, so enforcing cuts"
        );

        assert_eq!(
            LockoutError::WouldCut(cut).to_string(),
            "refusing: this change would cut 2 established connections to protected ports \
             (192.0.2.7:50000 -> 10.0.0.1:6443, [2001:db8:2::9]:50005 -> [2001:db8::1]:443); \
             authorize those sources first (apifence ranges add 192.0.2.7,2001:db8:2::9), \
             or repeat with --force to cut them"
        );
        let many: Vec<Connection> = (0..25)
            .map(|i| conn("10.0.0.1:6443", &format!("192.0.2.7:{}", 40000 + i)))
            .collect();
        let text = LockoutError::WouldCut(many).to_string();
        assert!(text.contains("and 5 more"), "{text}");
        assert!(text.contains("authorize that source first"), "{text}");
    }

    #[test]
    fn reads_this_namespace() {
        // Whatever this process has open: the real files must parse.
        let all = established(&(0..=u16::MAX).collect::<Vec<_>>()).expect("read /proc");
        for c in all {
            assert_ne!(c.remote.port(), 0, "{c}");
        }
    }
}
