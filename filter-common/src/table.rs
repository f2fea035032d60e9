//! The compiled lookup table: layout, entry encoding and the one lookup walk that both the XDP
//! program and the loader's compiler (and its tests) run.
//!
//! # Shape
//!
//! A multibit trie with a directly indexed first level and stride-8 levels below it:
//!
//! ```text
//!   address:  [ b0 b1 | b2 | b3 ]                  (IPv6: [ b0 b1 | b2 | b3 | ... | b15 ])
//!               root      node   node
//!   ROOTS[family][b0 b1] ──child──▶ node (256 positions = 4 chunks of 64)
//!                                    chunk = CHUNKS[first + present chunks below b2 >> 6]
//!                                    run   = popcount(chunk.runs up to b2 & 63)
//!                                    ENTRIES[chunk.base + run - 1] ──child──▶ node for b3 ...
//! ```
//!
//! - **IPv4 /24 filter** ([`FILTER_WORDS`] `u64` words per slot): one bit per /24, set where
//!   any prefix touches that /24. A random IPv4 source in a /24 the list doesn't touch is
//!   answered with one read of a 2 MiB bitmap that stays in cache, however large the list: for
//!   1M random prefixes about 94% of random sources stop there.
//! - **IPv6 /24 filter** (as many words): the same over the top 24 bits of an IPv6 address,
//!   read only in a slot whose flags say a writer that knows it wrote its words
//!   (`SLOT_FLAG_V6_FILTER`).
//! - Both filters are read only where the root points to a node or a tail; the words of other
//!   buckets are never read and stay zero.
//! - **Roots** ([`ROOT_ENTRIES`] `u32` entries per family and slot): one entry per value of the
//!   top 16 bits of the address. Every prefix of length ≤ 16 is expanded into the roots it
//!   covers, so a random source outside the list's /16s is answered with **one** load.
//! - **Nodes** cover the next 8 bits ([`STRIDE_BITS`]): 256 positions, split in
//!   [`CHUNKS_PER_NODE`] chunks of 64. A chunk whose 64 positions all hold the node's inherited
//!   value (what the parent position said) is not stored; the child entry carries a 4-bit
//!   mask of the stored chunks, and they are consecutive in [`CHUNKS`](crate::table) starting
//!   at the child's index, so the chunk is found with a 3-bit popcount and read with one load.
//! - **Chunks** are bitmap-compressed (poptrie's leaf vector): bit `i` of [`Chunk::runs`] is set
//!   where position `i` starts a run of equal entries (bit 0 is always set), and the runs'
//!   entries are consecutive in the entry array from [`Chunk::base`]. The entry for position
//!   `i` is therefore `ENTRIES[base + popcount(runs & (2^(i+1) - 1)) - 1]`. A child is always
//!   a run of its own (child entries are unique). BPF has no popcount instruction; [`popcount64`]
//!   is the usual SWAR sequence (about a dozen ALU instructions, no loads).
//!
//! A lookup touches the root, then per level one chunk and one entry, and at most one tail
//! (below): at most 6 dependent loads for IPv4 (root, chunk, entry, chunk, entry, tail) and
//! the loop never runs more than `address bytes - 2` times. All three arrays are `BPF_MAP_TYPE_ARRAY`s read through
//! `bpf_map_lookup_elem` on a constant map, which the verifier inlines into a bounds check and
//! an address computation: no helper call, no pointer chasing through kernel objects.
//!
//! # Why this shape (measured alternatives are in the README)
//!
//! Stride 8 below the root puts IPv4 /24 (the most common long prefix) exactly at a level
//! boundary, so a list of /24s needs no third level at all; a 64-bit chunk keeps each
//! dependent load a single 16-byte read. A 24-bit first level would answer most IPv4 lookups
//! in one load but costs 64 MiB per slot and family; uncompressed 256-entry nodes cost 1 KiB
//! per /16 and per /24 holding anything (64 MiB per slot for 1M random /24s).
//!
//! # Entry encoding (`u32`)
//!
//! - [`ENTRY_MISS`] (0): no prefix covers the address.
//! - leaf: `rule id + 1` (bit 31 clear; so rule ids are below [`MAX_RULE_ID`]).
//! - child: bit 31 set ([`ENTRY_CHILD`]), bits 27..31 the mask of stored chunks, bits 0..27
//!   the index of the node's first stored chunk.
//!
//! Indices in entries and chunks are absolute indices into the maps (the loader compiles each
//! slot's table for that slot's region), so the walk needs no per-slot offset.

