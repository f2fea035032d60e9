//! Loading the program, attaching it to interfaces and pinning it all, and taking it down again.

use std::{io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, Xdp, XdpMode, links::FdLink},
};
use aya_obj::programs::XdpAttachType;
use filter_common::{
    ALL_MAPS, GLOBAL_FRAMING, GLOBAL_LOOKUP, GLOBAL_TRACE_FILTER, MAP_RULE_HITS, MAP_TABLE_CHUNKS,
    MAP_TABLE_ENTRIES, MAP_TABLE_V4_FILTER, MAP_TABLE_V6_FILTER, MAP_V4_SLOT0, MAP_V4_SLOT1,
    MAP_V6_SLOT0, MAP_V6_SLOT1, PROGRAM_NAME, TABLE_ELEMENTS_UNUSED, TRACE_PROGRAM_NAME,
    TraceFilter, rule_capacity, table_chunks_per_slot, table_entries_per_slot,
};

use crate::{
    kernel::{
        framing::{Framing, link_type_name},
        interfaces::{self, InterfacesError},
        names::{NameError, check_interface},
        paths::PinLayout,
        program::{OBJECT, TRACE_OBJECT},
        table_maps::lookup_of_pins,
    },
    policy::{AttachedMode, Lookup, XdpModeChoice},
};

/// Loading or attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The object file could not be loaded.
    #[error("loading the XDP object: {0}")]
    Load(#[source] aya::EbpfError),
    /// The kernel rejected the program (verifier) or another program step failed.
    #[error("{action}: {source}")]
    Program {
        /// What was being done.
        action: String,
        /// The aya error.
        #[source]
        source: ProgramError,
    },
    /// No such interface in this network namespace.
    #[error(
        "interface {0:?} does not exist in this network namespace; `ip link` lists interfaces \
         (use --netns NAME to act in another namespace)"
    )]
    UnknownInterface(String),
    /// Not a possible interface name (checked before it reaches aya or a pin path).
    #[error(transparent)]
    BadName(#[from] NameError),
    /// The interface's link type is one the program does not parse: attaching would filter
    /// nothing (or the wrong header), so it is refused.
    #[error(
        "interface {interface:?} has link type {}, whose frames the filter does not parse \
         (it parses Ethernet devices, ARPHRD_ETHER, and L3 devices whose frames start at the IP \
         header: tun and WireGuard, ARPHRD_NONE); not attached. Restrict what reaches it (the \
         tunnel's peers) or take it down (see the README's \"Where to attach\")",
        link_type_name(*.hardware_type)
    )]
    UnsupportedLinkType {
        /// The interface.
        interface: String,
        /// Its `ARPHRD_*` link type.
        hardware_type: u16,
    },
    /// The interface's link type could not be read.
    #[error("reading the link type of {interface:?}")]
    LinkType {
        /// The interface.
        interface: String,
        /// The rtnetlink failure.
        #[source]
        source: InterfacesError,
    },
    /// Pinning or unpinning failed.
    #[error("{action} {path}: {source}")]
    Pin {
        /// What was being done.
        action: &'static str,
        /// The pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn program_error(action: String) -> impl FnOnce(ProgramError) -> AttachError {
    move |source| match source {
        ProgramError::UnknownInterface { name } => AttachError::UnknownInterface(name),
        source => AttachError::Program { action, source },
    }
}

fn pin_error(action: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> AttachError {
    move |source| AttachError::Pin {
        action,
        path,
        source,
    }
}

/// [`pin_error`] for aya's pin and link errors.
fn pin_failure<E>(action: &'static str, path: PathBuf) -> impl FnOnce(E) -> AttachError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    move |e| pin_error(action, path)(io::Error::other(e))
}

/// Whether a program is pinned under `layout`.
pub fn is_loaded(layout: &PinLayout) -> bool {
    layout.program().exists()
}

/// Which program of the embedded object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instance {
    /// The filter ([`PROGRAM_NAME`]): pinned and attached.
    Production,
    /// The same filter that also reports the verdicts on the sources `TraceFilter` selects
    /// ([`TRACE_PROGRAM_NAME`] of [`TRACE_OBJECT`]): swapped in for a while by `apifence trace`,
    /// never pinned.
    Trace(TraceFilter),
}

