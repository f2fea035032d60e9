//! The benchmark-only eBPF object (`bench/ebpf`, compiled by this crate's build.rs and embedded
//! here as [`BENCH_OBJECT`]): loading it, filling its key sets, pointing its rotating program at
//! a target, running programs through `BPF_PROG_TEST_RUN`, and the tc egress pair of the
//! end-to-end runs. Map and program names mirror `bench/ebpf/src/main.rs`.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Array, MapData, PerCpuArray, ProgramArray};
use aya::programs::tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcAttachType};
use aya::programs::{ProgramFd, SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};

/// The benchmark's own programs (`bench/ebpf`), never part of the production object that the
/// apifence library embeds.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apifence-bench-xdp"));

/// The empty XDP program (returns `XDP_PASS`).
pub const EMPTY: &str = "bench_empty";
/// Drops everything.
pub const DROP: &str = "bench_drop";
/// The production parser alone.
pub const PARSE: &str = "bench_parse";
/// Rotates the source address, then tail-calls the target.
pub const ROTATE: &str = "bench_rotate";

/// Size of one key set (a power of two): distinct source addresses per rotation.
pub const fn key_set_len(quick: bool) -> u32 {
    if quick { 4096 } else { 65_536 }
}

/// `XDP_ABORTED`, what [`ROTATE`] returns when its tail call failed.
pub const XDP_ABORTED: u32 = 0;

/// tc egress program that passes every frame.
pub const TC_PASS: &str = "bench_tc_pass";
/// tc egress program that consumes every frame (the sender-only run).
pub const TC_CONSUME: &str = "bench_tc_consume";

/// The loaded benchmark object.
pub struct BenchObject {
    ebpf: Ebpf,
    key_slots: u32,
}

impl BenchObject {
    /// Loads the object with room for `key_slots` keys and loads its XDP programs.
    pub fn load(key_slots: u32) -> Result<BenchObject> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("KEYS", key_slots.max(1))
            .load(BENCH_OBJECT)
            .context("loading the benchmark object")?;
        for name in [EMPTY, DROP, PARSE, ROTATE] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the benchmark object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading {name} into the kernel"))?;
        }
        for name in [TC_PASS, TC_CONSUME] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the benchmark object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading {name} into the kernel"))?;
        }
        Ok(BenchObject { ebpf, key_slots })
    }

    /// The XDP program called `name`.
    pub fn xdp(&self, name: &str) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// The XDP program called `name`, mutably (to attach it).
    pub fn xdp_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?)
    }

    /// Writes `keys` (16 bytes each; IPv4 in the first 4) at `base`.
    pub fn write_keys(&mut self, base: u32, keys: &[[u8; 16]]) -> Result<()> {
        ensure!(
            base as usize + keys.len() <= self.key_slots as usize,
            "key set at {base} (+{}) exceeds the {} key slots",
            keys.len(),
            self.key_slots
        );
        let mut map: Array<&mut MapData, [u8; 16]> =
            Array::try_from(self.ebpf.map_mut("KEYS").context("no KEYS map")?)?;
        for (i, key) in keys.iter().enumerate() {
            map.set(base + i as u32, key, 0)
                .context("writing a benchmark key")?;
        }
        Ok(())
    }

    /// Makes [`ROTATE`] cycle through the `len` keys at `base` (`len` a power of two), writing
    /// them as IPv4 (`family` 4) or IPv6 (6) sources; resets the cursor.
    pub fn configure(&mut self, base: u32, len: u32, family: u32) -> Result<()> {
        ensure!(
            len.is_power_of_two(),
            "key set length {len} is not a power of two"
        );
        let mut config: Array<&mut MapData, u32> =
            Array::try_from(self.ebpf.map_mut("CONFIG").context("no CONFIG map")?)?;
        config.set(0, base, 0)?;
        config.set(1, len - 1, 0)?;
        config.set(2, family, 0)?;
        let mut cursor: PerCpuArray<&mut MapData, u32> =
            PerCpuArray::try_from(self.ebpf.map_mut("CURSOR").context("no CURSOR map")?)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        cursor.set(0, aya::maps::PerCpuValues::try_from(vec![0u32; cpus])?, 0)?;
        Ok(())
    }

    /// Makes [`ROTATE`] tail-call `program`.
    pub fn set_target(&mut self, program: &ProgramFd) -> Result<()> {
        let mut target: ProgramArray<&mut MapData> =
            ProgramArray::try_from(self.ebpf.map_mut("TARGET").context("no TARGET map")?)?;
        target
            .set(0, program, 0)
            .context("putting the target program into the tail-call array")
    }

    /// Makes [`ROTATE`] tail-call one of this object's own programs.
    pub fn set_target_own(&mut self, name: &str) -> Result<()> {
        let fd = self.xdp(name)?.fd()?.try_clone()?;
        self.set_target(&fd)
    }

    /// Attaches tc egress program `name` to `ifname` of `ns`, through netlink (cls_bpf on a
    /// clsact qdisc): tcx would not honour [`TC_CONSUME`]'s `TC_ACT_STOLEN`.
    pub fn attach_tc_egress(
        &mut self,
        name: &str,
        ns: &apifence_tests::Netns,
        ifname: &str,
    ) -> Result<SchedClassifierLinkId> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        let id = ns
            .run(|| {
                // Fails with EEXIST after the first call; the qdisc stays with the interface.
                let _ = tc::qdisc_add_clsact(ifname);
                program.attach_with_options(
                    ifname,
                    TcAttachType::Egress,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
            })?
            .with_context(|| format!("attaching {name} to {ifname} egress"))?;
        Ok(id)
    }

    /// Detaches a tc program attached by [`BenchObject::attach_tc_egress`] (from inside `ns`,
    /// where its netlink link lives).
    pub fn detach_tc(
        &mut self,
        name: &str,
        ns: &apifence_tests::Netns,
        id: SchedClassifierLinkId,
    ) -> Result<()> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        ns.run(|| program.detach(id))?
            .with_context(|| format!("detaching {name}"))
    }
}

/// Runs `program` on `frame` `repeat` times in the kernel; returns the kernel's average time per
/// run and the program's verdict.
pub fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(Duration, u32)> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.duration, result.return_value))
}

/// Attaches `program` to interface `ifname` of network namespace `ns` in native mode; the link
/// lives as long as the program stays loaded and attached.
pub fn attach_native(
    program: &mut Xdp,
    ns: &apifence_tests::Netns,
    ifname: &str,
) -> Result<aya::programs::xdp::XdpLinkId> {
    let id = ns
        .run(|| program.attach(ifname, XdpMode::Driver))?
        .with_context(|| format!("attaching to {ifname} (native)"))?;
    Ok(id)
}

/// Detaches a link made by [`attach_native`].
pub fn detach(program: &mut Xdp, id: aya::programs::xdp::XdpLinkId) -> Result<()> {
    program.detach(id).context("detaching an XDP program")
}

/// Fails unless `verdict` shows the rotating program's tail call happened.
pub fn check_tail_call(verdict: u32, what: &str) -> Result<()> {
    if verdict == XDP_ABORTED {
        bail!("{what}: the rotating program's tail call failed (XDP_ABORTED)");
    }
    Ok(())
}
