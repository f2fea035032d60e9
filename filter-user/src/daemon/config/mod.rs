//! The daemon's configuration file (TOML): raw keys as written ([`RawConfig`], unknown keys
//! rejected), then a validated, typed [`Config`]. Every key is optional; [`Config::default`]
//! documents the defaults. Every error names the key (and the 1-based entry of a list) and says
//! how to fix it.
//!
//! ```toml
//! interfaces = ["eth0"]
//! ports = [443, 6443]
//! xdp_mode = "auto"                 # auto | native | skb
//! mode = "enforce"                  # enforce | monitor
//! ranges_from = "config"            # config | state | etcd ([etcd], see config::etcd)
//! authorized_ranges = ["73.140.245.0/24", "2001:db8::/32", "AzureDevOps",
//!                      { range = "203.0.113.0/24", note = "on-call VPN", expires = "2026-12-01T00:00:00Z" }]
//! always_allow = ["198.51.100.7"]
//! service_tags_file = "/etc/apifence/ServiceTags_Public.json"
//! capacity = 65536
//! lookup = "compiled"               # compiled | lpm-trie
//! bpffs = "/sys/fs/bpf/apifence"
//! state_dir = "/var/lib/apifence"
//! socket = "/run/apifence/apifence.sock"
//! metrics = "127.0.0.1:9640"        # "" turns the endpoint off
//! metrics_ranges = 10               # per-range hit series (top by hits, rest as "other")
//! ```

pub mod etcd;
mod toml_value;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use filter_common::DEFAULT_CAPACITY;
use ipnet::IpNet;
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use toml::Value;

use self::{
    etcd::{EtcdConfig, EtcdConfigError, parse_etcd},
    toml_value::article,
};

use crate::{
    daemon::bounded_read,
    daemon::desired::{Authorized, RangeEntry, dedup, parse_single},
    kernel::names::{NameError, check_interface},
    kernel::paths::{DEFAULT_BPFFS_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR},
    policy::echo::escape,
    policy::language::{Entry, ONLY_ALWAYS_ALLOWED, RangeError},
    policy::suggest::did_you_mean,
    policy::{DEFAULT_PORTS, Mode},
    policy::{Lookup, XdpModeChoice},
};

