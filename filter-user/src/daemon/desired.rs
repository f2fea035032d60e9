//! The daemon's desired state ([`Desired`]): what the operator asked for, entry by entry, with
//! notes, expiry times and names (service tags) kept, before anything is resolved. [`resolve`]
//! turns it into the [`Policy`] the filter enforces; [`Diff`] says what a change would do.
//!
//! The authorized list follows the range language of `apifence ranges` exactly:
//! [`Authorized::Disabled`] is `""` (every source passes), [`Authorized::Entries`] with no
//! entries is `0.0.0.0/32` (only the always-allow list), and the add/remove rules and errors are
//! those of [`RangeList`](crate::policy::language::RangeList). Names are compared ignoring ASCII
//! case.

use std::collections::HashSet;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    policy::compile::{FamilyCounts, slot_prefixes},
    policy::language::{Entry, ONLY_ALWAYS_ALLOWED, RangeError, RangeList, tokenize},
    policy::{AuthorizedRanges, Mode, Policy},
};

/// One authorized entry as the operator wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredEntry", into = "StoredEntry")]
pub struct RangeEntry {
    /// A canonical prefix, or a name such as a service tag (`AzureCloud.eastus`).
    pub entry: Entry,
    /// Free text shown next to the entry (`note = "on-call VPN"`).
    pub note: Option<String>,
    /// When the entry stops being authorized (RFC 3339 in files and on the wire).
    pub expires: Option<OffsetDateTime>,
}

impl RangeEntry {
    /// An entry without note or expiry.
    pub fn plain(entry: Entry) -> Self {
        Self {
            entry,
            note: None,
            expires: None,
        }
    }

    /// The entry as text: the canonical prefix (`10.0.0.1/32`) or the name as written.
    pub fn text(&self) -> String {
        entry_text(&self.entry)
    }

    /// Whether `self` and `other` name the same thing (names compared ignoring ASCII case).
    pub fn same_target(&self, other: &Entry) -> bool {
        same_entry(&self.entry, other)
    }
}

/// The text of an [`Entry`]: canonical prefix or name.
pub fn entry_text(entry: &Entry) -> String {
    match entry {
        Entry::Prefix(net) => net.to_string(),
        Entry::Name(name) => name.clone(),
    }
}

fn same_entry(a: &Entry, b: &Entry) -> bool {
    match (a, b) {
        (Entry::Prefix(x), Entry::Prefix(y)) => x == y,
        (Entry::Name(x), Entry::Name(y)) => x.eq_ignore_ascii_case(y),
        _ => false,
    }
}

/// Serialized form of a [`RangeEntry`]: `{"range": "...", "note": "...", "expires": "..."}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    range: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    expires: Option<OffsetDateTime>,
}

impl TryFrom<StoredEntry> for RangeEntry {
    type Error = RangeError;

    fn try_from(stored: StoredEntry) -> Result<Self, RangeError> {
        Ok(Self {
            entry: parse_single(&stored.range, 1)?,
            note: stored.note,
            expires: stored.expires,
        })
    }
}

impl From<RangeEntry> for StoredEntry {
    fn from(entry: RangeEntry) -> Self {
        Self {
            range: entry.text(),
            note: entry.note,
            expires: entry.expires,
        }
    }
}

/// Parses text that must hold exactly one entry; `position` numbers it in error messages.
/// Fails with the range language's error for a bad entry, and with
/// [`RangeError::EmptyEntry`] when there is none. Callers check for more than one entry first.
pub fn parse_single(text: &str, position: usize) -> Result<Entry, RangeError> {
    let tokens = tokenize(text.trim()).map_err(|e| renumber(e, position))?;
    match tokens.into_iter().next() {
        Some(token) => Ok(token.entry),
        None => Err(RangeError::EmptyEntry { position }),
    }
}

