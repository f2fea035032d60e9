//! The whole program, shared by the production object (`main.rs`) and the trace object
//! (`trace_main.rs`): parse → judge → report → record, generic over what traces it. The
//! production program instantiates it with `()`, which traces nothing, so its code is the same as
//! if tracing did not exist; [`record`] is the single exit that counts the outcome and returns its
//! verdict, so counters can't drift from verdicts.

use aya_ebpf::programs::XdpContext;

use crate::{
    judge::{self, Outcome},
    maps,
    parse::{self, Class, Walk},
};

/// What a program does besides filtering: nothing (`()`), or report the verdict (the trace
/// object's `trace::Path`).
pub trait Trace: Walk + Default {
    /// Reports the verdict on one packet.
    #[inline(always)]
    fn report(&self, _ctx: &XdpContext, _slot: u32, _class: &Class, _outcome: &Outcome) {}
}

impl Trace for () {}

/// Parses, judges, reports to the deny log, lets `T` trace, and records the packet in `ctx`;
/// returns its XDP action.
#[inline(always)]
pub fn filter<T: Trace>(ctx: &XdpContext) -> u32 {
    let slot = maps::active_slot();
    let mut trace = T::default();
    let class = parse::classify(ctx, &mut trace);
    let outcome = judge::judge(slot, &class);
    if judge::reports_denial(&outcome, &class) {
        maps::report_denied(|| judge::deny_event(&outcome, &class, ctx));
    }
    trace.report(ctx, slot, &class, &outcome);
    record(&outcome)
}

/// Counts `outcome` in the per-CPU counters and returns its XDP action.
#[inline(always)]
fn record(outcome: &Outcome) -> u32 {
    maps::count(outcome.counter);
    if outcome.malformed {
        maps::count(filter_common::COUNTER_MALFORMED);
    }
    if let Some(rule) = outcome.rule {
        maps::count_rule_hit(rule);
    }
    outcome.action
}