/// Default number of per-range hit series (`metrics_ranges`).
pub const DEFAULT_METRICS_RANGES: usize = 10;
/// Most per-range hit series (`metrics_ranges`) a scrape may carry.
pub const MAX_METRICS_RANGES: usize = 1000;
/// Default metrics endpoint (`metrics`): Prometheus text on localhost.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9640";
/// Largest `capacity` accepted (prefixes per family).
pub const MAX_CAPACITY: u32 = 1 << 24;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Every key of the file, each with an example line used in error messages.
pub const KEYS: [(&str, &str); 16] = [
    ("interfaces", r#"interfaces = ["eth0"]"#),
    ("ports", "ports = [443, 6443]"),
    ("xdp_mode", r#"xdp_mode = "auto""#),
    ("mode", r#"mode = "enforce""#),
    ("ranges_from", r#"ranges_from = "config""#),
    (
        "authorized_ranges",
        r#"authorized_ranges = ["73.140.245.0/24", "2001:db8::/32"]"#,
    ),
    ("always_allow", r#"always_allow = ["198.51.100.7"]"#),
    (
        "service_tags_file",
        r#"service_tags_file = "/etc/apifence/ServiceTags_Public.json""#,
    ),
    ("capacity", "capacity = 65536"),
    ("lookup", r#"lookup = "compiled""#),
    ("bpffs", r#"bpffs = "/sys/fs/bpf/apifence""#),
    ("state_dir", r#"state_dir = "/var/lib/apifence""#),
    ("socket", r#"socket = "/run/apifence/apifence.sock""#),
    ("metrics", r#"metrics = "127.0.0.1:9640""#),
    ("metrics_ranges", "metrics_ranges = 10"),
    ("etcd", r#"[etcd] endpoints = ["https://10.0.0.1:2379"]"#),
];

/// Keys of an entry table in `authorized_ranges`.
const ENTRY_KEYS: [&str; 3] = ["range", "note", "expires"];
/// Example of an entry table.
const ENTRY_EXAMPLE: &str =
    r#"{ range = "203.0.113.0/24", note = "on-call VPN", expires = "2026-12-01T00:00:00Z" }"#;
/// Example of an expiry time.
const EXPIRES_EXAMPLE: &str = r#"expires = "2026-12-01T00:00:00Z""#;

fn example(key: &str) -> &'static str {
    KEYS.iter()
        .find(|(k, _)| *k == key)
        .map_or("", |(_, example)| example)
}

/// The file as written: each known key, not yet validated. Unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `interfaces`.
    pub interfaces: Option<Value>,
    /// `ports`.
    pub ports: Option<Value>,
    /// `xdp_mode`.
    pub xdp_mode: Option<Value>,
    /// `mode`.
    pub mode: Option<Value>,
    /// `ranges_from`.
    pub ranges_from: Option<Value>,
    /// `authorized_ranges`.
    pub authorized_ranges: Option<Value>,
    /// `always_allow`.
    pub always_allow: Option<Value>,
    /// `service_tags_file`.
    pub service_tags_file: Option<Value>,
    /// `capacity`.
    pub capacity: Option<Value>,
    /// `lookup`.
    pub lookup: Option<Value>,
    /// `bpffs`.
    pub bpffs: Option<Value>,
    /// `state_dir`.
    pub state_dir: Option<Value>,
    /// `socket`.
    pub socket: Option<Value>,
    /// `metrics`.
    pub metrics: Option<Value>,
    /// `metrics_ranges`.
    pub metrics_ranges: Option<Value>,
    /// The `[etcd]` table.
    pub etcd: Option<Value>,
}

/// Who owns the authorized list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RangesFrom {
    /// The config file: `apifence ranges set/add/remove` are refused.
    #[default]
    Config,
    /// The daemon's state file: the CLI changes it; `authorized_ranges` only seeds it.
    State,
    /// The fleet's document in etcd (`[etcd]`); the last applied one is kept in the state
    /// file, and `authorized_ranges` is only used until a first document arrives.
    Etcd,
}

impl RangesFrom {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::State => "state",
            Self::Etcd => "etcd",
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interfaces to attach to. Default: none (the filter is loaded but filters nothing).
    pub interfaces: Vec<String>,
    /// Protected TCP destination ports. Default: 443, 6443.
    pub ports: Vec<u16>,
    /// How to attach new interfaces. Default: auto (native, falling back to skb).
    pub xdp_mode: XdpModeChoice,
    /// Enforce or monitor. Default: enforce.
    pub mode: Mode,
    /// Owner of the authorized list. Default: config.
    pub ranges_from: RangesFrom,
    /// The authorized list (with `ranges_from = "state"`, only the seed of the state file).
    /// Default: `[]`, filtering disabled (as `apifence ranges set ""`).
    pub authorized_ranges: Authorized,
    /// Sources never blocked. Default: none.
    pub always_allow: Vec<IpNet>,
    /// Azure Service Tags JSON file resolving names in `authorized_ranges` (a relative path is
    /// relative to the config file's directory). Default: none.
    pub service_tags_file: Option<PathBuf>,
    /// Prefixes per address family the maps hold, fixed at the first attach. Default: 65,536.
    pub capacity: u32,
    /// How sources are looked up, fixed at the first attach. Default: the compiled table.
    pub lookup: Lookup,
    /// bpffs directory of the pins. Default: `/sys/fs/bpf/apifence`.
    pub bpffs: PathBuf,
    /// Durable daemon state. Default: `/var/lib/apifence`.
    pub state_dir: PathBuf,
    /// Unix socket of the daemon. Default: `/run/apifence/apifence.sock`.
    pub socket: PathBuf,
    /// Prometheus endpoint; `None` (`metrics = ""`) turns it off. Default: `127.0.0.1:9640`.
    pub metrics: Option<SocketAddr>,
    /// Per-range hit series on the endpoint: the ranges with the most hits, the rest summed
    /// as `range="other"`; 0 shows none. Default: [`DEFAULT_METRICS_RANGES`].
    pub metrics_ranges: usize,
    /// The `[etcd]` table (required with `ranges_from = "etcd"`). Default: none.
    pub etcd: Option<EtcdConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            ports: DEFAULT_PORTS.to_vec(),
            xdp_mode: XdpModeChoice::Auto,
            mode: Mode::Enforce,
            ranges_from: RangesFrom::Config,
            authorized_ranges: Authorized::Disabled,
            always_allow: Vec::new(),
            service_tags_file: None,
            capacity: DEFAULT_CAPACITY,
            lookup: Lookup::Compiled,
            bpffs: PathBuf::from(DEFAULT_BPFFS_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            socket: PathBuf::from(DEFAULT_SOCKET),
            metrics: DEFAULT_METRICS.parse().ok(),
            metrics_ranges: DEFAULT_METRICS_RANGES,
            etcd: None,
        }
    }
}

/// Why a configuration is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML.
    #[error(
        "line {line}, column {column}: {message}; this is not valid TOML \
         (strings need double quotes, lists are written [\"a\", \"b\"])"
    )]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A key apifence doesn't know.
    #[error("unknown key \"{key}\"{suggestion}; the keys are {}", key_list())]
    UnknownKey {
        /// The key as written.
        key: String,
        /// `; did you mean "…"?` or empty.
        suggestion: String,
    },
    /// A value of the wrong TOML type.
    #[error("{what} is {found}, but it must be {expected}; for example: {example}")]
    WrongType {
        /// The key (and entry), e.g. `ports` or `note of authorized_ranges entry 4`.
        what: String,
        /// What was found, with its article (`a string`).
        found: &'static str,
        /// What is needed.
        expected: &'static str,
        /// A correct line.
        example: &'static str,
    },
    /// A value not among the allowed words.
    #[error("{key} = \"{value}\" is not one of {choices}; for example: {example}")]
    BadChoice {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// The allowed words, quoted.
        choices: &'static str,
        /// A correct line.
        example: &'static str,
    },
    /// No ports.
    #[error("ports is empty; protect at least one TCP port, for example: ports = [443, 6443]")]
    NoPorts,
    /// A port out of range.
    #[error(
        "ports entry {position} ({value}) is not a TCP port number from 1 to 65535; \
         for example: ports = [443, 6443]"
    )]
    BadPort {
        /// 1-based entry.
        position: usize,
        /// The value as written.
        value: i64,
    },
    /// A bad interface name.
    #[error(
        "interfaces entry {position} \"{name}\" {problem}; for example: interfaces = [\"eth0\"]"
    )]
    BadInterface {
        /// 1-based entry.
        position: usize,
        /// The name as written.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A range entry that breaks a rule of the range language.
    #[error("{key}: {source}")]
    Range {
        /// `authorized_ranges` or `always_allow`.
        key: &'static str,
        /// The rule.
        #[source]
        source: RangeError,
    },
    /// An empty string in a range list.
    #[error("{key} entry {position} is an empty string; remove it")]
    EmptyEntry {
        /// `authorized_ranges` or `always_allow`.
        key: &'static str,
        /// 1-based entry.
        position: usize,
    },
    /// Several ranges in one list element.
    #[error(
        "{key} entry {position} \"{text}\" holds more than one range; write one range per \
         list element, for example: {key} = [\"10.0.0.0/8\", \"192.168.0.0/16\"]"
    )]
    NotSingle {
        /// `authorized_ranges` or `always_allow`.
        key: &'static str,
        /// 1-based entry.
        position: usize,
        /// The element as written.
        text: String,
    },
    /// A name in `always_allow`.
    #[error(
        "always_allow entry {position} \"{name}\" is a name; always_allow takes IP addresses \
         and CIDRs only, for example: always_allow = [\"198.51.100.7\"]"
    )]
    NameInAlwaysAllow {
        /// 1-based entry.
        position: usize,
        /// The name.
        name: String,
    },
    /// An unknown key in an entry table.
    #[error(
        "authorized_ranges entry {position} has unknown key \"{key}\"{suggestion}; an entry \
         table takes range, note and expires, for example: {ENTRY_EXAMPLE}"
    )]
    UnknownEntryKey {
        /// 1-based entry.
        position: usize,
        /// The key as written.
        key: String,
        /// `; did you mean "…"?` or empty.
        suggestion: String,
    },
    /// An entry table without `range`.
    #[error("authorized_ranges entry {position} has no range; write it like {ENTRY_EXAMPLE}")]
    NoRange {
        /// 1-based entry.
        position: usize,
    },
    /// An unreadable expiry time.
    #[error(
        "authorized_ranges entry {position}: expires = {value} is not an RFC 3339 date-time \
         with a UTC offset ({problem}); write it like {EXPIRES_EXAMPLE}"
    )]
    BadExpiry {
        /// 1-based entry.
        position: usize,
        /// The value as written.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// `metrics_ranges` out of range.
    #[error(
        "metrics_ranges = {0} is out of range: it is how many ranges get their own hit series \
         (the rest are summed as range=\"other\"), from 0 to {MAX_METRICS_RANGES}; for example: \
         metrics_ranges = 10"
    )]
    BadMetricsRanges(i64),
    /// `capacity` out of range.
    #[error(
        "capacity = {0} is out of range: it is the number of prefixes per address family the \
         filter holds, from 1 to {MAX_CAPACITY}; for example: capacity = 65536"
    )]
    BadCapacity(i64),
    /// A path that must be absolute.
    #[error("{key} = \"{value}\" is not an absolute path; for example: {example}")]
    NotAbsolute {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// A correct line.
        example: &'static str,
    },
    /// A socket path too long for `sun_path`.
    #[error(
        "socket = \"{0}\" is longer than {MAX_SOCKET_PATH} bytes, the limit of a Unix socket \
         path; choose a shorter path, for example: socket = \"/run/apifence/apifence.sock\""
    )]
    SocketTooLong(String),
    /// `metrics` that is not `address:port`.
    #[error(
        "metrics = \"{0}\" is not an address:port; for example: metrics = \"127.0.0.1:9640\", \
         or metrics = \"\" to turn the endpoint off"
    )]
    BadMetrics(String),
    /// The `[etcd]` table.
    #[error(transparent)]
    Etcd(#[from] EtcdConfigError),
    /// `ranges_from = "etcd"` without `[etcd]`.
    #[error(
        "ranges_from = \"etcd\" needs an [etcd] table naming the etcd endpoints; for example: \
         [etcd] endpoints = [\"https://10.0.0.1:2379\"]"
    )]
    EtcdMissing,
}

