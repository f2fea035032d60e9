//! The verdict-trace object (`apifence trace`): the filter of `main.rs`, compiled from the same
//! modules and maps, instantiated with [`trace::Path`], so that it also reports the verdict on
//! each TCP packet from the sources `trace::TRACE_FILTER` selects through aya-log. The loader
//! loads it next to the pinned production program, reusing its pinned maps, and swaps it in on
//! the links for the duration of a trace. A separate object, so that the production object is
//! compiled exactly as without it (and creates no aya-log ring buffer).
#![no_std]
#![no_main]
// The atomic add of the shared hit counters (`maps::count_rule_hit`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod judge;
mod maps;
mod parse;
mod run;
mod trace;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Entry point (`filter_common::TRACE_PROGRAM_NAME`).
#[xdp]
pub fn apifence_trace(ctx: XdpContext) -> u32 {
    run::filter::<trace::Path>(&ctx)
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