impl Instance {
    /// The embedded object holding its program.
    pub fn object(self) -> &'static [u8] {
        match self {
            Instance::Production => OBJECT,
            Instance::Trace(_) => TRACE_OBJECT,
        }
    }

    /// Its program's name in the object file.
    pub fn program_name(self) -> &'static str {
        match self {
            Instance::Production => PROGRAM_NAME,
            Instance::Trace(_) => TRACE_PROGRAM_NAME,
        }
    }
}

/// Loads the embedded object with tries of `capacity` prefixes per family and the compiled
/// table sized for it (or, for the LPM-trie lookup, table maps of one element), reusing the
/// maps pinned under `layout` (creating and pinning those that are missing), and loads the
/// XDP program of `instance` into the kernel (not pinned, not attached) with `lookup` selected,
/// parsing frames as `framing` says they start.
fn load_embedded(
    layout: &PinLayout,
    capacity: u32,
    lookup: Lookup,
    framing: Framing,
    instance: Instance,
) -> Result<Ebpf, AttachError> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(layout.root());
    for trie in [MAP_V4_SLOT0, MAP_V4_SLOT1, MAP_V6_SLOT0, MAP_V6_SLOT1] {
        loader.map_max_entries(trie, capacity);
    }
    loader.map_max_entries(MAP_RULE_HITS, rule_capacity(capacity));
    let (chunks, entry_pairs) = match lookup {
        // Two slots of chunks; entries are stored two per element.
        Lookup::Compiled => (
            2 * table_chunks_per_slot(capacity),
            table_entries_per_slot(capacity),
        ),
        Lookup::LpmTrie => (TABLE_ELEMENTS_UNUSED, TABLE_ELEMENTS_UNUSED),
    };
    loader.map_max_entries(MAP_TABLE_CHUNKS, chunks);
    loader.map_max_entries(MAP_TABLE_ENTRIES, entry_pairs);
    if lookup == Lookup::LpmTrie {
        loader.map_max_entries(MAP_TABLE_V4_FILTER, TABLE_ELEMENTS_UNUSED);
        loader.map_max_entries(MAP_TABLE_V6_FILTER, TABLE_ELEMENTS_UNUSED);
    }
    let global = lookup.global();
    loader.override_global(GLOBAL_LOOKUP, &global, true);
    let framing_global = framing.global();
    loader.override_global(GLOBAL_FRAMING, &framing_global, true);
    if let Instance::Trace(filter) = &instance {
        loader.override_global(GLOBAL_TRACE_FILTER, filter, true);
    }
    let mut ebpf = loader.load(instance.object()).map_err(AttachError::Load)?;
    embedded_program(&mut ebpf, instance.program_name())?
        .load()
        .map_err(program_error(format!(
            "loading the program {} into the kernel",
            instance.program_name()
        )))?;
    Ok(ebpf)
}

/// The XDP program called `name` of the embedded object.
pub fn embedded_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, AttachError> {
    ebpf.program_mut(name)
        .ok_or_else(|| AttachError::Program {
            action: format!("finding program {name} in the object file"),
            source: ProgramError::AlreadyLoaded,
        })?
        .try_into()
        .map_err(program_error("reading the program".into()))
}

