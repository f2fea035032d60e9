//! A real etcd cluster for tests: `members` etcd processes (Debian's `etcd-server`) in a
//! network namespace of their own, peers on that namespace's loopback, clients served on every
//! address of the namespace (loopback for the CLI, veth addresses for hosts joined to it). Each
//! member has a temporary data directory. Members can be killed and started again (same data).
//! Dropping the cluster kills every member and deletes the directory and the namespace (with
//! every veth joined to it), also when a test panics. Every wait is bounded.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use crate::{netns::Netns, wait::wait_until};

/// Bound on a member (or the whole cluster) becoming ready.
pub const READY_WAIT: Duration = Duration::from_secs(30);
/// What etcd 3.4 (zap logger) logs once a member joined a cluster with a leader, and once it
/// serves clients (`securely` or `insecurely`).
const READY_LINES: [&str; 2] = [
    "published local member to cluster",
    "serving client traffic",
];

/// TLS files for the members (server certificate for every address clients use, and the CA
/// that signed the clients' certificates). With TLS, clients must present a certificate.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA of the server and client certificates.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
}

/// See the module docs.
pub struct EtcdCluster {
    ns: Netns,
    dir: PathBuf,
    tls: Option<EtcdTls>,
    members: Vec<Option<Child>>,
    starts: Vec<u32>,
}

/// Client port of member `k`.
pub fn client_port(k: usize) -> u16 {
    2379 + 10_000 * k as u16
}

fn peer_port(k: usize) -> u16 {
    2380 + 10_000 * k as u16
}

impl EtcdCluster {
    /// Starts `members` members in a new namespace with data under `dir` (created; removed on
    /// drop) and waits until every one serves clients.
    pub fn start(dir: &Path, members: usize, tls: Option<EtcdTls>) -> Result<EtcdCluster> {
        let ns = Netns::new().context("etcd namespace")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = EtcdCluster {
            ns,
            dir: dir.to_path_buf(),
            tls,
            members: (0..members).map(|_| None).collect(),
            starts: vec![0; members],
        };
        for k in 0..members {
            cluster.spawn(k)?;
        }
        for k in 0..members {
            cluster.wait_ready(k)?;
        }
        Ok(cluster)
    }

    /// The namespace the members run in (join hosts to it with a veth pair).
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Client URLs on the namespace's loopback (for commands run inside it).
    pub fn local_endpoints(&self) -> Vec<String> {
        self.endpoints_at(&Ipv4Addr::LOCALHOST.to_string())
    }

    /// Client URLs at `address` (an address of the namespace, such as a veth end).
    pub fn endpoints_at(&self, address: &str) -> Vec<String> {
        (0..self.members.len())
            .map(|k| format!("{}://{address}:{}", self.scheme(), client_port(k)))
            .collect()
    }

    fn log_path(&self, k: usize, n: u32) -> PathBuf {
        self.dir.join(format!("member{k}-{n}.log"))
    }

    /// Everything the members logged.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (k, &starts) in self.starts.iter().enumerate() {
            for n in 1..=starts {
                all.push_str(&format!("--- member {k}, start {n}\n"));
                all.push_str(&std::fs::read_to_string(self.log_path(k, n)).unwrap_or_default());
            }
        }
        all
    }

    fn spawn(&mut self, k: usize) -> Result<()> {
        self.starts[k] += 1;
        let log = File::create(self.log_path(k, self.starts[k])).context("member log")?;
        let name = format!("m{k}");
        let data = self.dir.join(format!("member{k}"));
        let cluster = (0..self.members.len())
            .map(|j| format!("m{j}=http://127.0.0.1:{}", peer_port(j)))
            .collect::<Vec<_>>()
            .join(",");
        let scheme = self.scheme();
        let port = client_port(k);
        let mut command = self.ns.command("etcd");
        command
            .args(["--name", &name])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("{scheme}://0.0.0.0:{port}"),
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", peer_port(k)),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", peer_port(k)),
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "apifence-test",
                // Elections within a fraction of a second after a member dies.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--logger",
                "zap",
            ]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log handle")?)
            .stderr(log);
        let child = command
            .spawn()
            .context("starting etcd (is etcd-server installed? cargo xtask setup installs it)")?;
        self.members[k] = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, k: usize) -> Result<()> {
        let log = self.log_path(k, self.starts[k]);
        let mut exited = None;
        let ready = wait_until(READY_WAIT, Duration::from_millis(50), || {
            if let Some(child) = self.members[k].as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exited = Some(status);
                return true;
            }
            std::fs::read_to_string(&log)
                .is_ok_and(|text| READY_LINES.iter().all(|line| text.contains(line)))
        });
        if let Some(status) = exited {
            bail!(
                "etcd member {k} exited ({status}) while starting:\n{}",
                self.logs()
            );
        }
        if !ready {
            bail!(
                "etcd member {k} not ready within {READY_WAIT:?}:\n{}",
                self.logs()
            );
        }
        Ok(())
    }

    /// Kills member `k` with SIGKILL and reaps it.
    pub fn kill(&mut self, k: usize) {
        if let Some(mut child) = self.members[k].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `k` again on its data and waits until it serves clients.
    pub fn restart(&mut self, k: usize) -> Result<()> {
        self.kill(k);
        self.spawn(k)?;
        self.wait_ready(k)
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for k in 0..self.members.len() {
            self.kill(k);
        }
    }

    /// Starts every member that is not running and waits until all serve clients.
    pub fn restart_all(&mut self) -> Result<()> {
        let stopped: Vec<usize> = (0..self.members.len())
            .filter(|&k| self.members[k].is_none())
            .collect();
        for &k in &stopped {
            self.spawn(k)?;
        }
        for &k in &stopped {
            self.wait_ready(k)?;
        }
        Ok(())
    }

    /// One JSON request to a member's gRPC gateway (plain HTTP clusters only), from inside the
    /// namespace; returns the response body.
    pub fn gateway(
        &self,
        k: usize,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        if self.tls.is_some() {
            bail!("the gateway helper speaks plain HTTP; this cluster uses TLS");
        }
        let body = body.to_string();
        let port = client_port(k);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = self.ns.run(move || -> Result<String> {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })??;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("an HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{path}: {head}\n{body}");
        }
        serde_json::from_str(body.trim()).with_context(|| format!("{path}: {body}"))
    }

    /// Writes `value` under `key` directly (bypassing apifence), returns the new revision.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<i64> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let reply = self.gateway(
            0,
            "/v3/kv/put",
            &serde_json::json!({"key": b64.encode(key), "value": b64.encode(value)}),
        )?;
        revision(&reply)
    }

    /// Compacts the history up to `revision` (physically), so watches from before it fail.
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.gateway(
            0,
            "/v3/kv/compaction",
            &serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )?;
        Ok(())
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let reply = self.gateway(
            0,
            "/v3/kv/range",
            &serde_json::json!({"key": b64.encode("/"), "count_only": true}),
        )?;
        revision(&reply)
    }
}

fn revision(reply: &serde_json::Value) -> Result<i64> {
    reply["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("no revision in {reply}"))
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
