//! Section 1: the in-kernel cost per packet, through `BPF_PROG_TEST_RUN`.
//!
//! For each list size and address family the real filter is loaded and pinned by the apifence
//! library (no interface attached) and the list applied through its normal path. Measured, all
//! interleaved in every round: the empty program, the production parser alone, the rotation
//! alone (rewrite the source, tail-call the empty program), and the production program on one
//! hot authorized source (called directly), on sources rotating inside the list, and on
//! uniformly random sources that miss (both reached through the rotation's tail call).
//! "Net" figures subtract the rotation round by round: `rotating - rotate_only + empty`.
//!
//! Every list is loaded twice, once per lookup (the compiled table, program name `apifence`,
//! and the kernel's LPM trie, `apifence-lpm-trie`), so both are measured in the same rounds.
//! "hot-drop" runs the program directly on one unauthorized source (dropped), next to "hot"
//! (passed), so the drop path's own cost shows.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence::kernel::maps::MapsError;
use apifence::kernel::operations::{self, AttachOptions, DetachTarget, Filter, FilterError};
use apifence::kernel::paths::PinLayout;
use apifence::policy::Lookup;
use apifence::policy::lookup_table::TableError;
use apifence_tests::Frame;
use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::lab::{BenchBpffs, check_interrupted};
use super::memory;
use super::object::{self, BenchObject};
use super::plan::{Plan, Size};
use super::prefixes::{self, Rng};
use super::stats::Summary;

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

impl Family {
    /// `IPv4` / `IPv6`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// 4 or 6, as the rotating program's configuration wants it.
    fn number(self) -> u32 {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 6,
        }
    }
}

/// Destination of the benchmark frames.
const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 2);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 2);
/// Payload that makes the IPv4 frame 64 bytes.
const V4_PAYLOAD: usize = 10;

/// A prefix list of one family, as generated or read.
pub struct List {
    /// Its size.
    pub size: Size,
    /// Its family.
    pub family: Family,
    /// The prefixes (after merging: what the maps hold).
    pub prefixes: Vec<IpNet>,
    /// Prefixes as given, before merging.
    pub given: usize,
}

/// Builds every list of the section: seeded synthetic sets and AzureCloud.
pub fn lists(plan: &Plan) -> Result<Vec<List>> {
    let mut out = Vec::new();
    let azure = match &plan.service_tags {
        Some(path) => Some(prefixes::azure_cloud(path)?),
        None => None,
    };
    for size in &plan.kernel_sizes {
        for family in [Family::Ipv4, Family::Ipv6] {
            let mut rng = Rng::new(plan.seed ^ seed_of(size, family));
            let given: Vec<IpNet> = match (size, family) {
                (Size::Synthetic(n), Family::Ipv4) => prefixes::synthetic_v4(*n, &mut rng)
                    .into_iter()
                    .map(IpNet::V4)
                    .collect(),
                (Size::Synthetic(n), Family::Ipv6) => prefixes::synthetic_v6(*n, &mut rng)
                    .into_iter()
                    .map(IpNet::V6)
                    .collect(),
                (Size::AzureCloud, Family::Ipv4) => {
                    let (v4, _) = azure.as_ref().context("AzureCloud without a data file")?;
                    v4.iter().copied().map(IpNet::V4).collect()
                }
                (Size::AzureCloud, Family::Ipv6) => {
                    let (_, v6) = azure.as_ref().context("AzureCloud without a data file")?;
                    v6.iter().copied().map(IpNet::V6).collect()
                }
            };
            out.push(List {
                size: size.clone(),
                family,
                prefixes: prefixes::merged(&given),
                given: given.len(),
            });
        }
    }
    Ok(out)
}

fn seed_of(size: &Size, family: Family) -> u64 {
    let n = match size {
        Size::Synthetic(n) => *n as u64,
        Size::AzureCloud => 0xa2u64 << 40,
    };
    n.wrapping_mul(0x9e37_79b9) ^ u64::from(family.number())
}