/// `error` as if its entry were at `position` of a longer list.
fn renumber(error: RangeError, at: usize) -> RangeError {
    use RangeError as E;
    match error {
        E::EmptyEntry { .. } => E::EmptyEntry { position: at },
        E::Invalid { entry, .. } => E::Invalid {
            entry,
            position: at,
        },
        E::MissingAddress { entry, .. } => E::MissingAddress {
            entry,
            position: at,
        },
        E::MissingPrefixLength { entry, .. } => E::MissingPrefixLength {
            entry,
            position: at,
        },
        E::PrefixTooLong { entry, max, .. } => E::PrefixTooLong {
            entry,
            position: at,
            max,
        },
        E::HostBitsSet {
            entry, suggestion, ..
        } => E::HostBitsSet {
            entry,
            position: at,
            suggestion,
        },
        E::ZoneNotAllowed { entry, zone, .. } => E::ZoneNotAllowed {
            entry,
            position: at,
            zone,
        },
        E::Ipv4Mapped {
            entry, suggestion, ..
        } => E::Ipv4Mapped {
            entry,
            position: at,
            suggestion,
        },
        E::UnknownName { entry, .. } => E::UnknownName {
            entry,
            position: at,
        },
        E::OnlyAlwaysAllowedCombined { entry, .. } => E::OnlyAlwaysAllowedCombined {
            entry,
            position: at,
        },
        E::OnlyAlwaysAllowedMisplaced { entry, .. } => E::OnlyAlwaysAllowedMisplaced {
            entry,
            position: at,
        },
        other => other,
    }
}

/// The authorized-range list of the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredAuthorized", into = "StoredAuthorized")]
pub enum Authorized {
    /// Filtering is off: every source passes (`""`, `authorized_ranges = []`).
    Disabled,
    /// These entries and the always-allow list may connect; no entries means only the
    /// always-allow list (`0.0.0.0/32`). Without duplicates, in the order given.
    Entries(Vec<RangeEntry>),
}

/// Serialized form of [`Authorized`]: `{"enabled": bool, "entries": [...]}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredAuthorized {
    enabled: bool,
    #[serde(default)]
    entries: Vec<RangeEntry>,
}

impl TryFrom<StoredAuthorized> for Authorized {
    type Error = String;

    fn try_from(stored: StoredAuthorized) -> Result<Self, String> {
        match (stored.enabled, stored.entries.is_empty()) {
            (false, true) => Ok(Authorized::Disabled),
            (false, false) => Err("\"enabled\": false with entries; filtering is either \
                                   disabled (no entries) or enabled"
                .into()),
            (true, _) => Ok(Authorized::Entries(stored.entries)),
        }
    }
}

impl From<Authorized> for StoredAuthorized {
    fn from(authorized: Authorized) -> Self {
        match authorized {
            Authorized::Disabled => Self {
                enabled: false,
                entries: Vec::new(),
            },
            Authorized::Entries(entries) => Self {
                enabled: true,
                entries,
            },
        }
    }
}

/// A name that `ranges remove` was asked to remove is not in the list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// A rule of the range language.
    #[error(transparent)]
    Range(#[from] RangeError),
    /// Removing a name that is not in the list.
    #[error("{0} is not in the authorized ranges; run apifence ranges show to see them")]
    NameNotInList(String),
}

