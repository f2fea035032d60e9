//! A desired state that arrives from an external source (with `ranges_from = "etcd"`: the
//! fleet's document) rather than from the config file or the CLI. A feature task hands it to
//! the engine through an [`ExternalSink`]; the engine takes it through the same path as every
//! other change (resolve, capacity, persist, apply atomically) and keeps the last good one in
//! the state file, so a restart without the source enforces it. The core knows nothing about
//! where it came from: [`ExternalDesired::source`] is the source's own bookmark (revision,
//! digest), persisted and handed back at the next start.
//!
//! The sink has its own queue ([`ExternalRequest`]s), which the daemon forwards to the engine,
//! so this module needs nothing of the engine. The health of the source
//! ([`crate::daemon::protocol::SourceHealth`]) is published through the telemetry so that
//! `status` and the metrics show it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{
    daemon::{
        desired::Authorized,
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

/// One request of the external source: a desired state and where the outcome goes.
#[derive(Debug)]
pub struct ExternalRequest {
    /// The new desired state.
    pub desired: Box<ExternalDesired>,
    /// Only validate and review.
    pub dry_run: bool,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ChangeReply, ErrorReply>>,
}

/// The handle a task uses to hand an external desired state to the engine.
#[derive(Clone, Debug)]
pub struct ExternalSink {
    requests: mpsc::Sender<ExternalRequest>,
}

impl ExternalSink {
    /// A sink and the queue its requests arrive on (the daemon forwards them to the engine).
    pub(crate) fn new() -> (Self, mpsc::Receiver<ExternalRequest>) {
        let (requests, queue) = mpsc::channel(4);
        (Self { requests }, queue)
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
        self.requests
            .send(ExternalRequest {
                desired: Box::new(desired),
                dry_run,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
