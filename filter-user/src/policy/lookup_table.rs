//! Compiles the merged prefix list of one slot into the lookup table the XDP program reads
//! (layout and walk: [`filter_common::table`]), and patches a slot's table for a small change.
//! Pure: the aya layer writes the result.
//!
//! Two ways to a table:
//! - [`Table::compile`]: a fresh, compact table for a list (used when the slot's contents are
//!   unknown, and when a patched table would not fit its region any more);
//! - [`Table::patch`]: the table of a new list built from the slot's current table and list,
//!   rebuilding only the /16 buckets whose content changed and placing their nodes after the
//!   used part of the region. Everything else keeps its place, and the patch returns just the
//!   writes it made (a [`TableDiff`] about as small as the change).

use filter_common::{
    RuleId,
    table::{
        CHILD_INDEX_MASK, CHILD_MASK_SHIFT, CHUNK_POSITIONS, CHUNKS_PER_NODE, Chunk, ENTRY_CHILD,
        ENTRY_MISS, FILTER_WORDS, MAX_CHUNKS, MAX_RULE_ID, ROOT_ENTRIES, TableRead, address_words,
        child, filter_base, is_tail, leaf, lookup, root_base, tail,
    },
};
use ipnet::IpNet;

/// Where one slot's table lives in the maps: its slot (for the roots) and its regions of the
/// chunk and entry arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Slot (0 or 1).
    pub slot: u32,
    /// Index of the region's first chunk.
    pub chunk_origin: u32,
    /// Chunks the region holds.
    pub chunk_capacity: u32,
    /// Index of the region's first entry.
    pub entry_origin: u32,
    /// Entries the region holds.
    pub entry_capacity: u32,
}

impl Region {
    /// Region of `slot` when each slot holds `chunks` chunks and `entries` entries, slot 0
    /// first.
    pub fn of_slot(slot: u32, chunks: u32, entries: u32) -> Self {
        Self {
            slot,
            chunk_origin: slot * chunks,
            chunk_capacity: chunks,
            entry_origin: slot * entries,
            entry_capacity: entries,
        }
    }
}

/// Why a table can't be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// The table needs more chunks or entries than its region holds.
    #[error(
        "the compiled lookup table needs more {what} than the filter holds ({capacity}); \
         re-attach with a larger --capacity (apifence detach --all, then apifence attach ... \
         --capacity N), or attach with --lookup lpm-trie"
    )]
    Full {
        /// "chunks" or "entries".
        what: &'static str,
        /// The region's capacity.
        capacity: u32,
    },
    /// A rule id does not fit a leaf entry.
    #[error("rule id {0} does not fit the lookup table (ids must stay below {MAX_RULE_ID})")]
    RuleId(RuleId),
}

/// A slot's region of the table maps, as memory: the slot's roots (IPv4 then IPv6), the
/// region's whole chunk and entry arrays, and the slot's IPv4 and IPv6 filter words.
#[derive(Clone, Copy, Debug)]
pub struct RegionMemory<'a> {
    /// [`ROOT_ENTRIES`] IPv4 roots, then as many IPv6 roots.
    pub roots: &'a [u32],
    /// The region's chunks.
    pub chunks: &'a [Chunk],
    /// The region's entries.
    pub entries: &'a [u32],
    /// [`FILTER_WORDS`] IPv4 filter words.
    pub filter: &'a [u64],
    /// [`FILTER_WORDS`] IPv6 filter words.
    pub v6_filter: &'a [u64],
    /// The IPv6 filter words are valid for this table (the slot's `SLOT_FLAG_V6_FILTER`).
    pub v6_filter_valid: bool,
}

/// One slot's table, as it is (or will be) in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    region: Region,
    /// IPv4 roots then IPv6 roots, [`ROOT_ENTRIES`] each.
    roots: Vec<u32>,
    /// The used part of the chunk region, from its origin.
    chunks: Vec<Chunk>,
    /// The used part of the entry region, from its origin.
    entries: Vec<u32>,
    /// The IPv4 /24 filter of this slot, [`FILTER_WORDS`] words.
    filter: Vec<u64>,
    /// The IPv6 /24 filter of this slot, [`FILTER_WORDS`] words.
    v6_filter: Vec<u64>,
    /// `v6_filter` is valid for this table (always for one built or patched here; for one
    /// read from memory, what the slot's flags say), so lookups may read it.
    v6_filter_valid: bool,
}

/// A prefix as the builder sees it: address bytes (IPv4 in the first 4), length, leaf entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Prefix {
    addr: [u8; 16],
    len: u8,
    entry: u32,
}

impl Prefix {
    fn bucket(&self) -> usize {
        (usize::from(self.addr[0]) << 8) | usize::from(self.addr[1])
    }
}

/// The prefixes of one family, split the way the table is: painted roots (prefixes up to /16)
/// and the longer prefixes, sorted by address and so grouped by root bucket.
struct Family {
    painted: Vec<u32>,
    /// Prefixes longer than /16, sorted.
    deep: Vec<Prefix>,
    /// Each bucket holding deep prefixes, ascending, with its range in `deep`.
    groups: Vec<(usize, std::ops::Range<usize>)>,
}

