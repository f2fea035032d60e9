//! Every map of the program, with the small accessors the per-packet path uses. Names, key and
//! value layouts are documented in `filter_common` next to the `MAP_*` constants.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
};
use filter_common::{
    COMPILED_TRIE_CAPACITY, COUNTER_COUNT, COUNTER_DENY_EVENTS_SUPPRESSED,
    DENY_EVENTS_PER_SEC_PER_CPU, DENY_EVENTS_RING_BYTES, DenyEvent, DenyRate, Ipv4Bytes, Ipv6Bytes,
    LOOKUP_COMPILED, POLICY_MAP_ENTRIES, PORT_WORDS_PER_SLOT, PolicyChunk, RuleId, SLOT_COUNT,
    SlotConfig, rule_capacity,
    table::{self, Chunk, EntryPair, ROOT_MAP_ENTRIES, TableRead},
};

/// Which lookup judges sources (`filter_common::GLOBAL_LOOKUP`): a load-time constant in
/// `.rodata` that the loader sets with `EbpfLoader::set_global`. The verifier knows its value,
/// so the other lookup is pruned as dead code.
#[unsafe(no_mangle)]
static LOOKUP: u32 = LOOKUP_COMPILED;

/// Index (0 or 1) of the slot packets are judged against; entry 0 only. Loader writes.
#[map]
static ACTIVE_SLOT: Array<u32> = Array::pinned(1, 0);

/// Per-slot switches (`SLOT_FLAG_*`), indexed by slot. Loader writes the inactive slot.
#[map]
static SLOT_CONFIG: Array<SlotConfig> = Array::pinned(SLOT_COUNT, 0);

/// Protected-port bitmaps, `PORT_WORDS_PER_SLOT` words per slot. Loader writes.
#[map]
static PORTS: Array<u32> = Array::pinned(SLOT_COUNT * PORT_WORDS_PER_SLOT, 0);

/// Authorized IPv4 prefixes of slot 0 → rule id. Loader writes; capacity set at attach.
#[map]
static V4_SLOT0: LpmTrie<Ipv4Bytes, RuleId> = LpmTrie::pinned(COMPILED_TRIE_CAPACITY, 0);

/// Authorized IPv4 prefixes of slot 1 → rule id.
#[map]
static V4_SLOT1: LpmTrie<Ipv4Bytes, RuleId> = LpmTrie::pinned(COMPILED_TRIE_CAPACITY, 0);

/// Authorized IPv6 prefixes of slot 0 → rule id.
#[map]
static V6_SLOT0: LpmTrie<Ipv6Bytes, RuleId> = LpmTrie::pinned(COMPILED_TRIE_CAPACITY, 0);

/// Authorized IPv6 prefixes of slot 1 → rule id.
#[map]
static V6_SLOT1: LpmTrie<Ipv6Bytes, RuleId> = LpmTrie::pinned(COMPILED_TRIE_CAPACITY, 0);

/// Compiled table, root level (`filter_common::table`), both slots and families. Loader writes
/// the inactive slot's region; userspace may also `mmap` it (`BPF_F_MMAPABLE`).
#[map]
static TABLE_ROOTS: Array<EntryPair> = Array::pinned(ROOT_MAP_ENTRIES / 2, BPF_F_MMAPABLE);

/// Compiled table, chunks of both slots (slot 0's region first). Capacity set at attach.
#[map]
static TABLE_CHUNKS: Array<Chunk> = Array::pinned(1, BPF_F_MMAPABLE);

/// Compiled table, entries of both slots (slot 0's region first). Capacity set at attach.
#[map]
static TABLE_ENTRIES: Array<EntryPair> = Array::pinned(1, BPF_F_MMAPABLE);

/// Compiled table, IPv4 /24 filter of both slots (slot 0's words first).
#[map]
static TABLE_V4_FILTER: Array<u64> = Array::pinned(2 * table::FILTER_WORDS, BPF_F_MMAPABLE);

/// Compiled table, IPv6 /24 filter of both slots (slot 0's words first).
#[map]
static TABLE_V6_FILTER: Array<u64> = Array::pinned(2 * table::FILTER_WORDS, BPF_F_MMAPABLE);

/// The compiled table as the shared walk reads it: each access one inlined array lookup.
struct Compiled;

impl TableRead for Compiled {
    #[inline(always)]
    fn root(&self, index: u32) -> Option<u32> {
        TABLE_ROOTS
            .get(index >> 1)
            .map(|pair| table::half(pair, index))
    }

    #[inline(always)]
    fn chunk(&self, index: u32) -> Option<Chunk> {
        TABLE_CHUNKS.get(index).copied()
    }

    #[inline(always)]
    fn entry(&self, index: u32) -> Option<u32> {
        TABLE_ENTRIES
            .get(index >> 1)
            .map(|pair| table::half(pair, index))
    }

    #[inline(always)]
    fn filter(&self, index: u32) -> Option<u64> {
        TABLE_V4_FILTER.get(index).copied()
    }

    #[inline(always)]
    fn v6_filter(&self, index: u32) -> Option<u64> {
        TABLE_V6_FILTER.get(index).copied()
    }
}

/// Whether the compiled table is the selected lookup.
#[inline(always)]
fn compiled_lookup() -> bool {
    // SAFETY: reads a plain `u32` static; volatile so the compiler can't fold the default.
    unsafe { core::ptr::read_volatile(&LOOKUP) == LOOKUP_COMPILED }
}

/// Per-CPU verdict counters indexed by `COUNTER_*`. Program writes, loader reads.
#[map]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);

