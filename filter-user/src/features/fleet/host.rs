//! What each host reports under `<prefix><cluster>/hosts/<host>` (with a lease, so a host
//! that stops reporting disappears): the revision it enforces, what the kernel enforces, and
//! what went wrong. Nothing secret is in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    features::fleet::document::hex_digest,
    kernel::{operations::Filter, paths::PinLayout},
    policy::{Mode, compile::FamilyCounts},
};

/// One host's report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's name (`[etcd] host`).
    pub host: String,
    /// apifence version.
    pub version: String,
    /// Revision of the document enforced (none until one was applied).
    pub applied_revision: Option<i64>,
    /// The enforced document's digest (`sha256:…`).
    pub applied_digest: Option<String>,
    /// When it was applied (RFC 3339).
    pub applied_at: Option<String>,
    /// A newer revision that was rejected (invalid, unresolvable, over capacity).
    pub rejected_revision: Option<i64>,
    /// The last error (rejected document, or etcd trouble while it lasted); `None` when all
    /// is well.
    pub error: Option<String>,
    /// Prefixes given (authorized plus always-allow), per family.
    pub given: FamilyCounts,
    /// Prefixes in the tries after merging, per family.
    pub merged: FamilyCounts,
    /// SHA-256 of the policy record the kernel enforces (read back from the pins).
    pub kernel_digest: Option<String>,
    /// Enforce or monitor, as enforced.
    pub mode: Option<Mode>,
    /// Attached interfaces and their XDP mode.
    pub interfaces: BTreeMap<String, String>,
    /// `changeNumber` of the host's service tags file (names resolve from it), if it has one.
    #[serde(default)]
    pub tags_change: Option<u64>,
    /// When this report was written (RFC 3339).
    pub reported_at: String,
    /// Unix seconds of `reported_at`.
    pub reported_unix: f64,
}

/// What the kernel enforces: digest of the active slot's policy record, mode and interfaces.
pub fn kernel_facts(
    layout: &PinLayout,
) -> (Option<String>, Option<Mode>, BTreeMap<String, String>) {
    let Ok(record) = Filter::open(layout).and_then(|f| f.record()) else {
        return (None, None, BTreeMap::new());
    };
    let policy = serde_json::to_vec(&record.policy).unwrap_or_default();
    let interfaces = record
        .attachment
        .interfaces
        .iter()
        .map(|(name, mode)| (name.clone(), mode.as_str().to_string()))
        .collect();
    (
        Some(format!("sha256:{}", hex_digest(&policy))),
        Some(record.policy.mode),
        interfaces,
    )
}