use crate::RuleId;

/// Bits of the address indexed directly by the root level.
pub const ROOT_BITS: u32 = 16;
/// Root entries per family and slot (2^[`ROOT_BITS`]).
pub const ROOT_ENTRIES: u32 = 1 << ROOT_BITS;
/// Bits consumed per level below the root.
pub const STRIDE_BITS: u32 = 8;
/// Positions of a chunk (one `u64` bitmap).
pub const CHUNK_POSITIONS: u32 = 64;
/// Chunks per node (256 positions / 64).
pub const CHUNKS_PER_NODE: u32 = 4;
/// Levels below the root for IPv4 (bits 16..24 and 24..32).
pub const V4_LEVELS: u32 = 2;
/// Levels below the root for IPv6 (bits 16..128).
pub const V6_LEVELS: u32 = 14;

/// Root region of `family` (4 or 6 → 0 or 1) in `slot`: roots are stored slot-major, then
/// family, [`ROOT_ENTRIES`] each.
pub const fn root_base(slot: u32, v6: bool) -> u32 {
    (slot * 2 + v6 as u32) * ROOT_ENTRIES
}

/// Total root entries of the map (two slots, two families).
pub const ROOT_MAP_ENTRIES: u32 = 4 * ROOT_ENTRIES;

/// `u64` words per slot of the IPv4 and of the IPv6 /24 filter: one bit per value of the top
/// 24 address bits (2^24 bits, 2 MiB).
pub const FILTER_WORDS: u32 = 1 << 18;

/// First filter word of `slot` in the filter map.
pub const fn filter_base(slot: u32) -> u32 {
    slot * FILTER_WORDS
}

/// Elements of the root and entry array maps hold two `u32` entries: entry `i` is half
/// `i % 2` of element `i / 2`. The kernel rounds array elements up to 8 bytes, so a map of
/// plain `u32`s would spend 8 bytes per entry.
pub type EntryPair = [u32; 2];

/// Entry `index` of a map of [`EntryPair`]s, given the element read for `index / 2`.
#[inline(always)]
pub const fn half(pair: &EntryPair, index: u32) -> u32 {
    if index & 1 == 0 { pair[0] } else { pair[1] }
}

/// Entry: no prefix covers the address.
pub const ENTRY_MISS: u32 = 0;
/// Entry flag: the entry points to a node.
pub const ENTRY_CHILD: u32 = 1 << 31;
/// Shift of the stored-chunk mask in a child entry.
pub const CHILD_MASK_SHIFT: u32 = 27;
/// Mask of the first-chunk index in a child entry.
pub const CHILD_INDEX_MASK: u32 = (1 << CHILD_MASK_SHIFT) - 1;
/// Rule ids must be below this to fit a leaf entry.
pub const MAX_RULE_ID: RuleId = ENTRY_CHILD - 1;
/// Chunk indices must be below this to fit a child entry.
pub const MAX_CHUNKS: u32 = CHILD_INDEX_MASK + 1;

/// Leaf entry for `rule` (which must be below [`MAX_RULE_ID`]).
pub const fn leaf(rule: RuleId) -> u32 {
    rule + 1
}

/// Child entry for a node whose stored chunks (`mask`, 4 bits) start at chunk `first`.
pub const fn child(mask: u32, first: u32) -> u32 {
    ENTRY_CHILD | (mask << CHILD_MASK_SHIFT) | first
}

/// The rule of a final entry: `None` for a miss (and, defensively, for a child entry, which a
/// well-formed table never leaves after the last level).
#[inline(always)]
pub const fn rule_of(entry: u32) -> Option<RuleId> {
    if entry == ENTRY_MISS || entry & ENTRY_CHILD != 0 {
        None
    } else {
        Some(entry - 1)
    }
}

