//! Differential oracle: random frames built with `etherparse` (not the lab's own frame builder)
//! run through the real program with `BPF_PROG_TEST_RUN`, each compared with a naive model of
//! the rules written from the README ("What is filtered", "The range language") without any
//! code of the product: the verdict (pass/drop), the verdict counter that moved, the malformed
//! counter and, for authorized TCP, the merged prefix whose hits (as `stats` reports them) moved.
//! Every probe is judged by two programs: one with the compiled lookup table (the default) and
//! one with the LPM-trie lookup.
//!
//! The frames, the model (with its prefix rule and the readings it takes where the README is
//! silent) and the kernel side are shared with the fuzz target `xdp_differential`: they live in
//! `apifence_tests::oracle` and `support/oracle_kernel.rs`. This file draws random lists and
//! frames.
//!
//! `APIFENCE_ORACLE_PROBES` sets the number of probes (default 100,000; the documented long run
//! uses 1,000,000), `APIFENCE_ORACLE_SEED` replays a run (the seed is printed).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use apifence::policy::Lookup;
use apifence_tests::{
    oracle::{
        hex,
        list::{List, Mode, Near, source_near},
        model::{Counted, model},
        shape::{Ext, L3, L4, Shape, V4Damage, build},
    },
    require_privileges,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

mod support;

use support::oracle_kernel::{Kernel, policy};

/// Probes in a CI run.
const DEFAULT_PROBES: u64 = 100_000;
/// Probes judged against one list before the next list is applied.
const PROBES_PER_LIST: u64 = 400;
/// Mismatches printed in full before the run stops.
const MISMATCHES_SHOWN: usize = 5;

// ---------------------------------------------------------------------------------------------
// Random numbers: SplitMix64, so a seed replays a run exactly.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
}

// ---------------------------------------------------------------------------------------------
// Random lists and frames.

/// Bases the random prefixes gather around, so probes often land inside, next to and between
/// them, and lists overlap and touch.
const V4_BASES: [[u8; 4]; 4] = [
    [198, 51, 100, 0],
    [203, 0, 113, 0],
    [10, 20, 0, 0],
    [192, 0, 2, 128],
];
const V6_BASES: [[u16; 8]; 3] = [
    [0x2001, 0xdb8, 1, 0, 0, 0, 0, 0],
    [0x2001, 0xdb8, 2, 0x8000, 0, 0, 0, 0],
    [0xfd00, 0xabcd, 0, 0, 0, 0, 0, 0],
];

fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    if rng.chance(15) {
        return Ipv4Addr::from(rng.next() as u32);
    }
    let base = u32::from_be_bytes(*rng.pick(&V4_BASES));
    // Vary the low 0..=16 bits.
    let spread = rng.below(17) as u32;
    let noise = if spread == 0 {
        0
    } else {
        (rng.next() as u32) & ((1u32 << spread) - 1)
    };
    Ipv4Addr::from(base ^ noise)
}

fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    if rng.chance(15) {
        let hi = u128::from(rng.next()) << 64;
        return Ipv6Addr::from(hi | u128::from(rng.next()));
    }
    let base = u128::from(Ipv6Addr::from(*rng.pick(&V6_BASES)));
    let spread = rng.below(97) as u32;
    let all = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    let noise = if spread == 0 {
        0
    } else {
        all & ((1u128 << spread) - 1)
    };
    Ipv6Addr::from(base ^ noise)
}

fn random_prefix(rng: &mut Rng, v6: bool) -> IpNet {
    if v6 {
        let len = match rng.below(20) {
            0 => rng.below(16) as u8,
            1..=4 => 128,
            _ => 16 + rng.below(113) as u8,
        };
        IpNet::V6(
            Ipv6Net::new(random_v6(rng), len)
                .expect("length <= 128")
                .trunc(),
        )
    } else {
        let len = match rng.below(40) {
            0 => 0,
            1..=3 => rng.below(8) as u8,
            4..=10 => 32,
            _ => 8 + rng.below(25) as u8,
        };
        IpNet::V4(
            Ipv4Net::new(random_v4(rng), len)
                .expect("length <= 32")
                .trunc(),
        )
    }
}

fn random_list(rng: &mut Rng) -> List {
    let ranges = match rng.below(20) {
        0 => None,
        1 => Some(Vec::new()),
        _ => {
            let n = 1 + rng.below(12);
            Some(
                (0..n)
                    .map(|_| {
                        let v6 = rng.chance(40);
                        random_prefix(rng, v6)
                    })
                    // 0.0.0.0/32 has a meaning of its own; a list made only of it is case 1.
                    .filter(|p| p.to_string() != "0.0.0.0/32")
                    .collect::<Vec<_>>(),
            )
            .filter(|r| !r.is_empty())
        }
    };
    let always_allow = (0..rng.below(4))
        .map(|_| {
            let v6 = rng.chance(40);
            if rng.chance(60) {
                // Single addresses, as usually given.
                let host = random_prefix(rng, v6);
                IpNet::new(host.addr(), host.max_prefix_len()).expect("host prefix")
            } else {
                random_prefix(rng, v6)
            }
        })
        .collect();
    let mut ports = vec![443, 6443];
    if rng.chance(30) {
        ports = (0..1 + rng.below(4)).map(|_| rng.u16()).collect();
        ports.push(*rng.pick(&[443u16, 6443, 0, 65535]));
    }
    ports.sort_unstable();
    ports.dedup();
    let mode = if rng.chance(25) {
        Mode::Monitor
    } else {
        Mode::Enforce
    };
    List {
        ranges,
        always_allow,
        ports,
        mode,
    }
}

