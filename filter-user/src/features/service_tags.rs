//! Azure service tags: names such as `AzureCloud`, `AzureCloud.eastus` or `AzureDevOps` in an
//! authorized-range list, resolved from Microsoft's weekly "Azure IP Ranges and Service Tags"
//! JSON file.
//!
//! [`ServiceTags::load`] reads the file once and indexes every tag by its exact (case-sensitive)
//! name; each prefix is validated on load. A prefix with host bits set is truncated to its
//! network and counted in [`LoadWarnings`]; an unreadable prefix is skipped and counted there,
//! so one bad line of a 93,000-prefix file doesn't reject all of it. [`resolve_list`] turns a
//! list of entries (the range language's [`Entry`]) into prefixes and says, per entry, how many
//! prefixes it expanded to and how many are left after merging (for `apifence ranges show`).
//!
//! File shape (only the fields read here):
//! ```json
//! { "changeNumber": 375, "cloud": "Public",
//!   "values": [ { "name": "AzureCloud.eastus",
//!                 "properties": { "addressPrefixes": ["4.152.0.0/15", "2603:1030:20e::/48"] } } ] }
//! ```

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    policy::compile::FamilyCounts,
    policy::suggest,
    policy::{
        language::{Entry, RangeError, tokenize},
        merge::merge,
    },
};

/// Where the file comes from, for error messages.
pub const DOWNLOAD_HINT: &str = "download the current \"Azure IP Ranges and Service Tags – Public Cloud\" \
     file from https://www.microsoft.com/en-us/download/details.aspx?id=56519";

/// At most this many examples of bad prefixes are kept in [`LoadWarnings`].
const MAX_WARNING_EXAMPLES: usize = 5;

/// The file as published; only the fields apifence needs.
#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "changeNumber")]
    change_number: u64,
    #[serde(default)]
    cloud: String,
    values: Vec<RawTag>,
}

#[derive(Deserialize)]
struct RawTag {
    name: String,
    #[serde(default)]
    properties: RawProperties,
}

#[derive(Default, Deserialize)]
struct RawProperties {
    #[serde(rename = "addressPrefixes", default)]
    address_prefixes: Vec<String>,
}

/// One service tag: its name and its prefixes, canonical, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The name exactly as in the file (`AzureCloud.eastus`).
    pub name: String,
    /// Its prefixes (IPv4 and IPv6 mixed, as in the file), host bits cleared, without
    /// duplicates.
    pub prefixes: Vec<IpNet>,
}

impl Tag {
    /// IPv4 and IPv6 prefixes of the tag.
    pub fn counts(&self) -> FamilyCounts {
        count_families(&self.prefixes)
    }
}

/// What was wrong with the file but did not stop it from loading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadWarnings {
    /// Prefixes with host bits set (`10.0.0.1/24`), truncated to their network.
    pub host_bits_cleared: usize,
    /// Prefixes that are not an address or CIDR, skipped.
    pub invalid: usize,
    /// Tags whose name appeared earlier in the file; only the first is kept.
    pub duplicate_tags: usize,
    /// The first few problems, as `tag: what` lines.
    pub examples: Vec<String>,
}

impl LoadWarnings {
    /// Whether the file had no problems at all.
    pub fn is_empty(&self) -> bool {
        self.host_bits_cleared == 0 && self.invalid == 0 && self.duplicate_tags == 0
    }

    fn note(&mut self, example: impl FnOnce() -> String) {
        if self.examples.len() < MAX_WARNING_EXAMPLES {
            self.examples.push(example());
        }
    }
}

impl fmt::Display for LoadWarnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} prefixes with host bits set were truncated to their network, {} invalid prefixes \
             were skipped, {} repeated tags were ignored",
            self.host_bits_cleared, self.invalid, self.duplicate_tags
        )?;
        if !self.examples.is_empty() {
            write!(f, " (for example: {})", self.examples.join("; "))?;
        }
        Ok(())
    }
}

/// A service tags file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ServiceTagsError {
    /// The file can't be read.
    #[error(
        "reading service tags file {}: {source}; check service_tags_file in the config, or {DOWNLOAD_HINT}",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the JSON shape of a service tags file.
    #[error(
        "service tags file {} is not an Azure Service Tags JSON file ({source}); it must look like \
         {{\"changeNumber\": 375, \"values\": [{{\"name\": \"AzureCloud\", \"properties\": \
         {{\"addressPrefixes\": [\"4.152.0.0/15\"]}}}}]}}; {DOWNLOAD_HINT}",
        path.display()
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The file parsed but lists no tags (a truncated download, for example).
    #[error(
        "service tags file {} lists no service tags, so no name could be resolved; {DOWNLOAD_HINT}",
        path.display()
    )]
    NoTags {
        /// The file.
        path: PathBuf,
    },
}