/// One stored chunk of a node: 64 positions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Bit `i` set: position `i` starts a run (bit 0 always set).
    pub runs: u64,
    /// Entry index of the first run's entry.
    pub base: u32,
    /// The node's inherited entry: the value of every position of the node's chunks that are
    /// not stored. Read from the node's first stored chunk.
    pub inherited: u32,
}

/// Number of set bits of `x` without a popcount instruction (BPF has none).
#[inline(always)]
pub const fn popcount64(x: u64) -> u32 {
    let x = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}

/// Read access to one table (roots, chunks, entries), implemented by the XDP program over its
/// array maps and by the loader over its in-memory copy. `None` means the index is outside the
/// array; the walk treats it as a miss.
pub trait TableRead {
    /// Root entry `index` (absolute, see [`root_base`]).
    fn root(&self, index: u32) -> Option<u32>;
    /// Chunk `index`.
    fn chunk(&self, index: u32) -> Option<Chunk>;
    /// Entry `index`.
    fn entry(&self, index: u32) -> Option<u32>;
    /// IPv4 /24 filter word `index` (absolute, see [`filter_base`]).
    fn filter(&self, index: u32) -> Option<u64>;
    /// IPv6 /24 filter word `index` (absolute, see [`filter_base`]).
    fn v6_filter(&self, index: u32) -> Option<u64>;
}

/// One level below the root: the entry for address byte `byte` in the node `node` points to.
#[inline(always)]
pub fn step<T: TableRead + ?Sized>(table: &T, node: u32, byte: u8) -> Option<u32> {
    let byte = u32::from(byte);
    let quarter = byte >> 6;
    let mask = (node >> CHILD_MASK_SHIFT) & 0xf;
    let first = node & CHILD_INDEX_MASK;
    let present = (mask >> quarter) & 1;
    let below = popcount64(u64::from(mask & ((1 << quarter) - 1)));
    // A chunk that is not stored reads the node's first chunk for the inherited value, so the
    // load does not depend on the branch.
    let chunk = table.chunk(first + below * present)?;
    if present == 0 {
        return Some(chunk.inherited);
    }
    let upto = chunk.runs & (u64::MAX >> (63 - (byte & 63)));
    let run = popcount64(upto);
    table.entry(chunk.base.wrapping_add(run).wrapping_sub(1))
}

/// Longest-prefix match of `addr` (network byte order, 4 or 16 bytes) in the table of `slot`:
/// the rule id, or `None` for a miss. At most `N - 2` levels below the root. An address whose
/// root points to a node but whose /24 no prefix touches is answered by its family's /24
/// filter; for IPv6 only when `v6_filter` says the slot's words are valid
/// (`SLOT_FLAG_V6_FILTER`), else the walk goes on without it.
#[inline(always)]
pub fn lookup<T: TableRead + ?Sized, const N: usize>(
    table: &T,
    slot: u32,
    addr: &[u8; N],
    v6_filter: bool,
) -> Option<RuleId> {
    let top = (u32::from(addr[0]) << 8) | u32::from(addr[1]);
    let mut entry = table.root(root_base(slot, N == 16) + top)?;
    // The filters only when the root can't answer: small lists answer random sources from the
    // roots (256 KiB) without touching a 2 MiB bitmap.
    if entry & ENTRY_CHILD != 0 && (N == 4 || v6_filter) {
        let slash24 = (top << 8) | u32::from(addr[2]);
        let index = filter_base(slot) + (slash24 >> 6);
        let word = if N == 4 {
            table.filter(index)?
        } else {
            table.v6_filter(index)?
        };
        if (word >> (slash24 & 63)) & 1 == 0 {
            return None;
        }
    }
    for &byte in addr.iter().skip(2) {
        if entry & ENTRY_CHILD == 0 || is_tail(entry) {
            break;
        }
        entry = step(table, entry, byte)?;
    }
    if is_tail(entry) {
        entry = resolve_tail(table, entry, address_words(addr))?;
    }
    rule_of(entry)
}

/// Whether `entry` points to a tail (a child entry with an empty chunk mask).
#[inline(always)]
pub const fn is_tail(entry: u32) -> bool {
    entry & ENTRY_CHILD != 0 && (entry >> CHILD_MASK_SHIFT) & 0xf == 0
}

