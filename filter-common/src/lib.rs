//! Types, map names and constants shared by the apifence XDP program (`filter-ebpf`) and its
//! loader (`filter-user`).
//!
//! # How a policy reaches packets
//!
//! Everything a packet is judged against lives in one of two **slots** (0 and 1). Each slot has
//! its own IPv4 and IPv6 LPM tries ([`MAP_V4_SLOT0`] …), its own [`SlotConfig`], its own
//! protected-port bitmap (a region of [`MAP_PORTS`]) and its own serialized policy record (keys
//! of [`MAP_POLICY`]). The program reads [`MAP_ACTIVE_SLOT`] once per packet and then looks only
//! at that slot. The loader writes a new policy into the inactive slot, flips the active slot
//! with one 4-byte write, and waits for an RCU grace period before it touches the old slot
//! again. So no packet is ever judged against a mix of two policies.
//!
//! All multi-byte values in maps are in host byte order unless a doc comment says otherwise;
//! addresses in trie keys are in network byte order, exactly as on the wire.
#![no_std]

pub mod table;

/// Number of policy slots (double buffering).
pub const SLOT_COUNT: u32 = 2;

/// `ACTIVE_SLOT` array map, one `u32` entry at index 0: the slot (0 or 1) packets are judged
/// against. Written by the loader with a single update; read by the program once per packet.
pub const MAP_ACTIVE_SLOT: &str = "ACTIVE_SLOT";
/// `SLOT_CONFIG` array map, [`SLOT_COUNT`] entries of [`SlotConfig`], indexed by slot.
/// Written by the loader into the inactive slot only.
pub const MAP_SLOT_CONFIG: &str = "SLOT_CONFIG";
/// `PORTS` array map of `u32` bitmap words: slot `s` owns entries
/// `s * PORT_WORDS_PER_SLOT .. (s + 1) * PORT_WORDS_PER_SLOT`; TCP destination port `p` is
/// protected when bit `p % 32` of word `p / 32` of the active slot's region is set.
pub const MAP_PORTS: &str = "PORTS";
/// IPv4 LPM trie of slot 0: key [`Ipv4Key`], value `u32` rule id ([`RuleId`]).
pub const MAP_V4_SLOT0: &str = "V4_SLOT0";
/// IPv4 LPM trie of slot 1: key [`Ipv4Key`], value `u32` rule id.
pub const MAP_V4_SLOT1: &str = "V4_SLOT1";
/// IPv6 LPM trie of slot 0: key [`Ipv6Key`], value `u32` rule id.
pub const MAP_V6_SLOT0: &str = "V6_SLOT0";
/// IPv6 LPM trie of slot 1: key [`Ipv6Key`], value `u32` rule id.
pub const MAP_V6_SLOT1: &str = "V6_SLOT1";
/// `VERDICTS` per-CPU array of `u64`, [`COUNTER_COUNT`] entries indexed by the `COUNTER_*`
/// constants. Written by the program only; the loader sums it over CPUs.
pub const MAP_VERDICTS: &str = "VERDICTS";
/// `RULE_HITS` array of `u64` (`BPF_F_MMAPABLE`) indexed by rule id: packets that matched
/// that rule, shared by all CPUs (atomic adds).
/// The program increments; the loader zeroes an id before it hands the id to a new prefix.
pub const MAP_RULE_HITS: &str = "RULE_HITS";
/// `DENY_EVENTS` ring buffer of [`DenyEvent`]s: one per dropped (or would-drop) packet, at
/// most [`DENY_EVENTS_PER_SEC_PER_CPU`] per second per CPU. Program writes, daemon reads.
pub const MAP_DENY_EVENTS: &str = "DENY_EVENTS";
/// `DENY_RATE` per-CPU array, one [`DenyRate`] entry: the rate limiter of the deny events.
/// Program only.
pub const MAP_DENY_RATE: &str = "DENY_RATE";
/// `POLICY` hash map from [`policy_chunk_key`] to a [`PolicyChunk`]: the serialized policy
/// record each slot was written for (so the pins always say what they enforce), plus the
/// writers' flip state under [`POLICY_FLIP_STATE_KEY`]. Only the loader reads and writes it;
/// the program never touches it.
pub const MAP_POLICY: &str = "POLICY";