impl Family {
    fn split(prefixes: &[(IpNet, RuleId)], v6: bool) -> Result<Self, TableError> {
        let mut short = Vec::new();
        let mut deep = Vec::new();
        for (net, rule) in prefixes {
            let (addr, len) = match (net, v6) {
                (IpNet::V4(n), false) => {
                    let mut addr = [0u8; 16];
                    addr[..4].copy_from_slice(&n.network().octets());
                    (addr, n.prefix_len())
                }
                (IpNet::V6(n), true) => (n.network().octets(), n.prefix_len()),
                _ => continue,
            };
            if *rule >= MAX_RULE_ID {
                return Err(TableError::RuleId(*rule));
            }
            let prefix = Prefix {
                addr,
                len,
                entry: leaf(*rule),
            };
            if len <= 16 {
                short.push(prefix);
            } else {
                deep.push(prefix);
            }
        }
        deep.sort_unstable();
        let mut groups: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, p) in deep.iter().enumerate() {
            match groups.last_mut() {
                Some((bucket, range)) if *bucket == p.bucket() => range.end = i + 1,
                _ => groups.push((p.bucket(), i..i + 1)),
            }
        }
        // Shorter prefixes first, so longer ones overwrite them.
        short.sort_unstable_by_key(|p| p.len);
        let mut painted = vec![0u32; ROOT_ENTRIES as usize];
        for p in &short {
            let span = 1usize << (16 - p.len);
            let start = p.bucket() & !(span - 1);
            painted[start..start + span].fill(p.entry);
        }
        Ok(Self {
            painted,
            deep,
            groups,
        })
    }

    /// The deep prefixes of `bucket` (empty when it has none).
    fn group(&self, bucket: usize) -> &[Prefix] {
        match self.groups.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(i) => &self.deep[self.groups[i].1.clone()],
            Err(_) => &[],
        }
    }

    /// The buckets whose content differs between `self` and `other`, ascending: a different
    /// painted value or different deep prefixes.
    fn changed_buckets(&self, other: &Family) -> Vec<usize> {
        let mut changed: Vec<usize> = (0..ROOT_ENTRIES as usize)
            .filter(|b| self.painted[*b] != other.painted[*b])
            .collect();
        changed.extend(
            self.groups
                .iter()
                .chain(&other.groups)
                .map(|(bucket, _)| *bucket)
                .filter(|bucket| self.group(*bucket) != other.group(*bucket)),
        );
        changed.sort_unstable();
        changed.dedup();
        changed
    }
}

/// The /24s of one root bucket that the family's prefixes touch, as the bucket's four filter
/// words (bucket `b`'s 256 /24s are words `4 * b` to `4 * b + 3`). A bucket without deep
/// prefixes has a leaf or a miss for a root, past which the walk never looks: its words are
/// never read and stay zero. Otherwise all are set when a prefix of /16 or shorter covers the
/// bucket (`painted` is not a miss), else the /24s its deep prefixes touch.
fn bucket_filter(painted: u32, group: &[Prefix]) -> [u64; WORDS_PER_BUCKET] {
    if group.is_empty() {
        return [0; WORDS_PER_BUCKET];
    }
    if painted != ENTRY_MISS {
        return [u64::MAX; WORDS_PER_BUCKET];
    }
    let mut words = [0u64; WORDS_PER_BUCKET];
    for p in group {
        // A deep prefix (longer than /16) spans /24s `first..=last` of its bucket.
        let first = usize::from(p.addr[2]);
        let span = if p.len >= 24 { 1 } else { 1 << (24 - p.len) };
        for s24 in first..first + span {
            words[s24 >> 6] |= 1 << (s24 & 63);
        }
    }
    words
}

/// Filter words per root bucket (256 /24s of 64 bits each).
const WORDS_PER_BUCKET: usize = 4;

impl Table {
    /// An empty table (every lookup misses) for `region`.
    pub fn empty(region: Region) -> Self {
        Self {
            region,
            roots: vec![0; 2 * ROOT_ENTRIES as usize],
            chunks: Vec::new(),
            entries: Vec::new(),
            filter: vec![0; FILTER_WORDS as usize],
            v6_filter: vec![0; FILTER_WORDS as usize],
            v6_filter_valid: true,
        }
    }

    /// A fresh table for `prefixes` (both families; each prefix with its rule id). Prefixes
    /// may nest; each address gets the rule of its longest matching prefix.
    pub fn compile(prefixes: &[(IpNet, RuleId)], region: Region) -> Result<Self, TableError> {
        let mut table = Self::empty(region);
        for v6 in [false, true] {
            let family = Family::split(prefixes, v6)?;
            let offset = if v6 { ROOT_ENTRIES as usize } else { 0 };
            table.roots[offset..offset + ROOT_ENTRIES as usize].copy_from_slice(&family.painted);
            for (bucket, range) in &family.groups {
                let inherited = family.painted[*bucket];
                table.roots[offset + bucket] =
                    table.build_below(2, &family.deep[range.clone()], inherited)?;
            }
            let bitmap = if v6 {
                &mut table.v6_filter
            } else {
                &mut table.filter
            };
            for bucket in 0..ROOT_ENTRIES as usize {
                let words = bucket_filter(family.painted[bucket], family.group(bucket));
                let first = bucket * WORDS_PER_BUCKET;
                bitmap[first..first + WORDS_PER_BUCKET].copy_from_slice(&words);
            }
        }
        Ok(table)
    }

