//! The fleet's keys in etcd, through the `etcd-client` crate: connecting (TLS with client
//! certificates, optional user and password), reading the current document, writing a new one
//! (chunks first, then the pointer flipped with compare-and-swap) and the hosts' reports.
//! Used by the daemon's follower and by `apifence fleet`.

use std::{collections::BTreeSet, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp,
};

use crate::{
    daemon::config_etcd::EtcdConfig,
    features::fleet::{
        document::{CHUNK_SIZE, Document, DocumentError, Pointer},
        host::HostStatus,
    },
};

/// Bound on establishing a connection to one member.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a member that stops answering is noticed within about this long.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

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
            endpoints: self.config.endpoints.join(","),
            source,
        }
    }

    async fn bounded<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(_) => Err(StoreError::Timeout {
                endpoints: self.config.endpoints.join(","),
                seconds: REQUEST_TIMEOUT.as_secs(),
            }),
        }
    }

    /// The pointer and its revision, and the store's revision when read; `None` when no
    /// document was written yet.
    pub async fn pointer(&self) -> Result<(Option<(Pointer, i64)>, i64), StoreError> {
        let mut client = self.client.clone();
        let key = self.config.current_key();
        let response = self.bounded(client.get(key, None)).await?;
        let header = response.header().map_or(0, |h| h.revision());
        let Some(kv) = response.kvs().first() else {
            return Ok((None, header));
        };
        Ok((
            Some((Pointer::parse(kv.value())?, kv.mod_revision())),
            header,
        ))
    }

    /// The document a pointer names (chunks are immutable; a missing one means the pointer
    /// moved on and was garbage-collected, or the data is damaged).
    pub async fn assemble(&self, pointer: &Pointer) -> Result<Document, StoreError> {
        let mut chunks = std::collections::HashMap::new();
        let mut client = self.client.clone();
        for name in pointer.chunks.iter().collect::<BTreeSet<_>>() {
            let key = format!("{}{name}", self.config.chunks_prefix());
            let response = self.bounded(client.get(key, None)).await?;
            if let Some(kv) = response.kvs().first() {
                chunks.insert(name.clone(), kv.value().to_vec());
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
    /// new revision. Chunks no longer named by the new or the previous pointer are deleted
    /// afterwards (a host still reading the previous one finds its chunks).
    pub async fn write(&self, document: &Document, expected: i64) -> Result<i64, StoreError> {
        let encoded = document.encode(CHUNK_SIZE);
        let mut client = self.client.clone();
        let chunks_prefix = self.config.chunks_prefix();
        let mut written = BTreeSet::new();
        for (name, bytes) in &encoded.chunks {
            if written.insert(name.clone()) {
                let key = format!("{chunks_prefix}{name}");
                self.bounded(client.put(key, bytes.clone(), None)).await?;
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
        let response = self.bounded(client.txn(txn)).await?;
        if !response.succeeded() {
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
            return Err(StoreError::Conflict { expected, found });
        }
        let revision = response.header().map_or(0, |h| h.revision());
        self.collect_garbage(&written, expected).await;
        Ok(revision)
    }

    /// Deletes chunks named neither by the pointer just written nor by the one before it.
    /// Best effort: a failure only leaves unused chunks behind.
    async fn collect_garbage(&self, keep: &BTreeSet<String>, previous: i64) {
        let mut client = self.client.clone();
        let mut keep = keep.clone();
        if previous > 0 {
            let options = GetOptions::new().with_revision(previous);
            if let Ok(response) = client.get(self.config.current_key(), Some(options)).await
                && let Some(kv) = response.kvs().first()
                && let Ok(pointer) = Pointer::parse(kv.value())
            {
                keep.extend(pointer.chunks);
            } else {
                // The previous pointer can't be read (compacted): keep everything this time.
                return;
            }
        }
        let prefix = self.config.chunks_prefix();
        let Ok(response) = client
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        else {
            return;
        };
        for kv in response.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            if let Some(name) = key.strip_prefix(&prefix)
                && !keep.contains(name)
            {
                let _ = client.delete(key, None).await;
            }
        }
    }

    /// Every host's last report (hosts whose lease expired are gone).
    pub async fn hosts(&self) -> Result<Vec<HostStatus>, StoreError> {
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix();
        let response = self
            .bounded(client.get(self.config.hosts_prefix(), Some(options)))
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// Names of every host that ever reported.
    pub async fn seen(&self) -> Result<Vec<String>, StoreError> {
        let mut client = self.client.clone();
        let prefix = self.config.seen_prefix();
        let options = GetOptions::new().with_prefix().with_keys_only();
        let response = self
            .bounded(client.get(prefix.clone(), Some(options)))
            .await?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok()?.strip_prefix(&prefix).map(String::from))
            .collect())
    }

    /// Records this host's name under `seen/` (no lease).
    pub async fn mark_seen(&self) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let key = format!("{}{}", self.config.seen_prefix(), self.config.host);
        self.bounded(client.put(key, Vec::new(), None)).await?;
        Ok(())
    }

    /// Writes this host's report under `hosts/<host>`, attached to `lease`.
    pub async fn report(&self, status: &HostStatus, lease: i64) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let key = format!("{}{}", self.config.hosts_prefix(), self.config.host);
        let value = serde_json::to_vec(status).unwrap_or_default();
        self.bounded(client.put(key, value, Some(PutOptions::new().with_lease(lease))))
            .await?;
        Ok(())
    }
}
