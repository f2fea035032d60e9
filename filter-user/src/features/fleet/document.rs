//! The fleet's document and how it is laid out in etcd, as pure functions (no etcd here).
//!
//! One [`Document`] per cluster: the authorized list (notes, expiry, names as in the config
//! file), always-allow and mode. Its JSON is cut into chunks of at most [`CHUNK_SIZE`] bytes;
//! each chunk is stored under `<prefix><cluster>/chunks/<sha256 of the chunk>` (immutable,
//! written first), and one small [`Pointer`] under `<prefix><cluster>/current` names the
//! chunks in order with the digest of the whole. Writers flip the pointer last, in a
//! transaction that compares its mod revision, so a watcher sees either the old document or
//! the new one, never half of one, and every request stays far below etcd's 1.5 MiB limit
//! whatever the list's size.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{daemon::desired::Authorized, policy::Mode};

/// Format version of the pointer and the document.
pub const DOCUMENT_VERSION: u32 = 1;
/// Largest chunk: 1 MiB, well under etcd's default 1.5 MiB request limit with the key and
/// the request's framing.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Largest document accepted (bytes): 256 MiB, far above a list of millions of prefixes.
pub const MAX_DOCUMENT: u64 = 256 << 20;

/// The desired state every host of a cluster follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Format version ([`DOCUMENT_VERSION`]).
    pub version: u32,
    /// The authorized list.
    pub authorized: Authorized,
    /// Sources never blocked.
    #[serde(default)]
    pub always_allow: Vec<IpNet>,
    /// Enforce or monitor.
    pub mode: Mode,
}

/// The small value flipped last: which chunks, in which order, make the document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// Format version ([`DOCUMENT_VERSION`]).
    pub version: u32,
    /// `sha256:<hex>` of the whole document's bytes.
    pub digest: String,
    /// Length of the document's bytes.
    pub size: u64,
    /// Hex SHA-256 of each chunk, in order (also the last part of the chunk's key).
    pub chunks: Vec<String>,
}

/// A document encoded for storage: the pointer and the chunks (`(hex digest, bytes)`).
#[derive(Clone, Debug)]
pub struct Encoded {
    /// The value of the `current` key.
    pub pointer: Pointer,
    /// Each chunk with its hex digest, in order; identical chunks appear once per use.
    pub chunks: Vec<(String, Vec<u8>)>,
}

/// Why a stored document can't be used. The host keeps enforcing its last good one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The pointer is not a pointer.
    #[error(
        "the current key holds no valid pointer ({0}); write the list again with apifence fleet \
         set"
    )]
    BadPointer(String),
    /// A newer format.
    #[error(
        "the document has format version {0}, this apifence reads version {DOCUMENT_VERSION}; \
         upgrade apifence on this host"
    )]
    Version(u32),
    /// A chunk named by the pointer is missing.
    #[error(
        "chunk {0} named by the current key is missing; write the list again with apifence fleet set"
    )]
    MissingChunk(String),
    /// A chunk's bytes don't match its name.
    #[error(
        "chunk {0} does not match its digest (corrupted); write the list again with apifence fleet set"
    )]
    ChunkDigest(String),
    /// The whole doesn't match the pointer.
    #[error(
        "the document does not match the pointer's {what}; write the list again with apifence \
         fleet set"
    )]
    Whole {
        /// `size` or `digest`.
        what: &'static str,
    },
    /// Too large.
    #[error("the document is {0} bytes, more than the {MAX_DOCUMENT} accepted")]
    TooLarge(u64),
    /// Not a document.
    #[error("the document is invalid: {0}; write it again with apifence fleet set")]
    Invalid(String),
}