impl Authorized {
    /// Parses a whole list as `apifence ranges set` does, keeping names: `""` disables,
    /// `0.0.0.0/32` alone allows only the always-allow list, duplicates are dropped.
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        let tokens = tokenize(text)?;
        if tokens.is_empty() {
            return Ok(Authorized::Disabled);
        }
        let special = |entry: &Entry| *entry == Entry::Prefix(ONLY_ALWAYS_ALLOWED);
        if tokens.iter().all(|t| special(&t.entry)) {
            return Ok(Authorized::Entries(Vec::new()));
        }
        if let Some(token) = tokens.iter().find(|t| special(&t.entry)) {
            return Err(RangeError::OnlyAlwaysAllowedCombined {
                entry: token.text.to_owned(),
                position: token.position,
            });
        }
        Ok(Authorized::Entries(dedup(
            tokens.into_iter().map(|t| RangeEntry::plain(t.entry)),
        )))
    }

    /// The entries; empty when disabled or only the always-allow list may connect.
    pub fn entries(&self) -> &[RangeEntry] {
        match self {
            Authorized::Disabled => &[],
            Authorized::Entries(entries) => entries,
        }
    }

    /// Whether filtering is on.
    pub fn is_enabled(&self) -> bool {
        matches!(self, Authorized::Entries(_))
    }

    /// The list with `more` added (as `apifence ranges add`): a disabled list becomes exactly
    /// `more`; an entry already present keeps its place and takes the note and expiry given
    /// with `more` (when given). Adding nothing changes nothing.
    pub fn with_added(&self, more: &[RangeEntry]) -> Self {
        if more.is_empty() {
            return self.clone();
        }
        let mut entries = self.entries().to_vec();
        let mut index: std::collections::HashMap<TargetKey, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (target_key(&e.entry), i))
            .collect();
        for new in more {
            let key = target_key(&new.entry);
            match index.get(&key).map(|&i| &mut entries[i]) {
                Some(existing) => {
                    if new.note.is_some() {
                        existing.note.clone_from(&new.note);
                    }
                    if new.expires.is_some() {
                        existing.expires = new.expires;
                    }
                }
                None => {
                    index.insert(key, entries.len());
                    entries.push(new.clone());
                }
            }
        }
        Authorized::Entries(entries)
    }

    /// The list without `gone` (as `apifence ranges remove`). Fails, changing nothing, when an
    /// entry is not in the list, the list has no entries, or nothing would be left (which must
    /// be asked for explicitly with `ranges set`).
    pub fn without(&self, gone: &[Entry]) -> Result<Self, ChangeError> {
        let entries = match self {
            Authorized::Disabled => return Err(RangeError::RemoveFromDisabled.into()),
            Authorized::Entries(entries) if entries.is_empty() => {
                return Err(RangeError::RemoveFromOnlyAlwaysAllowed.into());
            }
            Authorized::Entries(entries) => entries,
        };
        let present: std::collections::HashSet<TargetKey> =
            entries.iter().map(|e| target_key(&e.entry)).collect();
        let gone_keys: std::collections::HashSet<TargetKey> = gone.iter().map(target_key).collect();
        for target in gone {
            if !present.contains(&target_key(target)) {
                return Err(match target {
                    Entry::Prefix(net) => RangeError::NotInList { entry: *net }.into(),
                    Entry::Name(name) => ChangeError::NameNotInList(name.clone()),
                });
            }
        }
        let left: Vec<RangeEntry> = entries
            .iter()
            .filter(|e| !gone_keys.contains(&target_key(&e.entry)))
            .cloned()
            .collect();
        if left.is_empty() {
            return Err(RangeError::WouldBeEmpty.into());
        }
        Ok(Authorized::Entries(left))
    }

    /// What the list means, for output: `disabled`, `only_always_allowed` or `ranges`.
    pub fn kind(&self) -> &'static str {
        match self {
            Authorized::Disabled => "disabled",
            Authorized::Entries(entries) if entries.is_empty() => "only_always_allowed",
            Authorized::Entries(_) => "ranges",
        }
    }
}

/// Parses the entries given to `apifence ranges add` or `remove` (names allowed). `0.0.0.0/32`
/// is rejected as in `parse_prefixes`: it means something only as a whole list.
pub fn parse_entries(text: &str) -> Result<Vec<Entry>, RangeError> {
    let tokens = tokenize(text)?;
    if let Some(token) = tokens
        .iter()
        .find(|t| t.entry == Entry::Prefix(ONLY_ALWAYS_ALLOWED))
    {
        return Err(RangeError::OnlyAlwaysAllowedMisplaced {
            entry: token.text.to_owned(),
            position: token.position,
        });
    }
    let entries = dedup(tokens.into_iter().map(|t| RangeEntry::plain(t.entry)));
    Ok(entries.into_iter().map(|e| e.entry).collect())
}

/// `entries` without repeats (names compared ignoring ASCII case), keeping the first. Linear.
pub(crate) fn dedup(entries: impl IntoIterator<Item = RangeEntry>) -> Vec<RangeEntry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|entry| seen.insert(target_key(&entry.entry)))
        .collect()
}

/// What [`same_entry`] compares, as a hashable key (names in ASCII lower case), so lists of
/// a million entries are compared in linear time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum TargetKey {
    Prefix(IpNet),
    Name(String),
}