fn key_list() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// A configuration file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file can't be read.
    #[error("reading config file {}: {source}; check the path (apifence daemon --config PATH)", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is read but invalid.
    #[error("config file {}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
}

/// A configuration as loaded from a file, with the bytes it was parsed from.
#[derive(Clone, Debug)]
pub struct LoadedConfig {
    /// The validated configuration.
    pub config: Config,
    /// The file's contents (what a reload compares against).
    pub text: String,
}

/// Reads and validates the file at `path`. Relative paths inside it are taken relative to its
/// directory.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigFileError> {
    let text = bounded_read::read_file(path, bounded_read::MAX_CONFIG_BYTES).map_err(|source| {
        ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let config = parse(&text, dir).map_err(|source| ConfigFileError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(LoadedConfig { config, text })
}

/// Parses and validates configuration text; `dir` anchors a relative `service_tags_file`.
pub fn parse(text: &str, dir: &Path) -> Result<Config, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let span = e.span().unwrap_or(0..0);
        let (line, column) = line_and_column(text, span.start);
        let mut message = e.message().trim().to_string();
        // Name what the parser stopped at when it is a short, one-line token (a key).
        if let Some(at) = text.get(span)
            && !at.trim().is_empty()
            && at.len() <= 40
            && !at.contains('\n')
        {
            message = format!("{message} `{}`", at.trim());
        }
        let message = escape(&message);
        ConfigError::Syntax {
            line,
            column,
            message,
        }
    })?;
    for key in table.keys() {
        if !KEYS.iter().any(|(k, _)| k == key) {
            return Err(ConfigError::UnknownKey {
                key: escape(key),
                suggestion: did_you_mean(key, KEYS.iter().map(|(k, _)| *k)),
            });
        }
    }
    // Unknown keys were reported above with a suggestion; serde's check stays as a backstop.
    let raw: RawConfig = Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::UnknownKey {
            key: e.message().to_string(),
            suggestion: String::new(),
        })?;
    validate(raw, dir)
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Turns raw keys into a [`Config`], starting from the defaults.
pub fn validate(raw: RawConfig, dir: &Path) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    if let Some(value) = raw.interfaces {
        config.interfaces = interfaces(value)?;
    }
    if let Some(value) = raw.ports {
        config.ports = ports(value)?;
    }
    if let Some(value) = raw.xdp_mode {
        config.xdp_mode = match choice("xdp_mode", value, r#""auto", "native", "skb""#)?.as_str() {
            "auto" => XdpModeChoice::Auto,
            "native" => XdpModeChoice::Native,
            _ => XdpModeChoice::Skb,
        };
    }
    if let Some(value) = raw.mode {
        config.mode = match choice("mode", value, r#""enforce", "monitor""#)?.as_str() {
            "enforce" => Mode::Enforce,
            _ => Mode::Monitor,
        };
    }
    if let Some(value) = raw.ranges_from {
        config.ranges_from = ranges_from(value)?;
    }
    if let Some(value) = raw.authorized_ranges {
        config.authorized_ranges = authorized_ranges(value)?;
    }
    if let Some(value) = raw.always_allow {
        config.always_allow = always_allow(value)?;
    }
    if let Some(value) = raw.service_tags_file {
        let text = string("service_tags_file", value)?;
        config.service_tags_file = (!text.is_empty()).then(|| dir.join(text));
    }
    if let Some(value) = raw.capacity {
        config.capacity = match value {
            Value::Integer(n) if (1..=i64::from(MAX_CAPACITY)).contains(&n) => n as u32,
            Value::Integer(n) => return Err(ConfigError::BadCapacity(n)),
            other => {
                return Err(wrong_type(
                    "capacity".into(),
                    &other,
                    "a whole number",
                    "capacity",
                ));
            }
        };
    }
    if let Some(value) = raw.metrics_ranges {
        config.metrics_ranges = match value {
            Value::Integer(n) if (0..=MAX_METRICS_RANGES as i64).contains(&n) => n as usize,
            Value::Integer(n) => return Err(ConfigError::BadMetricsRanges(n)),
            other => {
                return Err(wrong_type(
                    "metrics_ranges".into(),
                    &other,
                    "a whole number",
                    "metrics_ranges",
                ));
            }
        };
    }
    if let Some(value) = raw.lookup {
        config.lookup = match choice("lookup", value, r#""compiled", "lpm-trie""#)?.as_str() {
            "compiled" => Lookup::Compiled,
            _ => Lookup::LpmTrie,
        };
    }
    if let Some(value) = raw.bpffs {
        config.bpffs = absolute("bpffs", value)?;
    }
    if let Some(value) = raw.state_dir {
        config.state_dir = absolute("state_dir", value)?;
    }
    if let Some(value) = raw.socket {
        config.socket = absolute("socket", value)?;
        let len = config.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ConfigError::SocketTooLong(
                config.socket.display().to_string(),
            ));
        }
    }
    if let Some(value) = raw.metrics {
        let text = string("metrics", value)?;
        config.metrics = match text.trim() {
            "" => None,
            addr => Some(
                addr.parse()
                    .map_err(|_| ConfigError::BadMetrics(text.clone()))?,
            ),
        };
    }
    validate_etcd(&mut config, raw.etcd, dir)?;
    Ok(config)
}

