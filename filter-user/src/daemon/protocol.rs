//! The daemon's socket protocol, and the blocking client the CLI uses.
//!
//! A Unix stream socket (mode 0600, root only; the daemon also checks the peer is root, and the
//! CLI checks the daemon is root or its own user before trusting an answer). Each request is one
//! JSON object on one line, carrying the protocol version ([`PROTOCOL_VERSION`], key `version`,
//! in every request and response; a mismatch is refused with an error naming both); each gets one JSON response on one line; a
//! connection may carry any number of them, in order. Requests (`op` selects the operation):
//!
//! ```json
//! {"version":1,"op":"ranges_set","list":"73.140.245.0/24, AzureDevOps","dry_run":false,"force":false}
//! {"version":1,"op":"ranges_add","list":"203.0.113.7","note":"on-call","expires":"2026-12-01T00:00:00Z"}
//! {"version":1,"op":"ranges_remove","list":"203.0.113.7/32"}
//! {"version":1,"op":"mode","mode":"monitor"}
//! {"version":1,"op":"show"}
//! {"version":1,"op":"status"}
//! {"version":1,"op":"reload"}
//! {"version":1,"op":"denied","top":20}
//! ```
//!
//! `list` is the range language of `apifence ranges` (names such as service tags allowed).
//! `dry_run` computes and returns the change without persisting or applying it; `force`
//! overrides a refusal by a safety check. Both default to false, as do missing optional fields.
//!
//! Responses are `{"version":1,"ok":{"type":"change"|"show"|"status"|"reload", ...}}` or
//! `{"version":1,"error":{"kind":"...","message":"...","detail":...}}`; see [`Reply`] and [`ErrorReply`].
//! A change is acknowledged only after it was persisted and is enforced.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    daemon::denied::{DeniedQuery, DeniedReport},
    daemon::{config::RangesFrom, desired::Diff},
    policy::Mode,
    policy::compile::FamilyCounts,
};

/// Longest request or response line accepted (a range list of a few hundred thousand
/// entries fits).
pub const MAX_LINE: usize = 64 << 20;
/// Version of this protocol, carried by every request and response line.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request as sent on the wire: the version and the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

/// A response as sent on the wire: the version and the response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResponseLine {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The response.
    #[serde(flatten)]
    pub response: Response,
}

impl ResponseLine {
    /// `response` in this version's envelope.
    pub fn new(response: Response) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            response,
        }
    }
}

/// Only the version of a line, read before the rest so that a mismatch is reported as one.
#[derive(Deserialize)]
struct VersionOnly {
    version: Option<u32>,
}

/// Why `line` is not of this protocol version: `None` when it is (or is not JSON at all, which
/// the full parse reports).
pub fn version_mismatch(line: &[u8]) -> Option<String> {
    let version = serde_json::from_slice::<VersionOnly>(line).ok()?.version;
    let theirs = match version {
        Some(PROTOCOL_VERSION) => return None,
        Some(v) => format!("protocol version {v}"),
        None => "no protocol version".to_owned(),
    };
    Some(format!(
        "{theirs}, but this side speaks version {PROTOCOL_VERSION} (apifence {}); use the CLI \
         and daemon of the same apifence version",
        env!("CARGO_PKG_VERSION")
    ))
}

/// How long the CLI waits for an answer (a large apply takes a fraction of a second; a
/// reload may read a big service tags file).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `apifence ranges set`: replace the list.
    RangesSet(RangesChange),
    /// `apifence ranges add`.
    RangesAdd(RangesChange),
    /// `apifence ranges remove`.
    RangesRemove(RangesChange),
    /// `apifence mode`.
    Mode(ModeChange),
    /// `apifence ranges show`.
    Show,
    /// `apifence status`.
    Status,
    /// `apifence reload`: re-read the config file now (as SIGHUP), answering how it went.
    Reload,
    /// `apifence denied`: the deny log's rows.
    Denied(DeniedQuery),
}

/// Flags every mutation carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeFlags {
    /// Compute and return the change; persist and apply nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply even if a safety check (the lockout guard) refuses.
    #[serde(default)]
    pub force: bool,
}

/// The note and expiry of an entry: `"note"` and `"expires"` (RFC 3339), each left out when
/// unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Free text shown next to the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the entry stops being authorized.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires: Option<OffsetDateTime>,
}

