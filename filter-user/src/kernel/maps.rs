//! The aya layer over the pinned maps: open them, read and write one slot, flip the active
//! slot, read counters. No policy logic lives here.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use aya::maps::{
    Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key,
};
use filter_common::{
    COUNTER_COUNT, Ipv4Bytes, Ipv6Bytes, MAP_ACTIVE_SLOT, MAP_POLICY, MAP_PORTS, MAP_RULE_HITS,
    MAP_SLOT_CONFIG, MAP_V4_SLOT0, MAP_V4_SLOT1, MAP_V6_SLOT0, MAP_V6_SLOT1, MAP_VERDICTS,
    POLICY_CHUNK_BYTES, POLICY_FLIP_STATE_KEY, PORT_WORDS_PER_SLOT, PolicyChunk, RuleId,
    SLOT_FLAG_V6_FILTER, SlotConfig, policy_chunk_key,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    kernel::{
        mapped::{Mapped, MappedError},
        paths::PinLayout,
        table_maps::{TableMaps, lookup_of_pins},
    },
    policy::{
        Lookup,
        compile::CompiledSlot,
        lookup_table::{Table, TableDiff, TableError},
    },
};

/// A map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A pinned map could not be opened.
    #[error("opening pinned map {path}: {source}")]
    Open {
        /// Pin path.
        path: PathBuf,
        /// The aya error.
        #[source]
        source: MapError,
    },
    /// Reading or writing a map failed.
    #[error("{action} map {map}: {source}")]
    Access {
        /// What was being done.
        action: &'static str,
        /// The map's name.
        map: &'static str,
        /// The aya error.
        #[source]
        source: MapError,
    },
    /// The number of possible CPUs could not be read.
    #[error("reading the number of possible CPUs: {0}")]
    Cpus(#[source] std::io::Error),
    /// A memory-mapped map (compiled table, hit counters) could not be mapped.
    #[error(transparent)]
    Mapped(#[from] MappedError),
    /// The list does not fit the compiled table.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The stored policy record is larger than the map can hold.
    #[error("the policy record is {0} bytes, more than the policy map holds; use a shorter list")]
    RecordTooLarge(usize),
}

type Trie<K> = LpmTrie<MapData, K, RuleId>;

/// Names of the IPv4 tries, by slot (for error messages).
const V4_NAMES: [&str; 2] = [MAP_V4_SLOT0, MAP_V4_SLOT1];
/// Names of the IPv6 tries, by slot (for error messages).
const V6_NAMES: [&str; 2] = [MAP_V6_SLOT0, MAP_V6_SLOT1];

/// What one slot is known to hold: trie entries with their rule ids, and the port bitmap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotContents {
    /// Prefix → rule id, both families.
    pub entries: BTreeMap<IpNet, RuleId>,
    /// Port bitmap words.
    pub port_words: Vec<u32>,
}

/// The writers' flip state, kept in `POLICY` under [`POLICY_FLIP_STATE_KEY`]: how many flips
/// were made, which slot the last one made active, and whether an RCU grace period has passed
/// since (so no program can still be reading the inactive slot, and the next writer may write
/// it without waiting). It is trusted only while `ACTIVE_SLOT` still says `active`: a flip
/// made without updating the state (a build from before it existed) makes it stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlipState {
    /// Flips made through this state (wraps).
    pub flips: u64,
    /// The slot flip number `flips` made active.
    pub active: u32,
    /// A grace period has passed since flip number `flips`.
    pub settled: bool,
}

/// Leading bytes of an encoded [`FlipState`].
const FLIP_STATE_MAGIC: [u8; 4] = *b"AFFS";

impl FlipState {
    fn encode(self) -> PolicyChunk {
        let mut chunk = PolicyChunk {
            bytes: [0; POLICY_CHUNK_BYTES],
        };
        chunk.bytes[..4].copy_from_slice(&FLIP_STATE_MAGIC);
        chunk.bytes[4..12].copy_from_slice(&self.flips.to_le_bytes());
        chunk.bytes[12] = u8::from(self.settled);
        chunk.bytes[13] = self.active as u8;
        chunk
    }