fn ranges_from(value: Value) -> Result<RangesFrom, ConfigError> {
    Ok(
        match choice("ranges_from", value, r#""config", "state", "etcd""#)?.as_str() {
            "config" => RangesFrom::Config,
            "state" => RangesFrom::State,
            _ => RangesFrom::Etcd,
        },
    )
}

/// The `[etcd]` table (see [`crate::daemon::config::etcd`]), required by `ranges_from = "etcd"`.
fn validate_etcd(config: &mut Config, etcd: Option<Value>, dir: &Path) -> Result<(), ConfigError> {
    config.etcd = etcd.map(|value| parse_etcd(value, dir)).transpose()?;
    if config.ranges_from == RangesFrom::Etcd && config.etcd.is_none() {
        return Err(ConfigError::EtcdMissing);
    }
    Ok(())
}

impl Config {
    /// Things that are valid but probably not what was meant, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.interfaces.is_empty() {
            warnings.push(
                "interfaces is empty: the filter is loaded but attached to no interface, so \
                 nothing is filtered; for example: interfaces = [\"eth0\"]"
                    .to_string(),
            );
        }
        if self.authorized_ranges == Authorized::Disabled && self.ranges_from == RangesFrom::Config
        {
            warnings.push(format!(
                "authorized_ranges is empty: filtering is disabled and every source reaches \
                 ports {}; write authorized_ranges = [\"0.0.0.0/32\"] to allow only always_allow",
                self.ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.ranges_from == RangesFrom::State {
            warnings.push(
                "ranges_from = \"state\": authorized_ranges only seeds the state file on the \
                 first start; after that apifence ranges set/add/remove own the list"
                    .to_string(),
            );
        }
        if let Some(addr) = self.metrics
            && !addr.ip().is_loopback()
        {
            warnings.push(format!(
                "metrics listens on {addr}, which is not a loopback address: anyone who can \
                 reach it can read the counters"
            ));
        }
        warnings.extend(self.etcd_warnings());
        warnings
    }

    /// Warnings about `ranges_from = "etcd"`.
    fn etcd_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.ranges_from != RangesFrom::Etcd && self.etcd.is_some() {
            warnings.push(format!(
                "[etcd] is set but ranges_from = \"{}\": the daemon does not follow the fleet's \
                 document (only apifence fleet uses [etcd]); write ranges_from = \"etcd\" to follow it",
                self.ranges_from.as_str()
            ));
        }
        if let Some(etcd) = &self.etcd
            && self.ranges_from == RangesFrom::Etcd
            && etcd.tls.is_none()
        {
            warnings.push(
                "etcd.endpoints use http://: the list and the hosts' status travel in clear text \
                 and anyone who reaches etcd can change the list; use https:// with ca, cert and key"
                    .to_string(),
            );
        }
        warnings
    }

    /// Files whose change means the configuration must be reloaded (besides the config file).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.service_tags_file.iter().cloned().collect()
    }
}

fn wrong_type(what: String, value: &Value, expected: &'static str, key: &str) -> ConfigError {
    ConfigError::WrongType {
        what,
        found: article(value),
        expected,
        example: example(key),
    }
}

fn string(key: &'static str, value: Value) -> Result<String, ConfigError> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(wrong_type(key.into(), &other, "a string", key)),
    }
}

fn list(
    key: &'static str,
    value: Value,
    expected: &'static str,
) -> Result<Vec<Value>, ConfigError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(wrong_type(key.into(), &other, expected, key)),
    }
}

fn choice(key: &'static str, value: Value, choices: &'static str) -> Result<String, ConfigError> {
    let text = string(key, value)?;
    let word = text.trim().to_ascii_lowercase();
    if choices.split(", ").any(|c| c.trim_matches('"') == word) {
        Ok(word)
    } else {
        Err(ConfigError::BadChoice {
            key,
            value: text,
            choices,
            example: example(key),
        })
    }
}

fn absolute(key: &'static str, value: Value) -> Result<PathBuf, ConfigError> {
    let text = string(key, value)?;
    let path = PathBuf::from(&text);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(ConfigError::NotAbsolute {
            key,
            value: text,
            example: example(key),
        })
    }
}

