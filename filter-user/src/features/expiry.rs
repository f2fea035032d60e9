//! Expiring entries: split a list into what is still authorized and what has expired, and say
//! when the next entry expires so the daemon can wake up then. Pure: the caller passes `now`.
//!
//! An entry with `expires = T` is authorized strictly before `T` and expired from `T` on. When
//! every entry of a list has expired the caller is left with an empty list, which in apifence
//! means "only the always-allow list" (as `0.0.0.0/32`), never "filtering off": an expiry must
//! not open the API server to everyone.

use std::time::Duration;

use time::OffsetDateTime;

use crate::policy::timestamp::rfc3339;

/// Something that may carry an expiry time and a note (an authorized-range entry).
pub trait Expiring {
    /// When it stops being authorized, if ever.
    fn expires(&self) -> Option<OffsetDateTime>;
    /// The entry as shown to operators (`203.0.113.0/24`, `AzureDevOps`).
    fn label(&self) -> String;
    /// Free text the operator attached to it.
    fn note(&self) -> Option<&str> {
        None
    }
}

/// An entry that has expired, and the line to log about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired<T> {
    /// The entry as it was.
    pub entry: T,
    /// When it expired.
    pub expired_at: OffsetDateTime,
    /// `203.0.113.0/24 ("on-call VPN") expired at 2026-12-01T00:00:00Z`.
    pub message: String,
}

/// A list split at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split<T> {
    /// Entries still authorized, in their original order.
    pub live: Vec<T>,
    /// Entries that have expired, in their original order.
    pub expired: Vec<Expired<T>>,
    /// The earliest expiry among `live`: when to look again.
    pub next_expiry: Option<OffsetDateTime>,
}

/// Whether `entry` has expired at `now`.
pub fn is_expired(entry: &impl Expiring, now: OffsetDateTime) -> bool {
    entry.expires().is_some_and(|at| at <= now)
}

/// Splits `entries` into live and expired ones at `now`.
pub fn split<T: Expiring>(entries: impl IntoIterator<Item = T>, now: OffsetDateTime) -> Split<T> {
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for entry in entries {
        match entry.expires() {
            Some(at) if at <= now => expired.push(Expired {
                message: expired_message(&entry, at),
                expired_at: at,
                entry,
            }),
            _ => live.push(entry),
        }
    }
    let next_expiry = next_expiry(&live, now);
    Split {
        live,
        expired,
        next_expiry,
    }
}

/// The earliest expiry after `now` among `entries` (entries already expired are ignored).
pub fn next_expiry<'a, T: Expiring + 'a>(
    entries: impl IntoIterator<Item = &'a T>,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    entries
        .into_iter()
        .filter_map(Expiring::expires)
        .filter(|at| *at > now)
        .min()
}

/// How long to sleep from `now` until `next` (zero if it is already due), at most `max`, so
/// that a sleeper on the monotonic clock still notices a wall-clock step within `max`.
pub fn delay_until(next: Option<OffsetDateTime>, now: OffsetDateTime, max: Duration) -> Duration {
    match next {
        None => max,
        Some(at) => {
            let left = at - now;
            if left.is_negative() {
                Duration::ZERO
            } else {
                Duration::try_from(left).map_or(max, |d| d.min(max))
            }
        }
    }
}

/// The log line for an expired entry.
fn expired_message(entry: &impl Expiring, at: OffsetDateTime) -> String {
    match entry.note() {
        Some(note) if !note.is_empty() => format!(
            "authorized range {} (\"{note}\") expired at {}; removed",
            entry.label(),
            rfc3339(at)
        ),
        _ => format!(
            "authorized range {} expired at {}; removed",
            entry.label(),
            rfc3339(at)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Item {
        label: &'static str,
        note: Option<&'static str>,
        expires: Option<OffsetDateTime>,
    }

    impl Expiring for Item {
        fn expires(&self) -> Option<OffsetDateTime> {
            self.expires
        }
        fn label(&self) -> String {
            self.label.to_owned()
        }
        fn note(&self) -> Option<&str> {
            self.note
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .expect("test time")
    }

    fn item(label: &'static str, expires: Option<&str>) -> Item {
        Item {
            label,
            note: None,
            expires: expires.map(at),
        }
    }

    #[test]
    fn splits_live_and_expired_keeping_order() {
        let now = at("2026-12-01T00:00:00Z");
        let entries = vec![
            item("10.0.0.0/8", None),
            Item {
                note: Some("on-call VPN"),
                ..item("203.0.113.0/24", Some("2026-12-01T00:00:00Z"))
            },
            item("198.51.100.0/24", Some("2026-12-01T00:00:01Z")),
            item("AzureDevOps", Some("2025-01-01T00:00:00+01:00")),
            item("192.0.2.0/24", Some("2027-01-01T00:00:00Z")),
        ];
        let split = split(entries, now);
        let live: Vec<&str> = split.live.iter().map(|i| i.label).collect();
        assert_eq!(live, ["10.0.0.0/8", "198.51.100.0/24", "192.0.2.0/24"]);
        let messages: Vec<&str> = split.expired.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "authorized range 203.0.113.0/24 (\"on-call VPN\") expired at 2026-12-01T00:00:00Z; removed",
                "authorized range AzureDevOps expired at 2025-01-01T00:00:00+01:00; removed",
            ]
        );
        assert_eq!(split.expired[1].expired_at, at("2024-12-31T23:00:00Z"));
        assert_eq!(split.next_expiry, Some(at("2026-12-01T00:00:01Z")));
    }

    #[test]
    fn expiry_is_exclusive_of_the_instant() {
        let deadline = item("x", Some("2026-12-01T00:00:00Z"));
        assert!(!is_expired(&deadline, at("2026-11-30T23:59:59.999Z")));
        assert!(is_expired(&deadline, at("2026-12-01T00:00:00Z")));
        assert!(!is_expired(&item("y", None), at("9999-12-31T00:00:00Z")));
    }

    #[test]
    fn nothing_expiring_means_no_next_expiry() {
        let now = at("2026-01-01T00:00:00Z");
        let split = split(
            vec![item("a", None), item("b", Some("2025-01-01T00:00:00Z"))],
            now,
        );
        assert_eq!(split.next_expiry, None);
        assert_eq!(split.expired.len(), 1);
        assert_eq!(next_expiry::<Item>(&[], now), None);
    }

    #[test]
    fn delay_until_is_bounded() {
        let now = at("2026-01-01T00:00:00Z");
        let max = Duration::from_secs(60);
        assert_eq!(delay_until(None, now, max), max);
        assert_eq!(
            delay_until(Some(at("2026-01-01T00:00:10Z")), now, max),
            Duration::from_secs(10)
        );
        assert_eq!(delay_until(Some(at("2027-01-01T00:00:00Z")), now, max), max);
        assert_eq!(
            delay_until(Some(at("2025-01-01T00:00:00Z")), now, max),
            Duration::ZERO
        );
    }
}
