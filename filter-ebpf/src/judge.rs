//! The decision: a parsed [`Class`] and the active slot's policy give an [`Outcome`].

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use filter_common::{
    COUNTER_DROPPED, COUNTER_PASSED_AUTHORIZED, COUNTER_PASSED_DISABLED,
    COUNTER_PASSED_UNPROTECTED, COUNTER_WOULD_DROP, DENY_KIND_DROPPED, DENY_KIND_WOULD_DROP,
    DenyEvent, RuleId, SLOT_FLAG_ENABLED, SLOT_FLAG_MONITOR, SLOT_FLAG_V6_FILTER,
};

use crate::{
    maps,
    parse::{Class, Source},
};

/// What happens to a packet and how it is counted.
pub struct Outcome {
    /// XDP action (`XDP_PASS` or `XDP_DROP`).
    pub action: u32,
    /// The one `COUNTER_*` verdict counter this packet adds to.
    pub counter: u32,
    /// Also count it as malformed.
    pub malformed: bool,
    /// The rule that authorized it, if any.
    pub rule: Option<RuleId>,
}

impl Outcome {
    const fn pass(counter: u32) -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            counter,
            malformed: false,
            rule: None,
        }
    }
}

/// Judges `class` against the policy in `slot`.
#[inline(always)]
pub fn judge(slot: u32, class: &Class) -> Outcome {
    let (source, malformed) = match class {
        Class::Unfiltered => return Outcome::pass(COUNTER_PASSED_UNPROTECTED),
        Class::Tcp { port, .. }
            if u16::try_from(*port).is_ok_and(|port| !maps::port_protected(slot, port)) =>
        {
            return Outcome::pass(COUNTER_PASSED_UNPROTECTED);
        }
        Class::Tcp { source, .. } => (Some(*source), false),
        Class::Malformed => (None, true),
    };
    let flags = maps::slot_flags(slot);
    if flags & SLOT_FLAG_ENABLED == 0 {
        return Outcome {
            malformed,
            ..Outcome::pass(COUNTER_PASSED_DISABLED)
        };
    }
    let rule = match source {
        Some(Source::V4(addr)) => maps::lookup_v4(slot, addr),
        Some(Source::V6(addr)) => maps::lookup_v6(slot, addr, flags & SLOT_FLAG_V6_FILTER != 0),
        None => None,
    };
    if rule.is_some() {
        return Outcome {
            rule,
            ..Outcome::pass(COUNTER_PASSED_AUTHORIZED)
        };
    }
    if flags & SLOT_FLAG_MONITOR != 0 {
        Outcome {
            malformed,
            ..Outcome::pass(COUNTER_WOULD_DROP)
        }
    } else {
        Outcome {
            action: xdp_action::XDP_DROP,
            counter: COUNTER_DROPPED,
            malformed,
            rule: None,
        }
    }
}

/// Whether `outcome` is reported to the deny log: a dropped or would-drop TCP packet (not a
/// malformed one, whose source can't be trusted). Decided before anything is built.
#[inline(always)]
pub fn reports_denial(outcome: &Outcome, class: &Class) -> bool {
    matches!(outcome.counter, COUNTER_DROPPED | COUNTER_WOULD_DROP)
        && matches!(class, Class::Tcp { .. })
}

/// The deny-log event for a dropped or would-drop TCP packet (none for other outcomes and for
/// malformed packets, whose source can't be trusted).
#[inline(always)]
pub fn deny_event(outcome: &Outcome, class: &Class, ctx: &XdpContext) -> Option<DenyEvent> {
    let kind = match outcome.counter {
        COUNTER_DROPPED => DENY_KIND_DROPPED,
        COUNTER_WOULD_DROP => DENY_KIND_WOULD_DROP,
        _ => return None,
    };
    let Class::Tcp { source, port } = class else {
        return None;
    };
    let mut event = DenyEvent {
        // 0 when unreadable (`parse::PORT_UNREADABLE`).
        port: u16::try_from(*port).unwrap_or(0),
        kind,
        // SAFETY: reads a field of the context the kernel passed in.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        ..DenyEvent::default()
    };
    match source {
        Source::V4(addr) => {
            event.family = 4;
            event.source[..4].copy_from_slice(addr);
        }
        Source::V6(addr) => {
            event.family = 6;
            event.source = *addr;
        }
    }
    Some(event)
}
