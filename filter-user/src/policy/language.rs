//! The authorized-range language: what `apifence ranges set` and friends accept.
//!
//! It reads the same text as `az aks update --api-server-authorized-ip-ranges`:
//! IPv4 and IPv6 CIDRs or single addresses, separated by commas and/or
//! whitespace. Every mistake is reported with the entry as typed, its 1-based
//! position, and a fix; a list with any mistake is rejected as a whole.
//!
//! Parsing happens in two steps so that names (such as Azure service tags) can
//! be supported later: [`tokenize`] turns text into [`Token`]s whose [`Entry`]
//! is either a prefix or a name, and the `parse_*` functions then require every
//! entry to be a prefix. A future resolver only has to replace that last step.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use crate::policy::echo::escape;

/// The prefix that, alone, means "allow only the always-allowed addresses".
pub const ONLY_ALWAYS_ALLOWED: IpNet = IpNet::new_assert(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 32);

/// What a parsed authorized-range list means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeList {
    /// Filtering is off: the text was empty or only whitespace.
    Disabled,
    /// The text was `0.0.0.0/32` alone: only the always-allowed addresses may connect.
    OnlyAlwaysAllowed,
    /// These ranges (and the always-allowed addresses) may connect. Never empty,
    /// never contains `0.0.0.0/32`, canonical, without duplicates, in the order given.
    Ranges(Vec<IpNet>),
}

/// One entry of a list after its syntax was checked, before names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An address or CIDR, canonical (`10.0.0.1` is `10.0.0.1/32`).
    Prefix(IpNet),
    /// A name such as a service tag (`AzureCloud.eastus`), as typed.
    Name(String),
}

/// An [`Entry`] together with the text it was read from and its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    /// 1-based position in the list; empty entries between commas count too.
    pub position: usize,
    /// The entry exactly as typed.
    pub text: &'a str,
    /// What the entry is.
    pub entry: Entry,
}

/// Why a range list, or a change to one, was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// Two commas in a row, or a comma at the start or end.
    #[error(
        "entry {position} is empty (two commas in a row, or a comma at the start or end); remove the extra comma"
    )]
    EmptyEntry {
        /// 1-based position of the empty entry.
        position: usize,
    },
    /// Text that is neither an address, a CIDR nor a name.
    #[error(
        "entry {position} \"{entry}\" is not an IPv4 or IPv6 address or CIDR; write ranges like 73.140.245.0/24 or 2001:db8::/32"
    )]
    Invalid {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
    },
    /// A `/` with nothing before it, such as `/24`.
    #[error(
        "entry {position} \"{entry}\" has no address before \"/\"; write ranges like 73.140.245.0/24 or 2001:db8::/32"
    )]
    MissingAddress {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
    },
    /// A `/` with nothing after it, such as `10.0.0.0/`.
    #[error(
        "entry {position} \"{entry}\" has no prefix length after \"/\"; add one (such as /24) or drop the \"/\" for a single address"
    )]
    MissingPrefixLength {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
    },
    /// A prefix length above 32 (IPv4) or 128 (IPv6).
    #[error(
        "entry {position} \"{entry}\" has a prefix length that is too long; an {} prefix length is at most /{max}",
        if *max == 32 { "IPv4" } else { "IPv6" }
    )]
    PrefixTooLong {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
        /// The longest prefix length of the entry's address family.
        max: u8,
    },
    /// An address with host bits set after the prefix, such as `10.0.0.1/24`.
    #[error(
        "entry {position} \"{entry}\" is not the first address of its range; did you mean {suggestion}?"
    )]
    HostBitsSet {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
        /// The range with its host bits cleared.
        suggestion: IpNet,
    },
    /// An IPv6 scoped address such as `fe80::1%eth0`.
    #[error(
        "entry {position} \"{entry}\" has a zone index; zones are not allowed in ranges, remove the \"%{zone}\" part"
    )]
    ZoneNotAllowed {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
        /// The zone index, without the `%`.
        zone: String,
    },
    /// An IPv4-mapped IPv6 address or range, such as `::ffff:1.2.3.4`.
    #[error(
        "entry {position} \"{entry}\" is an IPv4-mapped IPv6 range, which never matches: packets from IPv4 clients arrive as IPv4; write {suggestion} instead"
    )]
    Ipv4Mapped {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
        /// The same range written as IPv4.
        suggestion: IpNet,
    },
    /// A name such as a service tag, which this parser cannot resolve.
    #[error(
        "entry {position} \"{entry}\" is a name, not an address; names such as service tags are only resolved by the apifence daemon when it has a service tags file, so write IP ranges here"
    )]
    UnknownName {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
    },
    /// `0.0.0.0/32` in an authorized-range list that has other ranges.
    #[error(
        "entry {position} \"{entry}\" cannot be combined with other ranges: 0.0.0.0/32 alone means \"only the always-allowed addresses\"; remove it, or make it the only entry"
    )]
    OnlyAlwaysAllowedCombined {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
    },
    /// `0.0.0.0/32` in a plain prefix list, where it would mean nothing.
    #[error(
        "entry {position} \"{entry}\" means nothing here: 0.0.0.0/32 is special only as the whole authorized-range list (apifence ranges set 0.0.0.0/32); remove it"
    )]
    OnlyAlwaysAllowedMisplaced {
        /// The entry as typed.
        entry: String,
        /// 1-based position of the entry.
        position: usize,
    },
    /// Removing a range that is not in the list.
    #[error("{entry} is not in the authorized ranges; run apifence ranges show to see them")]
    NotInList {
        /// The missing range, canonical.
        entry: IpNet,
    },
    /// A removal that would leave no ranges, which must not silently disable filtering.
    #[error(
        "removing these would leave no authorized ranges; to disable filtering run apifence ranges set \"\", or to allow only the always-allow list run apifence ranges set 0.0.0.0/32"
    )]
    WouldBeEmpty,
    /// Removing from a list whose filtering is disabled.
    #[error(
        "filtering is disabled, so there are no authorized ranges to remove; run apifence ranges show to see the setting"
    )]
    RemoveFromDisabled,
    /// Removing from the `0.0.0.0/32` list.
    #[error(
        "the authorized ranges are 0.0.0.0/32 (only the always-allowed addresses), so there are no ranges to remove; run apifence ranges show to see the setting"
    )]
    RemoveFromOnlyAlwaysAllowed,
}