/// A name that is not a tag of the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "\"{name}\" is not a service tag in {file} (changeNumber {change_number}){}",
    hint(name, suggestions)
)]
pub struct UnknownTag {
    /// The name as given.
    pub name: String,
    /// The tags file, as shown.
    pub file: String,
    /// The file's `changeNumber`.
    pub change_number: u64,
    /// The closest known names, closest first (possibly none).
    pub suggestions: Vec<String>,
}

impl UnknownTag {
    /// The message without the leading name, for callers that already print it.
    pub fn reason(&self) -> String {
        format!(
            "not a service tag in {} (changeNumber {}){}",
            self.file,
            self.change_number,
            hint(&self.name, &self.suggestions)
        )
    }
}

fn hint(name: &str, suggestions: &[String]) -> String {
    let quoted: Vec<String> = suggestions.iter().map(|s| format!("\"{s}\"")).collect();
    let case_only = suggestions
        .iter()
        .any(|s| s != name && s.eq_ignore_ascii_case(name));
    let mut text = match quoted.as_slice() {
        [] => String::from(
            "; tag names are case-sensitive and written as in the file, such as AzureCloud, \
             AzureCloud.eastus or AzureDevOps",
        ),
        [one] => format!("; did you mean {one}?"),
        [init @ .., last] => format!("; did you mean {} or {last}?", init.join(", ")),
    };
    if case_only {
        text.push_str(" (tag names are case-sensitive)");
    }
    text
}

/// A loaded service tags file, indexed by tag name.
#[derive(Clone, Debug)]
pub struct ServiceTags {
    file: String,
    change_number: u64,
    cloud: String,
    tags: HashMap<String, Tag>,
    /// Names in file order (for suggestions with a stable tie order).
    names: Vec<String>,
    warnings: LoadWarnings,
}

impl ServiceTags {
    /// Reads and indexes the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ServiceTagsError> {
        let bytes = std::fs::read(path).map_err(|source| ServiceTagsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_slice(&bytes, path)
    }

    /// Indexes the JSON text `bytes`; `path` names it in messages.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, ServiceTagsError> {
        let raw: RawFile =
            serde_json::from_slice(bytes).map_err(|source| ServiceTagsError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if raw.values.is_empty() {
            return Err(ServiceTagsError::NoTags {
                path: path.to_owned(),
            });
        }
        let mut warnings = LoadWarnings::default();
        let mut tags = HashMap::with_capacity(raw.values.len());
        let mut names = Vec::with_capacity(raw.values.len());
        for raw_tag in raw.values {
            if tags.contains_key(&raw_tag.name) {
                warnings.duplicate_tags += 1;
                let name = raw_tag.name.clone();
                warnings.note(|| format!("{name}: listed more than once, the first is used"));
                continue;
            }
            let prefixes = read_prefixes(
                &raw_tag.name,
                &raw_tag.properties.address_prefixes,
                &mut warnings,
            );
            names.push(raw_tag.name.clone());
            tags.insert(
                raw_tag.name.clone(),
                Tag {
                    name: raw_tag.name,
                    prefixes,
                },
            );
        }
        Ok(Self {
            file: path.display().to_string(),
            change_number: raw.change_number,
            cloud: raw.cloud,
            tags,
            names,
            warnings,
        })
    }

    /// The file's `changeNumber` (Microsoft bumps it with every weekly publication).
    pub fn change_number(&self) -> u64 {
        self.change_number
    }

    /// The file's `cloud` (`Public`), empty when absent.
    pub fn cloud(&self) -> &str {
        &self.cloud
    }

    /// The file as named when it was loaded.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Number of tags.
    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    /// Tag names in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Total number of prefixes over all tags.
    pub fn prefix_count(&self) -> usize {
        self.tags.values().map(|t| t.prefixes.len()).sum()
    }

    /// What was wrong with the file but tolerated.
    pub fn warnings(&self) -> &LoadWarnings {
        &self.warnings
    }

    /// The tag called exactly `name`.
    pub fn get(&self, name: &str) -> Option<&Tag> {
        self.tags.get(name)
    }