/// `TABLE_ROOTS` array map of [`table::EntryPair`]s ([`table`] encoding): the compiled
/// table's root level, [`table::ROOT_ENTRIES`] per family and slot, at [`table::root_base`]. Loader writes
/// the inactive slot's region; the program reads it when the compiled lookup is selected.
pub const MAP_TABLE_ROOTS: &str = "TABLE_ROOTS";
/// `TABLE_CHUNKS` array map of [`table::Chunk`]s: slot `s` owns entries
/// `s * table_chunks_per_slot(c) ..` of the next [`table_chunks_per_slot`] entries. Loader
/// writes the inactive slot's region.
pub const MAP_TABLE_CHUNKS: &str = "TABLE_CHUNKS";
/// `TABLE_ENTRIES` array map of [`table::EntryPair`]s ([`table`] encoding),
/// [`table_entries_per_slot`] entries per slot, slot 0 first. Loader writes the inactive slot's region.
pub const MAP_TABLE_ENTRIES: &str = "TABLE_ENTRIES";

/// `TABLE_V4_FILTER` array map of `u64` (`BPF_F_MMAPABLE`): the compiled table's IPv4 /24
/// filter, [`table::FILTER_WORDS`] per slot at [`table::filter_base`]. Loader writes the
/// inactive slot's region.
pub const MAP_TABLE_V4_FILTER: &str = "TABLE_V4_FILTER";

/// `TABLE_V6_FILTER` array map of `u64` (`BPF_F_MMAPABLE`): the compiled table's IPv6 filter,
/// the same as [`MAP_TABLE_V4_FILTER`] over the top 24 bits of an IPv6 address. Read only in a
/// slot flagged [`SLOT_FLAG_V6_FILTER`] (pins made before it existed, and writers that don't
/// know it, never set the flag). Loader writes the inactive slot's region.
pub const MAP_TABLE_V6_FILTER: &str = "TABLE_V6_FILTER";

/// Every map the program defines, in a stable order (pin names under the bpffs directory).
pub const ALL_MAPS: [&str; 17] = [
    MAP_ACTIVE_SLOT,
    MAP_SLOT_CONFIG,
    MAP_PORTS,
    MAP_V4_SLOT0,
    MAP_V4_SLOT1,
    MAP_V6_SLOT0,
    MAP_V6_SLOT1,
    MAP_TABLE_ROOTS,
    MAP_TABLE_CHUNKS,
    MAP_TABLE_ENTRIES,
    MAP_TABLE_V4_FILTER,
    MAP_TABLE_V6_FILTER,
    MAP_VERDICTS,
    MAP_RULE_HITS,
    MAP_POLICY,
    MAP_DENY_EVENTS,
    MAP_DENY_RATE,
];

/// Name of the XDP program (the `#[xdp]` function) in the object file.
pub const PROGRAM_NAME: &str = "apifence";

/// Name of the verdict-trace XDP program in its own object (`apifence trace`): the same
/// filter as [`PROGRAM_NAME`] (same maps, same verdicts) that also reports each TCP packet from
/// the sources of [`GLOBAL_TRACE_FILTER`] through aya-log. The production object is compiled
/// without any of it. At most 15 characters (the kernel's program name length).
pub const TRACE_PROGRAM_NAME: &str = "apifence_trace";

/// Name of the trace program's load-time constant (a [`TraceFilter`] in `.rodata`): which
/// sources it reports. Only the trace program reads it.
pub const GLOBAL_TRACE_FILTER: &str = "TRACE_FILTER";

/// [`TraceFilter::family`]: report every TCP packet.
pub const TRACE_FAMILY_ANY: u32 = 0;
/// [`TraceFilter::family`]: report IPv4 sources in `net`/`mask` (first word of each).
pub const TRACE_FAMILY_V4: u32 = 4;
/// [`TraceFilter::family`]: report IPv6 sources in `net`/`mask`.
pub const TRACE_FAMILY_V6: u32 = 6;

