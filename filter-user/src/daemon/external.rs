//! A desired state that arrives from an external source (with `ranges_from = "etcd"`: the
//! fleet's document) rather than from the config file or the CLI. A feature task hands it to
//! the engine through an [`ExternalSink`]; the engine takes it through the same path as every
//! other change (resolve, capacity, persist, apply atomically) and keeps the last good one in
//! the state file, so a restart without the source enforces it. The core knows nothing about
//! where it came from: [`ExternalDesired::source`] is the source's own bookmark (revision,
//! digest), persisted and handed back at the next start.
//!
//! The health of the source ([`SourceHealth`]) is published through the telemetry so that
//! `status` and the metrics show it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    daemon::{
        desired::Authorized,
        engine::Command,
        protocol::{ChangeReply, ErrorKind, ErrorReply},
    },
    policy::Mode,
};

/// A whole desired state from an external source; interfaces, ports and capacity stay the
/// host's own (from its config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalDesired {
    /// The authorized list, with notes, expiry and names as in the config file.
    pub authorized: Authorized,
    /// Sources never blocked.
    pub always_allow: Vec<IpNet>,
    /// Enforce or monitor.
    pub mode: Mode,
    /// The source's bookmark (for the fleet: revision and digest), opaque to the core.
    pub source: serde_json::Value,
}

/// How the external source is doing, for `status` and metrics. Written by the source's task.
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

/// The handle a task uses to hand an external desired state to the engine.
#[derive(Clone, Debug)]
pub struct ExternalSink {
    commands: mpsc::Sender<Command>,
}

impl ExternalSink {
    /// A sink sending to the engine's command queue.
    pub(crate) fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    /// Validates, persists and applies `desired` (nothing changes on error; the last good
    /// state stays enforced). With `dry_run` it is only validated and reviewed.
    pub async fn submit(
        &self,
        desired: ExternalDesired,
        dry_run: bool,
    ) -> Result<ChangeReply, ErrorReply> {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            ErrorReply::new(
                ErrorKind::Failed,
                "the daemon is stopping; nothing changed".to_string(),
            )
        };
        self.commands
            .send(Command::External {
                desired: Box::new(desired),
                dry_run,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
