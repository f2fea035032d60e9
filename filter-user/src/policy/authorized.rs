//! The authorized-range list of a [`Policy`](super::Policy), parsed and merged once
//! ([`AuthorizedRanges`]): every stop on a change's way to the kernel (compile, slot prefixes,
//! diff, verdict model, lockout guard) reads the same parsed list and merged prefixes instead of
//! parsing text again.

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, OnceLock},
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::{
    language::{RangeError, RangeList, parse_authorized},
    merge::merge,
};

/// An authorized-range list as given ([`RangeList`]) together with its merged prefixes.
/// Cheap to clone (shared); compared by the list as given. In JSON it is the list's text
/// (`""`, `"0.0.0.0/32"` or the comma-separated ranges), as `Policy::ranges` always was.
#[derive(Clone)]
pub struct AuthorizedRanges(Arc<Parsed>);

struct Parsed {
    list: RangeList,
    /// `merge(list.entries())`: sorted (IPv4 then IPv6, ascending), disjoint, minimal. Made on
    /// first use, once (a record read only for its mode or interfaces never merges).
    merged: OnceLock<Vec<IpNet>>,
}

impl AuthorizedRanges {
    /// `list`, whose prefixes are merged the first time [`merged`](Self::merged) is asked
    /// (the only merge this list goes through, however often it is cloned and read).
    pub fn new(list: RangeList) -> Self {
        Self(Arc::new(Parsed {
            list,
            merged: OnceLock::new(),
        }))
    }

    /// Filtering disabled (`""`).
    pub fn disabled() -> Self {
        Self::new(RangeList::Disabled)
    }

    /// Parses text of the range language ([`parse_authorized`]).
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        parse_authorized(text).map(Self::new)
    }

    /// The list as given: disabled, only the always-allow list, or the ranges in the order
    /// given.
    pub fn list(&self) -> &RangeList {
        &self.0.list
    }

    /// The authorized ranges merged (without the always-allow list): sorted, IPv4 ascending
    /// then IPv6 ascending, disjoint, with adjacent siblings joined. Empty unless the list has
    /// ranges.
    pub fn merged(&self) -> &[IpNet] {
        self.0.merged.get_or_init(|| merge(self.0.list.entries()))
    }

    /// Whether filtering is on (the list is not `""`).
    pub fn is_enabled(&self) -> bool {
        !matches!(self.0.list, RangeList::Disabled)
    }

    /// The list as text that [`AuthorizedRanges::parse`] reads back to the same list.
    pub fn to_text(&self) -> String {
        self.0.list.to_text()
    }
}

impl Default for AuthorizedRanges {
    fn default() -> Self {
        Self::disabled()
    }
}

impl From<RangeList> for AuthorizedRanges {
    fn from(list: RangeList) -> Self {
        Self::new(list)
    }
}

impl FromStr for AuthorizedRanges {
    type Err = RangeError;

    fn from_str(text: &str) -> Result<Self, RangeError> {
        Self::parse(text)
    }
}

impl PartialEq for AuthorizedRanges {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.list == other.0.list
    }
}

impl Eq for AuthorizedRanges {}

impl fmt::Debug for AuthorizedRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.list, f)
    }
}

impl Serialize for AuthorizedRanges {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_text())
    }
}

impl<'de> Deserialize<'de> for AuthorizedRanges {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn keeps_the_list_as_given_and_merges_once() {
        let ranges = AuthorizedRanges::parse("10.0.0.128/25, 2001:db8::/32 10.0.0.0/25").unwrap();
        assert_eq!(
            ranges.list(),
            &RangeList::Ranges(nets(&["10.0.0.128/25", "2001:db8::/32", "10.0.0.0/25"]))
        );
        assert_eq!(ranges.merged(), nets(&["10.0.0.0/24", "2001:db8::/32"]));
        assert!(ranges.is_enabled());
        assert_eq!(ranges.to_text(), "10.0.0.128/25,2001:db8::/32,10.0.0.0/25");
    }

    #[test]
    fn disabled_and_only_always_allowed_merge_to_nothing() {
        let disabled = AuthorizedRanges::default();
        assert!(!disabled.is_enabled());
        assert!(disabled.merged().is_empty());
        assert_eq!(disabled, "  ".parse().unwrap());
        let only: AuthorizedRanges = "0.0.0.0/32".parse().unwrap();
        assert!(only.is_enabled());
        assert!(only.merged().is_empty());
        assert_eq!(only.list(), &RangeList::OnlyAlwaysAllowed);
    }

    #[test]
    fn json_is_the_text_and_bad_text_is_refused() {
        let ranges: AuthorizedRanges = "192.0.2.0/24,2001:db8::1".parse().unwrap();
        let json = serde_json::to_string(&ranges).unwrap();
        assert_eq!(json, "\"192.0.2.0/24,2001:db8::1/128\"");
        let back: AuthorizedRanges = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ranges);
        assert_eq!(back.merged(), ranges.merged());
        let error = serde_json::from_str::<AuthorizedRanges>("\"10.0.0.1/8\"").unwrap_err();
        assert!(
            error.to_string().contains("did you mean 10.0.0.0/8"),
            "{error}"
        );
    }
}