    /// The prefixes of the tag called exactly `name` (case-sensitive), or an error naming it
    /// and the closest known names.
    pub fn expand(&self, name: &str) -> Result<&[IpNet], UnknownTag> {
        match self.tags.get(name) {
            Some(tag) => Ok(&tag.prefixes),
            None => Err(UnknownTag {
                name: name.to_owned(),
                file: self.file.clone(),
                change_number: self.change_number,
                suggestions: self.closest(name, 3),
            }),
        }
    }

    /// Up to `limit` known names closest to `name`, closest first.
    pub fn closest(&self, name: &str, limit: usize) -> Vec<String> {
        suggest::closest(name, self.names(), limit)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// Parses the prefixes of tag `name`: canonical, without duplicates; problems go to `warnings`.
fn read_prefixes(name: &str, texts: &[String], warnings: &mut LoadWarnings) -> Vec<IpNet> {
    let mut seen = std::collections::HashSet::with_capacity(texts.len());
    let mut prefixes = Vec::with_capacity(texts.len());
    for text in texts {
        let text = text.trim();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        let Ok(net) = parsed else {
            warnings.invalid += 1;
            warnings.note(|| format!("{name}: \"{text}\" is not an address or CIDR, skipped"));
            continue;
        };
        let canonical = net.trunc();
        if canonical != net {
            warnings.host_bits_cleared += 1;
            warnings.note(|| format!("{name}: {text} has host bits set, used as {canonical}"));
        }
        if seen.insert(canonical) {
            prefixes.push(canonical);
        }
    }
    prefixes
}

/// IPv4 and IPv6 prefixes among `nets`.
fn count_families(nets: &[IpNet]) -> FamilyCounts {
    let v4 = nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    FamilyCounts {
        v4,
        v6: nets.len() - v4,
    }
}

/// One entry of a resolved list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResolvedEntry {
    /// The entry as given: a canonical prefix or a tag name.
    pub entry: String,
    /// Whether the entry is a service tag.
    pub tag: bool,
    /// Prefixes the entry stands for, per family (1 for a prefix).
    pub expanded: FamilyCounts,
    /// The same prefixes merged on their own, per family.
    pub merged: FamilyCounts,
    /// The prefixes themselves, in file order.
    #[serde(skip)]
    pub prefixes: Vec<IpNet>,
}

/// A list with every tag expanded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResolvedList {
    /// Per entry, in the order given.
    pub entries: Vec<ResolvedEntry>,
    /// Every prefix of every entry, first occurrence kept, in order.
    #[serde(skip)]
    pub prefixes: Vec<IpNet>,
    /// Prefixes of the whole list after merging, per family.
    pub merged: FamilyCounts,
}

/// Why a list can't be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The text breaks a rule of the range language.
    #[error(transparent)]
    Syntax(#[from] RangeError),
    /// A name is not a tag of the file.
    #[error("entry {position} {source}")]
    UnknownTag {
        /// 1-based position of the entry.
        position: usize,
        /// The unknown name and the closest known ones.
        #[source]
        source: UnknownTag,
    },
}

/// Expands every tag of `entries` through `tags`. Prefixes stay as they are.
pub fn resolve_list<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    tags: &ServiceTags,
) -> Result<ResolvedList, ResolveError> {
    let mut resolved = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let (text, tag, prefixes) = match entry {
            Entry::Prefix(net) => (net.to_string(), false, vec![*net]),
            Entry::Name(name) => {
                let prefixes = tags
                    .expand(name)
                    .map_err(|source| ResolveError::UnknownTag {
                        position: index + 1,
                        source,
                    })?;
                (name.clone(), true, prefixes.to_vec())
            }
        };
        resolved.push(ResolvedEntry {
            entry: text,
            tag,
            expanded: count_families(&prefixes),
            merged: count_families(&merge(&prefixes)),
            prefixes,
        });
    }
    let mut seen = std::collections::HashSet::new();
    let prefixes: Vec<IpNet> = resolved
        .iter()
        .flat_map(|e| e.prefixes.iter().copied())
        .filter(|net| seen.insert(*net))
        .collect();
    Ok(ResolvedList {
        merged: count_families(&merge(&prefixes)),
        entries: resolved,
        prefixes,
    })
}