    /// Turns this table, which must be the table of `old` (as built by [`Table::compile`] or
    /// [`Table::patch`]), into the table of `new`, and returns the writes that do the same to
    /// the region's memory. Only the /16 buckets whose prefixes (or whose covering shorter
    /// prefix) changed are rebuilt, after the used part of the region, so the writes are about
    /// as small as the change; the work is that plus splitting both lists by bucket (a sort
    /// each). When the rebuilt buckets do not fit, the result is a fresh, compact compile of
    /// `new`.
    pub fn patch(
        &mut self,
        old: &[(IpNet, RuleId)],
        new: &[(IpNet, RuleId)],
    ) -> Result<TableDiff, TableError> {
        let (chunks, entries) = (self.chunks.len(), self.entries.len());
        match self.rebuild_changed(old, new) {
            Ok(diff) => Ok(diff),
            Err(error) => {
                // Nothing but the appended nodes was changed yet.
                self.chunks.truncate(chunks);
                self.entries.truncate(entries);
                if !matches!(error, TableError::Full { .. }) {
                    return Err(error);
                }
                let fresh = Self::compile(new, self.region)?;
                let diff = TableDiff::between(self, &fresh);
                *self = fresh;
                Ok(diff)
            }
        }
    }

    /// Rebuilds the changed buckets after the used part; roots and filter words are changed
    /// (by [`Table::apply`] of the writes) only once everything was built, so an error leaves
    /// them as they were.
    fn rebuild_changed(
        &mut self,
        old: &[(IpNet, RuleId)],
        new: &[(IpNet, RuleId)],
    ) -> Result<TableDiff, TableError> {
        let region = self.region;
        let (first_chunk, first_entry) = (self.chunks.len(), self.entries.len());
        let root_origin = root_base(region.slot, false);
        let filter_origin = filter_base(region.slot);
        let mut diff = TableDiff::default();
        for v6 in [false, true] {
            let before = Family::split(old, v6)?;
            let after = Family::split(new, v6)?;
            let offset = if v6 { ROOT_ENTRIES as usize } else { 0 };
            for bucket in before.changed_buckets(&after) {
                let inherited = after.painted[bucket];
                let group = after.group(bucket);
                let value = match group {
                    [] => inherited,
                    group => self.build_below(2, group, inherited)?,
                };
                let root = offset + bucket;
                if self.roots[root] != value {
                    diff.roots.push((root_origin + root as u32, value));
                }
                let (current, writes) = if v6 {
                    (&self.v6_filter, &mut diff.v6_filter)
                } else {
                    (&self.filter, &mut diff.filter)
                };
                let first = bucket * WORDS_PER_BUCKET;
                for (k, word) in bucket_filter(inherited, group).into_iter().enumerate() {
                    if current[first + k] != word {
                        writes.push((filter_origin + (first + k) as u32, word));
                    }
                }
            }
        }
        diff.chunks = (first_chunk..self.chunks.len())
            .map(|i| (region.chunk_origin + i as u32, self.chunks[i]))
            .collect();
        diff.entries = (first_entry..self.entries.len())
            .map(|i| (region.entry_origin + i as u32, self.entries[i]))
            .collect();
        diff.chunk_len = region.chunk_origin + self.chunks.len() as u32;
        diff.entry_len = region.entry_origin + self.entries.len() as u32;
        self.apply(&diff);
        Ok(diff)
    }

    /// The entry for a position whose address bytes from `byte` on hold `prefixes`: a tail
    /// when there is just one and it ends below the next node (a tail saves levels), else a
    /// node. A lone prefix that ends within the next node (an IPv4 /26 alone in its /24) is
    /// cheaper as that node: one chunk and a few entries, against a tail's two chunks.
    fn build_below(
        &mut self,
        byte: usize,
        prefixes: &[Prefix],
        inherited: u32,
    ) -> Result<u32, TableError> {
        match prefixes {
            [single] if u32::from(single.len) > 8 * (byte as u32 + 1) => {
                self.build_tail(single, inherited)
            }
            _ => self.build_node(byte, prefixes, inherited),
        }
    }

    /// A tail record for `prefix` (see `filter_common::table`): two chunks.
    fn build_tail(&mut self, prefix: &Prefix, inherited: u32) -> Result<u32, TableError> {
        if self.chunks.len() + 2 > self.region.chunk_capacity as usize {
            return Err(TableError::Full {
                what: "chunks",
                capacity: self.region.chunk_capacity,
            });
        }
        let first = self.region.chunk_origin as usize + self.chunks.len();
        if first + 1 >= MAX_CHUNKS as usize {
            return Err(TableError::Full {
                what: "chunks",
                capacity: MAX_CHUNKS,
            });
        }
        let words = address_words(&prefix.addr);
        self.chunks.push(Chunk {
            runs: words[0],
            base: prefix.entry,
            inherited,
        });
        self.chunks.push(Chunk {
            runs: words[1],
            base: u32::from(prefix.len),
            inherited: 0,
        });
        Ok(tail(first as u32))
    }