/// The sources the trace program reports: `source & mask == net`, compared as four 32-bit words
/// of address bytes in network byte order (IPv4 uses word 0 only).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// [`TRACE_FAMILY_ANY`], [`TRACE_FAMILY_V4`] or [`TRACE_FAMILY_V6`].
    pub family: u32,
    /// Network address bytes (already masked), as `u32` words in memory order.
    pub net: [u32; 4],
    /// Prefix mask bytes, as `u32` words in memory order.
    pub mask: [u32; 4],
}

/// Name of the program's load-time constant (a global `u32` in `.rodata`) that selects the
/// lookup: [`LOOKUP_COMPILED`] or [`LOOKUP_LPM_TRIE`]. The verifier sees its value, so the
/// lookup not selected is dead code it never walks.
pub const GLOBAL_LOOKUP: &str = "LOOKUP";
/// [`GLOBAL_LOOKUP`]: the compiled table ([`table`]); the default.
pub const LOOKUP_COMPILED: u32 = 0;
/// [`GLOBAL_LOOKUP`]: the kernel's LPM tries.
pub const LOOKUP_LPM_TRIE: u32 = 1;

/// Name of the program's load-time constant (a global `u32` in `.rodata`) that says where a
/// frame's headers start: [`FRAMING_ETHERNET`] or [`FRAMING_IP`]. One instance of the program is
/// loaded per framing, both sharing the pinned maps; the verifier sees the value, so the other
/// parse path is dead code it never walks.
pub const GLOBAL_FRAMING: &str = "FRAMING";
/// [`GLOBAL_FRAMING`]: frames start with an Ethernet header (then up to two VLAN tags); for
/// Ethernet devices (`ARPHRD_ETHER`). The default.
pub const FRAMING_ETHERNET: u32 = 0;
/// [`GLOBAL_FRAMING`]: frames start at the IP header, IPv4 or IPv6 as its version nibble says;
/// for L3 devices (tun, WireGuard: `ARPHRD_NONE`), whose packets have no link-layer header.
pub const FRAMING_IP: u32 = 1;

/// `max_entries` of [`MAP_TABLE_CHUNKS`], [`MAP_TABLE_ENTRIES`], [`MAP_TABLE_V4_FILTER`] and
/// [`MAP_TABLE_V6_FILTER`] when the LPM-trie lookup is selected: the table is not used, and the
/// pins say which lookup they were made for.
pub const TABLE_ELEMENTS_UNUSED: u32 = 1;

/// Chunks of the compiled table per slot (both families) for a capacity of `capacity`
/// prefixes per family: every /16 of the roots may hold a node of four chunks (for lists
/// that spread over all of IPv4), and half a chunk per prefix beyond that covers prefixes
/// longer than /24 (IPv4) and IPv6 nodes. A list that needs more is refused with an error
/// that says to raise `--capacity` or use the LPM trie.
pub const fn table_chunks_per_slot(capacity: u32) -> u32 {
    let spread = if capacity < table::ROOT_ENTRIES {
        capacity
    } else {
        table::ROOT_ENTRIES
    };
    capacity / 2 + table::CHUNKS_PER_NODE * spread
}

/// Entries of the compiled table per slot (both families) for `capacity`: a prefix adds at
/// most two runs to the node it ends in (itself and what follows it) plus one child entry
/// per level it passes, and each chunk starts a run.
/// Always even, so each slot's region starts on a whole [`table::EntryPair`].
pub const fn table_entries_per_slot(capacity: u32) -> u32 {
    (3 * capacity + table_chunks_per_slot(capacity) + 1) & !1
}

/// Default capacity of each LPM trie, in prefixes per address family.
pub const DEFAULT_CAPACITY: u32 = 65_536;
/// Capacity compiled into the object file; the loader overrides it at attach.
pub const COMPILED_TRIE_CAPACITY: u32 = 1024;
/// Rule ids needed for a trie capacity: both families in both slots may hold distinct prefixes
/// while a new policy is written next to the active one.
pub const fn rule_capacity(trie_capacity: u32) -> u32 {
    4 * trie_capacity
}

/// Number of `u32` words of the port bitmap per slot (65,536 ports / 32).
pub const PORT_WORDS_PER_SLOT: u32 = 2048;

