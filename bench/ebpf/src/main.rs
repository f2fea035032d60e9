//! Benchmark-only programs (`cargo xtask bench`), in an object of their own: the production
//! object (`filter-ebpf`, embedded by filter-user) does not contain them.
//!
//! The harness measures the production `apifence` program itself, loaded from the production
//! object and pinned by the loader. What this object adds around it:
//!
//! - [`bench_empty`], [`bench_drop`]: the cheapest possible XDP programs (baselines, and the
//!   end-to-end "XDP floor");
//! - [`bench_parse`]: the real frame parser ([`parse`], the same source file the production
//!   program compiles) and nothing else;
//! - [`bench_rotate`]: rewrites the frame's source address from [`KEYS`] (a different address
//!   on every run of `BPF_PROG_TEST_RUN`'s repeat loop) and then tail-calls whatever program
//!   the harness put in [`TARGET`]: the production program (so it judges a new address each
//!   time) or [`bench_empty`] (so the rotation's own cost can be measured and subtracted);
//! - [`bench_tc_pass`] / [`bench_tc_consume`]: tc egress programs for the traffic generator's
//!   interface in the end-to-end runs: every run passes its frames through one of the two, so
//!   the run with [`bench_tc_consume`] (frames freed before they reach the veth pair, reported
//!   to the sender as sent) measures the sender's own cost along the same code path.
//!
//! Map names and the meaning of [`CONFIG`]'s entries are mirrored in the harness
//! (`bench/src/object.rs`).
#![no_std]
#![no_main]

// The production parser, the very file the production program compiles. Only `classify` is
// used here; the rest serves the production program.
#[allow(dead_code)]
#[path = "../../../filter-ebpf/src/parse.rs"]
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_STOLEN, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{TcContext, XdpContext},
};

/// Source addresses to rotate through, 16 bytes each (IPv4 uses the first 4). The harness sizes
/// it at load and fills one region per key set. Written by the harness only.
#[map]
static KEYS: Array<[u8; 16]> = Array::with_max_entries(1, 0);

/// Rotation settings, written by the harness before each run: index [`CONFIG_BASE`] is the
/// first [`KEYS`] entry of the key set, [`CONFIG_MASK`] the set's size minus one (a power of
/// two), [`CONFIG_FAMILY`] 4 or 6 (which source field to rewrite).
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(3, 0);

/// Index of [`CONFIG`] holding the first key of the set.
const CONFIG_BASE: u32 = 0;
/// Index of [`CONFIG`] holding the set's size minus one.
const CONFIG_MASK: u32 = 1;
/// Index of [`CONFIG`] holding the address family (4 or 6).
const CONFIG_FAMILY: u32 = 2;

/// Per-CPU position in the key set; advanced on every run.
#[map]
static CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Entry 0: the program [`bench_rotate`] tail-calls. Written by the harness.
#[map]
static TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

const ETH_HEADER_LEN: usize = 14;
/// Offset of the IPv4 source address in an untagged frame.
const IPV4_SOURCE: usize = ETH_HEADER_LEN + 12;
/// Offset of the IPv6 source address in an untagged frame.
const IPV6_SOURCE: usize = ETH_HEADER_LEN + 8;

/// Does nothing: the cost of running any XDP program at all.
#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops everything: the cheapest possible XDP filter (end-to-end floor).
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Runs the production parser and nothing else. The verdict depends on every byte of the
/// source and on the port, so the compiler can't drop any of the parsing.
#[xdp]
pub fn bench_parse(ctx: XdpContext) -> u32 {
    match parse::classify(&ctx, &mut ()) {
        parse::Class::Tcp { source, port } => {
            let folded = match source {
                parse::Source::V4(addr) => addr.iter().fold(0u8, |acc, b| acc ^ b),
                parse::Source::V6(addr) => addr.iter().fold(0u8, |acc, b| acc ^ b),
            };
            match u16::try_from(port) {
                Ok(port) if folded != 0x5a || port != 1 => xdp_action::XDP_PASS,
                _ => xdp_action::XDP_DROP,
            }
        }
        parse::Class::Unfiltered => xdp_action::XDP_PASS,
        parse::Class::Malformed => xdp_action::XDP_DROP,
    }
}

/// Rewrites the source address from the key set, then tail-calls [`TARGET`] entry 0. Returns
/// `XDP_ABORTED` only when the tail call failed (empty slot), which the harness checks.
#[xdp]
pub fn bench_rotate(ctx: XdpContext) -> u32 {
    rotate(&ctx);
    // SAFETY: `ctx` is this program's own context.
    unsafe { TARGET.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// Copies the next key of the configured set over the frame's source address.
#[inline(always)]
fn rotate(ctx: &XdpContext) {
    let (Some(base), Some(mask), Some(family)) = (
        CONFIG.get(CONFIG_BASE),
        CONFIG.get(CONFIG_MASK),
        CONFIG.get(CONFIG_FAMILY),
    ) else {
        return;
    };
    let Some(cursor) = CURSOR.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; only this CPU's program run touches it now.
    let index = unsafe { *cursor } & *mask;
    // SAFETY: as above.
    unsafe { *cursor = index.wrapping_add(1) & *mask };
    let Some(key) = KEYS.get(base.wrapping_add(index)) else {
        return;
    };
    let start = ctx.data();
    let end = ctx.data_end();
    if *family == 4 {
        if start + IPV4_SOURCE + 4 <= end {
            // SAFETY: the 4 bytes lie inside the frame (checked just above).
            unsafe {
                core::ptr::write_unaligned(
                    (start + IPV4_SOURCE) as *mut [u8; 4],
                    [key[0], key[1], key[2], key[3]],
                );
            }
        }
    } else if start + IPV6_SOURCE + 16 <= end {
        // SAFETY: the 16 bytes lie inside the frame (checked just above).
        unsafe { core::ptr::write_unaligned((start + IPV6_SOURCE) as *mut [u8; 16], *key) };
    }
}

/// Lets every frame through (tc egress of the traffic generator, normal runs).
#[classifier]
pub fn bench_tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Consumes every frame before it reaches the veth pair (the sender-only run). `TC_ACT_STOLEN`
/// rather than `TC_ACT_SHOT`, so the sender sees a successful send (a drop makes trafgen's
/// transmit ring retry forever). Honoured by cls_bpf (netlink attach), not by tcx.
#[classifier]
pub fn bench_tc_consume(_ctx: TcContext) -> i32 {
    TC_ACT_STOLEN
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
