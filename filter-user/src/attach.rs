//! Loading the program, attaching it to interfaces and pinning it all, and taking it down again.

use std::{io, path::PathBuf};

use aya::{
    EbpfLoader,
    programs::{ProgramError, Xdp, XdpMode, links::FdLink},
};
use aya_obj::programs::XdpAttachType;
use filter_common::{
    ALL_MAPS, MAP_RULE_HITS, MAP_V4_SLOT0, MAP_V4_SLOT1, MAP_V6_SLOT0, MAP_V6_SLOT1, PROGRAM_NAME,
    rule_capacity,
};

use crate::{paths::PinLayout, policy::AttachedMode, program::OBJECT};

/// How to attach to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to skb mode when the driver refuses, and saying so.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

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

/// Whether a program is pinned under `layout`.
pub fn is_loaded(layout: &PinLayout) -> bool {
    layout.program().exists()
}

/// Loads the program and creates its maps (reusing any maps already pinned there, so a
/// half-finished earlier attach loses nothing), pinning program and maps under `layout`.
/// `capacity` sizes the tries of a fresh load.
pub fn load_and_pin(layout: &PinLayout, capacity: u32) -> Result<(), AttachError> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(layout.root());
    for trie in [MAP_V4_SLOT0, MAP_V4_SLOT1, MAP_V6_SLOT0, MAP_V6_SLOT1] {
        loader.map_max_entries(trie, capacity);
    }
    loader.map_max_entries(MAP_RULE_HITS, rule_capacity(capacity));
    let mut ebpf = loader.load(OBJECT).map_err(AttachError::Load)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| AttachError::Program {
            action: format!("finding program {PROGRAM_NAME} in the object file"),
            source: ProgramError::AlreadyLoaded,
        })?
        .try_into()
        .map_err(program_error("reading the program".into()))?;
    program
        .load()
        .map_err(program_error("loading the program into the kernel".into()))?;
    program
        .pin(layout.program())
        .map_err(|e| AttachError::Pin {
            action: "pinning the program at",
            path: layout.program(),
            source: io::Error::other(e),
        })?;
    let links = layout.links_dir();
    std::fs::create_dir_all(&links).map_err(pin_error("creating", links))
}

/// Attaches the pinned program to `interface` and pins the link. Returns the mode used.
pub fn attach_interface(
    layout: &PinLayout,
    interface: &str,
    choice: XdpModeChoice,
) -> Result<AttachedMode, AttachError> {
    let mut program = Xdp::from_pin(layout.program(), XdpAttachType::Interface)
        .map_err(program_error("opening the pinned program".into()))?;
    let attempt = |program: &mut Xdp, mode: XdpMode| {
        program
            .attach(interface, mode)
            .map_err(program_error(format!("attaching to {interface}")))
    };
    let (link_id, mode) = match choice {
        XdpModeChoice::Native => (
            attempt(&mut program, XdpMode::Driver)?,
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
    let fd_link = FdLink::try_from(link).map_err(|e| AttachError::Pin {
        action: "the kernel gave no bpf_link (kernel 5.9 or later is required) for",
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    fd_link.pin(&path).map_err(|e| AttachError::Pin {
        action: "pinning the link at",
        path,
        source: io::Error::other(e),
    })?;
    Ok(mode)
}

/// Detaches `interface` by removing its pinned link.
pub fn detach_interface(layout: &PinLayout, interface: &str) -> Result<(), AttachError> {
    let path = layout.link(interface);
    std::fs::remove_file(&path).map_err(pin_error("unpinning the link", path))
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
    let mut pins = vec![layout.program()];
    pins.extend(ALL_MAPS.iter().map(|name| layout.map(name)));
    for pin in pins {
        match std::fs::remove_file(&pin) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(pin_error("unpinning", pin)(e));
            }
            _ => {}
        }
    }
    Ok(())
}