/// Loads the program (its Ethernet instance) and creates its maps (reusing any maps already
/// pinned there, so a half-finished earlier attach loses nothing), pinning program and maps
/// under `layout`. `capacity` sizes the tries and tables of a fresh load; `lookup` selects the
/// lookup.
pub fn load_and_pin(layout: &PinLayout, capacity: u32, lookup: Lookup) -> Result<(), AttachError> {
    // An IPv6 filter an older build's detach left pinned (it didn't know the map) may have
    // another size than this load needs, and aya would reuse it as it is. No slot vouches
    // for a fresh one's words until a writer fills them (`SLOT_FLAG_V6_FILTER`).
    unpin(layout.map(MAP_TABLE_V6_FILTER))?;
    let mut ebpf = load_embedded(
        layout,
        capacity,
        lookup,
        Framing::Ethernet,
        Instance::Production,
    )?;
    let program = embedded_program(&mut ebpf, PROGRAM_NAME)?;
    program
        .pin(layout.program())
        .map_err(pin_failure("pinning the program at", layout.program()))?;
    let links = layout.links_dir();
    std::fs::create_dir_all(&links).map_err(pin_error("creating", links))
}

/// The trie capacity and the lookup the maps pinned under `layout` were made for.
fn pinned_sizing(layout: &PinLayout) -> Result<(u32, Lookup), AttachError> {
    use aya::maps::MapData;
    let capacity = MapData::from_pin(layout.map(MAP_V4_SLOT0))
        .and_then(|map| map.info())
        .map(|info| info.max_entries())
        .map_err(pin_failure(
            "reading the capacity of",
            layout.map(MAP_V4_SLOT0),
        ))?;
    let lookup = lookup_of_pins(layout).map_err(|source| AttachError::Pin {
        action: "reading which lookup the maps were made for from",
        path: layout.map(MAP_TABLE_CHUNKS),
        source: std::io::Error::other(source),
    })?;
    Ok((capacity, lookup))
}

/// Makes sure the instance of the loaded program for `framing` is pinned under `layout`: the
/// Ethernet one is pinned by [`load_and_pin`]; the IP-first one is loaded (on the maps already
/// pinned, with their capacity and lookup) and pinned the first time an L3 device is attached.
pub fn ensure_instance(layout: &PinLayout, framing: Framing) -> Result<(), AttachError> {
    let path = layout.program_for(framing);
    if path.exists() {
        return Ok(());
    }
    let (capacity, lookup) = pinned_sizing(layout)?;
    let mut ebpf = load_embedded(layout, capacity, lookup, framing, Instance::Production)?;
    embedded_program(&mut ebpf, PROGRAM_NAME)?
        .pin(&path)
        .map_err(pin_failure("pinning the program at", path))
}

/// The framing of `interface`'s frames, from its link type; an interface whose frames the
/// program does not parse is refused.
pub fn framing_of(interface: &str) -> Result<Framing, AttachError> {
    let hardware_type = interfaces::link_type(interface)
        .map_err(|source| AttachError::LinkType {
            interface: interface.to_owned(),
            source,
        })?
        .ok_or_else(|| AttachError::UnknownInterface(interface.to_owned()))?;
    Framing::of_link_type(hardware_type).ok_or_else(|| AttachError::UnsupportedLinkType {
        interface: interface.to_owned(),
        hardware_type,
    })
}