/// Size of one serialized-policy chunk in [`MAP_POLICY`].
pub const POLICY_CHUNK_BYTES: usize = 2048;
/// Maximum number of chunks per slot (64 MiB of policy text per slot).
pub const POLICY_MAX_CHUNKS_PER_SLOT: u32 = 32_768;
/// `max_entries` of [`MAP_POLICY`]: both slots' chunks.
pub const POLICY_MAP_ENTRIES: u32 = SLOT_COUNT * POLICY_MAX_CHUNKS_PER_SLOT;

/// Key in [`MAP_POLICY`] of the writers' flip state (how many flips so far, and whether an RCU
/// grace period has passed since the last one, so the inactive slot has no readers). Outside
/// every slot's chunk keys.
pub const POLICY_FLIP_STATE_KEY: u32 = u32::MAX;

/// Key of chunk `index` of the policy record of `slot` in [`MAP_POLICY`].
pub const fn policy_chunk_key(slot: u32, index: u32) -> u32 {
    slot * POLICY_MAX_CHUNKS_PER_SLOT + index
}

/// One chunk of a serialized policy record. Chunk 0 starts with the record's total length as a
/// little-endian `u32`, followed by the record bytes; later chunks hold the rest.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PolicyChunk {
    /// Raw bytes.
    pub bytes: [u8; POLICY_CHUNK_BYTES],
}

/// Per-slot switches, one entry per slot in [`MAP_SLOT_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotConfig {
    /// Bit set of `SLOT_FLAG_*`.
    pub flags: u32,
}

/// The slot filters protected traffic. Unset: everything passes (still counted), as with
/// `apifence ranges set ""`.
pub const SLOT_FLAG_ENABLED: u32 = 1;
/// Monitor mode: nothing is dropped; what would have been dropped counts as would-drop.
pub const SLOT_FLAG_MONITOR: u32 = 2;
/// The slot's words of [`MAP_TABLE_V6_FILTER`] were written for its table (by a writer that
/// knows the bitmap): only then does the lookup read them. A writer from before the bitmap
/// existed leaves the flag clear, so stale words are never trusted.
pub const SLOT_FLAG_V6_FILTER: u32 = 4;

/// A rule id: the value stored in the tries, an index into [`MAP_RULE_HITS`].
pub type RuleId = u32;

/// Address bytes of an IPv4 trie key, in network byte order.
pub type Ipv4Bytes = [u8; 4];
/// Address bytes of an IPv6 trie key, in network byte order.
pub type Ipv6Bytes = [u8; 16];

/// Key of the IPv4 tries: the kernel's `struct bpf_lpm_trie_key` with 4 data bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Key {
    /// Prefix length in bits (0..=32) for stored keys; 32 for lookups.
    pub prefix_len: u32,
    /// Network address, network byte order.
    pub addr: Ipv4Bytes,
}

/// Key of the IPv6 tries: the kernel's `struct bpf_lpm_trie_key` with 16 data bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Key {
    /// Prefix length in bits (0..=128) for stored keys; 128 for lookups.
    pub prefix_len: u32,
    /// Network address, network byte order.
    pub addr: Ipv6Bytes,
}

/// Counter index in [`MAP_VERDICTS`]: protected traffic whose source matched a rule.
pub const COUNTER_PASSED_AUTHORIZED: u32 = 0;
/// Counter index: traffic that is not protected (other ports, other protocols, non-IP).
pub const COUNTER_PASSED_UNPROTECTED: u32 = 1;
/// Counter index: protected traffic passed because the active slot is disabled.
pub const COUNTER_PASSED_DISABLED: u32 = 2;
/// Counter index: packets dropped (unauthorized or malformed, enforce mode).
pub const COUNTER_DROPPED: u32 = 3;
/// Counter index: packets that would have been dropped in enforce mode (monitor mode).
pub const COUNTER_WOULD_DROP: u32 = 4;
/// Counter index: packets with a malformed IP header. Each is also counted as dropped,
/// would-drop or passed-disabled, depending on the slot.
pub const COUNTER_MALFORMED: u32 = 5;
/// Counter index: deny events not reported because of the rate limit or a full ring buffer.
pub const COUNTER_DENY_EVENTS_SUPPRESSED: u32 = 6;
/// Number of counters in [`MAP_VERDICTS`].
pub const COUNTER_COUNT: u32 = 7;

