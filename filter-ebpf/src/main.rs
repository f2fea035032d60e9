//! The apifence XDP program: drops TCP packets bound for the protected ports unless their source
//! address matches an authorized range.
//!
//! One job per module: [`maps`] defines every map, [`parse`] turns a frame into a
//! [`parse::Class`] behind one bounds-checked cursor, [`judge`] turns that class and the active
//! slot into an [`judge::Outcome`], and [`run`] puts them together and ends in the single exit
//! that counts the outcome and returns its verdict, so counters can't drift from verdicts. The
//! verdict trace (`apifence trace`) is a separate object (`trace_main.rs`) built from the same
//! modules; nothing of it is in this one.
#![no_std]
#![no_main]
// The atomic add of the shared hit counters (`maps::count_rule_hit`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod judge;
mod maps;
mod parse;
mod run;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Entry point, attached to every filtered interface.
#[xdp]
pub fn apifence(ctx: XdpContext) -> u32 {
    run::filter::<()>(&ctx)
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
