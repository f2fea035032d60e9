//! Many API server hosts, one list (`ranges_from = "etcd"`): the cluster's desired state is
//! one document in etcd that every host's daemon follows, and every host reports what it
//! enforces. One job per module: [`document`] (the document, chunked and content-addressed;
//! pure), [`store`] (the keys in etcd: connect, read, write with compare-and-swap, reports),
//! [`follow`] (the daemon's task: watch, apply through the engine, reconnect with backoff),
//! [`host`] (what a host reports), [`status`] (the fleet's state as `apifence fleet status`
//! shows it; pure).
pub mod document;
pub mod follow;
pub mod host;
pub mod status;
pub mod store;