/// One pinned filter holding one list, plus what the benchmark needs to drive it.
pub struct Instance {
    /// The list's size label.
    pub size: Size,
    /// Its family.
    pub family: Family,
    /// The lookup the filter was loaded with.
    pub lookup: Lookup,
    /// The `--capacity` it was loaded with.
    pub capacity: u32,
    /// Prefixes as given.
    pub given: usize,
    /// Prefixes in the trie.
    pub prefixes: usize,
    /// Where it is pinned.
    pub layout: PinLayout,
    /// The pinned production program.
    pub program: Xdp,
    /// A frame from one authorized source.
    pub hot_frame: Vec<u8>,
    /// A frame from one unauthorized source (the first key of the miss set).
    pub hot_drop_frame: Vec<u8>,
    /// First key of the "inside the list" set.
    pub inside_base: u32,
    /// First key of the "random, misses" set.
    pub miss_base: u32,
    /// Wall time of `Filter::apply_policy` for the list.
    pub apply: Duration,
    /// Kernel memory charged to this cgroup while the list was applied, if measurable.
    pub kernel_memory_delta: Option<i64>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = operations::detach(&self.layout, &DetachTarget::All) {
            eprintln!(
                "warning: removing the filter pinned at {}: {e:#}",
                self.layout.root().display()
            );
        }
    }
}

/// Every instance of the section, the benchmark object and the bpffs they live on. Fields drop
/// in order: instances, then the object, then the mount.
pub struct Setup {
    /// One per list.
    pub instances: Vec<Instance>,
    /// The benchmark object (key sets filled).
    pub object: BenchObject,
    /// The baseline frames, IPv4 and IPv6.
    frames: [Vec<u8>; 2],
    _bpffs: BenchBpffs,
}