/// Reads `text` in the range language (commas and/or whitespace, names allowed) and resolves
/// it with [`resolve_list`].
pub fn resolve_text(text: &str, tags: &ServiceTags) -> Result<ResolvedList, ResolveError> {
    let tokens = tokenize(text)?;
    let entries: Vec<Entry> = tokens.into_iter().map(|t| t.entry).collect();
    resolve_list(&entries, tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed excerpt of the real file.
    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ServiceTags_Public_20251106_excerpt.json"
    );
    /// The whole file, present in the development environment only.
    const FULL: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/ServiceTags_Public_20251106.json"
    );

    fn fixture() -> ServiceTags {
        ServiceTags::load(Path::new(FIXTURE)).expect("load the fixture")
    }

    fn inline(json: &str) -> Result<ServiceTags, ServiceTagsError> {
        ServiceTags::from_slice(json.as_bytes(), Path::new("tags.json"))
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("test prefix")
    }

    #[test]
    fn loads_the_fixture_with_real_counts() {
        let tags = fixture();
        assert_eq!(tags.change_number(), 375);
        assert_eq!(tags.cloud(), "Public");
        assert_eq!(tags.tag_count(), 5);
        assert!(tags.warnings().is_empty(), "{}", tags.warnings());
        let expected = [
            ("AzureDevOps", 24, 31),
            ("AzureFrontDoor.Frontend", 90, 102),
            ("AzureCloud.eastus", 473, 56),
            ("AzureCloud.westus", 303, 54),
            ("AzureCloud.westus2", 368, 50),
        ];
        for (name, v4, v6) in expected {
            let tag = tags.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(tag.counts(), FamilyCounts { v4, v6 }, "{name}");
        }
        assert_eq!(
            tags.prefix_count(),
            24 + 31 + 90 + 102 + 473 + 56 + 303 + 54 + 368 + 50
        );
        let devops = tags.expand("AzureDevOps").unwrap();
        assert_eq!(devops[0], net("20.37.158.0/23"));
    }

    #[test]
    fn names_are_exact_and_unknown_ones_suggest_the_closest() {
        let tags = fixture();
        let error = tags.expand("AzureCloud.eastus3").unwrap_err();
        assert_eq!(error.suggestions[0], "AzureCloud.eastus");
        assert!(error.to_string().starts_with(&format!(
            "\"AzureCloud.eastus3\" is not a service tag in {FIXTURE} (changeNumber 375); \
             did you mean \"AzureCloud.eastus\""
        )));

        let error = tags.expand("azuredevops").unwrap_err();
        assert_eq!(error.suggestions, ["AzureDevOps"]);
        assert!(
            error
                .to_string()
                .ends_with("; did you mean \"AzureDevOps\"? (tag names are case-sensitive)"),
            "{error}"
        );

        let error = tags.expand("Kubernetes").unwrap_err();
        assert!(error.suggestions.is_empty());
        assert!(
            error
                .to_string()
                .ends_with("tag names are case-sensitive and written as in the file, such as AzureCloud, AzureCloud.eastus or AzureDevOps"),
            "{error}"
        );
        assert!(error.reason().starts_with("not a service tag in "));
    }

    #[test]
    fn host_bits_and_bad_prefixes_are_warnings_not_failures() {
        let tags = inline(
            r#"{"changeNumber": 7, "values": [
                {"name": "A", "properties": {"addressPrefixes":
                    ["10.0.0.1/24", "10.0.0.0/24", "bogus", "2001:db8::1/32", "192.0.2.1"]}},
                {"name": "A", "properties": {"addressPrefixes": ["1.1.1.1/32"]}},
                {"name": "Empty", "properties": {}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(
            tags.expand("A").unwrap(),
            [
                net("10.0.0.0/24"),
                net("2001:db8::/32"),
                net("192.0.2.1/32")
            ]
        );
        assert_eq!(tags.expand("Empty").unwrap(), []);
        let warnings = tags.warnings();
        assert_eq!(warnings.host_bits_cleared, 2);
        assert_eq!(warnings.invalid, 1);
        assert_eq!(warnings.duplicate_tags, 1);
        let text = warnings.to_string();
        assert!(
            text.contains("A: 10.0.0.1/24 has host bits set, used as 10.0.0.0/24"),
            "{text}"
        );
        assert!(
            text.contains("A: \"bogus\" is not an address or CIDR, skipped"),
            "{text}"
        );
        assert!(text.contains("A: listed more than once"), "{text}");
    }

    #[test]
    fn unusable_files_are_errors_that_say_what_to_do() {
        let not_json = inline("<html>").unwrap_err().to_string();
        assert!(
            not_json.starts_with("service tags file tags.json is not an Azure Service Tags JSON file (expected value at line 1 column 1)"),
            "{not_json}"
        );
        assert!(not_json.contains("microsoft.com"), "{not_json}");
        let wrong_shape = inline(r#"{"values": []}"#).unwrap_err().to_string();
        assert!(
            wrong_shape.contains("missing field `changeNumber`"),
            "{wrong_shape}"
        );
        let empty = inline(r#"{"changeNumber": 1, "values": []}"#)
            .unwrap_err()
            .to_string();
        assert!(
            empty.starts_with("service tags file tags.json lists no service tags"),
            "{empty}"
        );
        let missing = ServiceTags::load(Path::new("/nonexistent/tags.json"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("reading service tags file /nonexistent/tags.json: No such file"),
            "{missing}"
        );
        assert!(
            missing.contains("check service_tags_file in the config"),
            "{missing}"
        );
    }

    #[test]
    fn resolve_list_reports_expanded_and_merged_counts_per_entry() {
        let tags = fixture();
        let list = resolve_text(
            "AzureDevOps, 203.0.113.0/24 AzureCloud.westus2 AzureCloud.westus",
            &tags,
        )
        .unwrap();
        let summary: Vec<(&str, bool, FamilyCounts, FamilyCounts)> = list
            .entries
            .iter()
            .map(|e| (e.entry.as_str(), e.tag, e.expanded, e.merged))
            .collect();
        let counts = |v4, v6| FamilyCounts { v4, v6 };
        assert_eq!(
            summary,
            [
                ("AzureDevOps", true, counts(24, 31), counts(24, 31)),
                ("203.0.113.0/24", false, counts(1, 0), counts(1, 0)),
                ("AzureCloud.westus2", true, counts(368, 50), counts(368, 47)),
                ("AzureCloud.westus", true, counts(303, 54), counts(303, 53)),
            ]
        );
        assert_eq!(list.prefixes.len(), 24 + 31 + 1 + 368 + 50 + 303 + 54);
        let merged = merge(&list.prefixes);
        assert_eq!(list.merged, count_families(&merged));
        assert_eq!(
            serde_json::to_value(&list.entries[1]).unwrap(),
            serde_json::json!({"entry": "203.0.113.0/24", "tag": false,
                               "expanded": {"v4": 1, "v6": 0}, "merged": {"v4": 1, "v6": 0}})
        );
    }

    #[test]
    fn resolve_list_names_the_unknown_entry() {
        let tags = fixture();
        let error = resolve_text("10.0.0.0/8 AzureDevOp", &tags).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "entry 2 \"AzureDevOp\" is not a service tag in {FIXTURE} (changeNumber 375); \
                 did you mean \"AzureDevOps\"?"
            )
        );
        assert!(matches!(
            resolve_text("10.0.0.1/8", &tags),
            Err(ResolveError::Syntax(RangeError::HostBitsSet { .. }))
        ));
    }

    #[test]
    fn the_whole_file_when_present() {
        // The whole 4 MB file lives next to the repository (../shared/data, as in CI), not in
        // it; the committed excerpt above covers a user's clone.
        let path = Path::new(FULL);
        if !apifence_tests::require_file("the_whole_file_when_present", path) {
            return;
        }
        let tags = ServiceTags::load(path).expect("load the whole file");
        assert_eq!(tags.change_number(), 375);
        assert_eq!(tags.tag_count(), 3039);
        assert_eq!(tags.prefix_count(), 93_362);
        assert!(tags.warnings().is_empty(), "{}", tags.warnings());
        let cloud = tags.get("AzureCloud").expect("AzureCloud");
        assert_eq!(cloud.prefixes.len(), 13_080);
        assert_eq!(
            cloud.counts(),
            FamilyCounts {
                v4: 9_585,
                v6: 3_495
            }
        );
        let list = resolve_text("AzureCloud", &tags).unwrap();
        assert_eq!(
            list.entries[0].merged,
            FamilyCounts {
                v4: 1_860,
                v6: 1_346
            }
        );
        // The excerpt is the real thing.
        let excerpt = fixture();
        for name in excerpt.names() {
            assert_eq!(excerpt.get(name), tags.get(name), "{name}");
        }
        let error = tags.expand("AzureCloud.eastus3").unwrap_err();
        assert!(
            error.suggestions.contains(&"AzureCloud.eastus".to_owned()),
            "{error}"
        );
    }
}