fn target_key(entry: &Entry) -> TargetKey {
    match entry {
        Entry::Prefix(net) => TargetKey::Prefix(*net),
        Entry::Name(name) => TargetKey::Name(name.to_ascii_lowercase()),
    }
}

/// Everything the daemon wants the filter to enforce, before names are resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// The authorized entries (from the config file or the state file, see `ranges_from`).
    pub authorized: Authorized,
    /// Sources that are never blocked (config `always_allow`).
    pub always_allow: Vec<IpNet>,
    /// Protected TCP destination ports (config `ports`).
    pub ports: Vec<u16>,
    /// Enforce or monitor (config `mode`, or the last `apifence mode`).
    pub mode: Mode,
}

/// Expands names (service tags) into prefixes. The service-tags module implements it.
pub trait TagSource: Send + Sync {
    /// The prefixes of the tag `name` (IPv4 and IPv6), or an error message that names it and
    /// the closest known names.
    fn expand(&self, name: &str) -> Result<Vec<IpNet>, String>;
}

/// One desired entry and the prefixes it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEntry {
    /// The entry as given.
    pub entry: RangeEntry,
    /// The prefix itself, or what the name expands to (before merging).
    pub prefixes: Vec<IpNet>,
}

/// A desired state with every name expanded: the policy to enforce, and where each prefix
/// came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// What the filter is given.
    pub policy: Policy,
    /// Per desired entry, in order.
    pub entries: Vec<ResolvedEntry>,
}

/// A desired entry can't be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A name, but no service tags file is configured.
    #[error(
        "authorized range entry {position} \"{name}\" is a name (a service tag such as AzureCloud), \
         which needs service_tags_file in the config, for example \
         service_tags_file = \"/etc/apifence/ServiceTags_Public.json\"; or write IP ranges instead"
    )]
    NeedsTagsFile {
        /// 1-based position in the list.
        position: usize,
        /// The name as given.
        name: String,
    },
    /// The tag source rejected the name.
    #[error("authorized range entry {position} \"{name}\": {message}")]
    Tag {
        /// 1-based position in the list.
        position: usize,
        /// The name as given.
        name: String,
        /// Why (from the [`TagSource`]).
        message: String,
    },
}

/// Expands every name of `desired` through `tags` and builds the policy. A list whose names
/// expand to nothing still filters (only the always-allow list passes): an empty expansion never
/// turns filtering off.
pub fn resolve(desired: &Desired, tags: Option<&dyn TagSource>) -> Result<Resolved, ResolveError> {
    let mut entries = Vec::with_capacity(desired.authorized.entries().len());
    for (index, entry) in desired.authorized.entries().iter().enumerate() {
        let position = index + 1;
        let prefixes = match &entry.entry {
            Entry::Prefix(net) => vec![*net],
            Entry::Name(name) => {
                let tags = tags.ok_or_else(|| ResolveError::NeedsTagsFile {
                    position,
                    name: name.clone(),
                })?;
                let mut expanded = tags.expand(name).map_err(|message| ResolveError::Tag {
                    position,
                    name: name.clone(),
                    message,
                })?;
                // 0.0.0.0/32 is never a real source and would mean "only always-allow" in text.
                expanded.retain(|net| net.trunc() != ONLY_ALWAYS_ALLOWED);
                expanded.iter_mut().for_each(|net| *net = net.trunc());
                expanded
            }
        };
        entries.push(ResolvedEntry {
            entry: entry.clone(),
            prefixes,
        });
    }
    let ranges = match &desired.authorized {
        Authorized::Disabled => RangeList::Disabled,
        Authorized::Entries(_) => {
            let mut seen = std::collections::HashSet::new();
            let unique: Vec<IpNet> = entries
                .iter()
                .flat_map(|e| e.prefixes.iter().copied())
                // Prefixes are canonical; 0.0.0.0/32 alone would mean "only always-allow".
                .filter(|net| *net != ONLY_ALWAYS_ALLOWED && seen.insert(*net))
                .collect();
            if unique.is_empty() {
                RangeList::OnlyAlwaysAllowed
            } else {
                RangeList::Ranges(unique)
            }
        }
    };
    Ok(Resolved {
        policy: Policy {
            ranges: AuthorizedRanges::new(ranges),
            always_allow: desired.always_allow.clone(),
            ports: desired.ports.clone(),
            mode: desired.mode,
        },
        entries,
    })
}