/// Hex SHA-256 of `bytes`.
pub fn hex_digest(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

impl Document {
    /// A document of the current version.
    pub fn new(authorized: Authorized, always_allow: Vec<IpNet>, mode: Mode) -> Self {
        Self {
            version: DOCUMENT_VERSION,
            authorized,
            always_allow,
            mode,
        }
    }

    /// The document's bytes (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Encodes it into chunks of at most `chunk_size` bytes and its pointer.
    pub fn encode(&self, chunk_size: usize) -> Encoded {
        let bytes = self.to_bytes();
        let chunks: Vec<(String, Vec<u8>)> = bytes
            .chunks(chunk_size.max(1))
            .map(|c| (hex_digest(c), c.to_vec()))
            .collect();
        Encoded {
            pointer: Pointer {
                version: DOCUMENT_VERSION,
                digest: format!("sha256:{}", hex_digest(&bytes)),
                size: bytes.len() as u64,
                chunks: chunks.iter().map(|(d, _)| d.clone()).collect(),
            },
            chunks,
        }
    }
}

impl Pointer {
    /// Parses the `current` key's value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let pointer: Pointer =
            serde_json::from_slice(bytes).map_err(|e| DocumentError::BadPointer(e.to_string()))?;
        if pointer.version != DOCUMENT_VERSION {
            return Err(DocumentError::Version(pointer.version));
        }
        if pointer.size > MAX_DOCUMENT {
            return Err(DocumentError::TooLarge(pointer.size));
        }
        if let Some(bad) = pointer
            .chunks
            .iter()
            .find(|c| c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(DocumentError::BadPointer(format!(
                "chunk name {bad:?} is not a hex SHA-256"
            )));
        }
        Ok(pointer)
    }

    /// The pointer's bytes (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Assembles and checks the document from its chunks; `chunk` returns a chunk's bytes by
    /// hex digest, `None` when it is missing.
    pub fn assemble(
        &self,
        mut chunk: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<Document, DocumentError> {
        let mut bytes = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        for name in &self.chunks {
            let part = chunk(name).ok_or_else(|| DocumentError::MissingChunk(name.clone()))?;
            if hex_digest(&part) != *name {
                return Err(DocumentError::ChunkDigest(name.clone()));
            }
            bytes.extend_from_slice(&part);
            if bytes.len() as u64 > self.size {
                return Err(DocumentError::Whole { what: "size" });
            }
        }
        if bytes.len() as u64 != self.size {
            return Err(DocumentError::Whole { what: "size" });
        }
        if format!("sha256:{}", hex_digest(&bytes)) != self.digest {
            return Err(DocumentError::Whole { what: "digest" });
        }
        let document: Document =
            serde_json::from_slice(&bytes).map_err(|e| DocumentError::Invalid(e.to_string()))?;
        if document.version != DOCUMENT_VERSION {
            return Err(DocumentError::Version(document.version));
        }
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn list(n: u32) -> Authorized {
        let text: Vec<String> = (0..n)
            .map(|i| format!("10.{}.{}.0/24", i >> 8 & 0xff, i & 0xff))
            .collect();
        Authorized::parse(&text.join(",")).unwrap()
    }

    fn store(encoded: &Encoded) -> HashMap<String, Vec<u8>> {
        encoded.chunks.iter().cloned().collect()
    }

    #[test]
    fn a_large_list_round_trips_in_chunks_under_the_request_limit() {
        let document = Document::new(
            list(60_000),
            vec!["198.51.100.7/32".parse().unwrap()],
            Mode::Monitor,
        );
        let encoded = document.encode(CHUNK_SIZE);
        assert!(encoded.chunks.len() >= 2, "{} chunks", encoded.chunks.len());
        assert!(encoded.chunks.iter().all(|(_, c)| c.len() <= CHUNK_SIZE));
        assert!(encoded.pointer.to_bytes().len() < 64 * 1024);
        let chunks = store(&encoded);
        let pointer = Pointer::parse(&encoded.pointer.to_bytes()).unwrap();
        assert_eq!(
            pointer.assemble(|d| chunks.get(d).cloned()).unwrap(),
            document
        );
    }

    #[test]
    fn damage_is_detected() {
        let document = Document::new(list(300), Vec::new(), Mode::Enforce);
        let encoded = document.encode(1000);
        let pointer = encoded.pointer.clone();
        let mut chunks = store(&encoded);
        let victim = pointer.chunks[1].clone();
        assert_eq!(
            pointer.assemble(|d| if *d == victim {
                None
            } else {
                chunks.get(d).cloned()
            }),
            Err(DocumentError::MissingChunk(victim.clone()))
        );
        chunks.get_mut(&victim).unwrap()[0] ^= 1;
        assert_eq!(
            pointer.assemble(|d| chunks.get(d).cloned()),
            Err(DocumentError::ChunkDigest(victim))
        );
        let chunks = store(&encoded);
        let mut short = pointer.clone();
        short.chunks.pop();
        assert_eq!(
            short.assemble(|d| chunks.get(d).cloned()),
            Err(DocumentError::Whole { what: "size" })
        );
        let mut swapped = pointer.clone();
        swapped.chunks.swap(0, 1);
        assert_eq!(
            swapped.assemble(|d| chunks.get(d).cloned()),
            Err(DocumentError::Whole { what: "digest" })
        );
    }

    #[test]
    fn invalid_content_and_pointers_are_rejected_with_the_fix() {
        let bad = br#"{"version":1,"authorized":{"enabled":true,"entries":[{"range":"10.0.0.1/8"}]},"mode":"enforce"}"#;
        let pointer = Pointer {
            version: 1,
            digest: format!("sha256:{}", hex_digest(bad)),
            size: bad.len() as u64,
            chunks: vec![hex_digest(bad)],
        };
        let error = pointer.assemble(|_| Some(bad.to_vec())).unwrap_err();
        assert!(matches!(error, DocumentError::Invalid(_)), "{error}");
        assert!(error.to_string().contains("10.0.0.1/8"), "{error}");
        assert!(error.to_string().contains("apifence fleet set"), "{error}");
        assert!(matches!(
            Pointer::parse(b"{\"version\":1}"),
            Err(DocumentError::BadPointer(_))
        ));
        assert_eq!(
            Pointer::parse(br#"{"version":2,"digest":"","size":0,"chunks":[]}"#),
            Err(DocumentError::Version(2))
        );
        assert!(matches!(
            Pointer::parse(br#"{"version":1,"digest":"","size":0,"chunks":["../x"]}"#),
            Err(DocumentError::BadPointer(_))
        ));
    }

    proptest! {
        #[test]
        fn any_document_round_trips_through_any_chunk_size(
            n in 0u32..400,
            enabled in any::<bool>(),
            monitor in any::<bool>(),
            chunk_size in 1usize..5000,
        ) {
            let authorized = if enabled { list(n) } else { Authorized::Disabled };
            let mode = if monitor { Mode::Monitor } else { Mode::Enforce };
            let document = Document::new(authorized, Vec::new(), mode);
            let encoded = document.encode(chunk_size);
            prop_assert!(encoded.chunks.iter().all(|(_, c)| c.len() <= chunk_size));
            let chunks = store(&encoded);
            let pointer = Pointer::parse(&encoded.pointer.to_bytes()).unwrap();
            prop_assert_eq!(pointer.assemble(|d| chunks.get(d).cloned()).unwrap(), document);
        }
    }
}
