//! The compiled lookup table's array maps (`TABLE_ROOTS`, `TABLE_CHUNKS`, `TABLE_ENTRIES`,
//! `TABLE_V4_FILTER`, `TABLE_V6_FILTER`), memory-mapped (`BPF_F_MMAPABLE`, Linux 5.5+): a slot's
//! table is read and patched with plain loads and stores instead of one syscall per element. Only the inactive
//! slot's region is ever written, and only while no program reads it (after the grace
//! period), so the stores race with nothing; the flip that follows is a syscall, which orders
//! them before any packet can see the slot.

use std::io;

use aya::maps::MapData;
use filter_common::{
    MAP_TABLE_CHUNKS, MAP_TABLE_ENTRIES, MAP_TABLE_ROOTS, MAP_TABLE_V4_FILTER, MAP_TABLE_V6_FILTER,
    TABLE_ELEMENTS_UNUSED,
    table::{Chunk, EntryPair, FILTER_WORDS, ROOT_ENTRIES, filter_base, root_base},
};

use crate::{
    kernel::{
        mapped::{Mapped, MappedError},
        paths::PinLayout,
    },
    policy::{
        Lookup,
        lookup_table::{Region, RegionMemory, Table, TableDiff},
    },
};

/// The lookup the maps pinned under `layout` were created for: the table maps of an LPM-trie
/// filter hold [`TABLE_ELEMENTS_UNUSED`] elements.
pub fn lookup_of_pins(layout: &PinLayout) -> Result<Lookup, MappedError> {
    let path = layout.map(MAP_TABLE_CHUNKS);
    let chunks = MapData::from_pin(&path)
        .and_then(|map| map.info())
        .map(|info| info.max_entries())
        .map_err(|e| MappedError {
            path,
            source: io::Error::other(e),
        })?;
    Ok(if chunks == TABLE_ELEMENTS_UNUSED {
        Lookup::LpmTrie
    } else {
        Lookup::Compiled
    })
}

/// The table maps of a filter with the compiled lookup.
pub struct TableMaps {
    roots: Mapped<EntryPair>,
    chunks: Mapped<Chunk>,
    entries: Mapped<EntryPair>,
    filter: Mapped<u64>,
    /// `None` in pins made before the IPv6 filter existed (their program doesn't read one), or
    /// holding one of another size: then nothing is written and the slots' flags never say it
    /// is valid (`SLOT_FLAG_V6_FILTER`), so the program doesn't read it either.
    v6_filter: Option<Mapped<u64>>,
}

/// The IPv6 filter words of a slot whose pins have none (never valid, never read).
static NO_V6_FILTER: [u64; FILTER_WORDS as usize] = [0; FILTER_WORDS as usize];

/// A `[u32]` view of a slice of entry pairs (entry `i` is half `i % 2` of pair `i / 2`).
fn flat(pairs: &[EntryPair]) -> &[u32] {
    pairs.as_flattened()
}

fn flat_mut(pairs: &mut [EntryPair]) -> &mut [u32] {
    pairs.as_flattened_mut()
}

impl TableMaps {
    /// Maps the table maps pinned under `layout`.
    pub fn open(layout: &PinLayout) -> Result<Self, MappedError> {
        Ok(Self {
            roots: Mapped::open(&layout.map(MAP_TABLE_ROOTS))?,
            chunks: Mapped::open(&layout.map(MAP_TABLE_CHUNKS))?,
            entries: Mapped::open(&layout.map(MAP_TABLE_ENTRIES))?,
            filter: Mapped::open(&layout.map(MAP_TABLE_V4_FILTER))?,
            v6_filter: match layout.map(MAP_TABLE_V6_FILTER) {
                path if path.exists() => {
                    Some(Mapped::open(&path)?).filter(|map| map.len() == 2 * FILTER_WORDS as usize)
                }
                _ => None,
            },
        })
    }

    /// The region of `slot`: each slot owns half of the chunk and entry maps.
    pub fn region(&self, slot: u32) -> Region {
        let chunks = (self.chunks.len() / 2) as u32;
        let entries = self.entries.len() as u32; // pairs per map = entries per slot
        Region::of_slot(slot, chunks, entries)
    }

    /// What the region of `slot` holds now, as a table (the used part found by walking it);
    /// `v6_filter_valid`: the slot's flags say its IPv6 filter words are valid.
    pub fn read(&self, slot: u32, v6_filter_valid: bool) -> Table {
        Table::from_memory(self.region(slot), &self.memory(slot, v6_filter_valid))
    }

    /// The whole region of `slot` as it is in memory (see [`Table::raw`]).
    pub fn read_whole(&self, slot: u32) -> Table {
        Table::raw(self.region(slot), &self.memory(slot, false))
    }

    /// Whether the IPv6 filter can be written (its pin exists with the right size).
    pub fn writes_v6_filter(&self) -> bool {
        self.v6_filter.is_some()
    }

    /// The memory of `slot`'s region.
    fn memory(&self, slot: u32, v6_filter_valid: bool) -> RegionMemory<'_> {
        let region = self.region(slot);
        let roots = root_base(slot, false) as usize;
        let chunks = region.chunk_origin as usize;
        let entries = region.entry_origin as usize;
        let words = filter_base(slot) as usize..(filter_base(slot) + FILTER_WORDS) as usize;
        RegionMemory {
            roots: &flat(self.roots.slice())[roots..roots + 2 * ROOT_ENTRIES as usize],
            chunks: &self.chunks.slice()[chunks..chunks + region.chunk_capacity as usize],
            entries: &flat(self.entries.slice())[entries..entries + region.entry_capacity as usize],
            filter: &self.filter.slice()[words.clone()],
            v6_filter: match &self.v6_filter {
                Some(map) => &map.slice()[words],
                None => &NO_V6_FILTER,
            },
            v6_filter_valid: v6_filter_valid && self.v6_filter.is_some(),
        }
    }

    /// Stores `diff` (indices are map indices of the inactive slot's region).
    pub fn write(&mut self, diff: &TableDiff) {
        let roots = flat_mut(self.roots.slice_mut());
        for (index, value) in &diff.roots {
            roots[*index as usize] = *value;
        }
        let chunks = self.chunks.slice_mut();
        for (index, chunk) in &diff.chunks {
            chunks[*index as usize] = *chunk;
        }
        let entries = flat_mut(self.entries.slice_mut());
        for (index, value) in &diff.entries {
            entries[*index as usize] = *value;
        }
        let filter = self.filter.slice_mut();
        for (index, word) in &diff.filter {
            filter[*index as usize] = *word;
        }
        if let Some(map) = &mut self.v6_filter {
            let words = map.slice_mut();
            for (index, word) in &diff.v6_filter {
                words[*index as usize] = *word;
            }
        }
    }
}
