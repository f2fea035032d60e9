//! Features built on the daemon core, one job each: [`service_tags`] (Azure service tag names
//! in a list), [`expiry`] (entries that stop being authorized at a time), [`deny_log`] (who was
//! dropped), [`metrics`] (Prometheus endpoint), [`lockout`] (refuse a change that would cut
//! established connections), [`impact`] (what a change would do, for `--dry-run`), and
//! [`standard`], which plugs them into the daemon through [`crate::daemon::hooks`].
pub mod deny_log;
pub mod expiry;
pub mod fleet;
pub mod impact;
pub mod lockout;
pub mod metrics;
pub mod service_tags;
pub mod standard;