/// Attaches the pinned program to `interface` and pins the link: the instance for the
/// interface's framing (loaded and pinned first if needed), refusing link types the program
/// does not parse. Returns the mode used and the framing.
pub fn attach_interface(
    layout: &PinLayout,
    interface: &str,
    choice: XdpModeChoice,
) -> Result<(AttachedMode, Framing), AttachError> {
    check_interface(interface)?;
    let framing = framing_of(interface)?;
    ensure_instance(layout, framing)?;
    let mut program = Xdp::from_pin(layout.program_for(framing), XdpAttachType::Interface)
        .map_err(program_error("opening the pinned program".into()))?;
    let attempt = |program: &mut Xdp, mode: XdpMode| {
        program
            .attach(interface, mode)
            .map_err(program_error(format!("attaching to {interface}")))
    };
    let (link_id, mode) = match choice {
        XdpModeChoice::Native => (
            program
                .attach(interface, XdpMode::Driver)
                .map_err(program_error(match framing {
                    Framing::Ethernet => format!("attaching to {interface} in native mode"),
                    // No L3 device driver implements native XDP.
                    Framing::Ip => format!(
                        "attaching to {interface} in native mode (an L3 device, whose drivers \
                         have no native XDP: use --xdp-mode skb or auto)"
                    ),
                }))?,
            AttachedMode::Native,
        ),
        XdpModeChoice::Skb => (attempt(&mut program, XdpMode::Skb)?, AttachedMode::Skb),
        XdpModeChoice::Auto => match attempt(&mut program, XdpMode::Driver) {
            Ok(id) => (id, AttachedMode::Native),
            Err(AttachError::UnknownInterface(name)) => {
                return Err(AttachError::UnknownInterface(name));
            }
            Err(native_error) => {
                eprintln!(
                    "note: native XDP is not available on {interface} ({native_error}); \
                     attaching in skb (generic) mode"
                );
                (attempt(&mut program, XdpMode::Skb)?, AttachedMode::Skb)
            }
        },
    };
    let link = program
        .take_link(link_id)
        .map_err(program_error(format!("taking the link of {interface}")))?;
    let path = layout.link(interface);
    let fd_link = FdLink::try_from(link).map_err(pin_failure(
        "the kernel gave no bpf_link (kernel 5.9 or later is required) for",
        path.clone(),
    ))?;
    fd_link
        .pin(&path)
        .map_err(pin_failure("pinning the link at", path))?;
    Ok((mode, framing))
}

/// Detaches `interface`: detaches its pinned link from the interface right away
/// (`BPF_LINK_DETACH`), then removes the pin. Unpinning alone would detach only once the kernel
/// frees the link, which it defers.
pub fn detach_interface(layout: &PinLayout, interface: &str) -> Result<(), AttachError> {
    check_interface(interface)?;
    let path = layout.link(interface);
    detach_pinned_link(&path).map_err(pin_error("detaching the link pinned at", path.clone()))?;
    std::fs::remove_file(&path).map_err(pin_error("unpinning the link", path))
}

/// `BPF_OBJ_GET` on `path`: a descriptor of the pinned object.
fn open_pinned(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    const BPF_OBJ_GET: libc::c_long = 7;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // union bpf_attr for BPF_OBJ_GET: { u64 pathname; u32 bpf_fd; u32 file_flags; ... }.
    let get = [c_path.as_ptr() as u64, 0, 0, 0];
    // SAFETY: `get` is a zero-padded bpf_attr whose pathname points at a live C string.
    let fd = unsafe { bpf(BPF_OBJ_GET, &get) }?;
    // SAFETY: the kernel just returned this descriptor; we own it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_GET` on `path`, then `BPF_LINK_DETACH` on the link it names.
fn detach_pinned_link(path: &std::path::Path) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    let link = open_pinned(path)?;
    // union bpf_attr for BPF_LINK_DETACH: { u32 link_fd; }.
    let detach = [std::os::fd::AsRawFd::as_raw_fd(&link) as u32, 0, 0, 0];
    // SAFETY: `detach` is a zero-padded bpf_attr naming an open link descriptor.
    unsafe { bpf(BPF_LINK_DETACH, &detach) }?;
    Ok(())
}

/// The `bpf(2)` syscall: its non-negative result, or the error it set.
///
/// # Safety
/// `attr` must be a zero-padded `union bpf_attr` that is valid for `cmd`, and every pointer in
/// it must stay valid for the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &[T]) -> io::Result<libc::c_long> {
    // SAFETY: as the caller promises.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Whether an attachment still filters the interface of its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The link is attached to the interface that has this name now.
    Live {
        /// The interface's index.
        ifindex: u32,
    },
    /// The interface the link was attached to is gone (deleted, perhaps created again under the
    /// same name): nothing filters the name's current interface.
    Stale {
        /// Where the link is attached (0: nowhere, its interface was deleted).
        link_ifindex: u32,
        /// The index of the interface with this name now, if there is one.
        current_ifindex: Option<u32>,
    },
}

impl Liveness {
    /// Whether the attachment filters the interface of its name.
    pub fn is_live(self) -> bool {
        matches!(self, Liveness::Live { .. })
    }