/// Splits `text` into entries and checks the syntax of each.
///
/// Commas and whitespace separate entries; an empty entry between commas is an
/// error. Names (an ASCII letter followed by `[A-Za-z0-9._-]`) are returned as
/// [`Entry::Name`] for a later resolver; everything else must be a canonical
/// address or CIDR. Duplicates are kept.
pub fn tokenize(text: &str) -> Result<Vec<Token<'_>>, RangeError> {
    let words = list_words(text).map_err(|e| RangeError::EmptyEntry {
        position: e.position,
    })?;
    words
        .into_iter()
        .map(|(position, word)| {
            Ok(Token {
                position,
                text: word,
                entry: read_entry(word, position)?,
            })
        })
        .collect()
}

/// An empty entry between commas in a list, at 1-based `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmptyEntry {
    /// 1-based position of the empty entry.
    pub position: usize,
}

/// The list syntax every apifence list shares (ranges, ports): entries separated by commas
/// and/or whitespace, each with its 1-based position; an empty entry between commas (`a,,b`,
/// a leading or trailing comma) is an error. Text that is only whitespace has no entries.
pub fn list_words(text: &str) -> Result<Vec<(usize, &str)>, EmptyEntry> {
    let has_comma = text.contains(',');
    let mut words = Vec::new();
    let mut position = 0;
    for segment in text.split(',') {
        let mut segment_words = segment.split_whitespace().peekable();
        if segment_words.peek().is_none() {
            position += 1;
            if has_comma {
                return Err(EmptyEntry { position });
            }
        }
        for word in segment_words {
            position += 1;
            words.push((position, word));
        }
    }
    Ok(words)
}

/// Parses an authorized-range list (the value of `--api-server-authorized-ip-ranges`).
///
/// `""` disables filtering, `0.0.0.0/32` alone allows only the always-allowed
/// addresses, anything else is a list of ranges with exact duplicates removed.
///
/// The first syntax error is reported; names are reported only when the syntax
/// is otherwise fine, since a future resolver may accept them.
pub fn parse_authorized(text: &str) -> Result<RangeList, RangeError> {
    let tokens = tokenize(text)?;
    let prefixes = prefixes_of(&tokens)?;
    if prefixes.is_empty() {
        return Ok(RangeList::Disabled);
    }
    if prefixes == [ONLY_ALWAYS_ALLOWED] {
        return Ok(RangeList::OnlyAlwaysAllowed);
    }
    if let Some(token) = find_only_always_allowed(&tokens) {
        return Err(RangeError::OnlyAlwaysAllowedCombined {
            entry: token.text.to_owned(),
            position: token.position,
        });
    }
    Ok(RangeList::Ranges(prefixes))
}

