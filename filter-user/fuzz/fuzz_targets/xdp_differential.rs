//! Differential fuzzing of the XDP program: every input becomes a frame that runs through the
//! real program (the embedded object, loaded once per process, one program per fixed list and
//! lookup) with `BPF_PROG_TEST_RUN`, and the verdict, the counter that moved, the malformed
//! count and the merged prefix credited with the hit are compared with the naive model of the
//! README in `apifence_tests::oracle` (written without the product's code). A mismatch aborts
//! with the frame in hex, the list, the model's verdict and the kernel's.
//!
//! The first byte picks the list (its low bits) and the input kind (its top bit):
//! - raw: the rest of the input is the frame (padded to an Ethernet header, cut at
//!   [`MAX_FRAME`]), judged by the model's byte reader;
//! - structured: the rest is read with `arbitrary` as a frame description — 0–3 VLAN tags, IPv4
//!   with options, fragments and damaged fields, IPv6 extension chains, TCP/UDP/ICMP/non-IP, a
//!   source near a prefix of the list, a truncation point — written with `etherparse`, and then
//!   up to four byte patches. Unpatched, the model judges it twice (from the description and
//!   from the bytes), and the two must agree as well.
//!
//! Needs root (BPF); without it, or when the program doesn't load, the first input panics, so
//! a run can't pass without judging anything. The pins live in a bpffs inside a private mount
//! namespace, so they go with the process however it ends.
#![no_main]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use apifence::policy::Lookup;
use apifence_tests::oracle::{
    hex,
    list::{List, Mode, Near, source_near},
    model::{judge, model, seen_bytes},
    shape::{
        Ext, L3, L4, MAX_AUTH_ICV_WORDS, MAX_EXT_UNITS, MAX_FRAGMENT_OFFSET, MAX_V4_OPTIONS, Shape,
        TPID_8021AD, TPID_8021Q, V4Damage, build,
    },
};
use ipnet::IpNet;
use libfuzzer_sys::{
    arbitrary::{Result, Unstructured},
    fuzz_target,
};
use support::oracle_kernel::{Kernel, policy};

/// Longest frame run (`BPF_PROG_TEST_RUN` takes at most a page minus head- and tailroom for a
/// program without frags).
const MAX_FRAME: usize = 2048;
/// Shortest frame `BPF_PROG_TEST_RUN` takes: an Ethernet header.
const MIN_FRAME: usize = 14;
/// Byte patches applied to a structured frame at most.
const MAX_PATCHES: usize = 4;
/// IPv6 extension headers a description holds at most (the parser walks 8).
const MAX_EXTS: usize = 11;

fn net(text: &str) -> IpNet {
    text.parse().expect("a prefix")
}

fn nets(texts: &[&str]) -> Vec<IpNet> {
    texts.iter().map(|t| net(t)).collect()
}

/// The fixed lists: IPv4 and IPv6 ranges (adjacent, nested, a /128), always-allow entries
/// inside, next to and outside the ranges, protected ports including 0 and 65535, both modes,
/// only-always-allow and disabled.
fn lists() -> Vec<List> {
    vec![
        List {
            ranges: Some(nets(&[
                "198.51.100.0/24",
                "203.0.113.0/25",
                "10.20.0.0/16",
                "192.0.2.128/26",
                "2001:db8:1::/48",
                "2001:db8:2:8000::/49",
                "fd00:abcd::/32",
                "2001:db8:3::5/128",
            ])),
            always_allow: nets(&[
                "198.51.100.7/32",
                "203.0.113.128/25",
                "192.0.2.200/32",
                "2001:db8:ffff::1/128",
                "2001:db8:1:5::/64",
            ]),
            ports: vec![443, 6443],
            mode: Mode::Enforce,
        },
        List {
            ranges: Some(nets(&[
                "10.0.0.0/8",
                "10.20.30.0/24",
                "172.16.0.0/12",
                "0.0.0.0/1",
                "2001:db8::/32",
                "2001:db8:1:2::/64",
            ])),
            always_allow: nets(&["10.20.30.40/32", "fd00::1/128"]),
            ports: vec![0, 22, 443, 8443, 65535],
            mode: Mode::Monitor,
        },
        List {
            ranges: Some(Vec::new()),
            always_allow: nets(&["198.51.100.0/28", "2001:db8:1::/64"]),
            ports: vec![443, 6443],
            mode: Mode::Enforce,
        },
        List {
            ranges: None,
            always_allow: nets(&["198.51.100.7/32"]),
            ports: vec![443, 6443],
            mode: Mode::Enforce,
        },
    ]
}