impl Resolved {
    /// Authorized prefixes (before merging) plus always-allow prefixes, per family.
    pub fn given_counts(&self) -> FamilyCounts {
        let authorized = self.entries.iter().flat_map(|e| e.prefixes.iter());
        count_families(authorized.chain(self.policy.always_allow.iter()))
    }

    /// The prefixes written to the tries after merging (empty when filtering is disabled).
    pub fn merged(&self) -> Vec<IpNet> {
        slot_prefixes(&self.policy)
    }
}

/// IPv4 and IPv6 prefixes among `nets`.
pub fn count_families<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> FamilyCounts {
    let mut counts = FamilyCounts::default();
    for net in nets {
        match net {
            IpNet::V4(_) => counts.v4 += 1,
            IpNet::V6(_) => counts.v6 += 1,
        }
    }
    counts
}

/// What a change does: entries as given, and prefixes as enforced after merging.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Entries added, as given (prefixes canonical, names as written).
    pub added: Vec<String>,
    /// Entries removed, as given.
    pub removed: Vec<String>,
    /// Prefixes (authorized and always-allow, after expansion and merging) that start matching.
    pub merged_added: Vec<String>,
    /// Prefixes that stop matching.
    pub merged_removed: Vec<String>,
    /// `disabled`, `only_always_allowed` or `ranges`, before the change.
    pub filtering_before: String,
    /// The same after the change.
    pub filtering_after: String,
    /// Mode before.
    pub mode_before: Mode,
    /// Mode after.
    pub mode_after: Mode,
}

impl Diff {
    /// The difference from `before` to `after`.
    pub fn between(before: &Resolved, after: &Resolved) -> Self {
        let keys = |r: &Resolved| -> HashSet<TargetKey> {
            r.entries
                .iter()
                .map(|e| target_key(&e.entry.entry))
                .collect()
        };
        // The entries of `these` whose target `those` lacks, as text.
        let lacking = |these: &Resolved, those: &HashSet<TargetKey>| -> Vec<String> {
            these
                .entries
                .iter()
                .filter(|e| !those.contains(&target_key(&e.entry.entry)))
                .map(|e| e.entry.text())
                .collect()
        };
        let (old_merged, new_merged) = (sorted(before.merged()), sorted(after.merged()));
        Self {
            added: lacking(after, &keys(before)),
            removed: lacking(before, &keys(after)),
            merged_added: missing_from(&new_merged, &old_merged),
            merged_removed: missing_from(&old_merged, &new_merged),
            filtering_before: filtering_kind(&before.policy).into(),
            filtering_after: filtering_kind(&after.policy).into(),
            mode_before: before.policy.mode,
            mode_after: after.policy.mode,
        }
    }

    /// Whether the change changes nothing that is enforced or shown.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.merged_added.is_empty()
            && self.merged_removed.is_empty()
            && self.filtering_before == self.filtering_after
            && self.mode_before == self.mode_after
    }
}

fn filtering_kind(policy: &Policy) -> &'static str {
    match policy.ranges.list() {
        RangeList::Disabled => "disabled",
        RangeList::OnlyAlwaysAllowed => "only_always_allowed",
        RangeList::Ranges(_) => "ranges",
    }
}

/// `prefixes` sorted (slot prefixes are sorted but for the always-allow ones at the end).
fn sorted(mut prefixes: Vec<IpNet>) -> Vec<IpNet> {
    prefixes.sort_unstable();
    prefixes
}