/// Loads and pins a filter per list, applies the lists, and fills the key sets.
pub fn setup(plan: &Plan, lists: &[List]) -> Result<Setup> {
    let bpffs = BenchBpffs::new("kernel")?;
    let keys = plan.keys_per_set;
    let slots = u32::try_from(lists.len() * 2 * Lookup::ALL.len())
        .ok()
        .and_then(|n| n.checked_mul(keys))
        .context("too many key sets")?;
    let mut object = BenchObject::load(slots)?;
    let mut instances = Vec::new();
    let runs = lists
        .iter()
        .flat_map(|list| Lookup::ALL.map(|lookup| (list, lookup)));
    for (index, (list, lookup)) in runs.enumerate() {
        check_interrupted()?;
        let label = format!(
            "{}-{}-{}",
            list.size.label(),
            list.family.name().to_lowercase(),
            lookup.name()
        );
        eprintln!(
            "bench: kernel: loading {} {} prefixes ({label})",
            list.prefixes.len(),
            list.family.name()
        );
        let layout = PinLayout::new(bpffs.path().join(&label));
        let text = prefixes::range_text(&list.prefixes);
        let base_capacity = (list.prefixes.len().max(16) as u32).next_power_of_two();
        let loaded = load_list(&layout, base_capacity, lookup, &text)
            .with_context(|| format!("loading and applying the {label} list"))?;
        let program = Xdp::from_pin(layout.program(), XdpAttachType::Interface)
            .context("opening the pinned program")?;
        let mut instance = Instance {
            size: list.size.clone(),
            family: list.family,
            lookup,
            capacity: loaded.capacity,
            given: list.given,
            prefixes: list.prefixes.len(),
            layout,
            program,
            hot_frame: Vec::new(),
            hot_drop_frame: Vec::new(),
            inside_base: (index as u32 * 2) * keys,
            miss_base: (index as u32 * 2 + 1) * keys,
            apply: loaded.apply,
            kernel_memory_delta: loaded.kernel_memory_delta,
        };
        // The same keys for both lookups of a list.
        let mut rng = Rng::new(plan.seed ^ 0x6b65_7973 ^ (index / Lookup::ALL.len()) as u64);
        let (inside, miss) = key_sets(&list.prefixes, list.family, keys as usize, &mut rng)?;
        object.write_keys(instance.inside_base, &inside)?;
        object.write_keys(instance.miss_base, &miss)?;
        instance.hot_frame = frame(list.family, &inside[0]);
        instance.hot_drop_frame = frame(list.family, &miss[0]);
        instances.push(instance);
    }
    let frames = [
        frame(
            Family::Ipv4,
            &[198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        frame(
            Family::Ipv6,
            &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        ),
    ];
    Ok(Setup {
        instances,
        object,
        frames,
        _bpffs: bpffs,
    })
}

/// A list loaded into a fresh filter.
struct Loaded {
    capacity: u32,
    apply: Duration,
    kernel_memory_delta: Option<i64>,
}

/// Loads a filter with `lookup` under `layout` and applies the ranges `text`. The capacity is
/// the list's size rounded up to a power of two; when the compiled table of the list does not
/// fit the table maps sized for that capacity, the filter is loaded again with twice the
/// capacity (up to 8×), and the capacity used is reported with the results.
fn load_list(layout: &PinLayout, capacity: u32, lookup: Lookup, text: &str) -> Result<Loaded> {
    let mut capacity = capacity;
    loop {
        operations::attach(
            layout,
            &AttachOptions {
                capacity: Some(capacity),
                lookup: Some(lookup),
                ..AttachOptions::default()
            },
        )?;
        let before = memory::kernel_memory_bytes();
        let started = Instant::now();
        let mut filter = Filter::open_for_write(layout)?;
        let mut policy = filter.record()?.policy;
        policy.ranges = text.parse()?;
        let applied = filter.apply_policy(policy);
        drop(filter);
        let apply = started.elapsed();
        match applied {
            Ok(_) => {
                let kernel_memory_delta = match (before, memory::kernel_memory_bytes()) {
                    (Some(b), Some(a)) => Some(a as i64 - b as i64),
                    _ => None,
                };
                return Ok(Loaded {
                    capacity,
                    apply,
                    kernel_memory_delta,
                });
            }
            Err(FilterError::Maps(MapsError::Table(TableError::Full { what, .. })))
                if capacity < 1 << 26 =>
            {
                eprintln!(
                    "bench: kernel: the compiled table needs more {what} than --capacity \
                     {capacity} gives; loading again with twice the capacity"
                );
                operations::detach(layout, &DetachTarget::All)?;
                capacity *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Key sets: inside the list, and missing it.
type KeySets = (Vec<[u8; 16]>, Vec<[u8; 16]>);

/// Keys inside `prefixes` and keys that miss them, `count` each, as 16-byte entries.
fn key_sets(prefixes: &[IpNet], family: Family, count: usize, rng: &mut Rng) -> Result<KeySets> {
    let pad4 = |a: Ipv4Addr| {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&a.octets());
        key
    };
    let (inside, miss): (Vec<[u8; 16]>, Vec<[u8; 16]>) = match family {
        Family::Ipv4 => {
            let v4: Vec<Ipv4Net> = prefixes
                .iter()
                .filter_map(|p| match p {
                    IpNet::V4(n) => Some(*n),
                    IpNet::V6(_) => None,
                })
                .collect();
            let cover = prefixes::cover_v4(&v4);
            (
                prefixes::inside_v4(&v4, count, rng)
                    .into_iter()
                    .map(pad4)
                    .collect(),
                prefixes::miss_v4(&cover, count, rng)
                    .into_iter()
                    .map(pad4)
                    .collect(),
            )
        }
        Family::Ipv6 => {
            let v6: Vec<Ipv6Net> = prefixes
                .iter()
                .filter_map(|p| match p {
                    IpNet::V6(n) => Some(*n),
                    IpNet::V4(_) => None,
                })
                .collect();
            let cover = prefixes::cover_v6(&v6);
            (
                prefixes::inside_v6(&v6, count, rng)
                    .into_iter()
                    .map(|a| a.octets())
                    .collect(),
                prefixes::miss_v6(&cover, count, rng)
                    .into_iter()
                    .map(|a| a.octets())
                    .collect(),
            )
        }
    };
    if inside.len() != count || miss.len() != count {
        bail!(
            "could not draw {count} {} keys inside and outside the list",
            family.name()
        );
    }
    Ok((inside, miss))
}

/// A TCP SYN to the protected port from `source` (first 4 bytes for IPv4).
pub fn frame(family: Family, source: &[u8; 16]) -> Vec<u8> {
    match family {
        Family::Ipv4 => Frame::tcp4(
            Ipv4Addr::new(source[0], source[1], source[2], source[3]),
            DST_V4,
            super::lab::API_PORT,
        )
        .payload(V4_PAYLOAD)
        .bytes(),
        Family::Ipv6 => Frame::tcp6(Ipv6Addr::from(*source), DST_V6, super::lab::API_PORT).bytes(),
    }
}

/// One measured variant.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// `empty`, `parse-only`, `rotate-only`, `apifence` (compiled lookup) or
    /// `apifence-lpm-trie`.
    pub program: String,
    /// Address family of the frames.
    pub family: Family,
    /// `-` for baselines; `hot`, `hot-drop`, `inside` or `miss` for apifence.
    pub pattern: String,
    /// The list's size label (apifence rows).
    pub size: Option<String>,
    /// Prefixes in the trie (apifence rows).
    pub prefixes: Option<usize>,
    /// ns per packet, one per round.
    pub samples_ns: Vec<f64>,
    /// Their summary.
    pub summary: Option<Summary>,
    /// For rotating patterns: per round, `this - rotate_only + empty` (the rotation removed).
    pub net_samples_ns: Option<Vec<f64>>,
    /// Their summary.
    pub net: Option<Summary>,
}

/// What the section found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelResults {
    /// `BPF_PROG_TEST_RUN` repeat count per sample.
    pub repeat: u32,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Keys per rotating set.
    pub keys_per_set: u32,
    /// Length of the IPv4 and IPv6 frames.
    pub frame_bytes: [usize; 2],
    /// The lists.
    pub lists: Vec<ListInfo>,
    /// Every variant.
    pub rows: Vec<Row>,
}

/// A list as loaded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListInfo {
    /// Size label.
    pub size: String,
    /// Family.
    pub family: Family,
    /// Lookup (`compiled` or `lpm-trie`).
    #[serde(default)]
    pub lookup: String,
    /// `--capacity` the filter was loaded with.
    #[serde(default)]
    pub capacity: u32,
    /// Prefixes as given.
    pub given: usize,
    /// Prefixes in the trie.
    pub prefixes: usize,
    /// `Filter::apply_policy` wall time, ms.
    pub apply_ms: f64,
}

/// What one sample runs.
enum Step {
    Plain(&'static str, Family),
    RotateOnly(Family),
    Hot(usize, bool),
    Rotating(usize, bool),
}

/// The `program` of a row of `instance`.
fn program_name(instance: &Instance) -> String {
    match instance.lookup {
        Lookup::Compiled => "apifence".into(),
        Lookup::LpmTrie => "apifence-lpm-trie".into(),
    }
}

/// Runs every variant `plan.kernel_rounds` times, interleaved.
pub fn measure(plan: &Plan, setup: &mut Setup) -> Result<KernelResults> {
    let mut steps = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        steps.push(Step::Plain(object::EMPTY, family));
        steps.push(Step::Plain(object::PARSE, family));
        steps.push(Step::RotateOnly(family));
        for (i, inst) in setup.instances.iter().enumerate() {
            if inst.family == family {
                steps.push(Step::Hot(i, true));
                steps.push(Step::Hot(i, false));
                steps.push(Step::Rotating(i, true));
                steps.push(Step::Rotating(i, false));
            }
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); steps.len()];
    let keys = plan.keys_per_set;
    for round in 0..plan.kernel_rounds {
        eprintln!(
            "bench: kernel: round {}/{} ({} variants)",
            round + 1,
            plan.kernel_rounds,
            steps.len()
        );
        for (step, out) in steps.iter().zip(samples.iter_mut()) {
            check_interrupted()?;
            let ns = run_step(step, setup, keys, plan.kernel_repeat)?;
            out.push(ns);
        }
    }
    let mut rows = Vec::new();
    for (step, samples) in steps.iter().zip(&samples) {
        let row = match step {
            Step::Plain(name, family) => Row {
                program: if *name == object::EMPTY {
                    "empty"
                } else {
                    "parse-only"
                }
                .into(),
                family: *family,
                pattern: "-".into(),
                size: None,
                prefixes: None,
                samples_ns: samples.clone(),
                summary: Summary::of(samples),
                net_samples_ns: None,
                net: None,
            },
            Step::RotateOnly(family) => Row {
                program: "rotate-only".into(),
                family: *family,
                pattern: "-".into(),
                size: None,
                prefixes: None,
                samples_ns: samples.clone(),
                summary: Summary::of(samples),
                net_samples_ns: None,
                net: None,
            },
            Step::Hot(i, pass) => {
                let inst = &setup.instances[*i];
                Row {
                    program: program_name(inst),
                    family: inst.family,
                    pattern: if *pass { "hot" } else { "hot-drop" }.into(),
                    size: Some(inst.size.label()),
                    prefixes: Some(inst.prefixes),
                    samples_ns: samples.clone(),
                    summary: Summary::of(samples),
                    net_samples_ns: Some(samples.clone()),
                    net: Summary::of(samples),
                }
            }
            Step::Rotating(i, inside) => {
                let inst = &setup.instances[*i];
                Row {
                    program: program_name(inst),
                    family: inst.family,
                    pattern: if *inside { "inside" } else { "miss" }.into(),
                    size: Some(inst.size.label()),
                    prefixes: Some(inst.prefixes),
                    samples_ns: samples.clone(),
                    summary: Summary::of(samples),
                    net_samples_ns: None,
                    net: None,
                }
            }
        };
        rows.push(row);
    }
    fix_net_columns(&steps, &samples, &mut rows);
    Ok(KernelResults {
        repeat: plan.kernel_repeat,
        rounds: plan.kernel_rounds,
        keys_per_set: plan.keys_per_set,
        frame_bytes: [setup.frames[0].len(), setup.frames[1].len()],
        lists: setup
            .instances
            .iter()
            .map(|i| ListInfo {
                size: i.size.label(),
                family: i.family,
                lookup: i.lookup.name().into(),
                capacity: i.capacity,
                given: i.given,
                prefixes: i.prefixes,
                apply_ms: i.apply.as_secs_f64() * 1e3,
            })
            .collect(),
        rows,
    })
}

/// Recomputes the net samples of rotating rows: per round, `row - rotate_only + empty` of the
/// same family.
fn fix_net_columns(steps: &[Step], samples: &[Vec<f64>], rows: &mut [Row]) {
    for (index, step) in steps.iter().enumerate() {
        let Step::Rotating(..) = step else { continue };
        let family = rows[index].family;
        let empty = steps
            .iter()
            .position(|s| matches!(s, Step::Plain(n, f) if *n == object::EMPTY && *f == family));
        let rotate = steps
            .iter()
            .position(|s| matches!(s, Step::RotateOnly(f) if *f == family));
        let (Some(e), Some(r)) = (empty, rotate) else {
            continue;
        };
        let net: Vec<f64> = samples[index]
            .iter()
            .zip(&samples[r])
            .zip(&samples[e])
            .map(|((a, rot), emp)| a - rot + emp)
            .collect();
        rows[index].net = Summary::of(&net);
        rows[index].net_samples_ns = Some(net);
    }
}

/// Runs one sample; returns ns per packet. Checks every verdict, so a key set that doesn't
/// hit (or miss) as intended fails the run instead of producing numbers.
fn run_step(step: &Step, setup: &mut Setup, keys: u32, repeat: u32) -> Result<f64> {
    const XDP_DROP: u32 = 1;
    const XDP_PASS: u32 = 2;
    let index = |family: Family| usize::from(family == Family::Ipv6);
    let (duration, verdict, expected, what) = match step {
        Step::Plain(name, family) => {
            let frame = setup.frames[index(*family)].clone();
            let (d, v) = object::test_run(setup.object.xdp(name)?, &frame, repeat)?;
            (d, v, None, format!("{name} {}", family.name()))
        }
        Step::RotateOnly(family) => {
            let base = setup
                .instances
                .iter()
                .find(|i| i.family == *family)
                .map_or(0, |i| i.inside_base);
            setup.object.configure(base, keys, family.number())?;
            setup.object.set_target_own(object::EMPTY)?;
            let frame = setup.frames[index(*family)].clone();
            let (d, v) = object::test_run(setup.object.xdp(object::ROTATE)?, &frame, repeat)?;
            object::check_tail_call(v, "rotate-only")?;
            (
                d,
                v,
                Some(XDP_PASS),
                format!("rotate-only {}", family.name()),
            )
        }
        Step::Hot(i, pass) => {
            let inst = &setup.instances[*i];
            let frame = if *pass {
                &inst.hot_frame
            } else {
                &inst.hot_drop_frame
            };
            let (d, v) = object::test_run(&inst.program, frame, repeat)?;
            (
                d,
                v,
                Some(if *pass { XDP_PASS } else { XDP_DROP }),
                format!(
                    "{} {} {} {}",
                    program_name(inst),
                    if *pass { "hot" } else { "hot-drop" },
                    inst.size.label(),
                    inst.family.name()
                ),
            )
        }
        Step::Rotating(i, inside) => {
            let (base, family, fd, label) = {
                let inst = &setup.instances[*i];
                let base = if *inside {
                    inst.inside_base
                } else {
                    inst.miss_base
                };
                (
                    base,
                    inst.family,
                    inst.program.fd()?.try_clone()?,
                    format!(
                        "{} {} {} {}",
                        program_name(inst),
                        if *inside { "inside" } else { "miss" },
                        inst.size.label(),
                        inst.family.name()
                    ),
                )
            };
            setup.object.configure(base, keys, family.number())?;
            setup.object.set_target(&fd)?;
            let frame = setup.frames[index(family)].clone();
            let (d, v) = object::test_run(setup.object.xdp(object::ROTATE)?, &frame, repeat)?;
            object::check_tail_call(v, &label)?;
            let expected = if *inside { XDP_PASS } else { XDP_DROP };
            (d, v, Some(expected), label)
        }
    };
    if let Some(expected) = expected
        && verdict != expected
    {
        bail!("{what}: verdict {verdict}, expected {expected}");
    }
    Ok(duration.as_nanos() as f64)
}
