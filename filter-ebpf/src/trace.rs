//! The verdict trace (`apifence trace`): one aya-log record per TCP packet from the traced
//! sources, saying how it was parsed, what the lookup found and what became of it.
//!
//! Only the trace object (`trace_main.rs`) contains this module; the production object
//! instantiates `run::filter` with `()`, which traces nothing.
//!
//! Record format (logfmt, parsed by the loader's `kernel::trace`): `verdict= reason= source=`
//! (IPv6; IPv4 sources IPv4-mapped) `port= port_read= vlan= ipv6_ext= ipv4_options= later_fragment= slot= ifindex= lookup=` and,
//! for a hit, `rule=` (the rule id, which the loader turns into the range).

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use filter_common::{
    COUNTER_DROPPED, COUNTER_PASSED_AUTHORIZED, COUNTER_PASSED_DISABLED,
    COUNTER_PASSED_UNPROTECTED, COUNTER_WOULD_DROP, TRACE_FAMILY_ANY, TRACE_FAMILY_V4,
    TRACE_FAMILY_V6, TraceFilter,
};

use crate::{
    judge::Outcome,
    parse::{Class, PORT_UNREADABLE, Source, Walk},
    run::Trace,
};

/// Which sources are reported (`filter_common::GLOBAL_TRACE_FILTER`): a load-time constant in
/// `.rodata` that `apifence trace` sets from `--source`. Default: none.
#[unsafe(no_mangle)]
static TRACE_FILTER: TraceFilter = TraceFilter {
    family: u32::MAX,
    net: [0; 4],
    mask: [0; 4],
};

/// The way the parser took through one frame.
#[derive(Default)]
pub struct Path {
    vlan_tags: u8,
    ipv6_extensions: u8,
    ipv4_options: u8,
    later_fragment: u8,
}

impl Walk for Path {
    #[inline(always)]
    fn vlan_tag(&mut self) {
        self.vlan_tags = self.vlan_tags.saturating_add(1);
    }

    #[inline(always)]
    fn ipv4_options(&mut self) {
        self.ipv4_options = 1;
    }

    #[inline(always)]
    fn ipv6_extension(&mut self) {
        self.ipv6_extensions = self.ipv6_extensions.saturating_add(1);
    }

    #[inline(always)]
    fn later_fragment(&mut self) {
        self.later_fragment = 1;
    }
}

impl Trace for Path {
    #[inline(always)]
    fn report(&self, ctx: &XdpContext, slot: u32, class: &Class, outcome: &Outcome) {
        // Malformed and non-TCP frames have no source to trace by.
        let Class::Tcp { source, port } = class else {
            return;
        };
        if !traced(source) {
            return;
        }
        let (verdict, reason, lookup) = match outcome.counter {
            COUNTER_PASSED_AUTHORIZED => ("pass", "authorized", "hit"),
            COUNTER_PASSED_UNPROTECTED => ("pass", "port-not-protected", "skipped"),
            COUNTER_PASSED_DISABLED => ("pass", "filter-disabled", "skipped"),
            COUNTER_DROPPED => ("drop", "no-rule-matched", "miss"),
            COUNTER_WOULD_DROP => ("would-drop", "no-rule-matched-monitor", "miss"),
            _ => ("unknown", "unknown", "unknown"),
        };
        // One 16-byte argument for both families (IPv4 as IPv4-mapped IPv6, which the loader
        // prints as IPv4): an `IpAddr` enum leaves bytes undefined that LLVM may fill from a
        // pointer register, a partial pointer spill the verifier rejects.
        let address = match source {
            Source::V4([a, b, c, d]) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, *a, *b, *c, *d],
            Source::V6(addr) => *addr,
        };
        let (port, port_read) = if *port == PORT_UNREADABLE {
            (0, 0u8)
        } else {
            (*port, 1u8)
        };
        // SAFETY: reads a field of the context the kernel passed in.
        let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
        let rule = outcome.rule.unwrap_or(u32::MAX);
        info!(
            ctx,
            "verdict={} reason={} source={:i} port={} port_read={} vlan={} ipv6_ext={} \
             ipv4_options={} later_fragment={} slot={} ifindex={} lookup={} rule={}",
            verdict,
            reason,
            address,
            port,
            port_read,
            self.vlan_tags,
            self.ipv6_extensions,
            self.ipv4_options,
            self.later_fragment,
            slot,
            ifindex,
            lookup,
            rule
        );
    }
}

/// Whether `source` is one of the sources [`TRACE_FILTER`] selects.
#[inline(always)]
fn traced(source: &Source) -> bool {
    // SAFETY: reads a plain static; volatile so the compiler can't fold the default.
    let filter = unsafe { core::ptr::read_volatile(&TRACE_FILTER) };
    let (family, words) = match source {
        Source::V4(addr) => (TRACE_FAMILY_V4, [u32::from_ne_bytes(*addr), 0, 0, 0]),
        Source::V6(addr) => (TRACE_FAMILY_V6, words_of(addr)),
    };
    if filter.family == TRACE_FAMILY_ANY {
        return true;
    }
    if filter.family != family {
        return false;
    }
    filter
        .mask
        .iter()
        .zip(filter.net.iter())
        .zip(words.iter())
        .fold(0, |diff, ((mask, net), word)| diff | ((word & mask) ^ net))
        == 0
}

/// The 16 address bytes as four words in memory order.
#[inline(always)]
fn words_of(addr: &[u8; 16]) -> [u32; 4] {
    // SAFETY: 16 readable bytes; any bytes are a valid `[u32; 4]`, read unaligned.
    unsafe { core::ptr::read_unaligned(addr.as_ptr().cast::<[u32; 4]>()) }
}