fn random_l4(rng: &mut Rng, ports: &[u16]) -> L4 {
    let dport = match rng.below(10) {
        0..=4 => *rng.pick(ports),
        5 => *rng.pick(&[0u16, 1, 442, 444, 6442, 6444, 65535]),
        _ => rng.u16(),
    };
    match rng.below(10) {
        0..=6 => L4::Tcp { dport },
        7 | 8 => L4::Udp { dport },
        _ => L4::Icmp,
    }
}

fn random_ext(rng: &mut Rng) -> Ext {
    match rng.below(5) {
        0 => Ext::HopByHop {
            units: rng.below(3) as u8,
        },
        1 => Ext::Routing {
            units: rng.below(3) as u8,
        },
        2 => Ext::DestOpts {
            units: rng.below(3) as u8,
        },
        3 => Ext::Auth {
            icv_words: (1 + rng.below(4)) as u8,
        },
        _ => Ext::Fragment {
            offset: if rng.chance(50) {
                0
            } else {
                1 + rng.below(8000) as u16
            },
            more: rng.chance(50),
        },
    }
}

/// A source for a probe: often inside a prefix of the list, next to one, or near the bases.
fn probe_source(rng: &mut Rng, list: &List, v6: bool) -> IpAddr {
    let own: Vec<IpNet> = list
        .all()
        .into_iter()
        .filter(|p| matches!(p, IpNet::V6(_)) == v6)
        .collect();
    if !own.is_empty() && rng.chance(75) {
        let p = *rng.pick(&own);
        let near = match rng.below(5) {
            0 => Near::Below,
            1 => Near::Above,
            2 => Near::First,
            3 => Near::Last,
            _ => Near::Inside((u128::from(rng.next()) << 64) | u128::from(rng.next())),
        };
        return source_near(p, near);
    }
    if v6 {
        random_v6(rng).into()
    } else {
        random_v4(rng).into()
    }
}

fn random_shape(rng: &mut Rng, list: &List) -> Shape {
    let tags = match rng.below(20) {
        0..=13 => vec![],
        14 | 15 => vec![0x8100],
        16 => vec![0x88a8],
        17 => vec![0x88a8, 0x8100],
        18 => vec![0x8100, 0x8100],
        _ => vec![0x88a8, 0x8100, 0x8100],
    };
    let l4 = random_l4(rng, &list.ports);
    let l3 = match rng.below(20) {
        0..=9 => L3::V4 {
            source: match probe_source(rng, list, false) {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("asked for IPv4"),
            },
            options: if rng.chance(30) {
                4 * rng.below(11) as usize
            } else {
                0
            },
            fragment_offset: if rng.chance(15) {
                rng.below(0x2000) as u16
            } else {
                0
            },
            more_fragments: rng.chance(20),
            damage: match rng.below(40) {
                0 => V4Damage::Version(*rng.pick(&[0u8, 5, 6, 15])),
                1 => V4Damage::Ihl(rng.below(5) as u8),
                2 => V4Damage::TotalLength(rng.below(20) as u16),
                _ => V4Damage::None,
            },
            l4,
        },
        10..=18 => {
            let n = match rng.below(10) {
                0..=3 => 0,
                4..=7 => 1 + rng.below(3),
                _ => 4 + rng.below(7),
            };
            L3::V6 {
                source: match probe_source(rng, list, true) {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(_) => unreachable!("asked for IPv6"),
                },
                exts: (0..n).map(|_| random_ext(rng)).collect(),
                bad_version: rng.chance(3).then(|| *rng.pick(&[0u8, 4, 7, 15])),
                l4,
            }
        }
        _ => L3::Other {
            ethertype: *rng.pick(&[0x0806, 0x88cc, 0x8847, 0x0000, 0xffff]),
        },
    };
    let mut shape = Shape {
        tags,
        l3,
        truncate: None,
    };
    if rng.chance(15) {
        let full = build(&shape).0.len();
        shape.truncate = Some(14 + rng.below((full - 14 + 1) as u64) as usize);
    }
    shape
}