/// A change of the authorized list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangesChange {
    /// Entries in the range language.
    pub list: String,
    /// Note and expiry attached to every entry given (`set`, `add`).
    #[serde(flatten)]
    pub meta: EntryMeta,
    /// Dry run and force.
    #[serde(flatten)]
    pub flags: ChangeFlags,
}

/// A mode switch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    /// The new mode.
    pub mode: Mode,
    /// Dry run and force.
    #[serde(flatten)]
    pub flags: ChangeFlags,
}

/// One response.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived value per request; boxing would only add noise"
)]
pub enum Response {
    /// The request was carried out (or, for a dry run, computed).
    Ok(Reply),
    /// It was not; nothing changed.
    Error(ErrorReply),
}

/// Why a request was not carried out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable class.
    pub kind: ErrorKind,
    /// One line for a person: names the input and the fix.
    pub message: String,
    /// More, for some kinds (what a refused change would have done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Classes of [`ErrorReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not a request.
    BadRequest,
    /// The request is invalid (a bad range, an entry not in the list, over capacity).
    Invalid,
    /// `ranges_from = "config"`: the config file owns the list.
    ConfigOwned,
    /// A safety check refused; `force` overrides.
    Refused,
    /// Persisting or applying failed; the old state stays enforced.
    Failed,
    /// The config file (or what it names) is invalid; the last good state stays enforced.
    ReloadFailed,
    /// The peer is not allowed (not root).
    Forbidden,
}

impl ErrorReply {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            detail: None,
        }
    }
}

/// What a successful request returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// A mutation.
    Change(ChangeReply),
    /// `show`.
    Show(ShowReply),
    /// `status`.
    Status(StatusReply),
    /// `reload`.
    Reload(ReloadReply),
    /// `denied`.
    Denied(DeniedReport),
}

/// The outcome of a mutation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeReply {
    /// Persisted and enforced (false for a dry run, and when nothing changed).
    pub applied: bool,
    /// This was a dry run.
    pub dry_run: bool,
    /// What changed (or would).
    pub diff: Diff,
    /// What safety checks found (connections that would be cut …); `null` when none ran.
    #[serde(default)]
    pub impact: Option<serde_json::Value>,
    /// Entries as given after the change, per family (authorized plus always-allow).
    pub given: FamilyCounts,
    /// Entries written after merging, per family.
    pub compiled: FamilyCounts,
    /// Time the apply took, in milliseconds (0 when nothing was applied).
    pub apply_ms: f64,
}

/// `show`: the keys of `apifence ranges show --json`, plus each entry with its note, expiry
/// and what it expands to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShowReply {
    /// Filtering is on.
    pub enabled: bool,
    /// Entries as given (`0.0.0.0/32` for "only the always-allow list").
    pub ranges: Vec<String>,
    /// The always-allow list.
    pub always_allow: Vec<String>,
    /// Protected ports.
    pub ports: Vec<u16>,
    /// `enforce` or `monitor`.
    pub mode: Mode,
    /// Attached interfaces and their XDP mode.
    pub interfaces: BTreeMap<String, String>,
    /// Attached interfaces whose link filters nothing now (the interface was recreated).
    #[serde(default)]
    pub stale_interfaces: Vec<String>,
    /// Trie capacity per family.
    pub capacity: u32,
    /// Which lookup judges sources.
    #[serde(default)]
    pub lookup: crate::policy::Lookup,
    /// Who owns the list (`config` or `state`).
    pub source: RangesFrom,
    /// The config file.
    pub config: PathBuf,
    /// Each entry with its details.
    pub entries: Vec<ShowEntry>,
    /// Entries as given, per family (after expanding names).
    pub given: FamilyCounts,
    /// Entries written after merging, per family.
    pub compiled: FamilyCounts,
}

/// One entry of [`ShowReply`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShowEntry {
    /// The entry as given.
    pub range: String,
    /// `prefix` or `name`.
    pub kind: String,
    /// Its note and expiry.
    #[serde(flatten)]
    pub meta: EntryMeta,
    /// Prefixes it stands for (1 for a prefix).
    pub expanded: usize,
    /// Those prefixes after merging.
    pub merged: usize,
}

