//! The fleet's state as `apifence fleet status` shows it, computed from the current revision,
//! the hosts' reports and the hosts ever seen (pure, so it is tested without etcd).

use serde::Serialize;

use crate::{features::fleet::host::HostStatus, policy::compile::FamilyCounts};

/// How one host is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Enforces the current revision, no error.
    Ok,
    /// Enforces an older revision (still converging, or stuck).
    Behind,
    /// Reports an error (rejected document, etcd trouble).
    Failing,
    /// Seen before, but its report's lease expired (daemon stopped, host down or cut off).
    Gone,
}

/// One host in `fleet status`.
#[derive(Clone, Debug, Serialize)]
pub struct HostView {
    /// The host.
    pub host: String,
    /// Its state.
    pub state: HostState,
    /// Revision it enforces.
    pub applied_revision: Option<i64>,
    /// Revisions between the one it enforces and the current one (0 when current).
    pub behind_by: Option<i64>,
    /// The newest revision it rejected, if its error is about one.
    pub rejected_revision: Option<i64>,
    /// Seconds since its last report.
    pub report_age_s: Option<f64>,
    /// Its error.
    pub error: Option<String>,
    /// Digest of what its kernel enforces.
    pub kernel_digest: Option<String>,
    /// Prefixes in its tries, per family.
    pub merged: Option<FamilyCounts>,
    /// Its version.
    pub version: Option<String>,
    /// `changeNumber` of its service tags file.
    pub tags_change: Option<u64>,
}

/// `fleet status`.
#[derive(Clone, Debug, Serialize)]
pub struct FleetView {
    /// The current document's revision (none written yet: `None`).
    pub revision: Option<i64>,
    /// Every host, live ones first, by name.
    pub hosts: Vec<HostView>,
}

impl FleetView {
    /// Builds the view; `seen` are host names that ever reported, `now_unix` the time.
    pub fn new(
        revision: Option<i64>,
        reports: &[HostStatus],
        seen: &[String],
        now_unix: f64,
    ) -> Self {
        let mut hosts: Vec<HostView> = reports
            .iter()
            .map(|report| {
                let behind_by = match (revision, report.applied_revision) {
                    (Some(current), Some(applied)) => Some((current - applied).max(0)),
                    (Some(_), None) => None,
                    (None, _) => Some(0),
                };
                let state = if report.error.is_some() {
                    HostState::Failing
                } else if behind_by != Some(0) {
                    HostState::Behind
                } else {
                    HostState::Ok
                };
                HostView {
                    host: report.host.clone(),
                    state,
                    applied_revision: report.applied_revision,
                    behind_by,
                    rejected_revision: report.rejected_revision,
                    report_age_s: Some((now_unix - report.reported_unix).max(0.0)),
                    error: report.error.clone(),
                    kernel_digest: report.kernel_digest.clone(),
                    merged: Some(report.merged),
                    version: Some(report.version.clone()),
                    tags_change: report.tags_change,
                }
            })
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        let mut gone: Vec<HostView> = seen
            .iter()
            .filter(|name| !reports.iter().any(|r| &r.host == *name))
            .map(|name| HostView {
                host: name.clone(),
                state: HostState::Gone,
                applied_revision: None,
                behind_by: None,
                rejected_revision: None,
                report_age_s: None,
                error: None,
                kernel_digest: None,
                merged: None,
                version: None,
                tags_change: None,
            })
            .collect();
        gone.sort_by(|a, b| a.host.cmp(&b.host));
        hosts.extend(gone);
        Self { revision, hosts }
    }

    /// Whether every live host enforces the current revision without error (gone hosts
    /// don't count: their leases expired).
    pub fn healthy(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| matches!(h.state, HostState::Ok | HostState::Gone))
    }

    /// Live hosts that enforce at least `revision`, and live hosts that rejected it or a
    /// newer one (for `fleet set --wait`; an error about an older revision is not this one's).
    pub fn progress(&self, revision: i64) -> (Vec<&HostView>, Vec<&HostView>) {
        let live = self.hosts.iter().filter(|h| h.state != HostState::Gone);
        let (done, rest): (Vec<_>, Vec<_>) =
            live.partition(|h| h.applied_revision.is_some_and(|r| r >= revision));
        let failed = rest
            .into_iter()
            .filter(|h| h.rejected_revision.is_some_and(|r| r >= revision))
            .collect();
        (done, failed)
    }

    /// Whether live hosts resolve names from service tags files with different change
    /// numbers (the same name may then stand for different prefixes on different hosts).
    pub fn tags_differ(&self) -> bool {
        let numbers: std::collections::BTreeSet<Option<u64>> = self
            .hosts
            .iter()
            .filter(|h| h.state != HostState::Gone)
            .map(|h| h.tags_change)
            .collect();
        numbers.len() > 1
    }

    /// Live hosts.
    pub fn live(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.state != HostState::Gone)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(host: &str, applied: Option<i64>, error: Option<&str>) -> HostStatus {
        HostStatus {
            host: host.into(),
            applied_revision: applied,
            rejected_revision: error.map(|_| 9),
            error: error.map(Into::into),
            reported_unix: 100.0,
            ..HostStatus::default()
        }
    }

    #[test]
    fn states_and_exit_status() {
        let reports = [
            report("b", Some(7), None),
            report("a", Some(9), None),
            report("c", Some(7), Some("revision 9 rejected: x")),
        ];
        let seen = ["a", "b", "c", "d"].map(String::from);
        let view = FleetView::new(Some(9), &reports, &seen, 103.5);
        let states: Vec<_> = view
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.state))
            .collect();
        assert_eq!(
            states,
            [
                ("a", HostState::Ok),
                ("b", HostState::Behind),
                ("c", HostState::Failing),
                ("d", HostState::Gone)
            ]
        );
        assert_eq!(view.hosts[1].behind_by, Some(2));
        assert_eq!(view.hosts[0].report_age_s, Some(3.5));
        assert!(!view.healthy());
        assert_eq!(view.live(), 3);
        let (done, failed) = view.progress(9);
        assert_eq!(
            done.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(
            failed.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        let (_, failed) = view.progress(10);
        assert!(
            failed.is_empty(),
            "rejecting revision 9 says nothing about 10"
        );

        let fine = FleetView::new(Some(9), &[report("a", Some(9), None)], &seen[..2], 100.0);
        assert!(fine.healthy(), "a gone host does not fail the status");
        assert!(!view.tags_differ());
        let mut tagged = report("b", Some(9), None);
        tagged.tags_change = Some(375);
        let differ = FleetView::new(Some(9), &[report("a", Some(9), None), tagged], &[], 100.0);
        assert!(differ.tags_differ());
        let never = FleetView::new(Some(9), &[report("a", None, None)], &[], 100.0);
        assert_eq!(never.hosts[0].state, HostState::Behind);
    }
}