/// Which of the shapes a probe had, for the coverage summary.
fn kind(shape: &Shape) -> &'static str {
    if shape.truncate.is_some() {
        return "truncated";
    }
    if !shape.tags.is_empty() {
        return if shape.tags.len() == 1 {
            "vlan"
        } else {
            "qinq+"
        };
    }
    match &shape.l3 {
        L3::Other { .. } => "non-ip",
        L3::V4 { damage, .. } if *damage != V4Damage::None => "ipv4 damaged",
        L3::V4 {
            fragment_offset, ..
        } if *fragment_offset != 0 => "ipv4 later fragment",
        L3::V4 { options, .. } if *options > 0 => "ipv4 options",
        L3::V4 {
            l4: L4::Tcp { .. }, ..
        } => "ipv4 tcp",
        L3::V4 {
            l4: L4::Udp { .. }, ..
        } => "ipv4 udp",
        L3::V4 { .. } => "ipv4 icmp",
        L3::V6 {
            bad_version: Some(_),
            ..
        } => "ipv6 damaged",
        L3::V6 { exts, .. } if exts.iter().any(|e| matches!(e, Ext::Fragment { .. })) => {
            "ipv6 fragment"
        }
        L3::V6 { exts, .. } if exts.len() > 8 => "ipv6 chain > 8",
        L3::V6 { exts, .. } if !exts.is_empty() => "ipv6 extensions",
        L3::V6 {
            l4: L4::Tcp { .. }, ..
        } => "ipv6 tcp",
        L3::V6 {
            l4: L4::Udp { .. }, ..
        } => "ipv6 udp",
        L3::V6 { .. } => "ipv6 icmp",
    }
}

#[test]
fn random_frames_match_the_readme_model() {
    if !require_privileges("random_frames_match_the_readme_model") {
        return;
    }
    let probes: u64 = std::env::var("APIFENCE_ORACLE_PROBES")
        .map(|v| {
            v.parse()
                .expect("APIFENCE_ORACLE_PROBES: a number of probes")
        })
        .unwrap_or(DEFAULT_PROBES);
    let seed: u64 = std::env::var("APIFENCE_ORACLE_SEED")
        .map(|v| v.parse().expect("APIFENCE_ORACLE_SEED: a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        });
    println!("oracle: seed {seed} (replay with APIFENCE_ORACLE_SEED={seed}), {probes} probes");
    let started = Instant::now();
    let mut rng = Rng(seed);

    let mut list = random_list(&mut rng);
    // Every probe is judged by both lookups (the compiled table, the default, and the tries).
    let mut kernels: Vec<Kernel> = Lookup::ALL
        .iter()
        .map(|lookup| Kernel::new(&list, *lookup))
        .collect();
    let mut mismatches = Vec::new();
    let mut outcomes: BTreeMap<(Counted, bool), u64> = BTreeMap::new();
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut lists = 1u64;
    let mut run = 0u64;
    while run < probes && mismatches.len() < MISMATCHES_SHOWN {
        if run > 0 && run.is_multiple_of(PROBES_PER_LIST) {
            list = random_list(&mut rng);
            for kernel in &mut kernels {
                kernel.apply(&list);
            }
            lists += 1;
        }
        let shape = random_shape(&mut rng, &list);
        let (frame, layout) = build(&shape);
        let want = model(&list, &shape, &layout, frame.len());
        *outcomes.entry((want.counted, want.malformed)).or_default() += 1;
        *kinds.entry(kind(&shape)).or_default() += 1;
        for kernel in &mut kernels {
            let got = kernel.run(&frame);
            if got != want {
                mismatches.push(format!(
                    "probe {run}: frame {}\n  shape {shape:?}\n  policy {:?}\n  model  {want:?}\n  kernel ({:?} lookup) {got:?}",
                    hex(&frame),
                    policy(&list),
                    kernel.lookup
                ));
            }
        }
        run += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "oracle: {run} probes over {lists} lists in {:.1} s, {} mismatches",
        elapsed.as_secs_f64(),
        mismatches.len()
    );
    println!("oracle: outcomes (counter, malformed) {outcomes:?}");
    println!("oracle: shapes {kinds:?}");
    assert!(
        mismatches.is_empty(),
        "seed {seed}: the kernel disagrees with the model:\n{}",
        mismatches.join("\n")
    );
    // Nothing vacuous: every outcome and every shape was exercised.
    for outcome in [
        (Counted::Authorized, false),
        (Counted::Unprotected, false),
        (Counted::Disabled, false),
        (Counted::Disabled, true),
        (Counted::Dropped, false),
        (Counted::Dropped, true),
        (Counted::WouldDrop, false),
        (Counted::WouldDrop, true),
    ] {
        assert!(
            outcomes.get(&outcome).copied().unwrap_or(0) > 0 || probes < DEFAULT_PROBES,
            "seed {seed}: no probe ended as {outcome:?}"
        );
    }
    assert!(
        kinds.len() >= 17 || probes < DEFAULT_PROBES,
        "seed {seed}: only these shapes were made: {kinds:?}"
    );
}