/// The programs of one process: for each list, one per lookup.
struct Lab {
    lists: Vec<List>,
    kernels: Vec<Vec<Kernel>>,
}

impl Lab {
    fn new() -> Lab {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!(
                "xdp_differential needs root: it loads the XDP program and runs frames through \
                 BPF_PROG_TEST_RUN (run it through `sudo cargo xtask fuzz`)"
            );
        }
        apifence_tests::bpffs::private_mounts()
            .unwrap_or_else(|e| panic!("xdp_differential: private mounts for the pins: {e:#}"));
        let lists = lists();
        let kernels = lists
            .iter()
            .map(|list| {
                Lookup::ALL
                    .iter()
                    .map(|lookup| Kernel::new(list, *lookup))
                    .collect()
            })
            .collect();
        Lab { lists, kernels }
    }
}

thread_local! {
    static LAB: RefCell<Option<Lab>> = const { RefCell::new(None) };
}

fn port(u: &mut Unstructured, ports: &[u16]) -> Result<u16> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=4 => *u.choose(ports)?,
        5 => *u.choose(&[0u16, 1, 442, 444, 6442, 6444, 65535])?,
        _ => u.arbitrary()?,
    })
}

fn l4(u: &mut Unstructured, ports: &[u16]) -> Result<L4> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=6 => L4::Tcp {
            dport: port(u, ports)?,
        },
        7 | 8 => L4::Udp {
            dport: port(u, ports)?,
        },
        _ => L4::Icmp,
    })
}

fn ext(u: &mut Unstructured) -> Result<Ext> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => Ext::HopByHop {
            units: u.int_in_range(0..=MAX_EXT_UNITS)?,
        },
        1 => Ext::Routing {
            units: u.int_in_range(0..=MAX_EXT_UNITS)?,
        },
        2 => Ext::DestOpts {
            units: u.int_in_range(0..=MAX_EXT_UNITS)?,
        },
        3 => Ext::Auth {
            icv_words: u.int_in_range(1..=MAX_AUTH_ICV_WORDS)?,
        },
        _ => Ext::Fragment {
            offset: if u.arbitrary()? {
                0
            } else {
                u.int_in_range(1..=MAX_FRAGMENT_OFFSET)?
            },
            more: u.arbitrary()?,
        },
    })
}

/// A source of `v6`'s family: mostly at an edge of or inside a prefix of `list`.
fn source(u: &mut Unstructured, list: &List, v6: bool) -> Result<IpAddr> {
    let own: Vec<IpNet> = list
        .all()
        .into_iter()
        .filter(|p| matches!(p, IpNet::V6(_)) == v6)
        .collect();
    if !own.is_empty() && u.int_in_range(0..=3u8)? != 0 {
        let p = *u.choose(&own)?;
        let near = match u.int_in_range(0..=4u8)? {
            0 => Near::Below,
            1 => Near::Above,
            2 => Near::First,
            3 => Near::Last,
            _ => Near::Inside(u.arbitrary()?),
        };
        return Ok(source_near(p, near));
    }
    Ok(if v6 {
        Ipv6Addr::from(u.arbitrary::<u128>()?).into()
    } else {
        Ipv4Addr::from(u.arbitrary::<u32>()?).into()
    })
}