/// `status`: the daemon's health.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    /// Process id.
    pub pid: u32,
    /// apifence version.
    pub version: String,
    /// The config file.
    pub config: PathBuf,
    /// Owner of the list.
    pub ranges_from: RangesFrom,
    /// The state file.
    pub state_file: PathBuf,
    /// The bpffs directory.
    pub bpffs: PathBuf,
    /// Start time (RFC 3339).
    pub started_at: String,
    /// Successful reloads.
    pub reloads: u64,
    /// Rejected reloads (the last good state stayed enforced).
    pub reload_failures: u64,
    /// Why the last reload failed, if the last one did.
    pub last_reload_error: Option<String>,
    /// The last apply.
    pub last_apply: Option<ApplyInfo>,
    /// `disabled`, `only_always_allowed` or `ranges`.
    pub filtering: String,
    /// Enforce or monitor.
    pub mode: Mode,
    /// Kernel id of the pinned program.
    pub program_id: Option<u32>,
    /// Per attached interface: its link.
    pub links: BTreeMap<String, LinkStatus>,
    /// Attached interfaces whose link no longer filters the interface of that name (it was
    /// deleted, perhaps created again); the daemon re-attaches them as soon as it can.
    #[serde(default)]
    pub stale_interfaces: Vec<String>,
    /// Attachments the daemon repaired since it started (interfaces recreated under it).
    #[serde(default)]
    pub reattachments: u64,
    /// Interfaces of the config that could not be attached yet (retried).
    pub missing_interfaces: Vec<String>,
    /// The external source's health (`ranges_from = "etcd"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Box<SourceHealth>>,
}

/// How the external source (`ranges_from = "etcd"`) is doing, for `status` and metrics.
/// Written by the source's task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceHealth {
    /// The source (`etcd`).
    pub name: String,
    /// Whether the source is connected and the last document was applied.
    pub healthy: bool,
    /// The revision (or other version number) of the document applied last.
    pub applied_revision: Option<u64>,
    /// When the source last answered: a read, an event or a keep-alive (RFC 3339).
    pub last_event: Option<String>,
    /// Unix seconds of the last event (for the metrics).
    #[serde(skip)]
    pub last_event_unix: Option<f64>,
    /// What is wrong, when not healthy (the last good state stays enforced).
    pub error: Option<String>,
}

/// One pinned XDP link.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Kernel link id (stays the same when the program is replaced).
    pub link_id: u32,
    /// Kernel id of the program the link runs.
    pub program_id: u32,
    /// Whether the link is attached to the interface that has the name now.
    #[serde(default)]
    pub live: bool,
}

/// When and how the last apply went.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyInfo {
    /// When (RFC 3339).
    pub at: String,
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// Entries as given, per family.
    pub given: FamilyCounts,
    /// Entries after merging, per family.
    pub compiled: FamilyCounts,
}