    /// Builds the node for address byte `byte` of `prefixes` (all longer than `8 * byte`
    /// bits, all sharing those bits), whose positions default to `inherited`. Returns the
    /// entry for the parent: a child entry, or a plain entry when the node would be uniform.
    fn build_node(
        &mut self,
        byte: usize,
        prefixes: &[Prefix],
        inherited: u32,
    ) -> Result<u32, TableError> {
        let end = 8 * (byte as u32 + 1);
        let mut values = [inherited; 256];
        let mut short: Vec<&Prefix> = prefixes
            .iter()
            .filter(|p| u32::from(p.len) <= end)
            .collect();
        short.sort_by_key(|p| p.len);
        for p in short {
            let span = 1usize << (end - u32::from(p.len));
            let start = usize::from(p.addr[byte]) & !(span - 1);
            values[start..start + span].fill(p.entry);
        }
        let mut rest = prefixes
            .iter()
            .filter(|p| u32::from(p.len) > end)
            .peekable();
        while let Some(first) = rest.next() {
            let position = usize::from(first.addr[byte]);
            let mut group = vec![*first];
            while let Some(p) = rest.next_if(|p| usize::from(p.addr[byte]) == position) {
                group.push(*p);
            }
            values[position] = self.build_below(byte + 1, &group, values[position])?;
        }
        if values.iter().all(|v| *v == values[0]) && values[0] & ENTRY_CHILD == 0 {
            return Ok(values[0]);
        }
        let first = self.region.chunk_origin as usize + self.chunks.len();
        let mut mask = 0u32;
        for (quarter, positions) in values.chunks(CHUNK_POSITIONS as usize).enumerate() {
            if positions.iter().all(|v| *v == inherited) {
                continue;
            }
            mask |= 1 << quarter;
            if self.chunks.len() >= self.region.chunk_capacity as usize {
                return Err(TableError::Full {
                    what: "chunks",
                    capacity: self.region.chunk_capacity,
                });
            }
            let base = self.region.entry_origin as usize + self.entries.len();
            let mut runs = 0u64;
            for (i, v) in positions.iter().enumerate() {
                if i == 0 || *v != positions[i - 1] {
                    runs |= 1 << i;
                    if self.entries.len() >= self.region.entry_capacity as usize {
                        return Err(TableError::Full {
                            what: "entries",
                            capacity: self.region.entry_capacity,
                        });
                    }
                    self.entries.push(*v);
                }
            }
            self.chunks.push(Chunk {
                runs,
                base: base as u32,
                inherited,
            });
        }
        debug_assert!(mask != 0 && mask < 1 << CHUNKS_PER_NODE);
        if first >= MAX_CHUNKS as usize {
            return Err(TableError::Full {
                what: "chunks",
                capacity: MAX_CHUNKS,
            });
        }
        Ok(child(mask, first as u32))
    }

    /// The table stored in a region's memory. Only what the roots reach is kept; the used
    /// part ends after the last chunk and entry reachable from them (later ones are garbage a
    /// patch may overwrite). Indices outside the region end the walk there.
    pub fn from_memory(region: Region, memory: &RegionMemory<'_>) -> Self {
        let RegionMemory {
            roots,
            chunks,
            entries,
            ..
        } = *memory;
        let mut chunk_end = 0usize;
        let mut entry_end = 0usize;
        let mut pending: Vec<u32> = roots
            .iter()
            .copied()
            .filter(|e| e & ENTRY_CHILD != 0)
            .collect();
        // Each stored chunk is reached once in a well-formed table; the bound keeps a damaged
        // one from looping.
        let mut budget = roots.len() + chunks.len();
        while let Some(node) = pending.pop() {
            budget = match budget.checked_sub(1) {
                Some(left) => left,
                None => break,
            };
            let mask = (node >> CHILD_MASK_SHIFT) & 0xf;
            let Some(first) = (node & CHILD_INDEX_MASK).checked_sub(region.chunk_origin) else {
                continue;
            };
            if is_tail(node) {
                chunk_end = chunk_end.max((first as usize + 2).min(chunks.len()));
                continue;
            }
            for k in 0..mask.count_ones() as usize {
                let Some(chunk) = chunks.get(first as usize + k) else {
                    break;
                };
                chunk_end = chunk_end.max(first as usize + k + 1);
                let Some(base) = chunk.base.checked_sub(region.entry_origin) else {
                    continue;
                };
                let runs = chunk.runs.count_ones() as usize;
                for e in entries.iter().skip(base as usize).take(runs) {
                    if e & ENTRY_CHILD != 0 {
                        pending.push(*e);
                    }
                }
                entry_end = entry_end.max((base as usize + runs).min(entries.len()));
            }
        }
        Self {
            region,
            roots: roots.to_vec(),
            chunks: chunks[..chunk_end].to_vec(),
            entries: entries[..entry_end].to_vec(),
            filter: memory.filter.to_vec(),
            v6_filter: memory.v6_filter.to_vec(),
            v6_filter_valid: memory.v6_filter_valid,
        }
    }

    /// A region's memory taken whole, as the starting point of a diff when nothing is known
    /// about what it holds: every element that differs from the new table is then written.
    pub fn raw(region: Region, memory: &RegionMemory<'_>) -> Self {
        Self {
            region,
            roots: memory.roots.to_vec(),
            chunks: memory.chunks.to_vec(),
            entries: memory.entries.to_vec(),
            filter: memory.filter.to_vec(),
            v6_filter: memory.v6_filter.to_vec(),
            v6_filter_valid: memory.v6_filter_valid,
        }
    }