/// Tail entry for the record at chunks `first` and `first + 1`.
pub const fn tail(first: u32) -> u32 {
    child(0, first)
}

/// The address as two big-endian `u64` words (IPv4: its 4 bytes at the top of the first).
#[inline(always)]
pub fn address_words<const N: usize>(addr: &[u8; N]) -> [u64; 2] {
    let mut words = [0u64; 2];
    for (i, byte) in addr.iter().enumerate() {
        if let Some(word) = words.get_mut(i / 8) {
            *word |= u64::from(*byte) << (56 - 8 * (i % 8));
        }
    }
    words
}

/// Mask of the first `len` bits of a 128-bit address as two words.
#[inline(always)]
pub const fn prefix_mask(len: u32) -> [u64; 2] {
    let hi = if len >= 64 {
        u64::MAX
    } else if len == 0 {
        0
    } else {
        u64::MAX << (64 - len)
    };
    let lo = if len <= 64 {
        0
    } else if len >= 128 {
        u64::MAX
    } else {
        u64::MAX << (128 - len)
    };
    [hi, lo]
}

/// The entry a tail gives `words`: the tail's prefix entry when the address is inside the
/// prefix, else the inherited entry. Two independent loads, no loop.
#[inline(always)]
pub fn resolve_tail<T: TableRead + ?Sized>(table: &T, entry: u32, words: [u64; 2]) -> Option<u32> {
    let first = entry & CHILD_INDEX_MASK;
    let head = table.chunk(first)?;
    let rest = table.chunk(first + 1)?;
    let mask = prefix_mask(rest.base);
    let inside = (words[0] ^ head.runs) & mask[0] == 0 && (words[1] ^ rest.runs) & mask[1] == 0;
    Some(if inside { head.base } else { head.inherited })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn chunk_has_no_padding() {
        assert_eq!(size_of::<Chunk>(), 16);
    }

    #[test]
    fn popcount_matches_count_ones() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..10_000 {
            assert_eq!(popcount64(x), x.count_ones());
            x = x.rotate_left(7).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (x >> 3);
        }
        assert_eq!(popcount64(0), 0);
        assert_eq!(popcount64(u64::MAX), 64);
    }

    #[test]
    fn entry_encoding_round_trips() {
        assert_eq!(rule_of(ENTRY_MISS), None);
        assert_eq!(rule_of(leaf(0)), Some(0));
        assert_eq!(rule_of(leaf(MAX_RULE_ID - 1)), Some(MAX_RULE_ID - 1));
        assert_eq!(rule_of(child(0xf, MAX_CHUNKS - 1)), None);
        let c = child(0b1010, 12345);
        assert_eq!((c >> CHILD_MASK_SHIFT) & 0xf, 0b1010);
        assert_eq!(c & CHILD_INDEX_MASK, 12345);
    }

    #[test]
    fn prefix_masks_cover_exactly_the_prefix() {
        assert_eq!(prefix_mask(0), [0, 0]);
        assert_eq!(prefix_mask(1), [1 << 63, 0]);
        assert_eq!(prefix_mask(64), [u64::MAX, 0]);
        assert_eq!(prefix_mask(65), [u64::MAX, 1 << 63]);
        assert_eq!(prefix_mask(128), [u64::MAX, u64::MAX]);
        assert_eq!(address_words(&[1u8, 2, 3, 4]), [0x0102_0304_0000_0000, 0]);
        let mut v6 = [0u8; 16];
        v6[15] = 9;
        v6[0] = 0x20;
        assert_eq!(address_words(&v6), [0x2000_0000_0000_0000, 9]);
        assert!(is_tail(tail(5)) && !is_tail(child(1, 5)) && !is_tail(leaf(3)));
    }

    #[test]
    fn root_regions_are_disjoint() {
        assert_eq!(root_base(0, false), 0);
        assert_eq!(root_base(0, true), ROOT_ENTRIES);
        assert_eq!(root_base(1, false), 2 * ROOT_ENTRIES);
        assert_eq!(root_base(1, true) + ROOT_ENTRIES, ROOT_MAP_ENTRIES);
    }
}