/// `reload`: what the reload did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Something enforced changed.
    pub changed: bool,
    /// What changed.
    pub diff: Diff,
    /// Warnings about the new config.
    pub warnings: Vec<String>,
}

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket (no socket file, or nobody accepts).
    #[error("no apifence daemon answers on {}", .0.display())]
    NoDaemon(PathBuf),
    /// The socket exists but this user may not use it.
    #[error(
        "permission denied on {}: only root can talk to the apifence daemon; run the command as root",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    /// Reading or writing failed mid-way.
    #[error(
        "talking to the apifence daemon on {}: {source}; if it is stuck, its log says why \
         (journalctl -u apifence)",
        path.display()
    )]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The process answering on the socket is neither root nor this user.
    #[error(
        "the process answering on {} runs as uid {uid}, neither root nor you: refusing to trust \
         it (a socket left there by someone else?); check `ls -l {}`, stop whatever listens \
         there, and start the apifence daemon (systemctl start apifence)",
        path.display(),
        path.display()
    )]
    Impostor {
        /// The socket.
        path: PathBuf,
        /// The peer's user id.
        uid: u32,
    },
    /// The daemon answered something that is not a response.
    #[error("the apifence daemon on {} sent an unreadable answer ({reason}); is it the same version as this CLI?", path.display())]
    Garbled {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Sends `request` to the daemon on `socket` and waits (at most `timeout`) for its response.
/// [`ClientError::NoDaemon`] means the caller may work on the pins directly.
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let path = socket.to_path_buf();
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NoDaemon(path));
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(ClientError::PermissionDenied(path));
        }
        Err(source) => return Err(ClientError::Io { path, source }),
    };
    let io_err = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let uid = peer_uid(&stream).map_err(io_err)?;
    // SAFETY: geteuid has no preconditions.
    if uid != 0 && uid != unsafe { libc::geteuid() } {
        return Err(ClientError::Impostor { path, uid });
    }
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let sent = RequestLine {
        version: PROTOCOL_VERSION,
        request: request.clone(),
    };
    let mut line = serde_json::to_vec(&sent).map_err(|e| ClientError::Garbled {
        path: socket.to_path_buf(),
        reason: e.to_string(),
    })?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reader = BufReader::new(&stream).take(MAX_LINE as u64);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io_err)?;
    if answer.is_empty() {
        return Err(ClientError::Garbled {
            path: socket.to_path_buf(),
            reason: "it closed the connection without answering".into(),
        });
    }
    if let Some(reason) = version_mismatch(answer.as_bytes()) {
        return Err(ClientError::Garbled {
            path: socket.to_path_buf(),
            reason: format!("it answered with {reason}"),
        });
    }
    serde_json::from_str::<ResponseLine>(&answer)
        .map(|line| line.response)
        .map_err(|e| ClientError::Garbled {
            path: socket.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The user id of the process at the other end of `stream` (`SO_PEERCRED`: the credentials
/// the server had when it called `listen`).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: `ucred` is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, and an out buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_shape() {
        let set: Request =
            serde_json::from_str(r#"{"op":"ranges_set","list":"10.0.0.0/8","dry_run":true}"#)
                .unwrap();
        assert_eq!(
            set,
            Request::RangesSet(RangesChange {
                list: "10.0.0.0/8".into(),
                meta: EntryMeta::default(),
                flags: ChangeFlags {
                    dry_run: true,
                    force: false
                },
            })
        );
        let add: Request = serde_json::from_str(
            r#"{"op":"ranges_add","list":"203.0.113.7","note":"on-call","expires":"2026-12-01T00:00:00Z","force":true}"#,
        )
        .unwrap();
        let Request::RangesAdd(change) = &add else {
            panic!("{add:?}")
        };
        assert_eq!(change.meta.note.as_deref(), Some("on-call"));
        assert!(change.flags.force);
        assert_eq!(
            serde_json::to_string(&add).unwrap(),
            r#"{"op":"ranges_add","list":"203.0.113.7","note":"on-call","expires":"2026-12-01T00:00:00Z","dry_run":false,"force":true}"#
        );
        let mode: Request = serde_json::from_str(r#"{"op":"mode","mode":"monitor"}"#).unwrap();
        assert_eq!(
            mode,
            Request::Mode(ModeChange {
                mode: Mode::Monitor,
                flags: ChangeFlags::default()
            })
        );
        for (text, want) in [
            (r#"{"op":"show"}"#, Request::Show),
            (r#"{"op":"status"}"#, Request::Status),
            (r#"{"op":"reload"}"#, Request::Reload),
        ] {
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), want);
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
    }

    #[test]
    fn responses_have_the_documented_shape() {
        let error = Response::Error(ErrorReply::new(ErrorKind::ConfigOwned, "no"));
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"error":{"kind":"config_owned","message":"no"}}"#
        );
        let ok = Response::Ok(Reply::Reload(ReloadReply {
            changed: false,
            diff: Diff::default(),
            warnings: vec![],
        }));
        let text = serde_json::to_string(&ok).unwrap();
        assert!(
            text.starts_with(r#"{"ok":{"type":"reload","changed":false"#),
            "{text}"
        );
    }

    #[test]
    fn every_line_carries_the_protocol_version() {
        let line = RequestLine {
            version: PROTOCOL_VERSION,
            request: Request::Status,
        };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(text, r#"{"version":1,"op":"status"}"#);
        assert_eq!(serde_json::from_str::<RequestLine>(&text).unwrap(), line);
        let error = ResponseLine::new(Response::Error(ErrorReply::new(ErrorKind::BadRequest, "x")));
        let text = serde_json::to_string(&error).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"error":{"kind":"bad_request","message":"x"}}"#
        );
        let back: ResponseLine = serde_json::from_str(&text).unwrap();
        assert!(matches!(back.response, Response::Error(e) if e.message == "x"));
        assert_eq!(version_mismatch(br#"{"version":1,"op":"status"}"#), None);
        let old = version_mismatch(br#"{"op":"status"}"#).unwrap();
        assert!(
            old.starts_with("no protocol version, but this side speaks version 1"),
            "{old}"
        );
        let newer = version_mismatch(br#"{"version":2,"op":"status"}"#).unwrap();
        assert!(newer.starts_with("protocol version 2"), "{newer}");
    }

    #[test]
    fn no_socket_means_no_daemon() {
        let path = Path::new("/nonexistent/apifence.sock");
        assert!(matches!(
            call(path, &Request::Status, Duration::from_secs(1)),
            Err(ClientError::NoDaemon(_))
        ));
    }
}