    /// The region the table was built for.
    pub fn region(&self) -> Region {
        self.region
    }

    /// Roots of this slot: IPv4 then IPv6, [`ROOT_ENTRIES`] each; root `i` goes to map index
    /// `root_base(slot, false) + i`.
    pub fn roots(&self) -> &[u32] {
        &self.roots
    }

    /// Used chunks; chunk `i` goes to map index `region.chunk_origin + i`.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// Used entries; entry `i` goes to map index `region.entry_origin + i`.
    pub fn entries(&self) -> &[u32] {
        &self.entries
    }

    /// The rule of `addr`'s longest matching prefix, by the same walk the XDP program runs.
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<RuleId> {
        lookup(self, self.region.slot, &addr, false)
    }

    /// IPv6 counterpart of [`Table::lookup_v4`] (reading the IPv6 filter when it is valid,
    /// as the program does when the slot's flags say so).
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<RuleId> {
        lookup(self, self.region.slot, &addr, self.v6_filter_valid)
    }

    /// Applies `diff` (writes that turn this table into another: [`TableDiff::between`], or
    /// what [`Table::patch`] returned).
    pub fn apply(&mut self, diff: &TableDiff) {
        let root_origin = root_base(self.region.slot, false);
        for (index, value) in &diff.roots {
            self.roots[(index - root_origin) as usize] = *value;
        }
        let chunk_len = (diff.chunk_len - self.region.chunk_origin) as usize;
        self.chunks.resize(chunk_len, Chunk::default());
        for (index, chunk) in &diff.chunks {
            self.chunks[(index - self.region.chunk_origin) as usize] = *chunk;
        }
        let entry_len = (diff.entry_len - self.region.entry_origin) as usize;
        self.entries.resize(entry_len, 0);
        for (index, entry) in &diff.entries {
            self.entries[(index - self.region.entry_origin) as usize] = *entry;
        }
        let filter_origin = filter_base(self.region.slot);
        for (index, word) in &diff.filter {
            self.filter[(index - filter_origin) as usize] = *word;
        }
        for (index, word) in &diff.v6_filter {
            self.v6_filter[(index - filter_origin) as usize] = *word;
        }
    }
}

impl TableRead for Table {
    fn root(&self, index: u32) -> Option<u32> {
        let local = index.checked_sub(root_base(self.region.slot, false))?;
        self.roots.get(local as usize).copied()
    }

    fn chunk(&self, index: u32) -> Option<Chunk> {
        let local = index.checked_sub(self.region.chunk_origin)?;
        self.chunks.get(local as usize).copied()
    }

    fn entry(&self, index: u32) -> Option<u32> {
        let local = index.checked_sub(self.region.entry_origin)?;
        self.entries.get(local as usize).copied()
    }

    fn filter(&self, index: u32) -> Option<u64> {
        let local = index.checked_sub(filter_base(self.region.slot))?;
        self.filter.get(local as usize).copied()
    }

    fn v6_filter(&self, index: u32) -> Option<u64> {
        let local = index.checked_sub(filter_base(self.region.slot))?;
        self.v6_filter.get(local as usize).copied()
    }
}

/// The writes that turn one table of a region into another: changed elements only, with map
/// indices. Elements past the new used length are left as they are (nothing reads them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableDiff {
    /// (root map index, value).
    pub roots: Vec<(u32, u32)>,
    /// (chunk map index, chunk).
    pub chunks: Vec<(u32, Chunk)>,
    /// (entry map index, entry).
    pub entries: Vec<(u32, u32)>,
    /// (filter map index, word).
    pub filter: Vec<(u32, u64)>,
    /// (IPv6 filter map index, word).
    pub v6_filter: Vec<(u32, u64)>,
    /// Map index one past the new table's last chunk.
    pub chunk_len: u32,
    /// Map index one past the new table's last entry.
    pub entry_len: u32,
}

impl TableDiff {
    /// The elements of `to` that differ from `from` (both of the same region).
    pub fn between(from: &Table, to: &Table) -> Self {
        let region = to.region;
        let root_origin = root_base(region.slot, false);
        let roots = changed(&from.roots, &to.roots)
            .map(|(i, v)| (root_origin + i, v))
            .collect();
        let chunks = changed(&from.chunks, &to.chunks)
            .map(|(i, v)| (region.chunk_origin + i, v))
            .collect();
        let entries = changed(&from.entries, &to.entries)
            .map(|(i, v)| (region.entry_origin + i, v))
            .collect();
        let filter_origin = filter_base(region.slot);
        let filter = changed(&from.filter, &to.filter)
            .map(|(i, v)| (filter_origin + i, v))
            .collect();
        let v6_filter = changed(&from.v6_filter, &to.v6_filter)
            .map(|(i, v)| (filter_origin + i, v))
            .collect();
        Self {
            roots,
            chunks,
            entries,
            filter,
            v6_filter,
            chunk_len: region.chunk_origin + to.chunks.len() as u32,
            entry_len: region.entry_origin + to.entries.len() as u32,
        }
    }