/// Parses a plain prefix list, such as an always-allow list or the ranges given
/// to `apifence ranges add`/`remove`.
///
/// Same syntax as [`parse_authorized`]; `""` is the empty list. `0.0.0.0/32` is
/// rejected, because it is special only as a whole authorized-range list and
/// would mean nothing here. Exact duplicates are removed, keeping the first.
pub fn parse_prefixes(text: &str) -> Result<Vec<IpNet>, RangeError> {
    let tokens = tokenize(text)?;
    let prefixes = prefixes_of(&tokens)?;
    match find_only_always_allowed(&tokens) {
        Some(token) => Err(RangeError::OnlyAlwaysAllowedMisplaced {
            entry: token.text.to_owned(),
            position: token.position,
        }),
        None => Ok(prefixes),
    }
}

impl RangeList {
    /// The list with `more` appended, skipping entries already present.
    ///
    /// Adding to [`RangeList::Disabled`] or [`RangeList::OnlyAlwaysAllowed`]
    /// turns filtering on with exactly `more`. `0.0.0.0/32` in `more` stands for
    /// "no extra addresses", so it is skipped (it only matters when nothing else
    /// is added to a disabled list). Adding nothing returns the list unchanged.
    pub fn add(&self, more: &[IpNet]) -> RangeList {
        let base = match self {
            RangeList::Ranges(ranges) => ranges.as_slice(),
            RangeList::Disabled | RangeList::OnlyAlwaysAllowed => &[],
        };
        let wanted: Vec<IpNet> = more.iter().map(IpNet::trunc).collect();
        let all = dedup(
            base.iter()
                .chain(&wanted)
                .copied()
                .filter(|net| *net != ONLY_ALWAYS_ALLOWED),
        );
        match self {
            _ if !all.is_empty() => RangeList::Ranges(all),
            RangeList::Disabled if wanted.contains(&ONLY_ALWAYS_ALLOWED) => {
                RangeList::OnlyAlwaysAllowed
            }
            _ => self.clone(),
        }
    }

    /// The list without the ranges in `gone` (compared canonically).
    ///
    /// Fails, changing nothing, if a range is not in the list, if the list has no
    /// ranges, or if nothing would be left (which must be asked for explicitly).
    pub fn remove(&self, gone: &[IpNet]) -> Result<RangeList, RangeError> {
        let ranges = match self {
            RangeList::Ranges(ranges) => ranges,
            RangeList::Disabled => return Err(RangeError::RemoveFromDisabled),
            RangeList::OnlyAlwaysAllowed => return Err(RangeError::RemoveFromOnlyAlwaysAllowed),
        };
        let present: HashSet<&IpNet> = ranges.iter().collect();
        let gone: Vec<IpNet> = gone.iter().map(IpNet::trunc).collect();
        if let Some(missing) = gone.iter().find(|net| !present.contains(net)) {
            return Err(RangeError::NotInList { entry: *missing });
        }
        let gone: HashSet<IpNet> = gone.into_iter().collect();
        let left: Vec<IpNet> = ranges
            .iter()
            .filter(|net| !gone.contains(net))
            .copied()
            .collect();
        if left.is_empty() {
            return Err(RangeError::WouldBeEmpty);
        }
        Ok(RangeList::Ranges(left))
    }

    /// The authorized ranges; empty for [`RangeList::Disabled`] and
    /// [`RangeList::OnlyAlwaysAllowed`], which authorize no extra range.
    pub fn entries(&self) -> &[IpNet] {
        match self {
            RangeList::Ranges(ranges) => ranges,
            RangeList::Disabled | RangeList::OnlyAlwaysAllowed => &[],
        }
    }