/// Packet count per rule id, shared by all CPUs: the program adds atomically, the loader
/// reads and zeroes through a memory mapping. Shared rather than per-CPU so the counters cost
/// 8 bytes per rule id, not 8 per rule id and CPU (2 MiB per CPU at the default capacity).
#[map]
static RULE_HITS: Array<u64> = Array::pinned(rule_capacity(COMPILED_TRIE_CAPACITY), BPF_F_MMAPABLE);

/// Serialized policy record of each slot, in chunks. Loader only; never read here.
#[map]
static POLICY: HashMap<u32, PolicyChunk> = HashMap::pinned(POLICY_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Denied packets, for the deny log. Program writes (rate-limited), daemon reads.
#[map]
static DENY_EVENTS: RingBuf = RingBuf::pinned(DENY_EVENTS_RING_BYTES, 0);

/// Per-CPU rate limiter state of `DENY_EVENTS`. Program only.
#[map]
static DENY_RATE: PerCpuArray<DenyRate> = PerCpuArray::pinned(1, 0);

/// The active slot; 0 if the map can't be read (it always can: an array entry 0 exists).
#[inline(always)]
pub fn active_slot() -> u32 {
    match ACTIVE_SLOT.get(0) {
        Some(slot) => *slot,
        None => 0,
    }
}

/// The `SLOT_FLAG_*` bits of `slot`; 0 (disabled) if unreadable.
#[inline(always)]
pub fn slot_flags(slot: u32) -> u32 {
    match SLOT_CONFIG.get(slot) {
        Some(config) => config.flags,
        None => 0,
    }
}

/// Whether TCP destination `port` is protected in `slot`.
#[inline(always)]
pub fn port_protected(slot: u32, port: u16) -> bool {
    let word = slot * PORT_WORDS_PER_SLOT + u32::from(port >> 5);
    match PORTS.get(word) {
        Some(bits) => (*bits >> (port & 31)) & 1 == 1,
        None => true,
    }
}

/// The rule id of the longest authorized IPv4 prefix of `slot` holding `addr`.
#[inline(always)]
pub fn lookup_v4(slot: u32, addr: Ipv4Bytes) -> Option<RuleId> {
    if compiled_lookup() {
        return table::lookup(&Compiled, slot, &addr, false);
    }
    let key = Key::new(32, addr);
    let rule = if slot == 0 {
        V4_SLOT0.get(&key)
    } else {
        V4_SLOT1.get(&key)
    };
    rule.copied()
}

/// The rule id of the longest authorized IPv6 prefix of `slot` holding `addr`; `v6_filter`: the
/// slot's IPv6 filter words are valid (`SLOT_FLAG_V6_FILTER`).
#[inline(always)]
pub fn lookup_v6(slot: u32, addr: Ipv6Bytes, v6_filter: bool) -> Option<RuleId> {
    if compiled_lookup() {
        return table::lookup(&Compiled, slot, &addr, v6_filter);
    }
    let key = Key::new(128, addr);
    let rule = if slot == 0 {
        V6_SLOT0.get(&key)
    } else {
        V6_SLOT1.get(&key)
    };
    rule.copied()
}

/// Adds one to verdict counter `index` on this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = VERDICTS.get_ptr_mut(index) {
        // SAFETY: per-CPU value, only this CPU's program instance writes it right now.
        unsafe { *counter = (*counter).wrapping_add(1) };
    }
}

/// Adds one to the hit counter of `rule` (ignored if out of range). One atomic add (`lock
/// xadd`, any kernel): its result is unused, so no fetch variant (5.12+) is needed.
#[inline(always)]
pub fn count_rule_hit(rule: RuleId) {
    if let Some(counter) = RULE_HITS.get_ptr_mut(rule) {
        // SAFETY: a valid, 8-byte aligned map value for the program's lifetime. (core has no
        // atomic read-modify-write for the BPF target, so the intrinsic is called directly.)
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
    }
}

/// The current time if this CPU may report one more deny event in the current one-second
/// window (one clock read serves the limiter and the event's timestamp). Under a flood the
/// budget is spent within the window's first milliseconds; from then on a packet costs one
/// comparison and, once per jiffy, a clock read to see whether the window is over
/// (`bpf_jiffies64`, Linux 5.5+, reads a variable; `bpf_ktime_get_ns` reads the clock source).
#[inline(always)]
fn deny_event_allowed() -> Option<u64> {
    let rate = DENY_RATE.get_ptr_mut(0)?;
    // SAFETY: per-CPU value, only this CPU's program instance touches it right now.
    let rate = unsafe { &mut *rate };
    if u64::from(rate.sent) >= DENY_EVENTS_PER_SEC_PER_CPU {
        // SAFETY: helper without arguments.
        let jiffies = unsafe { bpf_jiffies64() } as u32;
        if jiffies == rate.checked_jiffies {
            return None;
        }
        rate.checked_jiffies = jiffies;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(rate.window_start_ns) >= 1_000_000_000 {
        rate.window_start_ns = now;
        rate.sent = 0;
    }
    if u64::from(rate.sent) >= DENY_EVENTS_PER_SEC_PER_CPU {
        return None;
    }
    rate.sent += 1;
    Some(now)
}

/// Reports a denied packet through `DENY_EVENTS` (the event built by `build` only once the
/// rate limiter allowed it), or counts it as suppressed when the rate limit is reached or the
/// ring buffer is full.
#[inline(always)]
pub fn report_denied(build: impl FnOnce() -> Option<DenyEvent>) {
    let Some(now) = deny_event_allowed() else {
        count(COUNTER_DENY_EVENTS_SUPPRESSED);
        return;
    };
    let Some(mut event) = build() else {
        return;
    };
    event.timestamp_ns = now;
    if DENY_EVENTS.output::<DenyEvent>(&event, 0).is_err() {
        count(COUNTER_DENY_EVENTS_SUPPRESSED);
    }
}