    /// Total elements to write.
    pub fn len(&self) -> usize {
        self.roots.len()
            + self.chunks.len()
            + self.entries.len()
            + self.filter.len()
            + self.v6_filter.len()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// (index, new value) of every element of `to` that differs from `from` at the same index
/// (or that `from` does not have).
fn changed<'a, T: Copy + PartialEq>(
    from: &'a [T],
    to: &'a [T],
) -> impl Iterator<Item = (u32, T)> + 'a {
    to.iter()
        .enumerate()
        .filter(move |(i, v)| from.get(*i) != Some(v))
        .map(|(i, v)| (i as u32, *v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::{Ipv4Net, Ipv6Net};
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const REGION: Region = Region {
        slot: 1,
        chunk_origin: 1000,
        chunk_capacity: 1 << 20,
        entry_origin: 5000,
        entry_capacity: 1 << 22,
    };

    fn net(text: &str) -> IpNet {
        text.parse().expect("test prefix")
    }

    /// Longest match by scanning the list: the model the table must agree with.
    fn naive(prefixes: &[(IpNet, RuleId)], addr: std::net::IpAddr) -> Option<RuleId> {
        prefixes
            .iter()
            .filter(|(p, _)| p.contains(&addr))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(_, id)| *id)
    }

    fn table_lookup(table: &Table, addr: std::net::IpAddr) -> Option<RuleId> {
        match addr {
            std::net::IpAddr::V4(a) => table.lookup_v4(a.octets()),
            std::net::IpAddr::V6(a) => table.lookup_v6(a.octets()),
        }
    }

    /// Every prefix's first and last address and their neighbours.
    fn boundaries(prefixes: &[(IpNet, RuleId)]) -> Vec<std::net::IpAddr> {
        let mut out = Vec::new();
        for (p, _) in prefixes {
            match p {
                IpNet::V4(n) => {
                    let first = u32::from(n.network());
                    let last = u32::from(n.broadcast());
                    for a in [
                        first.wrapping_sub(1),
                        first,
                        first.wrapping_add(1),
                        last.wrapping_sub(1),
                        last,
                        last.wrapping_add(1),
                    ] {
                        out.push(Ipv4Addr::from(a).into());
                    }
                }
                IpNet::V6(n) => {
                    let first = u128::from(n.network());
                    let last = u128::from(n.broadcast());
                    for a in [
                        first.wrapping_sub(1),
                        first,
                        first.wrapping_add(1),
                        last.wrapping_sub(1),
                        last,
                        last.wrapping_add(1),
                    ] {
                        out.push(Ipv6Addr::from(a).into());
                    }
                }
            }
        }
        out
    }

    /// Addresses in the same /16 as each prefix but another /24 (the third byte changed): where
    /// the IPv4 and IPv6 filters decide.
    fn same_bucket_elsewhere(prefixes: &[(IpNet, RuleId)]) -> Vec<std::net::IpAddr> {
        let mut out = Vec::new();
        for (net, _) in prefixes {
            for flip in [0x01u8, 0x40, 0x80, 0xff] {
                match net {
                    IpNet::V4(n) => {
                        let mut o = n.network().octets();
                        o[2] ^= flip;
                        out.push(Ipv4Addr::from(o).into());
                    }
                    IpNet::V6(n) => {
                        let mut o = n.network().octets();
                        o[2] ^= flip;
                        o[15] ^= flip;
                        out.push(Ipv6Addr::from(o).into());
                    }
                }
            }
        }
        out
    }

    fn assert_agrees(table: &Table, prefixes: &[(IpNet, RuleId)], extra: &[std::net::IpAddr]) {
        for addr in boundaries(prefixes)
            .into_iter()
            .chain(same_bucket_elsewhere(prefixes))
            .chain(extra.iter().copied())
        {
            assert_eq!(
                table_lookup(table, addr),
                naive(prefixes, addr),
                "address {addr} in {prefixes:?}"
            );
        }
    }

    /// Prefixes clustered so they nest, touch and overlap: a few random "anchors" and
    /// prefixes of every length around them.
    fn v4_prefix(anchors: Vec<u32>) -> impl Strategy<Value = Ipv4Net> {
        (0..anchors.len(), 0u8..=32, any::<u32>(), 0u8..=32).prop_map(
            move |(a, len, noise, noise_bits)| {
                let noise = if noise_bits == 0 {
                    0
                } else {
                    noise >> (32 - noise_bits)
                };
                let addr = anchors[a] ^ noise;
                Ipv4Net::new(Ipv4Addr::from(addr), len)
                    .expect("length ≤ 32")
                    .trunc()
            },
        )
    }

    fn v6_prefix(anchors: Vec<u128>) -> impl Strategy<Value = Ipv6Net> {
        (0..anchors.len(), 0u8..=128, any::<u128>(), 0u8..=128).prop_map(
            move |(a, len, noise, noise_bits)| {
                let noise = if noise_bits == 0 {
                    0
                } else {
                    noise >> (128 - u32::from(noise_bits))
                };
                let addr = anchors[a] ^ noise;
                Ipv6Net::new(Ipv6Addr::from(addr), len)
                    .expect("length ≤ 128")
                    .trunc()
            },
        )
    }

    /// A random prefix list (both families) with distinct prefixes and distinct rule ids.
    fn prefix_list(max: usize) -> impl Strategy<Value = Vec<(IpNet, RuleId)>> {
        (
            prop::collection::vec(any::<u32>(), 1..6),
            prop::collection::vec(any::<u128>(), 1..6),
        )
            .prop_flat_map(move |(a4, a6)| {
                (
                    prop::collection::vec(v4_prefix(a4), 0..max),
                    prop::collection::vec(v6_prefix(a6), 0..max),
                )
            })
            .prop_map(|(v4, v6)| {
                let mut nets: Vec<IpNet> = v4
                    .into_iter()
                    .map(IpNet::V4)
                    .chain(v6.into_iter().map(IpNet::V6))
                    .collect();
                nets.sort();
                nets.dedup();
                nets.into_iter().zip(0..).collect()
            })
    }

    fn random_addresses() -> impl Strategy<Value = Vec<std::net::IpAddr>> {
        prop::collection::vec(
            prop_oneof![
                any::<u32>().prop_map(|a| Ipv4Addr::from(a).into()),
                any::<u128>().prop_map(|a| Ipv6Addr::from(a).into()),
            ],
            64,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn compiled_lookup_is_the_longest_match(
            prefixes in prefix_list(40),
            addresses in random_addresses(),
        ) {
            let table = Table::compile(&prefixes, REGION).expect("fits");
            assert_agrees(&table, &prefixes, &addresses);
        }

        #[test]
        fn patched_table_is_the_longest_match_and_the_diff_reaches_it(
            old in prefix_list(30),
            new in prefix_list(30),
            keep in any::<prop::sample::Index>(),
            addresses in random_addresses(),
        ) {
            // A change that keeps part of the old list (so buckets are both kept and rebuilt).
            let kept = keep.index(old.len() + 1);
            let mut next: Vec<(IpNet, RuleId)> = old[..kept].to_vec();
            for (p, id) in new {
                if !next.iter().any(|(q, _)| *q == p) {
                    next.push((p, id + 10_000));
                }
            }
            let before = Table::compile(&old, REGION).expect("fits");
            let mut after = before.clone();
            let diff = after.patch(&old, &next).expect("fits");
            assert_agrees(&after, &next, &addresses);
            let mut written = before.clone();
            written.apply(&diff);
            prop_assert_eq!(&written, &after);
            // The same lookups as a fresh compile of the new list, filter included.
            let fresh = Table::compile(&next, REGION).expect("fits");
            prop_assert_eq!(&after.filter, &fresh.filter);
            prop_assert_eq!(&after.v6_filter, &fresh.v6_filter);
            // Reading the patched table back from region memory (with garbage after it) gives
            // the same table, and patching again from it still agrees.
            let mut chunk_memory = after.chunks().to_vec();
            chunk_memory.resize(after.chunks().len() + 7, Chunk { runs: 1, base: 3, inherited: 9 });
            let mut entry_memory = after.entries().to_vec();
            entry_memory.resize(after.entries().len() + 5, 77);
            let read = Table::from_memory(
                REGION,
                &RegionMemory {
                    roots: after.roots(),
                    chunks: &chunk_memory,
                    entries: &entry_memory,
                    filter: &after.filter,
                    v6_filter: &after.v6_filter,
                    v6_filter_valid: true,
                },
            );
            // What nothing reaches any more (a removed bucket at the end) may be left out.
            prop_assert_eq!(read.roots(), after.roots());
            prop_assert!(after.chunks().starts_with(read.chunks()));
            prop_assert!(after.entries().starts_with(read.entries()));
            assert_agrees(&read, &next, &addresses);
            let mut again = read;
            again.patch(&next, &old).expect("fits");
            assert_agrees(&again, &old, &addresses);
        }
    }

    #[test]
    fn extreme_lengths_and_nesting() {
        let prefixes = vec![
            (net("0.0.0.0/0"), 0),
            (net("10.0.0.0/8"), 1),
            (net("10.1.0.0/16"), 2),
            (net("10.1.2.0/24"), 3),
            (net("10.1.2.3/32"), 4),
            (net("10.1.2.128/25"), 5),
            (net("255.255.255.255/32"), 6),
            (net("::/0"), 7),
            (net("2001:db8::/32"), 8),
            (net("2001:db8::1/128"), 9),
            (net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 10),
            (net("2001:db8:0:1::/64"), 11),
        ];
        let table = Table::compile(&prefixes, REGION).expect("fits");
        assert_agrees(&table, &prefixes, &[]);
        assert_eq!(table.lookup_v4([10, 1, 2, 3]), Some(4));
        assert_eq!(table.lookup_v4([10, 1, 2, 4]), Some(3));
        assert_eq!(table.lookup_v4([10, 1, 2, 200]), Some(5));
        assert_eq!(table.lookup_v4([11, 0, 0, 0]), Some(0));
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[15] = 1;
        assert_eq!(table.lookup_v6(a), Some(9));
    }

    /// Counts the reads a lookup makes.
    struct Counting<'a>(&'a Table, std::cell::Cell<u32>);

    impl TableRead for Counting<'_> {
        fn root(&self, index: u32) -> Option<u32> {
            self.1.set(self.1.get() + 1);
            self.0.root(index)
        }
        fn chunk(&self, index: u32) -> Option<Chunk> {
            self.1.set(self.1.get() + 1);
            self.0.chunk(index)
        }
        fn entry(&self, index: u32) -> Option<u32> {
            self.1.set(self.1.get() + 1);
            self.0.entry(index)
        }
        fn filter(&self, index: u32) -> Option<u64> {
            self.1.set(self.1.get() + 1);
            self.0.filter(index)
        }

        fn v6_filter(&self, index: u32) -> Option<u64> {
            self.1.set(self.1.get() + 1);
            self.0.v6_filter(index)
        }
    }