    /// The list as text that [`parse_authorized`] reads back to the same list:
    /// `""`, `"0.0.0.0/32"`, or the ranges joined by commas.
    pub fn to_text(&self) -> String {
        match self {
            RangeList::Disabled => String::new(),
            RangeList::OnlyAlwaysAllowed => ONLY_ALWAYS_ALLOWED.to_string(),
            RangeList::Ranges(ranges) => ranges
                .iter()
                .map(IpNet::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Reads one non-empty, separator-free entry.
fn read_entry(text: &str, position: usize) -> Result<Entry, RangeError> {
    if is_name(text) {
        return Ok(Entry::Name(text.to_owned()));
    }
    let entry = || escape(text);
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    if address.is_empty() {
        return Err(RangeError::MissingAddress {
            entry: entry(),
            position,
        });
    }
    if let Some((_, zone)) = address.split_once('%') {
        return Err(RangeError::ZoneNotAllowed {
            entry: entry(),
            position,
            zone: escape(zone),
        });
    }
    if length == Some("") {
        return Err(RangeError::MissingPrefixLength {
            entry: entry(),
            position,
        });
    }
    let invalid = || RangeError::Invalid {
        entry: entry(),
        position,
    };
    let address: IpAddr = address.parse().map_err(|_| invalid())?;
    let max = match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let length = match length {
        None => max,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => digits
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| RangeError::PrefixTooLong {
                entry: entry(),
                position,
                max,
            })?,
        Some(_) => return Err(invalid()),
    };
    let net = IpNet::new(address, length).map_err(|_| invalid())?;
    if let Some(suggestion) = as_ipv4(net) {
        return Err(RangeError::Ipv4Mapped {
            entry: entry(),
            position,
            suggestion,
        });
    }
    let suggestion = net.trunc();
    if suggestion != net {
        return Err(RangeError::HostBitsSet {
            entry: entry(),
            position,
            suggestion,
        });
    }
    Ok(Entry::Prefix(net))
}

/// Whether `text` is a name: an ASCII letter, then ASCII letters, digits, `.`, `_` or `-`.
fn is_name(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The IPv4 form of `net` if it lies inside the IPv4-mapped range `::ffff:0:0/96`.
fn as_ipv4(net: IpNet) -> Option<IpNet> {
    let IpNet::V6(v6) = net else { return None };
    let length = v6.prefix_len().checked_sub(96)?;
    let v4 = v6.addr().to_ipv4_mapped()?;
    Ipv4Net::new(v4, length)
        .ok()
        .map(|v4| IpNet::V4(v4.trunc()))
}

/// The prefixes of `tokens`, deduplicated; names are an error until a resolver exists.
fn prefixes_of(tokens: &[Token<'_>]) -> Result<Vec<IpNet>, RangeError> {
    let prefixes = tokens
        .iter()
        .map(|token| match &token.entry {
            Entry::Prefix(net) => Ok(*net),
            Entry::Name(name) => Err(RangeError::UnknownName {
                entry: name.clone(),
                position: token.position,
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(dedup(prefixes))
}

/// The first token that is `0.0.0.0/32`.
fn find_only_always_allowed<'t, 'a>(tokens: &'t [Token<'a>]) -> Option<&'t Token<'a>> {
    tokens
        .iter()
        .find(|token| token.entry == Entry::Prefix(ONLY_ALWAYS_ALLOWED))
}

/// `nets` without repeats, keeping the first occurrence of each. Repeats are found by sorting
/// (prefix, position) pairs rather than hashing: with a million entries a hash set's random
/// probes miss the cache on almost every insert, sorted passes do not.
fn dedup(nets: impl IntoIterator<Item = IpNet>) -> Vec<IpNet> {
    let nets: Vec<IpNet> = nets.into_iter().collect();
    let mut sorted: Vec<(IpNet, usize)> = nets.iter().copied().zip(0..).collect();
    // Equal prefixes end up next to each other, the first occurrence (lowest position) first.
    sorted.sort_unstable();
    let mut repeat = vec![false; nets.len()];
    for pair in sorted.windows(2) {
        if pair[0].0 == pair[1].0 {
            repeat[pair[1].1] = true;
        }
    }
    nets.into_iter()
        .zip(repeat)
        .filter_map(|(net, repeat)| (!repeat).then_some(net))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|t| net(t)).collect()
    }

    #[test]
    fn parses_valid_lists() {
        let cases: &[(&str, RangeList)] = &[
            ("", RangeList::Disabled),
            ("   \n\t ", RangeList::Disabled),
            ("0.0.0.0/32", RangeList::OnlyAlwaysAllowed),
            ("0.0.0.0", RangeList::OnlyAlwaysAllowed),
            (" 0.0.0.0/32 ", RangeList::OnlyAlwaysAllowed),
            ("0.0.0.0/32,0.0.0.0", RangeList::OnlyAlwaysAllowed),
            ("10.0.0.1", RangeList::Ranges(nets(&["10.0.0.1/32"]))),
            ("2001:DB8::/32", RangeList::Ranges(nets(&["2001:db8::/32"]))),
            ("2001:db8::1", RangeList::Ranges(nets(&["2001:db8::1/128"]))),
            ("0.0.0.0/0", RangeList::Ranges(nets(&["0.0.0.0/0"]))),
            ("::/0", RangeList::Ranges(nets(&["::/0"]))),
            ("0.0.0.0/31", RangeList::Ranges(nets(&["0.0.0.0/31"]))),
            (
                "73.140.245.0/24,2001:db8::/32",
                RangeList::Ranges(nets(&["73.140.245.0/24", "2001:db8::/32"])),
            ),
            (
                "73.140.245.0/24 2001:db8::/32\n10.0.0.0/8",
                RangeList::Ranges(nets(&["73.140.245.0/24", "2001:db8::/32", "10.0.0.0/8"])),
            ),
            (
                " 10.0.0.0/8 , 192.168.0.0/16 ,\t172.16.0.0/12 ",
                RangeList::Ranges(nets(&["10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12"])),
            ),
            (
                "10.0.0.1, 1.2.3.0/24, 10.0.0.1/32, 1.2.3.0/24",
                RangeList::Ranges(nets(&["10.0.0.1/32", "1.2.3.0/24"])),
            ),
            (
                "10.0.0.1 10.0.0.0/24",
                RangeList::Ranges(nets(&["10.0.0.1/32", "10.0.0.0/24"])),
            ),
            // IPv4-compatible (not mapped) and ranges containing the mapped block are fine.
            ("::1.2.3.4", RangeList::Ranges(nets(&["::102:304/128"]))),
            ("::/64", RangeList::Ranges(nets(&["::/64"]))),
        ];
        for (text, want) in cases {
            assert_eq!(parse_authorized(text).as_ref(), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn rejects_invalid_lists_with_exact_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "137.117.106.90/29",
                "entry 1 \"137.117.106.90/29\" is not the first address of its range; did you mean 137.117.106.88/29?",
            ),
            (
                "10.0.0.0/8,2001:db8::1/32",
                "entry 2 \"2001:db8::1/32\" is not the first address of its range; did you mean 2001:db8::/32?",
            ),
            (
                "10.0.0.0/8, 10.0.0.300/24",
                "entry 2 \"10.0.0.300/24\" is not an IPv4 or IPv6 address or CIDR; write ranges like 73.140.245.0/24 or 2001:db8::/32",
            ),
            (
                "10.0.0.0/33",
                "entry 1 \"10.0.0.0/33\" has a prefix length that is too long; an IPv4 prefix length is at most /32",
            ),
            (
                "10.0.0.0/300",
                "entry 1 \"10.0.0.0/300\" has a prefix length that is too long; an IPv4 prefix length is at most /32",
            ),
            (
                "2001:db8::/129",
                "entry 1 \"2001:db8::/129\" has a prefix length that is too long; an IPv6 prefix length is at most /128",
            ),
            (
                "10.0.0.0/8,,10.1.0.0/16",
                "entry 2 is empty (two commas in a row, or a comma at the start or end); remove the extra comma",
            ),
            (
                ",10.0.0.0/8",
                "entry 1 is empty (two commas in a row, or a comma at the start or end); remove the extra comma",
            ),
            (
                "10.0.0.0/8,",
                "entry 2 is empty (two commas in a row, or a comma at the start or end); remove the extra comma",
            ),
            (
                "10.0.0.0/8, ,10.1.0.0/16",
                "entry 2 is empty (two commas in a row, or a comma at the start or end); remove the extra comma",
            ),
            (
                ",",
                "entry 1 is empty (two commas in a row, or a comma at the start or end); remove the extra comma",
            ),
            (
                "10.0.0.0/8,0.0.0.0/32",
                "entry 2 \"0.0.0.0/32\" cannot be combined with other ranges: 0.0.0.0/32 alone means \"only the always-allowed addresses\"; remove it, or make it the only entry",
            ),
            (
                "0.0.0.0 10.0.0.0/8",
                "entry 1 \"0.0.0.0\" cannot be combined with other ranges: 0.0.0.0/32 alone means \"only the always-allowed addresses\"; remove it, or make it the only entry",
            ),
            (
                "::ffff:1.2.3.4",
                "entry 1 \"::ffff:1.2.3.4\" is an IPv4-mapped IPv6 range, which never matches: packets from IPv4 clients arrive as IPv4; write 1.2.3.4/32 instead",
            ),
            (
                "::ffff:0:0/96",
                "entry 1 \"::ffff:0:0/96\" is an IPv4-mapped IPv6 range, which never matches: packets from IPv4 clients arrive as IPv4; write 0.0.0.0/0 instead",
            ),
            (
                "::ffff:10.0.0.0/104",
                "entry 1 \"::ffff:10.0.0.0/104\" is an IPv4-mapped IPv6 range, which never matches: packets from IPv4 clients arrive as IPv4; write 10.0.0.0/8 instead",
            ),
            (
                "AzureCloud",
                "entry 1 \"AzureCloud\" is a name, not an address; names such as service tags are only resolved by the apifence daemon when it has a service tags file, so write IP ranges here",
            ),
            (
                "10.0.0.0/8 AzureCloud.eastus",
                "entry 2 \"AzureCloud.eastus\" is a name, not an address; names such as service tags are only resolved by the apifence daemon when it has a service tags file, so write IP ranges here",
            ),
            (
                "10.0.0.0/",
                "entry 1 \"10.0.0.0/\" has no prefix length after \"/\"; add one (such as /24) or drop the \"/\" for a single address",
            ),
            (
                "/24",
                "entry 1 \"/24\" has no address before \"/\"; write ranges like 73.140.245.0/24 or 2001:db8::/32",
            ),
            (
                "10.0.0.0 /24",
                "entry 2 \"/24\" has no address before \"/\"; write ranges like 73.140.245.0/24 or 2001:db8::/32",
            ),
            (
                "+10.0.0.0/8",
                "entry 1 \"+10.0.0.0/8\" is not an IPv4 or IPv6 address or CIDR; write ranges like 73.140.245.0/24 or 2001:db8::/32",
            ),
            (
                "10.0.0.0/+8",
                "entry 1 \"10.0.0.0/+8\" is not an IPv4 or IPv6 address or CIDR; write ranges like 73.140.245.0/24 or 2001:db8::/32",
            ),
            (
                "fe80::1%eth0",
                "entry 1 \"fe80::1%eth0\" has a zone index; zones are not allowed in ranges, remove the \"%eth0\" part",
            ),
            (
                "fe80::%2/64",
                "entry 1 \"fe80::%2/64\" has a zone index; zones are not allowed in ranges, remove the \"%2\" part",
            ),
        ];
        for (text, want) in cases {
            let got = parse_authorized(text).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_string()), "{text:?}");
        }
    }

    #[test]
    fn other_invalid_text_is_invalid() {
        for text in [
            "10.0.0",
            "10.0.0.0/8/8",
            "010.0.0.1",
            "1.2.3.4.5",
            "10.0.0.0/ 8",
            "2001:db8:::/32",
            "10.0.0.0/8;10.1.0.0/16",
            "10.0.0.0/-1",
            "10.0.0.0/0x8",
        ] {
            match parse_authorized(text) {
                Err(RangeError::Invalid { entry, position }) => {
                    assert!(text.contains(entry.as_str()) && position >= 1, "{text:?}")
                }
                // "10.0.0.0/ 8" splits into "10.0.0.0/" and "8".
                Err(RangeError::MissingPrefixLength { .. }) => assert_eq!(text, "10.0.0.0/ 8"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_carry_entry_and_position() {
        assert_eq!(
            parse_authorized("1.2.3.0/24 AzureCloud"),
            Err(RangeError::UnknownName {
                entry: "AzureCloud".into(),
                position: 2
            })
        );
        assert_eq!(
            parse_authorized("1.2.3.0/24,,x"),
            Err(RangeError::EmptyEntry { position: 2 })
        );
        assert_eq!(
            parse_authorized("1.2.3.4/24"),
            Err(RangeError::HostBitsSet {
                entry: "1.2.3.4/24".into(),
                position: 1,
                suggestion: net("1.2.3.0/24")
            })
        );
        assert_eq!(
            parse_authorized("2001:db8::/129"),
            Err(RangeError::PrefixTooLong {
                entry: "2001:db8::/129".into(),
                position: 1,
                max: 128
            })
        );
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(
            parse_authorized("1.2.3.4/33 10.0.0.1/8"),
            Err(RangeError::PrefixTooLong {
                entry: "1.2.3.4/33".into(),
                position: 1,
                max: 32
            })
        );
        // Syntax errors come before unresolved names, which a resolver may accept.
        assert_eq!(
            parse_authorized("AzureCloud 1.2.3.4/24"),
            Err(RangeError::HostBitsSet {
                entry: "1.2.3.4/24".into(),
                position: 2,
                suggestion: net("1.2.3.0/24")
            })
        );
        // Per-entry errors come before the 0.0.0.0/32 combination check.
        assert_eq!(
            parse_authorized("0.0.0.0/32 10.0.0.0/33"),
            Err(RangeError::PrefixTooLong {
                entry: "10.0.0.0/33".into(),
                position: 2,
                max: 32
            })
        );
    }

    #[test]
    fn tokenize_keeps_names_for_a_resolver() {
        let tokens = tokenize("AzureCloud.eastus, 10.0.0.0/8 my_tag-2").unwrap();
        let got: Vec<_> = tokens
            .iter()
            .map(|t| (t.position, t.text, t.entry.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    1,
                    "AzureCloud.eastus",
                    Entry::Name("AzureCloud.eastus".into())
                ),
                (2, "10.0.0.0/8", Entry::Prefix(net("10.0.0.0/8"))),
                (3, "my_tag-2", Entry::Name("my_tag-2".into())),
            ]
        );
        assert_eq!(tokenize("  "), Ok(vec![]));
    }

    #[test]
    fn parse_prefixes_cases() {
        assert_eq!(parse_prefixes(""), Ok(vec![]));
        assert_eq!(parse_prefixes(" \n "), Ok(vec![]));
        assert_eq!(
            parse_prefixes("10.0.0.1, 2001:DB8::/32 10.0.0.1/32"),
            Ok(nets(&["10.0.0.1/32", "2001:db8::/32"]))
        );
        assert_eq!(
            parse_prefixes("10.0.0.0/8 0.0.0.0/32").map_err(|e| e.to_string()),
            Err("entry 2 \"0.0.0.0/32\" means nothing here: 0.0.0.0/32 is special only as the whole authorized-range list (apifence ranges set 0.0.0.0/32); remove it".to_string())
        );
        assert_eq!(
            parse_prefixes("0.0.0.0"),
            Err(RangeError::OnlyAlwaysAllowedMisplaced {
                entry: "0.0.0.0".into(),
                position: 1
            })
        );
        assert_eq!(
            parse_prefixes("1.2.3.4/24"),
            Err(RangeError::HostBitsSet {
                entry: "1.2.3.4/24".into(),
                position: 1,
                suggestion: net("1.2.3.0/24")
            })
        );
        assert_eq!(
            parse_prefixes(",1.2.3.4"),
            Err(RangeError::EmptyEntry { position: 1 })
        );
        assert_eq!(
            parse_prefixes("AzureCloud"),
            Err(RangeError::UnknownName {
                entry: "AzureCloud".into(),
                position: 1
            })
        );
    }

    #[test]
    fn add_cases() {
        let ranges = RangeList::Ranges(nets(&["10.0.0.0/8", "2001:db8::/32"]));
        let cases: &[(&RangeList, Vec<IpNet>, RangeList)] = &[
            (
                &RangeList::Disabled,
                nets(&["1.2.3.0/24", "1.2.3.0/24"]),
                RangeList::Ranges(nets(&["1.2.3.0/24"])),
            ),
            (
                &RangeList::OnlyAlwaysAllowed,
                nets(&["1.2.3.0/24"]),
                RangeList::Ranges(nets(&["1.2.3.0/24"])),
            ),
            (
                &ranges,
                nets(&["1.2.3.0/24", "10.0.0.0/8", "1.2.3.4/24"]),
                RangeList::Ranges(nets(&["10.0.0.0/8", "2001:db8::/32", "1.2.3.0/24"])),
            ),
            (&ranges, vec![], ranges.clone()),
            (&RangeList::Disabled, vec![], RangeList::Disabled),
            (
                &RangeList::OnlyAlwaysAllowed,
                vec![],
                RangeList::OnlyAlwaysAllowed,
            ),
            (
                &RangeList::Disabled,
                nets(&["0.0.0.0/32"]),
                RangeList::OnlyAlwaysAllowed,
            ),
            (
                &RangeList::OnlyAlwaysAllowed,
                nets(&["0.0.0.0/32"]),
                RangeList::OnlyAlwaysAllowed,
            ),
            (&ranges, nets(&["0.0.0.0/32"]), ranges.clone()),
            (
                &RangeList::Disabled,
                nets(&["0.0.0.0/32", "1.2.3.0/24"]),
                RangeList::Ranges(nets(&["1.2.3.0/24"])),
            ),
        ];
        for (list, more, want) in cases {
            assert_eq!(&list.add(more), want, "{list:?} + {more:?}");
        }
    }

    #[test]
    fn remove_cases() {
        let ranges = RangeList::Ranges(nets(&["10.0.0.0/8", "2001:db8::/32", "1.2.3.4/32"]));
        let cases: &[(&RangeList, Vec<IpNet>, Result<RangeList, &str>)] = &[
            (
                &ranges,
                nets(&["2001:db8::/32"]),
                Ok(RangeList::Ranges(nets(&["10.0.0.0/8", "1.2.3.4/32"]))),
            ),
            (
                &ranges,
                nets(&["10.1.2.3/8", "1.2.3.4/32", "1.2.3.4/32"]),
                Ok(RangeList::Ranges(nets(&["2001:db8::/32"]))),
            ),
            (&ranges, vec![], Ok(ranges.clone())),
            (
                &ranges,
                nets(&["10.0.0.0/8", "10.0.0.0/16"]),
                Err(
                    "10.0.0.0/16 is not in the authorized ranges; run apifence ranges show to see them",
                ),
            ),
            (
                &ranges,
                nets(&["10.0.0.0/8", "2001:db8::/32", "1.2.3.4/32"]),
                Err(
                    "removing these would leave no authorized ranges; to disable filtering run apifence ranges set \"\", or to allow only the always-allow list run apifence ranges set 0.0.0.0/32",
                ),
            ),
            (
                &RangeList::Disabled,
                nets(&["10.0.0.0/8"]),
                Err(
                    "filtering is disabled, so there are no authorized ranges to remove; run apifence ranges show to see the setting",
                ),
            ),
            (
                &RangeList::OnlyAlwaysAllowed,
                nets(&["0.0.0.0/32"]),
                Err(
                    "the authorized ranges are 0.0.0.0/32 (only the always-allowed addresses), so there are no ranges to remove; run apifence ranges show to see the setting",
                ),
            ),
        ];
        for (list, gone, want) in cases {
            let got = list.remove(gone).map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.clone().map_err(str::to_string),
                "{list:?} - {gone:?}"
            );
        }
        assert_eq!(
            ranges.remove(&nets(&["9.9.9.9/32"])),
            Err(RangeError::NotInList {
                entry: net("9.9.9.9/32")
            })
        );
    }

    #[test]
    fn entries_cases() {
        assert_eq!(RangeList::Disabled.entries(), &[] as &[IpNet]);
        assert_eq!(RangeList::OnlyAlwaysAllowed.entries(), &[] as &[IpNet]);
        let list = nets(&["10.0.0.0/8", "::1/128"]);
        assert_eq!(RangeList::Ranges(list.clone()).entries(), list.as_slice());
    }

    #[test]
    fn to_text_round_trips() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("  ", ""),
            ("0.0.0.0", "0.0.0.0/32"),
            ("10.0.0.1", "10.0.0.1/32"),
            ("2001:DB8::/32", "2001:db8::/32"),
            (
                "73.140.245.0/24 2001:db8::1, 10.0.0.0/8 73.140.245.0/24",
                "73.140.245.0/24,2001:db8::1/128,10.0.0.0/8",
            ),
        ];
        for (text, want) in cases {
            let list = parse_authorized(text).unwrap();
            assert_eq!(list.to_text(), *want, "{text:?}");
            assert_eq!(parse_authorized(&list.to_text()), Ok(list), "{text:?}");
        }
        let built = RangeList::Disabled
            .add(&nets(&["1.2.3.0/24", "::/0"]))
            .remove(&nets(&["::/0"]))
            .unwrap();
        assert_eq!(parse_authorized(&built.to_text()), Ok(built));
    }
}
