//! A fleet for end-to-end tests: a real 3-member etcd cluster in its own namespace, and N
//! hosts, each a [`DaemonLab`] (API server namespace with its own daemon, bpffs, socket and
//! state directory, plus a client namespace) joined to the etcd namespace by a management veth
//! (`mgmt0`, 10.77.i.2 ~ 10.77.i.1), which is not filtered. `apifence fleet` runs inside the
//! etcd namespace against the members' loopback addresses. Dropping the lab stops the daemons
//! and the members and deletes every namespace and directory, also when a test panics.

#![allow(dead_code)]

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use apifence_tests::{
    Endpoint, VethPair, apifence_bin,
    bpffs::BASE_DIR,
    cmd::output_with_timeout,
    etcd::{EtcdCluster, EtcdTls},
};

use crate::daemon_support::*;

/// Bound on convergence after a change (`fleet set --wait=…`).
pub const CONVERGE_WAIT: &str = "--wait=60s";
/// Bound on a host noticing that etcd is gone or back.
pub const NOTICE_WAIT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// TLS files made by the test with openssl.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(args: &[&str]) {
    let mut command = Command::new("openssl");
    command.args(args);
    let out = output_with_timeout(&mut command, Duration::from_secs(30)).expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA, a server certificate for loopback and every etcd-side management address, and a
    /// client certificate, all signed by the CA (ECDSA P-256).
    pub fn generate(dir: &Path, hosts: usize) -> Pki {
        std::fs::create_dir_all(dir).expect("pki directory");
        let p = |name: &str| dir.join(name).display().to_string();
        let key = |name: &str| {
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &p(name),
            ])
        };
        key("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &p("ca.key"),
            "-subj",
            "/CN=apifence-test-ca",
            "-days",
            "2",
            "-out",
            &p("ca.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        let mut sans = vec!["IP:127.0.0.1".to_string()];
        sans.extend((0..hosts).map(|i| format!("IP:10.77.{i}.1")));
        let sign = |name: &str, cn: &str, ext: String| {
            key(&format!("{name}.key"));
            openssl(&[
                "req",
                "-new",
                "-key",
                &p(&format!("{name}.key")),
                "-subj",
                &format!("/CN={cn}"),
                "-out",
                &p(&format!("{name}.csr")),
            ]);
            std::fs::write(dir.join(format!("{name}.ext")), ext).expect("extensions file");
            openssl(&[
                "x509",
                "-req",
                "-in",
                &p(&format!("{name}.csr")),
                "-CA",
                &p("ca.crt"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &p(&format!("{name}.crt")),
                "-extfile",
                &p(&format!("{name}.ext")),
            ]);
        };
        sign(
            "server",
            "etcd",
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        );
        sign(
            "client",
            "apifence",
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n"
                .to_string(),
        );
        Pki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// Removes a directory when dropped (also when building the lab panics half-way).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// See the module docs. Fields drop in order: hosts first, then etcd, then the directory.
pub struct FleetLab {
    pub hosts: Vec<DaemonLab>,
    pub etcd: EtcdCluster,
    pub pki: Option<Pki>,
    /// Extra top-level config keys for every host (capacity …).
    extra: String,
    dir: RemoveOnDrop,
}

impl FleetLab {
    /// Starts etcd (3 members, with TLS and client certificates when `tls`) and builds
    /// `hosts` hosts joined to it; starts no daemon.
    pub fn new(hosts: usize, tls: bool) -> FleetLab {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(BASE_DIR).join(format!("fleet-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fleet directory");
        let dir = RemoveOnDrop(dir);
        let pki = tls.then(|| Pki::generate(&dir.0.join("pki"), hosts));
        let etcd_tls = pki.as_ref().map(|pki| EtcdTls {
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
        });
        let etcd = EtcdCluster::start(&dir.0.join("etcd"), 3, etcd_tls).expect("etcd cluster");
        let labs: Vec<DaemonLab> = (0..hosts)
            .map(|i| {
                let lab = DaemonLab::new();
                let i = i as u8;
                VethPair::create(
                    &lab.api,
                    Endpoint::new(
                        "mgmt0",
                        Ipv4Addr::new(10, 77, i, 2),
                        Ipv6Addr::new(0xfd00, 0x77, 0, u16::from(i), 0, 0, 0, 2),
                    ),
                    etcd.ns(),
                    Endpoint::new(
                        &format!("etcd{i}"),
                        Ipv4Addr::new(10, 77, i, 1),
                        Ipv6Addr::new(0xfd00, 0x77, 0, u16::from(i), 0, 0, 0, 1),
                    ),
                )
                .expect("management link");
                lab
            })
            .collect();
        FleetLab {
            hosts: labs,
            etcd,
            pki,
            extra: String::new(),
            dir,
        }
    }

    /// The lab's directory (removed with the lab).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Adds top-level keys to every host's config (before `[etcd]`).
    pub fn with_config(mut self, extra: &str) -> FleetLab {
        self.extra = extra.to_string();
        self
    }

    /// Host `i`'s name under `hosts/`.
    pub fn host_name(i: usize) -> String {
        format!("host{i}")
    }

    /// The config body of host `i`: `ranges_from = "etcd"` with its `[etcd]` table.
    pub fn config_body(&self, i: usize) -> String {
        let endpoints = self
            .etcd
            .endpoints_at(&format!("10.77.{i}.1"))
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut body = format!(
            "{}\nranges_from = \"etcd\"\n[etcd]\nendpoints = [{endpoints}]\nhost = \"{}\"\n",
            self.extra,
            Self::host_name(i)
        );
        if let Some(pki) = &self.pki {
            body.push_str(&format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                pki.ca.display(),
                pki.client_cert.display(),
                pki.client_key.display()
            ));
        }
        body
    }

    /// Writes every host's config and starts every daemon (each answers on its socket).
    pub fn start_all(&self) {
        for (i, host) in self.hosts.iter().enumerate() {
            host.write_config(&self.config_body(i));
            host.start(&[]);
        }
        // A daemon answers on its socket before its first report reaches etcd; a `fleet set
        // --wait` issued in between would find nobody to wait for.
        let mut last = serde_json::Value::Null;
        let reported = wait_until(NOTICE_WAIT, || {
            let out = self.fleet(&["status", "--json"]);
            last = serde_json::from_slice(&out.stdout).unwrap_or_default();
            last["hosts"].as_array().is_some_and(|hosts| {
                hosts.len() == self.hosts.len() && hosts.iter().all(|h| h["state"] != "gone")
            })
        });
        assert!(
            reported,
            "not every host reported to etcd: {last}\n{}",
            self.logs()
        );
    }

    /// The flags that point `apifence fleet` at the cluster (with the client certificate).
    pub fn etcd_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--endpoints".to_string(),
            self.etcd.local_endpoints().join(","),
        ];
        if let Some(pki) = &self.pki {
            for (flag, path) in [
                ("--ca", &pki.ca),
                ("--cert", &pki.client_cert),
                ("--key", &pki.client_key),
            ] {
                flags.push(flag.into());
                flags.push(path.display().to_string());
            }
        }
        flags
    }

    /// `apifence --netns <etcd> fleet <args> <etcd flags>`, bounded by [`CLI_WAIT`].
    pub fn fleet_with(&self, args: &[&str], flags: &[String]) -> Output {
        self.fleet_within(args, flags, CLI_WAIT)
    }

    /// [`FleetLab::fleet_with`] bounded by `bound`.
    pub fn fleet_within(&self, args: &[&str], flags: &[String], bound: Duration) -> Output {
        let mut command = Command::new(apifence_bin().expect("apifence binary"));
        command
            .arg("--netns")
            .arg(self.etcd.ns().name())
            .arg("fleet")
            .args(args)
            .args(flags)
            .env_remove("APIFENCE_CONFIG");
        output_with_timeout(&mut command, bound).expect("run apifence fleet")
    }

    /// `apifence fleet ARGS` with this lab's etcd flags.
    pub fn fleet(&self, args: &[&str]) -> Output {
        self.fleet_with(args, &self.etcd_flags())
    }

    /// Everything logged by etcd and the daemons.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            all.push_str(&format!("=== host{i}\n{}\n", host.logs()));
        }
        all.push_str(&format!(
            "=== etcd (tail)\n{}",
            tail(&self.etcd.logs(), 4000)
        ));
        all
    }

    /// Runs `fleet ARGS`; panics with its stderr and the logs unless it succeeds.
    pub fn fleet_ok(&self, args: &[&str]) -> String {
        let out = self.fleet(args);
        assert!(
            out.status.success(),
            "apifence fleet {args:?} failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `fleet status --json` (whatever its exit status).
    pub fn status(&self) -> serde_json::Value {
        let out = self.fleet(&["status", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "fleet status --json: {e}: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// `fleet set LIST --wait`; returns the revision written.
    pub fn set(&self, list: &str) -> i64 {
        let out = self.fleet_ok(&["set", list, CONVERGE_WAIT]);
        assert!(
            out.contains(&format!(
                "all {} live hosts enforce revision",
                self.hosts.len()
            )),
            "{out}"
        );
        revision_written(&out)
    }

    /// Each host: the authorized source of each family passes, the other is dropped
    /// (`good` = whether the lab's GOOD addresses are the authorized ones).
    pub fn assert_enforces(&self, good: bool, why: &str) {
        for (i, host) in self.hosts.iter().enumerate() {
            self.assert_host_enforces(i, host, good, why);
        }
    }

    /// [`FleetLab::assert_enforces`] for one host.
    pub fn assert_host_enforces(&self, i: usize, host: &DaemonLab, good: bool, why: &str) {
        let (pass, drop) = if good {
            ([v4(GOOD4), v6(GOOD6)], [v4(BAD4), v6(BAD6)])
        } else {
            ([v4(BAD4), v6(BAD6)], [v4(GOOD4), v6(GOOD6)])
        };
        for src in pass {
            host.assert_connects(src, API_PORT, &format!("host{i}: {why}"));
        }
        for src in drop {
            host.assert_dropped(src, API_PORT, &format!("host{i}: {why}"));
        }
    }
}

/// The list authorizing the lab's GOOD (or BAD) addresses of both families.
pub fn list(good: bool) -> String {
    if good {
        format!("{GOOD4},{GOOD6}")
    } else {
        format!("{BAD4},{BAD6}")
    }
}

/// The revision in `revision N written: …`.
pub fn revision_written(out: &str) -> i64 {
    out.lines()
        .find_map(|l| l.strip_prefix("revision ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

fn tail(text: &str, n: usize) -> &str {
    let start = text.len().saturating_sub(n);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

impl Drop for FleetLab {
    fn drop(&mut self) {
        // Hosts and etcd clean up after themselves; then the PKI and the directory.
        self.hosts.clear();
        self.etcd.kill_all();
    }
}