    #[test]
    fn lone_deep_prefixes_are_tails_not_chains() {
        // Two /128s share their /16 (a node at byte 2), then part: each is alone below its
        // position, so root, filter word, chunk, entry and the two tail chunks are all a lookup
        // reads. A source in a /24 of that /16 that no prefix touches stops at the filter.
        let prefixes = vec![
            (net("2a01:100::1/128"), 0),
            (net("2a01:200::1/128"), 1),
            (net("2a02::/48"), 2),
        ];
        let table = Table::compile(&prefixes, REGION).expect("fits");
        for (addr, rule, reads) in [
            ("2a01:100::1", Some(0), 6),
            ("2a01:100::2", None, 6),
            ("2a01:200::1", Some(1), 6),
            ("2a01:300::1", None, 2),
            ("2a02:0:0:1::", Some(2), 4),
        ] {
            let counting = Counting(&table, std::cell::Cell::new(0));
            let a: Ipv6Addr = addr.parse().expect("test address");
            let got = lookup(&counting, REGION.slot, &a.octets(), true);
            assert_eq!(got, rule, "{addr}");
            assert_eq!(counting.1.get(), reads, "reads for {addr}");
        }
        assert_eq!(table.chunks().len(), 1 + 2 * 3);
    }

    #[test]
    fn empty_list_misses_everything() {
        let table = Table::compile(&[], REGION).expect("fits");
        assert_eq!(table.lookup_v4([1, 2, 3, 4]), None);
        assert_eq!(table.lookup_v6([0; 16]), None);
        assert!(table.chunks().is_empty() && table.entries().is_empty());
    }