fn interfaces(value: Value) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    for (index, item) in list("interfaces", value, "a list of interface names")?
        .into_iter()
        .enumerate()
    {
        let position = index + 1;
        let name = match item {
            Value::String(name) => name,
            other => {
                return Err(wrong_type(
                    format!("interfaces entry {position}"),
                    &other,
                    "a string",
                    "interfaces",
                ));
            }
        };
        let bad = |problem: String| ConfigError::BadInterface {
            position,
            name: escape(&name),
            problem,
        };
        if let Err(NameError::Interface { problem, .. } | NameError::Netns { problem, .. }) =
            check_interface(&name)
        {
            return Err(bad(problem));
        }
        if let Some(first) = names.iter().position(|n| *n == name) {
            return Err(bad(format!("repeats entry {}; remove it", first + 1)));
        }
        names.push(name);
    }
    Ok(names)
}

fn ports(value: Value) -> Result<Vec<u16>, ConfigError> {
    let mut ports = Vec::new();
    for (index, item) in list("ports", value, "a list of TCP port numbers")?
        .into_iter()
        .enumerate()
    {
        let position = index + 1;
        match item {
            Value::Integer(n) => match u16::try_from(n) {
                Ok(port) if port != 0 => ports.push(port),
                _ => return Err(ConfigError::BadPort { position, value: n }),
            },
            other => {
                return Err(wrong_type(
                    format!("ports entry {position}"),
                    &other,
                    "a port number (without quotes)",
                    "ports",
                ));
            }
        }
    }
    if ports.is_empty() {
        return Err(ConfigError::NoPorts);
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// One range element: a string holding exactly one entry.
fn range_text(key: &'static str, position: usize, text: &str) -> Result<Entry, ConfigError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::EmptyEntry { key, position });
    }
    if trimmed.contains(',') || trimmed.contains(char::is_whitespace) {
        return Err(ConfigError::NotSingle {
            key,
            position,
            text: text.to_string(),
        });
    }
    parse_single(trimmed, position).map_err(|source| ConfigError::Range { key, source })
}

fn authorized_ranges(value: Value) -> Result<Authorized, ConfigError> {
    const KEY: &str = "authorized_ranges";
    let items = list(
        KEY,
        value,
        "a list of ranges (strings) or { range, note, expires } tables",
    )?;
    let mut entries: Vec<RangeEntry> = Vec::new();
    let mut special: Option<(usize, String)> = None;
    for (index, item) in items.into_iter().enumerate() {
        let position = index + 1;
        let entry = match item {
            Value::String(text) => RangeEntry::plain(range_text(KEY, position, &text)?),
            Value::Table(table) => entry_table(position, table)?,
            other => {
                return Err(wrong_type(
                    format!("{KEY} entry {position}"),
                    &other,
                    "a range (string) or a { range, note, expires } table",
                    KEY,
                ));
            }
        };
        if entry.entry == Entry::Prefix(ONLY_ALWAYS_ALLOWED) {
            special.get_or_insert((position, entry.text()));
            continue;
        }
        entries.push(entry);
    }
    // Repeats are dropped keeping the first, in one pass (lists can hold a million entries).
    let entries = dedup(entries);
    match special {
        Some((position, entry)) if !entries.is_empty() => Err(ConfigError::Range {
            key: KEY,
            source: RangeError::OnlyAlwaysAllowedCombined { entry, position },
        }),
        Some(_) => Ok(Authorized::Entries(Vec::new())),
        None if entries.is_empty() => Ok(Authorized::Disabled),
        None => Ok(Authorized::Entries(entries)),
    }
}

fn entry_table(position: usize, table: toml::Table) -> Result<RangeEntry, ConfigError> {
    for key in table.keys() {
        if !ENTRY_KEYS.contains(&key.as_str()) {
            return Err(ConfigError::UnknownEntryKey {
                position,
                key: key.clone(),
                suggestion: did_you_mean(key, ENTRY_KEYS),
            });
        }
    }
    let field = |name: &str| format!("{name} of authorized_ranges entry {position}");
    let entry = match table.get("range") {
        None => return Err(ConfigError::NoRange { position }),
        Some(Value::String(text)) => range_text("authorized_ranges", position, text)?,
        Some(other) => {
            return Err(ConfigError::WrongType {
                what: field("range"),
                found: article(other),
                expected: "a string",
                example: ENTRY_EXAMPLE,
            });
        }
    };
    let note = match table.get("note") {
        None => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => {
            return Err(ConfigError::WrongType {
                what: field("note"),
                found: article(other),
                expected: "a string",
                example: ENTRY_EXAMPLE,
            });
        }
    };
    let expires = match table.get("expires") {
        None => None,
        Some(Value::String(text)) => Some(parse_expiry(position, text, &format!("\"{text}\""))?),
        Some(Value::Datetime(datetime)) => {
            let text = datetime.to_string();
            Some(parse_expiry(position, &text, &text)?)
        }
        Some(other) => {
            return Err(ConfigError::WrongType {
                what: field("expires"),
                found: article(other),
                expected: "an RFC 3339 date-time",
                example: EXPIRES_EXAMPLE,
            });
        }
    };
    Ok(RangeEntry {
        entry,
        note,
        expires,
    })
}

fn parse_expiry(position: usize, text: &str, shown: &str) -> Result<OffsetDateTime, ConfigError> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).map_err(|e| {
        let looks_local =
            text.len() >= 19 && !text.ends_with(['Z', 'z']) && !text[19..].contains(['+', '-']);
        ConfigError::BadExpiry {
            position,
            value: shown.to_string(),
            problem: if looks_local {
                "it has no UTC offset; add Z for UTC or an offset such as +01:00".to_string()
            } else {
                e.to_string()
            },
        }
    })
}

