//! The apifence XDP program: drops TCP packets bound for the protected ports unless their source
//! address matches an authorized range.
//!
//! One job per module: [`maps`] defines every map, [`parse`] turns a frame into a
//! [`parse::Class`] behind one bounds-checked cursor, [`judge`] turns that class and the active
//! slot into an [`judge::Outcome`], and [`record`] is the single exit that counts the outcome and
//! returns its verdict, so counters can't drift from verdicts. [`trace`] is the verdict trace,
//! compiled only into the second entry point, `apifence_trace`.
#![no_std]
#![no_main]
// The atomic add of the shared hit counters (`maps::count_rule_hit`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod judge;
mod maps;
mod parse;
mod trace;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Entry point, attached to every filtered interface.
#[xdp]
pub fn apifence(ctx: XdpContext) -> u32 {
    filter::<()>(&ctx)
}

/// The same filter that also reports each verdict on a traced source through aya-log
/// (`apifence trace` swaps it in for a while; `filter_common::TRACE_PROGRAM_NAME`).
#[xdp]
pub fn apifence_trace(ctx: XdpContext) -> u32 {
    filter::<trace::Path>(&ctx)
}

/// Parse, judge, report, record: the whole program, with `T` doing the tracing (nothing for
/// `()`, so the production program is compiled without it).
#[inline(always)]
fn filter<T: trace::Trace>(ctx: &XdpContext) -> u32 {
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
fn record(outcome: &judge::Outcome) -> u32 {
    maps::count(outcome.counter);
    if outcome.malformed {
        maps::count(filter_common::COUNTER_MALFORMED);
    }
    if let Some(rule) = outcome.rule {
        maps::count_rule_hit(rule);
    }
    outcome.action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// License of the object file; GPL-compatible so every helper is available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