    #[test]
    fn adjacent_prefixes_with_distinct_rules_stay_distinct() {
        let prefixes = vec![(net("192.0.2.0/25"), 0), (net("192.0.2.128/25"), 1)];
        let table = Table::compile(&prefixes, REGION).expect("fits");
        assert_eq!(table.lookup_v4([192, 0, 2, 127]), Some(0));
        assert_eq!(table.lookup_v4([192, 0, 2, 128]), Some(1));
        assert_eq!(table.lookup_v4([192, 0, 3, 0]), None);
    }

    #[test]
    fn at_capacity_fits_and_one_more_chunk_is_an_error() {
        // Four /32s in four different /16s: each is a lone prefix under its root, a tail of
        // two chunks.
        let prefixes: Vec<(IpNet, RuleId)> = (0..4u32)
            .map(|i| (net(&format!("10.{i}.0.1/32")), i))
            .collect();
        let exact = Region {
            chunk_capacity: 8,
            ..REGION
        };
        let table = Table::compile(&prefixes, exact).expect("exactly fits");
        assert_eq!(table.chunks().len(), 8);
        assert_agrees(&table, &prefixes, &[]);
        let small = Region {
            chunk_capacity: 7,
            ..REGION
        };
        assert_eq!(
            Table::compile(&prefixes, small),
            Err(TableError::Full {
                what: "chunks",
                capacity: 7
            })
        );
    }

    #[test]
    fn a_small_change_writes_a_small_diff() {
        let prefixes: Vec<(IpNet, RuleId)> = (0..10_000u32)
            .map(|i| {
                let a = i.wrapping_mul(2_654_435_761);
                (
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), 24).unwrap().trunc()),
                    i,
                )
            })
            .collect();
        let mut prefixes = prefixes;
        prefixes.sort();
        prefixes.dedup_by_key(|(p, _)| *p);
        let before = Table::compile(&prefixes, REGION).expect("fits");
        let mut after_list = prefixes.clone();
        after_list.push((net("203.0.113.0/24"), 99_999));
        let mut after = before.clone();
        let diff = after.patch(&prefixes, &after_list).expect("fits");
        assert!(diff.len() <= 12, "{} writes for one prefix", diff.len());
        let mut written = before.clone();
        written.apply(&diff);
        assert_eq!(written, after);
        assert_eq!(after.lookup_v4([203, 0, 113, 9]), Some(99_999));
    }

    #[test]
    fn a_full_region_falls_back_to_a_compact_compile() {
        let prefixes = vec![(net("10.0.0.1/32"), 0)];
        let tight = Region {
            chunk_capacity: 2,
            entry_capacity: 8,
            ..REGION
        };
        let mut table = Table::compile(&prefixes, tight).expect("fits");
        let mut list = prefixes.clone();
        for round in 1..20u32 {
            let next = vec![(net(&format!("10.0.0.{round}/32")), round)];
            let mut written = table.clone();
            let diff = table.patch(&list, &next).expect("compacts");
            written.apply(&diff);
            assert_eq!(
                written, table,
                "round {round}: the writes reach the patched table"
            );
            list = next;
            assert_agrees(&table, &list, &[]);
            assert!(table.chunks().len() <= 2);
        }
    }
}