fn always_allow(value: Value) -> Result<Vec<IpNet>, ConfigError> {
    const KEY: &str = "always_allow";
    let mut nets: Vec<IpNet> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, item) in list(KEY, value, "a list of addresses or CIDRs (strings)")?
        .into_iter()
        .enumerate()
    {
        let position = index + 1;
        let text = match item {
            Value::String(text) => text,
            other => {
                return Err(wrong_type(
                    format!("{KEY} entry {position}"),
                    &other,
                    "a string",
                    KEY,
                ));
            }
        };
        match range_text(KEY, position, &text)? {
            Entry::Name(name) => return Err(ConfigError::NameInAlwaysAllow { position, name }),
            Entry::Prefix(net) if net == ONLY_ALWAYS_ALLOWED => {
                return Err(ConfigError::Range {
                    key: KEY,
                    source: RangeError::OnlyAlwaysAllowedMisplaced {
                        entry: text,
                        position,
                    },
                });
            }
            Entry::Prefix(net) => {
                if seen.insert(net) {
                    nets.push(net);
                }
            }
        }
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        parse(text, Path::new("/etc/apifence")).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match parse(text, Path::new("/etc/apifence")) {
            Ok(config) => panic!("{text} was accepted: {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    const ISSUE_EXAMPLE: &str = r#"
interfaces = ["eth0"]
ports = [443, 6443]
xdp_mode = "auto"                 # auto | native | skb
mode = "enforce"                  # enforce | monitor
ranges_from = "config"            # config | state
authorized_ranges = ["73.140.245.0/24", "2001:db8::/32", "AzureDevOps",
                     { range = "203.0.113.0/24", note = "on-call VPN", expires = "2026-12-01T00:00:00Z" }]
always_allow = ["198.51.100.7"]
service_tags_file = "/etc/apifence/ServiceTags_Public.json"
capacity = 65536
lookup = "compiled"               # compiled | lpm-trie
bpffs = "/sys/fs/bpf/apifence"
state_dir = "/var/lib/apifence"
socket = "/run/apifence/apifence.sock"
metrics = "127.0.0.1:9640"        # "" turns the endpoint off
metrics_ranges = 10               # per-range hit series (top by hits, rest as "other")
"#;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(ok(""), Config::default());
        let defaults = Config::default();
        assert_eq!(defaults.ports, [443, 6443]);
        assert_eq!(defaults.capacity, 65_536);
        assert_eq!(defaults.metrics, Some("127.0.0.1:9640".parse().unwrap()));
        assert_eq!(defaults.socket, Path::new("/run/apifence/apifence.sock"));
        assert_eq!(defaults.authorized_ranges, Authorized::Disabled);
    }

    #[test]
    fn the_issue_example_parses_with_notes_and_expiry() {
        let config = ok(ISSUE_EXAMPLE);
        assert_eq!(config.interfaces, ["eth0"]);
        assert_eq!(config.ranges_from, RangesFrom::Config);
        let entries = config.authorized_ranges.entries();
        assert_eq!(
            entries.iter().map(RangeEntry::text).collect::<Vec<_>>(),
            [
                "73.140.245.0/24",
                "2001:db8::/32",
                "AzureDevOps",
                "203.0.113.0/24"
            ]
        );
        assert_eq!(entries[3].note.as_deref(), Some("on-call VPN"));
        assert_eq!(
            entries[3].expires.map(OffsetDateTime::unix_timestamp),
            Some(1_796_083_200)
        );
        assert_eq!(
            config.always_allow,
            ["198.51.100.7/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            config.service_tags_file.as_deref(),
            Some(Path::new("/etc/apifence/ServiceTags_Public.json"))
        );
    }

    #[test]
    fn special_values() {
        assert_eq!(ok(r#"metrics = """#).metrics, None);
        assert_eq!(ok(r#"service_tags_file = """#).service_tags_file, None);
        assert_eq!(
            ok(r#"service_tags_file = "tags.json""#).service_tags_file,
            Some(PathBuf::from("/etc/apifence/tags.json"))
        );
        assert_eq!(
            ok(r#"authorized_ranges = ["0.0.0.0/32"]"#).authorized_ranges,
            Authorized::Entries(vec![])
        );
        assert_eq!(
            ok("authorized_ranges = []").authorized_ranges,
            Authorized::Disabled
        );
        assert_eq!(ok("ports = [6443, 443, 443]").ports, [443, 6443]);
        assert_eq!(ok(r#"xdp_mode = "SKB""#).xdp_mode, XdpModeChoice::Skb);
        assert_eq!(ok(r#"mode = "monitor""#).mode, Mode::Monitor);
        assert_eq!(
            ok(r#"ranges_from = "state""#).ranges_from,
            RangesFrom::State
        );
        let config =
            ok(r#"authorized_ranges = ["10.0.0.1", "10.0.0.1/32", "AzureCloud", "azurecloud"]"#);
        assert_eq!(config.authorized_ranges.entries().len(), 2);
        // A TOML date-time literal works as well as a string.
        let config =
            ok("authorized_ranges = [{ range = \"10.0.0.0/8\", expires = 2026-12-01T00:00:00Z }]");
        assert!(config.authorized_ranges.entries()[0].expires.is_some());
    }

    #[test]
    fn every_error_names_the_key_and_the_fix() {
        let cases: &[(&str, &str)] = &[
            (
                "ports = [443",
                "line 1, column 13: unclosed array, expected `]`; this is not valid TOML (strings need double quotes, lists are written [\"a\", \"b\"])",
            ),
            (
                "ports = [443]\nports = [6443]",
                "line 2, column 1: duplicate key `ports`; this is not valid TOML (strings need double quotes, lists are written [\"a\", \"b\"])",
            ),
            (
                "intefaces = [\"eth0\"]",
                "unknown key \"intefaces\"; did you mean \"interfaces\"?; the keys are interfaces, ports, xdp_mode, mode, ranges_from, authorized_ranges, always_allow, service_tags_file, capacity, lookup, bpffs, state_dir, socket, metrics, metrics_ranges, etcd",
            ),
            (
                "color = 1",
                "unknown key \"color\"; the keys are interfaces, ports, xdp_mode, mode, ranges_from, authorized_ranges, always_allow, service_tags_file, capacity, lookup, bpffs, state_dir, socket, metrics, metrics_ranges, etcd",
            ),
            (
                "interfaces = \"eth0\"",
                "interfaces is a string, but it must be a list of interface names; for example: interfaces = [\"eth0\"]",
            ),
            (
                "interfaces = [1]",
                "interfaces entry 1 is an integer, but it must be a string; for example: interfaces = [\"eth0\"]",
            ),
            (
                "interfaces = [\"\"]",
                "interfaces entry 1 \"\" is empty; interface names are 1 to 15 printable ASCII characters without spaces, '/' or ':' (`ip link` lists them); for example: interfaces = [\"eth0\"]",
            ),
            (
                "interfaces = [\"a-very-long-interface\"]",
                "interfaces entry 1 \"a-very-long-interface\" is longer than 15 bytes; interface names are 1 to 15 printable ASCII characters without spaces, '/' or ':' (`ip link` lists them); for example: interfaces = [\"eth0\"]",
            ),
            (
                "interfaces = [\"eth0 eth1\"]",
                "interfaces entry 1 \"eth0 eth1\" contains whitespace; interface names are 1 to 15 printable ASCII characters without spaces, '/' or ':' (`ip link` lists them); for example: interfaces = [\"eth0\"]",
            ),
            (
                "interfaces = [\"eth\\u0000\"]",
                "interfaces entry 1 \"eth\\u{0}\" contains \\u{0}, which is not a printable ASCII character; interface names are 1 to 15 printable ASCII characters without spaces, '/' or ':' (`ip link` lists them); for example: interfaces = [\"eth0\"]",
            ),
            (
                "interfaces = [\"eth0\", \"eth0\"]",
                "interfaces entry 2 \"eth0\" repeats entry 1; remove it; for example: interfaces = [\"eth0\"]",
            ),
            (
                "ports = \"443\"",
                "ports is a string, but it must be a list of TCP port numbers; for example: ports = [443, 6443]",
            ),
            (
                "ports = [\"443\"]",
                "ports entry 1 is a string, but it must be a port number (without quotes); for example: ports = [443, 6443]",
            ),
            (
                "ports = [443, 70000]",
                "ports entry 2 (70000) is not a TCP port number from 1 to 65535; for example: ports = [443, 6443]",
            ),
            (
                "ports = [0]",
                "ports entry 1 (0) is not a TCP port number from 1 to 65535; for example: ports = [443, 6443]",
            ),
            (
                "ports = []",
                "ports is empty; protect at least one TCP port, for example: ports = [443, 6443]",
            ),
            (
                "xdp_mode = \"fast\"",
                "xdp_mode = \"fast\" is not one of \"auto\", \"native\", \"skb\"; for example: xdp_mode = \"auto\"",
            ),
            (
                "mode = \"block\"",
                "mode = \"block\" is not one of \"enforce\", \"monitor\"; for example: mode = \"enforce\"",
            ),
            (
                "mode = true",
                "mode is a boolean, but it must be a string; for example: mode = \"enforce\"",
            ),
            (
                "ranges_from = \"cli\"",
                "ranges_from = \"cli\" is not one of \"config\", \"state\", \"etcd\"; for example: ranges_from = \"config\"",
            ),
            (
                "authorized_ranges = \"10.0.0.0/8\"",
                "authorized_ranges is a string, but it must be a list of ranges (strings) or { range, note, expires } tables; for example: authorized_ranges = [\"73.140.245.0/24\", \"2001:db8::/32\"]",
            ),
            (
                "authorized_ranges = [\"10.0.0.0/8\", \"137.117.106.90/29\"]",
                "authorized_ranges: entry 2 \"137.117.106.90/29\" is not the first address of its range; did you mean 137.117.106.88/29?",
            ),
            (
                "authorized_ranges = [\"10.0.0.0/33\"]",
                "authorized_ranges: entry 1 \"10.0.0.0/33\" has a prefix length that is too long; an IPv4 prefix length is at most /32",
            ),
            (
                "authorized_ranges = [\"10.0.0.300\"]",
                "authorized_ranges: entry 1 \"10.0.0.300\" is not an IPv4 or IPv6 address or CIDR; write ranges like 73.140.245.0/24 or 2001:db8::/32",
            ),
            (
                "authorized_ranges = [\"10.0.0.0/8\", \"\"]",
                "authorized_ranges entry 2 is an empty string; remove it",
            ),
            (
                "authorized_ranges = [\"10.0.0.0/8, 10.1.0.0/16\"]",
                "authorized_ranges entry 1 \"10.0.0.0/8, 10.1.0.0/16\" holds more than one range; write one range per list element, for example: authorized_ranges = [\"10.0.0.0/8\", \"192.168.0.0/16\"]",
            ),
            (
                "authorized_ranges = [\"10.0.0.0/8\", \"0.0.0.0/32\"]",
                "authorized_ranges: entry 2 \"0.0.0.0/32\" cannot be combined with other ranges: 0.0.0.0/32 alone means \"only the always-allowed addresses\"; remove it, or make it the only entry",
            ),
            (
                "authorized_ranges = [42]",
                "authorized_ranges entry 1 is an integer, but it must be a range (string) or a { range, note, expires } table; for example: authorized_ranges = [\"73.140.245.0/24\", \"2001:db8::/32\"]",
            ),
            (
                "authorized_ranges = [{ note = \"x\" }]",
                "authorized_ranges entry 1 has no range; write it like { range = \"203.0.113.0/24\", note = \"on-call VPN\", expires = \"2026-12-01T00:00:00Z\" }",
            ),
            (
                "authorized_ranges = [{ range = \"10.0.0.0/8\", notes = \"x\" }]",
                "authorized_ranges entry 1 has unknown key \"notes\"; did you mean \"note\"?; an entry table takes range, note and expires, for example: { range = \"203.0.113.0/24\", note = \"on-call VPN\", expires = \"2026-12-01T00:00:00Z\" }",
            ),
            (
                "authorized_ranges = [{ range = \"10.0.0.0/8\", note = 5 }]",
                "note of authorized_ranges entry 1 is an integer, but it must be a string; for example: { range = \"203.0.113.0/24\", note = \"on-call VPN\", expires = \"2026-12-01T00:00:00Z\" }",
            ),
            (
                "authorized_ranges = [{ range = \"10.0.0.0/8\", expires = \"next week\" }]",
                "authorized_ranges entry 1: expires = \"next week\" is not an RFC 3339 date-time with a UTC offset (the 'year' component could not be parsed); write it like expires = \"2026-12-01T00:00:00Z\"",
            ),
            (
                "authorized_ranges = [{ range = \"10.0.0.0/8\", expires = \"2026-12-01T00:00:00\" }]",
                "authorized_ranges entry 1: expires = \"2026-12-01T00:00:00\" is not an RFC 3339 date-time with a UTC offset (it has no UTC offset; add Z for UTC or an offset such as +01:00); write it like expires = \"2026-12-01T00:00:00Z\"",
            ),
            (
                "authorized_ranges = [{ range = \"10.0.0.0/8\", expires = 2026-12-01 }]",
                "authorized_ranges entry 1: expires = \"2026-12-01\" is not an RFC 3339 date-time with a UTC offset (the 'separator' component could not be parsed); write it like expires = \"2026-12-01T00:00:00Z\"",
            ),
            (
                "authorized_ranges = [{ range = \"10.0.0.0/8\", expires = 5 }]",
                "expires of authorized_ranges entry 1 is an integer, but it must be an RFC 3339 date-time; for example: expires = \"2026-12-01T00:00:00Z\"",
            ),
            (
                "always_allow = [\"AzureCloud\"]",
                "always_allow entry 1 \"AzureCloud\" is a name; always_allow takes IP addresses and CIDRs only, for example: always_allow = [\"198.51.100.7\"]",
            ),
            (
                "always_allow = [\"0.0.0.0/32\"]",
                "always_allow: entry 1 \"0.0.0.0/32\" means nothing here: 0.0.0.0/32 is special only as the whole authorized-range list (apifence ranges set 0.0.0.0/32); remove it",
            ),
            (
                "always_allow = [\"10.0.0.1/8\"]",
                "always_allow: entry 1 \"10.0.0.1/8\" is not the first address of its range; did you mean 10.0.0.0/8?",
            ),
            (
                "always_allow = \"10.0.0.1\"",
                "always_allow is a string, but it must be a list of addresses or CIDRs (strings); for example: always_allow = [\"198.51.100.7\"]",
            ),
            (
                "service_tags_file = 1",
                "service_tags_file is an integer, but it must be a string; for example: service_tags_file = \"/etc/apifence/ServiceTags_Public.json\"",
            ),
            (
                "capacity = 0",
                "capacity = 0 is out of range: it is the number of prefixes per address family the filter holds, from 1 to 16777216; for example: capacity = 65536",
            ),
            (
                "capacity = \"big\"",
                "capacity is a string, but it must be a whole number; for example: capacity = 65536",
            ),
            (
                "bpffs = \"bpf\"",
                "bpffs = \"bpf\" is not an absolute path; for example: bpffs = \"/sys/fs/bpf/apifence\"",
            ),
            (
                "state_dir = \"state\"",
                "state_dir = \"state\" is not an absolute path; for example: state_dir = \"/var/lib/apifence\"",
            ),
            (
                "socket = \"apifence.sock\"",
                "socket = \"apifence.sock\" is not an absolute path; for example: socket = \"/run/apifence/apifence.sock\"",
            ),
            (
                "metrics = \"localhost:9640\"",
                "metrics = \"localhost:9640\" is not an address:port; for example: metrics = \"127.0.0.1:9640\", or metrics = \"\" to turn the endpoint off",
            ),
            (
                "metrics = 9640",
                "metrics is an integer, but it must be a string; for example: metrics = \"127.0.0.1:9640\"",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), *want, "{text}");
        }
        let long = format!("socket = \"/{}\"", "s".repeat(120));
        assert!(
            err(&long).contains("longer than 107 bytes"),
            "{}",
            err(&long)
        );
    }

    #[test]
    fn warnings_point_out_likely_mistakes() {
        let warnings = ok("").warnings();
        assert!(warnings.iter().any(|w| w.contains("interfaces is empty")));
        assert!(warnings.iter().any(|w| w.contains("filtering is disabled")));
        let warnings = ok(r#"
interfaces = ["eth0"]
authorized_ranges = ["10.0.0.0/8"]
metrics = "0.0.0.0:9640"
"#)
        .warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("not a loopback address"));
        assert!(
            ok(r#"interfaces = ["eth0"]
ranges_from = "state""#)
            .warnings()
            .iter()
            .any(|w| w.contains("only seeds the state file"))
        );
    }

    #[test]
    fn ranges_from_etcd_needs_the_etcd_table() {
        let config = ok(r#"ranges_from = "etcd"
[etcd]
endpoints = ["https://10.0.0.1:2379"]
host = "cp-1"
ca = "pki/ca.crt""#);
        assert_eq!(config.ranges_from, RangesFrom::Etcd);
        let etcd = config.etcd.as_ref().unwrap();
        assert_eq!(etcd.host, "cp-1");
        assert_eq!(
            etcd.tls.as_ref().unwrap().ca,
            Path::new("/etc/apifence/pki/ca.crt")
        );
        assert!(
            !config.warnings().iter().any(|w| w.contains("etcd")),
            "{:?}",
            config.warnings()
        );
        assert_eq!(
            err(r#"ranges_from = "etcd""#),
            "ranges_from = \"etcd\" needs an [etcd] table naming the etcd endpoints; for \
             example: [etcd] endpoints = [\"https://10.0.0.1:2379\"]"
        );
        assert!(
            err("[etcd]\nendpoints = [\"10.0.0.1\"]").starts_with("etcd.endpoints entry 1"),
            "an [etcd] table is validated even without ranges_from = \"etcd\""
        );
        let plain = ok("ranges_from = \"etcd\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]");
        assert!(plain.warnings().iter().any(|w| w.contains("clear text")));
        let unused = ok("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]");
        assert!(
            unused
                .warnings()
                .iter()
                .any(|w| w.contains("[etcd] is set but ranges_from"))
        );
    }

    #[test]
    fn load_names_the_file() {
        let missing = load(Path::new("/nonexistent/apifence.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("reading config file /nonexistent/apifence.toml: ")
        );
        assert!(
            missing
                .to_string()
                .ends_with("check the path (apifence daemon --config PATH)")
        );
    }
}