    /// `None` for bytes this build did not write (then nothing is known: wait).
    fn decode(chunk: &PolicyChunk) -> Option<Self> {
        let bytes = &chunk.bytes;
        if bytes[..4] != FLIP_STATE_MAGIC || bytes[12] > 1 || bytes[13] > 1 {
            return None;
        }
        let mut flips = [0u8; 8];
        flips.copy_from_slice(&bytes[4..12]);
        Some(Self {
            flips: u64::from_le_bytes(flips),
            active: u32::from(bytes[13]),
            settled: bytes[12] == 1,
        })
    }
}

/// The per-rule hit counters: one `u64` per rule id shared by all CPUs (the program adds
/// atomically), memory-mapped; or, in pins made by builds before that, a per-CPU array.
enum HitCounters {
    /// `BPF_MAP_TYPE_ARRAY`, `BPF_F_MMAPABLE`.
    Shared(Mapped<u64>),
    /// `BPF_MAP_TYPE_PERCPU_ARRAY` (older pins).
    PerCpu(PerCpuArray<MapData, u64>),
}

impl HitCounters {
    fn open(layout: &PinLayout) -> Result<Self, MapsError> {
        let path = layout.map(MAP_RULE_HITS);
        let per_cpu = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .and_then(|info| info.map_type())
            .map(|kind| kind == aya::maps::MapType::PerCpuArray)
            .map_err(|source| MapsError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(if per_cpu {
            HitCounters::PerCpu(open(layout, MAP_RULE_HITS)?)
        } else {
            HitCounters::Shared(Mapped::open(&path)?)
        })
    }
}

/// All of the program's maps, opened from their pins.
pub struct FilterMaps {
    active: Array<MapData, u32>,
    config: Array<MapData, SlotConfig>,
    ports: Array<MapData, u32>,
    v4: [Trie<Ipv4Bytes>; 2],
    v6: [Trie<Ipv6Bytes>; 2],
    verdicts: PerCpuArray<MapData, u64>,
    hits: HitCounters,
    records: HashMap<MapData, u32, PolicyChunk>,
    /// The lookup the program uses.
    lookup: Lookup,
    /// The compiled table's maps, memory-mapped on the first write: opening the filter to
    /// read its record or counters doesn't pay for mapping megabytes.
    table: Option<TableMaps>,
    layout: PinLayout,
    trie_capacity: u32,
}

fn open<T>(layout: &PinLayout, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = layout.map(name);
    let opened = MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .and_then(T::try_from);
    opened.map_err(|source| MapsError::Open { path, source })
}

/// Whether `error` only says the key was absent.
fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn access(action: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Access {
        action,
        map,
        source,
    }
}

impl FilterMaps {
    /// Opens every map pinned under `layout`.
    pub fn open(layout: &PinLayout) -> Result<Self, MapsError> {
        let capacity_path = layout.map(MAP_V4_SLOT0);
        let trie_capacity = MapData::from_pin(&capacity_path)
            .and_then(|m| m.info())
            .map(|info| info.max_entries())
            .map_err(|source| MapsError::Open {
                path: capacity_path,
                source,
            })?;
        Ok(Self {
            active: open(layout, MAP_ACTIVE_SLOT)?,
            config: open(layout, MAP_SLOT_CONFIG)?,
            ports: open(layout, MAP_PORTS)?,
            v4: [open(layout, MAP_V4_SLOT0)?, open(layout, MAP_V4_SLOT1)?],
            v6: [open(layout, MAP_V6_SLOT0)?, open(layout, MAP_V6_SLOT1)?],
            verdicts: open(layout, MAP_VERDICTS)?,
            hits: HitCounters::open(layout)?,
            records: open(layout, MAP_POLICY)?,
            lookup: lookup_of_pins(layout)?,
            table: None,
            layout: layout.clone(),
            trie_capacity,
        })
    }