/// The prefixes of sorted `these` that sorted `those` lacks, as text. Linear.
fn missing_from(these: &[IpNet], those: &[IpNet]) -> Vec<String> {
    let mut rest = those.iter().peekable();
    these
        .iter()
        .filter(|net| {
            while rest.next_if(|other| other < net).is_some() {}
            rest.peek() != Some(net)
        })
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::language::{RangeList, parse_authorized};

    fn net(text: &str) -> IpNet {
        text.parse().expect("test prefix")
    }

    fn desired(authorized: Authorized) -> Desired {
        Desired {
            authorized,
            always_allow: vec![net("198.51.100.7/32")],
            ports: vec![443, 6443],
            mode: Mode::Enforce,
        }
    }

    struct FakeTags;

    impl TagSource for FakeTags {
        fn expand(&self, name: &str) -> Result<Vec<IpNet>, String> {
            match name {
                "AzureDevOps" => Ok(vec![net("20.37.158.0/23"), net("2603:1030::/48")]),
                "Empty" => Ok(vec![]),
                _ => Err(format!("unknown service tag {name}")),
            }
        }
    }

    #[test]
    fn parse_follows_the_range_language() {
        assert_eq!(Authorized::parse(""), Ok(Authorized::Disabled));
        assert_eq!(
            Authorized::parse("0.0.0.0/32"),
            Ok(Authorized::Entries(vec![]))
        );
        let list = Authorized::parse("10.0.0.1, AzureDevOps 10.0.0.1/32 azuredevops").unwrap();
        assert_eq!(
            list.entries()
                .iter()
                .map(RangeEntry::text)
                .collect::<Vec<_>>(),
            ["10.0.0.1/32", "AzureDevOps"]
        );
        assert_eq!(
            Authorized::parse("10.0.0.0/8,0.0.0.0/32")
                .unwrap_err()
                .to_string(),
            parse_authorized("10.0.0.0/8,0.0.0.0/32")
                .unwrap_err()
                .to_string()
        );
        assert_eq!(
            Authorized::parse("10.0.0.1/8").unwrap_err(),
            parse_authorized("10.0.0.1/8").unwrap_err()
        );
    }

    #[test]
    fn add_and_remove_match_the_direct_cli() {
        let start = Authorized::parse("10.0.0.0/8").unwrap();
        let added = start.with_added(&[RangeEntry::plain(Entry::Prefix(net("192.168.0.0/16")))]);
        let direct = parse_authorized("10.0.0.0/8")
            .unwrap()
            .add(&[net("192.168.0.0/16")]);
        let texts: Vec<String> = added.entries().iter().map(RangeEntry::text).collect();
        let want: Vec<String> = direct.entries().iter().map(ToString::to_string).collect();
        assert_eq!(texts, want);

        let disabled =
            Authorized::Disabled.with_added(&[RangeEntry::plain(Entry::Prefix(net("10.0.0.0/8")))]);
        assert_eq!(disabled, start);

        let cases: &[(Authorized, &str, RangeList, &[IpNet])] = &[
            (
                Authorized::Disabled,
                "10.0.0.0/8",
                RangeList::Disabled,
                &[net("10.0.0.0/8")],
            ),
            (
                Authorized::Entries(vec![]),
                "10.0.0.0/8",
                RangeList::OnlyAlwaysAllowed,
                &[net("10.0.0.0/8")],
            ),
            (
                start.clone(),
                "10.0.0.0/8",
                parse_authorized("10.0.0.0/8").unwrap(),
                &[net("10.0.0.0/8")],
            ),
            (
                start.clone(),
                "11.0.0.0/8",
                parse_authorized("10.0.0.0/8").unwrap(),
                &[net("11.0.0.0/8")],
            ),
        ];
        for (ours, text, theirs, gone) in cases {
            let entries = parse_entries(text).unwrap();
            assert_eq!(
                ours.without(&entries).unwrap_err().to_string(),
                theirs.remove(gone).unwrap_err().to_string(),
                "{text}"
            );
        }
        let two = Authorized::parse("10.0.0.0/8 AzureDevOps").unwrap();
        assert_eq!(
            two.without(&parse_entries("azuredevops").unwrap()),
            Ok(start.clone())
        );
        assert_eq!(
            two.without(&parse_entries("AzureCloud").unwrap())
                .unwrap_err()
                .to_string(),
            "AzureCloud is not in the authorized ranges; run apifence ranges show to see them"
        );
        assert!(matches!(
            parse_entries("0.0.0.0/32"),
            Err(RangeError::OnlyAlwaysAllowedMisplaced { .. })
        ));
    }

    #[test]
    fn add_updates_note_and_expiry_of_an_existing_entry() {
        let start = Authorized::parse("10.0.0.0/8").unwrap();
        let expires = OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        let again = RangeEntry {
            entry: Entry::Prefix(net("10.0.0.0/8")),
            note: Some("vpn".into()),
            expires: Some(expires),
        };
        let changed = start.with_added(std::slice::from_ref(&again));
        assert_eq!(changed.entries(), [again]);
    }

    #[test]
    fn resolve_expands_names_and_never_disables_by_accident() {
        let list = Authorized::parse("10.0.0.0/8 AzureDevOps").unwrap();
        let resolved = resolve(&desired(list.clone()), Some(&FakeTags)).unwrap();
        assert_eq!(
            resolved.policy.ranges.to_text(),
            "10.0.0.0/8,20.37.158.0/23,2603:1030::/48"
        );
        assert_eq!(resolved.entries[1].prefixes.len(), 2);
        assert_eq!(resolved.given_counts(), FamilyCounts { v4: 3, v6: 1 });

        let err = resolve(&desired(list), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "authorized range entry 2 \"AzureDevOps\" is a name (a service tag such as AzureCloud), \
             which needs service_tags_file in the config, for example \
             service_tags_file = \"/etc/apifence/ServiceTags_Public.json\"; or write IP ranges instead"
        );
        let unknown = resolve(
            &desired(Authorized::parse("Nope").unwrap()),
            Some(&FakeTags),
        )
        .unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "authorized range entry 1 \"Nope\": unknown service tag Nope"
        );

        let empty = resolve(
            &desired(Authorized::parse("Empty").unwrap()),
            Some(&FakeTags),
        )
        .unwrap();
        assert_eq!(empty.policy.ranges.to_text(), "0.0.0.0/32");
        assert_eq!(
            resolve(&desired(Authorized::Disabled), None)
                .unwrap()
                .policy
                .ranges
                .to_text(),
            ""
        );
        assert_eq!(
            resolve(&desired(Authorized::Entries(vec![])), None)
                .unwrap()
                .policy
                .ranges
                .to_text(),
            "0.0.0.0/32"
        );
    }

    #[test]
    fn diff_lists_entries_and_merged_prefixes() {
        let before = resolve(
            &desired(Authorized::parse("10.0.0.0/25 10.0.0.128/25").unwrap()),
            None,
        )
        .unwrap();
        let after = resolve(&desired(Authorized::parse("10.0.0.0/25").unwrap()), None).unwrap();
        let diff = Diff::between(&before, &after);
        assert_eq!(diff.added, Vec::<String>::new());
        assert_eq!(diff.removed, ["10.0.0.128/25"]);
        assert_eq!(diff.merged_added, ["10.0.0.0/25"]);
        assert_eq!(diff.merged_removed, ["10.0.0.0/24"]);
        assert!(!diff.is_empty());
        assert!(Diff::between(&before, &before).is_empty());
        let off = resolve(&desired(Authorized::Disabled), None).unwrap();
        let diff = Diff::between(&before, &off);
        assert_eq!(diff.filtering_after, "disabled");
        assert!(diff.merged_added.is_empty());
    }

    #[test]
    fn entries_round_trip_through_json() {
        let list = Authorized::Entries(vec![RangeEntry {
            entry: Entry::Prefix(net("203.0.113.0/24")),
            note: Some("on-call VPN".into()),
            expires: Some(OffsetDateTime::from_unix_timestamp(1_796_083_200).unwrap()),
        }]);
        let text = serde_json::to_string(&list).unwrap();
        assert_eq!(
            text,
            r#"{"enabled":true,"entries":[{"range":"203.0.113.0/24","note":"on-call VPN","expires":"2026-12-01T00:00:00Z"}]}"#
        );
        let back: Authorized = serde_json::from_str(&text).unwrap();
        assert_eq!(back, list);
        let bad: Result<Authorized, _> =
            serde_json::from_str(r#"{"enabled":true,"entries":[{"range":"10.0.0.1/8"}]}"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("did you mean 10.0.0.0/8")
        );
    }
}
