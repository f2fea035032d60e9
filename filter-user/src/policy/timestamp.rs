//! Times as apifence shows them everywhere (tables, logs, JSON): RFC 3339 in UTC.

use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// RFC 3339 text of `time` (`2026-12-01T00:00:00Z`).
pub fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_else(|_| time.to_string())
}