    /// The compiled table `slot` holds (what its region's roots reach); `None` when the filter
    /// uses the LPM tries.
    pub fn table(&self, slot: u32) -> Result<Option<Table>, MapsError> {
        if self.lookup != Lookup::Compiled {
            return Ok(None);
        }
        let v6_filter_valid = self.v6_filter_valid(slot)?;
        Ok(Some(match &self.table {
            Some(table) => table.read(slot, v6_filter_valid),
            None => TableMaps::open(&self.layout)?.read(slot, v6_filter_valid),
        }))
    }

    /// The compiled table's maps, mapped now if they are not yet; `None` for the LPM tries.
    fn table_maps(&mut self) -> Result<Option<&mut TableMaps>, MapsError> {
        if self.lookup == Lookup::Compiled && self.table.is_none() {
            self.table = Some(TableMaps::open(&self.layout)?);
        }
        Ok(self.table.as_mut())
    }

    /// Whether `slot`'s flags say its IPv6 filter words were written for its table.
    fn v6_filter_valid(&self, slot: u32) -> Result<bool, MapsError> {
        let config = self
            .config
            .get(&slot, 0)
            .map_err(access("reading", MAP_SLOT_CONFIG))?;
        Ok(config.flags & SLOT_FLAG_V6_FILTER != 0)
    }

    /// The lookup the program uses.
    pub fn lookup(&self) -> Lookup {
        self.lookup
    }

    /// Prefixes each trie holds at most (per family, per slot).
    pub fn trie_capacity(&self) -> u32 {
        self.trie_capacity
    }

    /// The slot packets are judged against now.
    pub fn active_slot(&self) -> Result<u32, MapsError> {
        let slot = self
            .active
            .get(&0, 0)
            .map_err(access("reading", MAP_ACTIVE_SLOT))?;
        Ok(slot & 1)
    }

    /// Makes `slot` the active one with a single 4-byte map update.
    pub fn flip(&mut self, slot: u32) -> Result<(), MapsError> {
        self.active
            .set(0, slot, 0)
            .map_err(access("writing", MAP_ACTIVE_SLOT))
    }

    /// The writers' flip state; `None` when none is stored (fresh pins, pins of an older build,
    /// or a writer that failed to store one), which means nothing is known.
    pub fn flip_state(&self) -> Result<Option<FlipState>, MapsError> {
        match self.records.get(&POLICY_FLIP_STATE_KEY, 0) {
            Ok(chunk) => Ok(FlipState::decode(&chunk)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(access("reading the flip state from", MAP_POLICY)(source)),
        }
    }

    /// Stores the flip state. When the map refuses the element (it is full), the state is
    /// removed instead, which means "unknown" to every reader and so is always safe.
    pub fn set_flip_state(&mut self, state: FlipState) -> Result<(), MapsError> {
        if self
            .records
            .insert(POLICY_FLIP_STATE_KEY, state.encode(), 0)
            .is_ok()
        {
            return Ok(());
        }
        match self.records.remove(&POLICY_FLIP_STATE_KEY) {
            Err(source) if !is_not_found(&source) => {
                Err(access("removing the flip state from", MAP_POLICY)(source))
            }
            _ => Ok(()),
        }
    }

    /// The prefixes stored in `slot` and their rule ids.
    pub fn rule_ids(&self, slot: u32) -> Result<BTreeMap<IpNet, RuleId>, MapsError> {
        let mut ids = BTreeMap::new();
        for entry in self.v4[slot as usize].iter() {
            let (key, id) = entry.map_err(access("reading", V4_NAMES[slot as usize]))?;
            let prefix =
                Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8).map(IpNet::V4);
            if let Ok(prefix) = prefix {
                ids.insert(prefix, id);
            }
        }
        for entry in self.v6[slot as usize].iter() {
            let (key, id) = entry.map_err(access("reading", V6_NAMES[slot as usize]))?;
            let prefix =
                Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8).map(IpNet::V6);
            if let Ok(prefix) = prefix {
                ids.insert(prefix, id);
            }
        }
        Ok(ids)
    }