/// A frame description for `list`.
fn shape(u: &mut Unstructured, list: &List) -> Result<Shape> {
    let tags = (0..u.int_in_range(0..=3u8)?)
        .map(|_| Ok(*u.choose(&[TPID_8021Q, TPID_8021AD])?))
        .collect::<Result<Vec<u16>>>()?;
    let l3 = match u.int_in_range(0..=19u8)? {
        0..=9 => {
            let IpAddr::V4(source) = source(u, list, false)? else {
                unreachable!("asked for IPv4")
            };
            let options = 4 * usize::from(u.int_in_range(0..=(MAX_V4_OPTIONS / 4) as u8)?);
            let header = 20 + options;
            L3::V4 {
                source,
                options,
                fragment_offset: if u.ratio(1, 5)? {
                    u.int_in_range(1..=MAX_FRAGMENT_OFFSET)?
                } else {
                    0
                },
                more_fragments: u.arbitrary()?,
                damage: match u.int_in_range(0..=9u8)? {
                    0 => V4Damage::Version(*u.choose(&[0u8, 5, 6, 15])?),
                    1 => V4Damage::Ihl(u.int_in_range(0..=4)?),
                    // Below the header, as the description promises; larger values are the
                    // byte patches' job.
                    2 => V4Damage::TotalLength(u.int_in_range(0..=(header - 1) as u16)?),
                    _ => V4Damage::None,
                },
                l4: l4(u, &list.ports)?,
            }
        }
        10..=18 => {
            let IpAddr::V6(source) = source(u, list, true)? else {
                unreachable!("asked for IPv6")
            };
            let exts = (0..u.int_in_range(0..=MAX_EXTS)?)
                .map(|_| ext(u))
                .collect::<Result<Vec<Ext>>>()?;
            L3::V6 {
                source,
                exts,
                bad_version: if u.ratio(1, 30)? {
                    Some(*u.choose(&[0u8, 4, 7, 15])?)
                } else {
                    None
                },
                l4: l4(u, &list.ports)?,
            }
        }
        _ => L3::Other {
            // Not IP and not a tag: the description writes no header after it.
            ethertype: match u.arbitrary::<u16>()? {
                0x0800 | 0x86dd | TPID_8021Q | TPID_8021AD => 0x0806,
                other => other,
            },
        },
    };
    let mut shape = Shape {
        tags,
        l3,
        truncate: None,
    };
    if u.ratio(1, 6)? {
        let full = build(&shape).0.len();
        shape.truncate = Some(u.int_in_range(MIN_FRAME..=full)?);
    }
    Ok(shape)
}

/// Runs `frame` through both programs of list `which` and compares them with `want`.
fn check(lab: &mut Lab, which: usize, frame: &[u8], described: Option<&Shape>) {
    let list = &lab.lists[which];
    let want = judge(list, seen_bytes(frame, &list.ports));
    let got: Vec<_> = lab.kernels[which]
        .iter_mut()
        .map(|kernel| (kernel.lookup, kernel.run(frame)))
        .collect();
    if got.iter().any(|(_, verdict)| *verdict != want) {
        panic!(
            "xdp_differential: the kernel disagrees with the model\n  frame  {}\n  list   {:?}\n  \
             shape  {described:?}\n  model  {want:?}\n  kernel {got:?}",
            hex(frame),
            policy(list),
        );
    }
}

fuzz_target!(|input: &[u8]| {
    LAB.with(|cell| {
        let mut cell = cell.borrow_mut();
        let lab = cell.get_or_insert_with(Lab::new);
        let Some((&first, rest)) = input.split_first() else {
            return;
        };
        let which = usize::from(first & 0x7f) % lab.lists.len();
        if first & 0x80 != 0 {
            let mut frame = rest[..rest.len().min(MAX_FRAME)].to_vec();
            if frame.len() < MIN_FRAME {
                frame.resize(MIN_FRAME, 0);
            }
            check(lab, which, &frame, None);
            return;
        }
        let mut u = Unstructured::new(rest);
        let Ok(shape) = shape(&mut u, &lab.lists[which]) else {
            return;
        };
        let (mut frame, layout) = build(&shape);
        let list = &lab.lists[which];
        let described = model(list, &shape, &layout, frame.len());
        let read = judge(list, seen_bytes(&frame, &list.ports));
        assert_eq!(
            described,
            read,
            "xdp_differential: the model's two readings disagree (a model bug)\n  frame {}\n  shape {shape:?}",
            hex(&frame)
        );
        let patches = u.int_in_range(0..=MAX_PATCHES).unwrap_or(0);
        for _ in 0..patches {
            let (Ok(at), Ok(value)) = (u.arbitrary::<u16>(), u.arbitrary::<u8>()) else {
                break;
            };
            let at = usize::from(at) % frame.len();
            frame[at] = value;
        }
        check(lab, which, &frame, Some(&shape));
    });
});