/// Size in bytes of the deny-event ring buffer (a power of two, a multiple of the page size).
pub const DENY_EVENTS_RING_BYTES: u32 = 256 * 1024;
/// Deny events each CPU may report per second; the rest are counted as suppressed.
pub const DENY_EVENTS_PER_SEC_PER_CPU: u64 = 1000;

/// One denied (or would-deny) packet, as reported through [`MAP_DENY_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    /// `bpf_ktime_get_ns()` when the packet was judged (monotonic, since boot).
    pub timestamp_ns: u64,
    /// Source address, network byte order; IPv4 uses the first 4 bytes.
    pub source: [u8; 16],
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// TCP destination port (host byte order); 0 when it could not be read.
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// [`DENY_KIND_DROPPED`] or [`DENY_KIND_WOULD_DROP`].
    pub kind: u8,
}

/// [`DenyEvent::kind`]: the packet was dropped.
pub const DENY_KIND_DROPPED: u8 = 1;
/// [`DenyEvent::kind`]: monitor mode, the packet would have been dropped.
pub const DENY_KIND_WOULD_DROP: u8 = 2;

/// State of the per-CPU deny-event rate limiter (fixed one-second windows). Same 16 bytes as
/// before `checked_jiffies` split the old `sent: u64`, so pinned maps stay compatible.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyRate {
    /// Start of the current window, `bpf_ktime_get_ns()`.
    pub window_start_ns: u64,
    /// Events reported in the current window.
    pub sent: u32,
    /// Low 32 bits of `bpf_jiffies64()` when the program last read the clock while over
    /// budget: a CPU over its budget reads the nanosecond clock at most once per jiffy, not
    /// once per dropped packet.
    pub checked_jiffies: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `repr(C)` (or `repr(C, packed)`) plain data with no padding and
    // no invalid bit patterns; layout asserts live in the tests below.
    unsafe impl aya::Pod for super::SlotConfig {}
    unsafe impl aya::Pod for super::PolicyChunk {}
    unsafe impl aya::Pod for super::Ipv4Key {}
    unsafe impl aya::Pod for super::Ipv6Key {}
    unsafe impl aya::Pod for super::DenyEvent {}
    unsafe impl aya::Pod for super::DenyRate {}
    unsafe impl aya::Pod for super::TraceFilter {}
    unsafe impl aya::Pod for super::table::Chunk {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn trie_keys_match_bpf_lpm_trie_key_layout() {
        assert_eq!(size_of::<Ipv4Key>(), 8);
        assert_eq!(size_of::<Ipv6Key>(), 20);
        assert_eq!(align_of::<Ipv4Key>(), 1);
        assert_eq!(align_of::<Ipv6Key>(), 1);
    }

    #[test]
    fn shared_values_have_no_padding() {
        assert_eq!(size_of::<SlotConfig>(), 4);
        assert_eq!(size_of::<PolicyChunk>(), POLICY_CHUNK_BYTES);
        assert_eq!(size_of::<DenyEvent>(), 32);
        assert_eq!(size_of::<DenyRate>(), 16);
        assert_eq!(size_of::<TraceFilter>(), 36);
    }

    #[test]
    fn policy_chunk_keys_of_the_two_slots_never_collide() {
        let last_of_slot0 = policy_chunk_key(0, POLICY_MAX_CHUNKS_PER_SLOT - 1);
        let first_of_slot1 = policy_chunk_key(1, 0);
        assert!(last_of_slot0 < first_of_slot1);
        assert!(policy_chunk_key(1, POLICY_MAX_CHUNKS_PER_SLOT - 1) < POLICY_MAP_ENTRIES);
    }

    #[test]
    fn counters_are_distinct_and_in_range() {
        let all = [
            COUNTER_PASSED_AUTHORIZED,
            COUNTER_PASSED_UNPROTECTED,
            COUNTER_PASSED_DISABLED,
            COUNTER_DROPPED,
            COUNTER_WOULD_DROP,
            COUNTER_MALFORMED,
            COUNTER_DENY_EVENTS_SUPPRESSED,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(*a < COUNTER_COUNT);
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
