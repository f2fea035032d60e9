//! The fleet's keys in etcd, through the `etcd-client` crate: connecting (TLS with client
//! certificates, optional user and password), reading the current document, writing a new one
//! (chunks first, then the pointer flipped with compare-and-swap) and the hosts' reports.
//! Used by the daemon's follower and by `apifence fleet`.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};

use crate::{
    daemon::config::etcd::EtcdConfig,
    features::fleet::{
        document::{CHUNK_SIZE, Document, DocumentError, Pointer},
        host::HostStatus,
        status::FleetView,
    },
};

/// Bound on establishing a connection to one member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a member that stops answering is noticed within about twice this.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Attempts of one request while etcd is briefly unavailable.
const ATTEMPTS: u32 = 4;

/// Whether an error is worth one more attempt: etcd unavailable (gRPC code 14: no leader,
/// leader changed, a member gone) or a broken connection.
fn transient(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.code() as i32 == 14,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// What went wrong talking to etcd, or with what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A TLS or password file can't be read.
    #[error("reading etcd.{key} file {path}: {source}; check the path in [etcd]")]
    File {
        /// The `[etcd]` key.
        key: &'static str,
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// etcd answered with an error, or could not be reached.
    #[error("etcd ({endpoints}): {source}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The stored document is unusable.
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Another writer flipped the pointer first.
    #[error(
        "the document changed (revision {found}) since it was read (revision {expected}); read it \
         again (apifence fleet show) and retry"
    )]
    Conflict {
        /// The revision the change was based on.
        expected: i64,
        /// The revision found.
        found: i64,
    },
    /// A request took too long.
    #[error("etcd ({endpoints}) did not answer within {seconds}s")]
    Timeout {
        /// The endpoints tried.
        endpoints: String,
        /// The bound.
        seconds: u64,
    },
}

/// A connection to the fleet's keys of one cluster.
#[derive(Clone)]
pub struct Store {
    client: Client,
    config: EtcdConfig,
}

fn read(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::File {
        key,
        path: path.display().to_string(),
        source,
    })
}

/// The current document with the revision that wrote it.
#[derive(Clone, Debug)]
pub struct Current {
    /// The document.
    pub document: Document,
    /// Its pointer.
    pub pointer: Pointer,
    /// The pointer's mod revision: the document's revision.
    pub revision: i64,
}