    /// Why an attachment is stale, for messages.
    pub fn describe(self, interface: &str) -> String {
        match self {
            Liveness::Live { ifindex } => format!("{interface}: live (ifindex {ifindex})"),
            Liveness::Stale {
                current_ifindex: Some(now),
                ..
            } => format!(
                "{interface}: stale (the interface was deleted and created again as ifindex \
                 {now}, which nothing filters; `apifence attach {interface}` repairs it)"
            ),
            Liveness::Stale {
                current_ifindex: None,
                ..
            } => format!(
                "{interface}: stale (the interface was deleted; `apifence attach {interface}` \
                 re-attaches once it exists again)"
            ),
        }
    }
}

/// The interface index the XDP link pinned at `path` is attached to (0 once its interface is
/// gone), from `BPF_OBJ_GET_INFO_BY_FD` (`bpf_link_info.xdp.ifindex`, Linux 5.9+).
fn pinned_link_ifindex(path: &std::path::Path) -> io::Result<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    let link = open_pinned(path)?;
    // struct bpf_link_info: u32 type, id, prog_id, then (8-aligned) the union whose xdp member
    // starts with u32 ifindex: word 4.
    let mut info = [0u32; 16];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: { u32 bpf_fd; u32 info_len; u64 info; }.
    let attr = [
        u64::from(std::os::fd::AsRawFd::as_raw_fd(&link) as u32)
            | ((std::mem::size_of_val(&info) as u64) << 32),
        info.as_mut_ptr() as u64,
        0,
        0,
    ];
    // SAFETY: `attr` is a zero-padded bpf_attr naming an open descriptor and a live buffer of
    // the length it gives.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) }?;
    if info[0] != BPF_LINK_TYPE_XDP {
        return Err(io::Error::other(format!(
            "{} is not an XDP link (link type {})",
            path.display(),
            info[0]
        )));
    }
    Ok(info[4])
}

/// Whether `interface`'s pinned link still filters the interface of that name.
pub fn liveness(layout: &PinLayout, interface: &str) -> Result<Liveness, AttachError> {
    check_interface(interface)?;
    let path = layout.link(interface);
    let link_ifindex =
        pinned_link_ifindex(&path).map_err(pin_error("reading the link pinned at", path))?;
    let name = std::ffi::CString::new(interface).map_err(|e| AttachError::Pin {
        action: "naming",
        path: layout.link(interface),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: a valid NUL-terminated name.
    let current = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let current_ifindex = (current != 0).then_some(current);
    if link_ifindex != 0 && current_ifindex == Some(link_ifindex) {
        Ok(Liveness::Live {
            ifindex: link_ifindex,
        })
    } else {
        Ok(Liveness::Stale {
            link_ifindex,
            current_ifindex,
        })
    }
}

/// Whether a live pinned link filters `interface` now.
pub fn filters(layout: &PinLayout, interface: &str) -> bool {
    liveness(layout, interface).is_ok_and(|l| l.is_live())
}

/// The attached interfaces whose links no longer filter the interface of their name, with why.
pub fn stale_interfaces(layout: &PinLayout) -> Vec<(String, Liveness)> {
    attached_interfaces(layout)
        .into_iter()
        .filter_map(|name| match liveness(layout, &name) {
            Ok(live) if live.is_live() => None,
            Ok(stale) => Some((name, stale)),
            // An unreadable link filters nothing we can vouch for.
            Err(_) => Some((
                name,
                Liveness::Stale {
                    link_ifindex: 0,
                    current_ifindex: None,
                },
            )),
        })
        .collect()
}

/// Interfaces with a pinned link under `layout`.
pub fn attached_interfaces(layout: &PinLayout) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.links_dir())
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes every pin apifence made under `layout`: links, program, maps.
pub fn remove_all_pins(layout: &PinLayout) -> Result<(), AttachError> {
    for interface in attached_interfaces(layout) {
        detach_interface(layout, &interface)?;
    }
    let links = layout.links_dir();
    if links.exists() {
        std::fs::remove_dir(&links).map_err(pin_error("removing", links))?;
    }
    // The Ethernet instance last: its pin is what marks the filter as loaded.
    let mut pins: Vec<PathBuf> = Framing::ALL
        .iter()
        .rev()
        .map(|framing| layout.program_for(*framing))
        .collect();
    pins.extend(ALL_MAPS.iter().map(|name| layout.map(name)));
    for pin in pins {
        unpin(pin)?;
    }
    Ok(())
}

/// Removes the pin `path`; one that is not there is fine.
fn unpin(path: PathBuf) -> Result<(), AttachError> {
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(pin_error("unpinning", path)(e)),
        _ => Ok(()),
    }
}