    /// Empties both tries of `slot` (which must be inactive). An error reading the keys fails
    /// the clear: a key skipped here would stay authorized in the slot about to go live.
    fn clear_tries(&mut self, slot: u32) -> Result<(), MapsError> {
        let (v4_name, v6_name) = (V4_NAMES[slot as usize], V6_NAMES[slot as usize]);
        let v4 = &mut self.v4[slot as usize];
        let keys = v4
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(access("listing the keys of", v4_name))?;
        for key in keys {
            v4.remove(&key).map_err(access("clearing", v4_name))?;
        }
        let v6 = &mut self.v6[slot as usize];
        let keys = v6
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(access("listing the keys of", v6_name))?;
        for key in keys {
            v6.remove(&key).map_err(access("clearing", v6_name))?;
        }
        Ok(())
    }

    fn insert_entry(&mut self, slot: u32, prefix: &IpNet, id: RuleId) -> Result<(), MapsError> {
        match prefix {
            IpNet::V4(net) => self.v4[slot as usize]
                .insert(
                    &Key::new(net.prefix_len().into(), net.addr().octets()),
                    id,
                    0,
                )
                .map_err(access("writing", V4_NAMES[slot as usize])),
            IpNet::V6(net) => self.v6[slot as usize]
                .insert(
                    &Key::new(net.prefix_len().into(), net.addr().octets()),
                    id,
                    0,
                )
                .map_err(access("writing", V6_NAMES[slot as usize])),
        }
    }

    fn remove_entry(&mut self, slot: u32, prefix: &IpNet) -> Result<(), MapsError> {
        let (removed, name) = match prefix {
            IpNet::V4(net) => (
                self.v4[slot as usize]
                    .remove(&Key::new(net.prefix_len().into(), net.addr().octets())),
                V4_NAMES[slot as usize],
            ),
            IpNet::V6(net) => (
                self.v6[slot as usize]
                    .remove(&Key::new(net.prefix_len().into(), net.addr().octets())),
                V6_NAMES[slot as usize],
            ),
        };
        match removed {
            Err(source) if !is_not_found(&source) => Err(access("removing from", name)(source)),
            _ => Ok(()),
        }
    }

    /// Writes everything of `compiled` plus its serialized `record` into `slot`, which must be
    /// the inactive slot with no program still reading it. `previous` is what the slot is known
    /// to hold (from its record): then only the differences are written; `None` rewrites it all.
    pub fn write_slot(
        &mut self,
        slot: u32,
        compiled: &CompiledSlot,
        record: &[u8],
        previous: Option<&SlotContents>,
    ) -> Result<(), MapsError> {
        // The slot's IPv6 filter words can be patched only if a writer that knows them wrote
        // them (an older build may have written the slot since); otherwise the table is
        // diffed whole.
        let v6_filter_valid = self.v6_filter_valid(slot)?;
        // The table is built before anything is written: a list that does not fit changes
        // nothing.
        let mut flags = compiled.flags;
        let table_diff = match self.table_maps()? {
            Some(table) => {
                let writes_v6_filter = table.writes_v6_filter();
                if writes_v6_filter {
                    flags |= SLOT_FLAG_V6_FILTER;
                }
                let known = previous.filter(|_| v6_filter_valid || !writes_v6_filter);
                Some(table_update(table, slot, compiled, known, v6_filter_valid)?)
            }
            None => None,
        };
        // Until the new record is written, the slot's contents are unknown to later writers.
        // A patch trusts the region's memory (roots, filter words) for every bucket it does
        // not rebuild; this is what makes that safe after an interrupted write: without a
        // record, the next writer compiles afresh and diffs against the whole region.
        let previous_chunks = self.forget_record(slot)?;
        let empty = SlotContents::default();
        let known = previous.unwrap_or(&empty);
        match (self.table.as_mut(), table_diff) {
            (Some(table), Some(diff)) => table.write(&diff),
            _ => self.write_tries(slot, compiled, previous)?,
        }
        let base = slot * PORT_WORDS_PER_SLOT;
        for (index, word) in compiled.port_words.iter().enumerate() {
            if previous.is_some() && known.port_words.get(index) == Some(word) {
                continue;
            }
            self.ports
                .set(base + index as u32, word, 0)
                .map_err(access("writing", MAP_PORTS))?;
        }
        self.write_record(slot, record, previous_chunks)?;
        self.config
            .set(slot, SlotConfig { flags }, 0)
            .map_err(access("writing", MAP_SLOT_CONFIG))
    }