impl Store {
    /// Connects (lazily: the first request reaches a member) with the `[etcd]` settings.
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &config.tls {
            let mut options_tls =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca", &tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                options_tls = options_tls
                    .identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
            }
            options = options.with_tls(options_tls);
        }
        if let Some((user, password_file)) = &config.auth {
            let password = String::from_utf8_lossy(&read("password_file", password_file)?)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            options = options.with_user(user.clone(), password);
        }
        let store = |client| Store {
            client,
            config: config.clone(),
        };
        let connecting = Client::connect(&config.endpoints, Some(options));
        match tokio::time::timeout(REQUEST_TIMEOUT, connecting).await {
            Ok(Ok(client)) => Ok(store(client)),
            Ok(Err(source)) => Err(StoreError::Etcd {
                endpoints: config.endpoints.join(","),
                source,
            }),
            Err(_) => Err(StoreError::Timeout {
                endpoints: config.endpoints.join(","),
                seconds: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    /// The `[etcd]` settings.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The client, for watches and leases.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Wraps a client error, naming the endpoints.
    pub fn error(&self, source: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints(),
            source,
        }
    }

    /// The endpoints, comma-separated, as errors name them.
    pub fn endpoints(&self) -> String {
        self.config.endpoints.join(",")
    }

    /// Runs `request` with a fresh client handle, bounded by [`REQUEST_TIMEOUT`] per attempt;
    /// retries (at most [`ATTEMPTS`] times, backing off) while etcd is briefly unavailable
    /// (a leader election, a member that just died).
    async fn bounded<T, F, Fut>(&self, mut request: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(REQUEST_TIMEOUT, request(self.client.clone())).await;
            match result {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if attempt < ATTEMPTS && transient(&e) => {}
                Ok(Err(e)) => return Err(self.error(e)),
                Err(_) => {
                    return Err(StoreError::Timeout {
                        endpoints: self.config.endpoints.join(","),
                        seconds: REQUEST_TIMEOUT.as_secs(),
                    });
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    /// One key's value and mod revision (`None`: absent), and the store's revision.
    async fn get(&self, key: String) -> Result<(Option<(Vec<u8>, i64)>, i64), StoreError> {
        let response = self
            .bounded(|mut client| {
                let key = key.clone();
                async move { client.get(key, None).await }
            })
            .await?;
        let header = response.header().map_or(0, |h| h.revision());
        let kv = response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision()));
        Ok((kv, header))
    }

    /// Keys (without `prefix`) under `prefix`.
    async fn keys(&self, prefix: String) -> Result<Vec<(String, i64)>, StoreError> {
        let response = self
            .bounded(|mut client| {
                let prefix = prefix.clone();
                let options = GetOptions::new().with_prefix().with_keys_only();
                async move { client.get(prefix, Some(options)).await }
            })
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(&prefix)?;
                Some((name.to_string(), kv.mod_revision()))
            })
            .collect())
    }

    /// The pointer and its revision, and the store's revision when read; `None` when no
    /// document was written yet.
    pub async fn pointer(&self) -> Result<(Option<(Pointer, i64)>, i64), StoreError> {
        let (kv, header) = self.get(self.config.current_key()).await?;
        let Some((value, revision)) = kv else {
            return Ok((None, header));
        };
        Ok((Some((Pointer::parse(&value)?, revision)), header))
    }

    /// The fleet's view now: the current revision, the hosts' reports and the hosts ever seen.
    pub async fn view(&self) -> Result<FleetView, StoreError> {
        // The current key's revision even when its value is not a valid pointer.
        let revision = Some(self.current_revision().await?).filter(|&r| r > 0);
        let hosts = self.hosts().await?;
        let seen = self.seen().await?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(FleetView::new(revision, &hosts, &seen, now))
    }

    /// The current key's mod revision, whatever its value (0: no document).
    pub async fn current_revision(&self) -> Result<i64, StoreError> {
        let (kv, _) = self.get(self.config.current_key()).await?;
        Ok(kv.map_or(0, |(_, revision)| revision))
    }

    /// The document a pointer names (chunks are immutable; a missing one means the pointer
    /// moved on and was garbage-collected, or the data is damaged).
    pub async fn assemble(&self, pointer: &Pointer) -> Result<Document, StoreError> {
        let mut chunks = std::collections::HashMap::new();
        for name in pointer.chunks.iter().collect::<BTreeSet<_>>() {
            let (kv, _) = self
                .get(format!("{}{name}", self.config.chunks_prefix()))
                .await?;
            if let Some((value, _)) = kv {
                chunks.insert(name.clone(), value);
            }
        }
        Ok(pointer.assemble(|name| chunks.get(name).cloned())?)
    }

    /// The current document; `None` when none was written yet.
    pub async fn current(&self) -> Result<(Option<Current>, i64), StoreError> {
        let (pointer, header) = self.pointer().await?;
        let Some((pointer, revision)) = pointer else {
            return Ok((None, header));
        };
        let document = self.assemble(&pointer).await?;
        Ok((
            Some(Current {
                document,
                pointer,
                revision,
            }),
            header,
        ))
    }

    /// Writes `document` if the pointer's revision is still `expected` (0: no document yet):
    /// chunks first, then the pointer in a transaction comparing its mod revision. Returns the
    /// new revision. Afterwards chunks named neither by the new pointer nor by the previous
    /// one, and older than the new one, are deleted (a host still reading the previous
    /// document finds its chunks; a writer racing this one rewrites its chunks after the flip,
    /// so they are newer and kept).
    pub async fn write(&self, document: &Document, expected: i64) -> Result<i64, StoreError> {
        let encoded = document.encode(CHUNK_SIZE);
        let chunks_prefix = self.config.chunks_prefix();
        let mut written = BTreeSet::new();
        for (name, bytes) in &encoded.chunks {
            if written.insert(name.clone()) {
                let key = format!("{chunks_prefix}{name}");
                self.bounded(|mut client| {
                    let (key, bytes) = (key.clone(), bytes.clone());
                    async move { client.put(key, bytes, None).await }
                })
                .await?;
            }
        }
        let current = self.config.current_key();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                current.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(
                current.clone(),
                encoded.pointer.to_bytes(),
                None,
            )])
            .or_else([TxnOp::get(current.clone(), None)]);
        let response = self
            .bounded(|mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await?;
        let revision = if response.succeeded() {
            response.header().map_or(0, |h| h.revision())
        } else {
            let found = response
                .op_responses()
                .into_iter()
                .find_map(|op| match op {
                    etcd_client::TxnOpResponse::Get(get) => {
                        get.kvs().first().map(|kv| kv.mod_revision())
                    }
                    _ => None,
                })
                .unwrap_or(0);
            // A retried transaction may have been committed by its first attempt.
            match self.pointer().await {
                Ok((Some((pointer, revision)), _))
                    if revision == found && pointer == encoded.pointer =>
                {
                    revision
                }
                _ => return Err(StoreError::Conflict { expected, found }),
            }
        };
        self.collect_garbage(written, expected, revision).await;
        Ok(revision)
    }

    /// See [`Store::write`]. Best effort: a failure only leaves unused chunks behind.
    async fn collect_garbage(&self, mut keep: BTreeSet<String>, previous: i64, revision: i64) {
        let mut client = self.client.clone();
        if previous > 0 {
            let options = GetOptions::new().with_revision(previous);
            if let Ok(response) = client.get(self.config.current_key(), Some(options)).await
                && let Some(kv) = response.kvs().first()
                && let Ok(pointer) = Pointer::parse(kv.value())
            {
                keep.extend(pointer.chunks);
            } else {
                // The previous pointer can't be read (compacted, or not a pointer): keep
                // everything this time.
                return;
            }
        }
        let Ok(chunks) = self.keys(self.config.chunks_prefix()).await else {
            return;
        };
        for (name, modified) in chunks {
            if !keep.contains(&name) && modified < revision {
                let key = format!("{}{name}", self.config.chunks_prefix());
                let _ = client.delete(key, None).await;
            }
        }
    }

    /// Every host's last report (hosts whose lease expired are gone).
    pub async fn hosts(&self) -> Result<Vec<HostStatus>, StoreError> {
        let key = self.config.hosts_prefix();
        let response = self
            .bounded(|mut client| {
                let key = key.clone();
                async move { client.get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice(kv.value())
                    .unwrap_or_else(|e| unreadable_report(kv.key(), &e))
            })
            .collect())
    }

    /// Names of every host that ever reported.
    pub async fn seen(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .keys(self.config.seen_prefix())
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Records this host's name under `seen/` (no lease).
    pub async fn mark_seen(&self) -> Result<(), StoreError> {
        let key = format!("{}{}", self.config.seen_prefix(), self.config.host);
        self.bounded(|mut client| {
            let key = key.clone();
            async move { client.put(key, Vec::new(), None).await }
        })
        .await?;
        Ok(())
    }

    /// Writes this host's report under `hosts/<host>`, attached to `lease`.
    pub async fn report(&self, status: &HostStatus, lease: i64) -> Result<(), StoreError> {
        let key = format!("{}{}", self.config.hosts_prefix(), self.config.host);
        let value = serde_json::to_vec(status).unwrap_or_default();
        self.bounded(|mut client| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                client
                    .put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        Ok(())
    }
}

/// A host whose report under `key` doesn't decode (another version of apifence, or a hand
/// edit): shown as failing with the reason, never left out.
fn unreadable_report(key: &[u8], error: &serde_json::Error) -> HostStatus {
    let key = String::from_utf8_lossy(key);
    HostStatus {
        host: key.rsplit('/').next().unwrap_or_default().to_string(),
        error: Some(format!(
            "its report under {key} can't be read ({error}); is that host on another version of \
             apifence?"
        )),
        ..HostStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_report_is_a_failing_host_named_by_its_key() {
        let error = serde_json::from_slice::<HostStatus>(b"{\"host\": 7}").unwrap_err();
        let host = unreadable_report(b"/apifence/default/hosts/cp-2", &error);
        assert_eq!(host.host, "cp-2");
        let reason = host.error.clone().expect("a reason");
        assert!(reason.contains("/apifence/default/hosts/cp-2"), "{reason}");
        assert!(reason.contains("another version"), "{reason}");
        let view = FleetView::new(Some(3), &[host], &[], 0.0);
        assert!(!view.healthy());
    }
}