/// Loads `instance` of the embedded program for `framing` next to the pinned one: the same
/// capacity and lookup, reusing every pinned map (not pinned itself, not attached).
pub fn load_next_to_pins(
    layout: &PinLayout,
    framing: Framing,
    instance: Instance,
) -> Result<Ebpf, AttachError> {
    let (capacity, lookup) = pinned_sizing(layout)?;
    load_embedded(layout, capacity, lookup, framing, instance)
}

/// Makes `interface`'s pinned link run `new` instead of `expected` (`bpf_link_update` with
/// `BPF_F_REPLACE`): atomically, no packet goes unfiltered, and only if the link still runs
/// `expected` (it fails with `EPERM` otherwise, so a program someone else put there stays).
pub fn swap_program(
    layout: &PinLayout,
    interface: &str,
    new: std::os::fd::BorrowedFd<'_>,
    expected: std::os::fd::BorrowedFd<'_>,
) -> Result<(), AttachError> {
    use std::os::fd::AsRawFd;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    const BPF_F_REPLACE: u32 = 4;
    check_interface(interface)?;
    let path = layout.link(interface);
    let link = open_pinned(&path).map_err(pin_error("opening the link pinned at", path.clone()))?;
    // union bpf_attr for BPF_LINK_UPDATE: { u32 link_fd; u32 new_prog_fd; u32 flags;
    // u32 old_prog_fd; }.
    let update = [
        link.as_raw_fd() as u32,
        new.as_raw_fd() as u32,
        BPF_F_REPLACE,
        expected.as_raw_fd() as u32,
        0,
        0,
        0,
        0,
    ];
    // SAFETY: `update` is a zero-padded bpf_attr naming open link and program descriptors.
    unsafe { bpf(BPF_LINK_UPDATE, &update) }
        .map(drop)
        .map_err(pin_error(
            "swapping the program of the link pinned at",
            path,
        ))
}

/// A descriptor of the pinned production program.
pub fn pinned_program_fd(layout: &PinLayout) -> Result<std::os::fd::OwnedFd, AttachError> {
    open_pinned(&layout.program())
        .map_err(pin_error("opening the program pinned at", layout.program()))
}

/// What [`replace_program`] did to one instance of the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// The pinned program is the embedded version; nothing changed.
    Unchanged {
        /// Kernel id of the pinned program.
        program_id: u32,
    },
    /// The embedded program now runs on every pinned link of this instance.
    Replaced {
        /// Kernel id of the program that ran before.
        old_id: u32,
        /// Kernel id of the program that runs now (and is pinned).
        new_id: u32,
        /// Interfaces whose link was updated.
        interfaces: Vec<String>,
    },
}