    /// Makes the tries of `slot` hold `compiled`'s entries, writing only the differences from
    /// `previous` (or everything, after emptying them, when it is unknown).
    fn write_tries(
        &mut self,
        slot: u32,
        compiled: &CompiledSlot,
        previous: Option<&SlotContents>,
    ) -> Result<(), MapsError> {
        let empty = SlotContents::default();
        let known = match previous {
            Some(previous) => previous,
            None => {
                self.clear_tries(slot)?;
                &empty
            }
        };
        let wanted: BTreeMap<IpNet, RuleId> = compiled.entries.iter().copied().collect();
        for prefix in known.entries.keys() {
            if !wanted.contains_key(prefix) {
                self.remove_entry(slot, prefix)?;
            }
        }
        for (prefix, id) in &compiled.entries {
            if known.entries.get(prefix) != Some(id) {
                self.insert_entry(slot, prefix, *id)?;
            }
        }
        Ok(())
    }

    /// Zeroes the hit counters of `ids`.
    pub fn zero_hits(&mut self, ids: &[RuleId]) -> Result<(), MapsError> {
        match &mut self.hits {
            HitCounters::Shared(counters) => {
                for id in ids {
                    counters.store(*id as usize, 0);
                }
            }
            HitCounters::PerCpu(counters) => {
                let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e))?;
                for id in ids {
                    let zeros =
                        PerCpuValues::try_from(vec![0u64; cpus]).map_err(MapsError::Cpus)?;
                    counters
                        .set(*id, zeros, 0)
                        .map_err(access("zeroing", MAP_RULE_HITS))?;
                }
            }
        }
        Ok(())
    }

    /// Hits of rule `id` (0 for ids out of range).
    pub fn hits(&self, id: RuleId) -> Result<u64, MapsError> {
        match &self.hits {
            HitCounters::Shared(counters) => Ok(counters.load(id as usize).unwrap_or(0)),
            HitCounters::PerCpu(counters) => match counters.get(&id, 0) {
                Ok(values) => Ok(values.iter().sum()),
                Err(MapError::OutOfBounds { .. }) => Ok(0),
                Err(source) => Err(access("reading", MAP_RULE_HITS)(source)),
            },
        }
    }

    /// The verdict counters (indexed by `COUNTER_*`), summed over CPUs.
    pub fn verdicts(&self) -> Result<[u64; COUNTER_COUNT as usize], MapsError> {
        let mut totals = [0u64; COUNTER_COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            let values = self
                .verdicts
                .get(&(index as u32), 0)
                .map_err(access("reading", MAP_VERDICTS))?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }

    fn write_record(
        &mut self,
        slot: u32,
        record: &[u8],
        previous_chunks: u32,
    ) -> Result<(), MapsError> {
        let mut bytes = Vec::with_capacity(record.len() + 4);
        let len =
            u32::try_from(record.len()).map_err(|_| MapsError::RecordTooLarge(record.len()))?;
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(record);
        let chunks: Vec<&[u8]> = bytes.chunks(POLICY_CHUNK_BYTES).collect();
        // One chunk key less than a slot's share, so both slots' records at their largest
        // still leave room in the map for the flip state.
        if chunks.len() >= filter_common::POLICY_MAX_CHUNKS_PER_SLOT as usize {
            return Err(MapsError::RecordTooLarge(record.len()));
        }
        // Chunk 0 (which carries the length) goes last, so a record is never complete-looking
        // before all of it is written.
        for (index, piece) in chunks.iter().enumerate().rev() {
            let mut chunk = PolicyChunk {
                bytes: [0; POLICY_CHUNK_BYTES],
            };
            chunk.bytes[..piece.len()].copy_from_slice(piece);
            self.records
                .insert(policy_chunk_key(slot, index as u32), chunk, 0)
                .map_err(access("writing", MAP_POLICY))?;
        }
        for stale in chunks.len() as u32..previous_chunks {
            match self.records.remove(&policy_chunk_key(slot, stale)) {
                Err(source) if !is_not_found(&source) => {
                    return Err(access("removing a stale chunk from", MAP_POLICY)(source));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes chunk 0 of the record of `slot`, marking its contents unknown. Returns how many
    /// chunks the record had.
    fn forget_record(&mut self, slot: u32) -> Result<u32, MapsError> {
        let chunks = self.record_chunk_count(slot)?;
        match self.records.remove(&policy_chunk_key(slot, 0)) {
            Err(source) if !is_not_found(&source) => Err(access("writing", MAP_POLICY)(source)),
            _ => Ok(chunks),
        }
    }

    fn record_chunk_count(&self, slot: u32) -> Result<u32, MapsError> {
        match self.records.get(&policy_chunk_key(slot, 0), 0) {
            Ok(first) => {
                let len = u32::from_le_bytes([
                    first.bytes[0],
                    first.bytes[1],
                    first.bytes[2],
                    first.bytes[3],
                ]) as usize;
                Ok((len + 4).div_ceil(POLICY_CHUNK_BYTES) as u32)
            }
            Err(MapError::KeyNotFound) => Ok(0),
            Err(source) => Err(access("reading", MAP_POLICY)(source)),
        }
    }

    /// The serialized record stored with `slot`, if any.
    pub fn read_record(&self, slot: u32) -> Result<Option<Vec<u8>>, MapsError> {
        let count = self.record_chunk_count(slot)?;
        if count == 0 {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(count as usize * POLICY_CHUNK_BYTES);
        for index in 0..count {
            let chunk = self
                .records
                .get(&policy_chunk_key(slot, index), 0)
                .map_err(access("reading", MAP_POLICY))?;
            bytes.extend_from_slice(&chunk.bytes);
        }
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        Ok(Some(bytes[4..4 + len].to_vec()))
    }
}

/// The writes that make the table region of `slot` hold `compiled`'s entries: a patch of what
/// the region holds when `previous` says which list that is, else a fresh compile diffed
/// against the whole region. `v6_filter_valid`: the slot's flags vouch for its IPv6 filter.
fn table_update(
    table: &TableMaps,
    slot: u32,
    compiled: &CompiledSlot,
    previous: Option<&SlotContents>,
    v6_filter_valid: bool,
) -> Result<TableDiff, MapsError> {
    match previous {
        Some(previous) => {
            let mut current = table.read(slot, v6_filter_valid);
            let old: Vec<(IpNet, RuleId)> =
                previous.entries.iter().map(|(p, id)| (*p, *id)).collect();
            Ok(current.patch(&old, &compiled.entries)?)
        }
        None => {
            let current = table.read_whole(slot);
            let new = Table::compile(&compiled.entries, current.region())?;
            Ok(TableDiff::between(&current, &new))
        }
    }
}