/// For every pinned instance of the program (Ethernet, and IP-first once an L3 device was
/// attached): loads the embedded program next to the pinned one (reusing the pinned maps) and,
/// when it differs from the pinned program (its kernel tag, a hash of the instructions) or
/// `force` is set, swaps it in on the instance's pinned links with `bpf_link_update` and pins it
/// in place of the old one. A link belongs to the instance whose program it runs (after an
/// interrupted replacement, to the instance its interface's link type needs). The links are
/// never detached: each interface goes from the old program to the new one atomically, with no
/// packet unfiltered. On error, links already updated keep the new program; the others keep the
/// old one (all read the same maps).
pub fn replace_program(
    layout: &PinLayout,
    force: bool,
) -> Result<Vec<(Framing, Replacement)>, AttachError> {
    use aya::programs::ProgramInfo;

    let (capacity, lookup) = pinned_sizing(layout)?;
    let mut old = Vec::new();
    for framing in Framing::ALL {
        if framing == Framing::Ethernet || layout.program_for(framing).exists() {
            let info = ProgramInfo::from_pin(layout.program_for(framing))
                .map_err(program_error("reading the pinned program".into()))?;
            old.push((framing, info));
        }
    }
    // Each link with the instance it belongs to.
    let mut links_of: Vec<(Framing, String)> = Vec::new();
    for interface in attached_interfaces(layout) {
        let runs = link_ids(layout, &interface).map(|(_, program_id)| program_id);
        let framing = old
            .iter()
            .find(|(_, info)| Some(info.id()) == runs)
            .map(|(framing, _)| *framing)
            .or_else(|| framing_of(&interface).ok());
        if let Some(framing) = framing {
            links_of.push((framing, interface));
        }
    }
    let mut done = Vec::new();
    for (framing, info) in old {
        let interfaces: Vec<String> = links_of
            .iter()
            .filter(|(f, _)| *f == framing)
            .map(|(_, interface)| interface.clone())
            .collect();
        let replaced = replace_instance(
            layout,
            (capacity, lookup, framing),
            &info,
            &interfaces,
            force,
        )?;
        done.push((framing, replaced));
    }
    Ok(done)
}

/// [`replace_program`] for the instance `framing` (pinned as `old`) on `interfaces`.
fn replace_instance(
    layout: &PinLayout,
    (capacity, lookup, framing): (u32, Lookup, Framing),
    old: &aya::programs::ProgramInfo,
    interfaces: &[String],
    force: bool,
) -> Result<Replacement, AttachError> {
    use aya::programs::{links::PinnedLink, xdp::XdpLink};

    let mut ebpf = load_embedded(layout, capacity, lookup, framing, Instance::Production)?;
    let program = embedded_program(&mut ebpf, PROGRAM_NAME)?;
    let new = program
        .info()
        .map_err(program_error("reading the new program".into()))?;
    if !force && new.tag() == old.tag() {
        return Ok(Replacement::Unchanged {
            program_id: old.id(),
        });
    }
    for interface in interfaces {
        let path = layout.link(interface);
        let pinned = PinnedLink::from_pin(&path)
            .map_err(pin_failure("opening the pinned link", path.clone()))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(pin_failure("the pinned link is not an XDP link:", path))?;
        program.attach_to_link(link).map_err(program_error(format!(
            "replacing the program on {interface}"
        )))?;
    }
    // Pin under a temporary name, then rename over the old pin: the program pin never
    // disappears. (bpffs reserves names with a dot.)
    let pin = layout.program_for(framing);
    let staged = pin.with_file_name(format!(
        "{}_next",
        pin.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| PROGRAM_NAME.to_owned())
    ));
    let _ = std::fs::remove_file(&staged);
    program
        .pin(&staged)
        .map_err(pin_failure("pinning the new program at", staged.clone()))?;
    std::fs::rename(&staged, &pin).map_err(pin_error("renaming the new program pin to", pin))?;
    Ok(Replacement::Replaced {
        old_id: old.id(),
        new_id: new.id(),
        interfaces: interfaces.to_vec(),
    })
}

/// Kernel id of the pinned program, if one is pinned.
pub fn program_id(layout: &PinLayout) -> Option<u32> {
    aya::programs::ProgramInfo::from_pin(layout.program())
        .ok()
        .map(|info| info.id())
}

/// Kernel link id and program id of `interface`'s pinned link.
pub fn link_ids(layout: &PinLayout, interface: &str) -> Option<(u32, u32)> {
    let pinned = aya::programs::links::PinnedLink::from_pin(layout.link(interface)).ok()?;
    let info = FdLink::from(pinned).info().ok()?;
    Some((info.id(), info.program_id()))
}
