//! `apifence fleet set|add|remove`: a new document for the whole cluster, written with
//! compare-and-swap on the revision it was based on (`add` and `remove` read again and retry
//! when another writer was first; `set` fails), then, with `--wait`, until every live host
//! reports it enforced.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ipnet::IpNet;
use time::OffsetDateTime;

use super::list_input::ListInput;
use crate::{
    daemon::desired::{Authorized, RangeEntry, parse_entries},
    features::fleet::{
        document::{CHUNK_SIZE, Document},
        status::HostState,
        store::{Store, StoreError},
    },
    policy::{Mode, language::parse_prefixes, timestamp::rfc3339},
};

/// Times `add` and `remove` read again after another writer was first.
const RETRIES: usize = 5;
/// How often `--wait` looks at the hosts' reports.
const POLL: Duration = Duration::from_millis(20);

/// Which change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Replace.
    Set,
    /// Add entries.
    Add,
    /// Remove entries.
    Remove,
}

/// Flags of `fleet set|add|remove`.
#[derive(Debug, Args)]
pub struct FleetChangeArgs {
    /// The list, its note and expiry.
    #[command(flatten)]
    input: ListInput,
    /// Sources never blocked, for every host (set only; default: kept).
    #[arg(long, value_name = "LIST")]
    always_allow: Option<String>,
    /// enforce or monitor, for every host (set only; default: kept).
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// Print what would change and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Return when every live host enforces the new revision (default bound 30s, or
    /// --wait=DURATION such as 10s or 500ms); exit 1 if one rejected it or the time ran out.
    #[arg(long, value_name = "DURATION", num_args = 0..=1, require_equals = true, default_missing_value = "30s")]
    wait: Option<String>,
}

/// Parses `10s`, `500ms`, `2m` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .with_context(|| {
            format!("--wait={text} is not a duration; write it like --wait=30s or --wait=500ms")
        })?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => bail!("--wait={text} has an unknown unit {unit:?}; use ms, s or m, as in --wait=30s"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// The document after the change, from the current one (`None`: none written yet).
fn next(
    verb: Verb,
    args: &FleetChangeArgs,
    text: &str,
    current: Option<&Document>,
) -> Result<Document> {
    if verb != Verb::Set && (args.always_allow.is_some() || args.mode.is_some()) {
        bail!("--always-allow and --mode go with fleet set, not add or remove");
    }
    let expires = args.input.expiry("fleet", verb == Verb::Remove)?;
    let now = OffsetDateTime::now_utc();
    if let Some(at) = expires
        && at <= now
    {
        bail!(
            "--expires {} is not in the future (it is {} now); give a later time, such as {}",
            rfc3339(at),
            rfc3339(now),
            rfc3339(now + time::Duration::hours(8))
        );
    }
    let with_meta = |entry| RangeEntry {
        entry,
        note: args.input.note.clone(),
        expires,
    };
    let before = current.map(|d| d.authorized.clone());
    let authorized = match verb {
        Verb::Set => match Authorized::parse(text)? {
            Authorized::Entries(entries) => {
                Authorized::Entries(entries.into_iter().map(|e| with_meta(e.entry)).collect())
            }
            Authorized::Disabled => Authorized::Disabled,
        },
        Verb::Add => {
            let entries: Vec<RangeEntry> =
                parse_entries(text)?.into_iter().map(with_meta).collect();
            before.unwrap_or(Authorized::Disabled).with_added(&entries)
        }
        Verb::Remove => {
            let Some(before) = before else {
                bail!("there is no document in etcd yet; write one with apifence fleet set LIST");
            };
            before.without(&parse_entries(text)?).map_err(|e| {
                anyhow::anyhow!(
                    e.to_string()
                        .replace("apifence ranges show", "apifence fleet show")
                )
            })?
        }
    };
    let always_allow: Vec<IpNet> = match &args.always_allow {
        Some(list) => parse_prefixes(list).context("--always-allow")?,
        None => current.map(|d| d.always_allow.clone()).unwrap_or_default(),
    };
    let mode = match args.mode.as_deref().map(str::trim) {
        Some("enforce") => Mode::Enforce,
        Some("monitor") => Mode::Monitor,
        Some(other) => {
            bail!("--mode {other:?} is not enforce or monitor; for example: --mode enforce")
        }
        None => current.map_or(Mode::Enforce, |d| d.mode),
    };
    Ok(Document::new(authorized, always_allow, mode))
}

/// What a change would do, one line each.
fn describe(before: Option<&Document>, after: &Document) -> Vec<String> {
    let mut lines = Vec::new();
    let key = |e: &RangeEntry| e.text().to_ascii_lowercase();
    let old: &[RangeEntry] = before.map_or(&[], |d| d.authorized.entries());
    let old_keys: HashSet<String> = old.iter().map(key).collect();
    let new_keys: HashSet<String> = after.authorized.entries().iter().map(key).collect();
    for entry in after.authorized.entries() {
        if !old_keys.contains(&key(entry)) {
            lines.push(format!("+ {}", entry.text()));
        }
    }
    for entry in old {
        if !new_keys.contains(&key(entry)) {
            lines.push(format!("- {}", entry.text()));
        }
    }
    let kind = |d: Option<&Document>| d.map_or("none", |d| d.authorized.kind());
    if kind(before) != after.authorized.kind() {
        lines.push(format!(
            "filtering: {} -> {}",
            kind(before),
            after.authorized.kind()
        ));
    }
    if before.map(|d| d.mode) != Some(after.mode) {
        lines.push(format!("mode: {}", after.mode.as_str()));
    }
    if before.map(|d| &d.always_allow) != Some(&after.always_allow) {
        let list: Vec<String> = after.always_allow.iter().map(ToString::to_string).collect();
        lines.push(format!("always_allow: {}", list.join(", ")));
    }
    lines
}

/// The warnings `ranges` gives for a list that opens or closes everything, for every host.
fn warnings(after: &Document) -> Vec<String> {
    match after.authorized.kind() {
        "disabled" => vec![
            "this disables filtering on every host of the cluster: every source reaches the \
             protected ports"
                .into(),
        ],
        "only_always_allowed" if after.always_allow.is_empty() => vec![
            "only always_allow may connect, and always_allow is empty: every host will drop \
             every source on the protected ports"
                .into(),
        ],
        _ => Vec::new(),
    }
}

/// Runs `fleet set|add|remove`.
pub async fn run(store: &Store, verb: Verb, args: FleetChangeArgs) -> Result<()> {
    let text = args.input.text()?;
    let wait = args.wait.as_deref().map(parse_duration).transpose()?;
    let mut attempt = 0;
    let (revision, document) = loop {
        attempt += 1;
        let (current, expected) = match store.current().await {
            Ok((current, _)) => {
                let revision = current.as_ref().map_or(0, |c| c.revision);
                (current.map(|c| c.document), revision)
            }
            // An unusable document is replaced by a whole new one, never added to.
            Err(StoreError::Document(e)) if verb == Verb::Set => {
                let revision = store.current_revision().await?;
                crate::errln!(
                    "warning: the current document (revision {revision}) is unusable ({e}); \
                     replacing it: always_allow and mode come from --always-allow and --mode \
                     (default: none, enforce)"
                );
                (None, revision)
            }
            Err(StoreError::Document(e)) => bail!(
                "the current document is unusable ({e}); write the whole list with apifence \
                 fleet set"
            ),
            Err(e) => return Err(e.into()),
        };
        let before = current.as_ref();
        let document = next(verb, &args, &text, before)?;
        for warning in warnings(&document) {
            crate::errln!("warning: {warning}");
        }
        if args.dry_run {
            crate::outln!("dry run: nothing was written; the change would do this:");
            let lines = describe(before, &document);
            if lines.is_empty() {
                crate::outln!("  nothing");
            }
            for line in lines {
                crate::outln!("  {line}");
            }
            return Ok(());
        }
        match store.write(&document, expected).await {
            Ok(revision) => break (revision, document),
            Err(StoreError::Conflict { .. }) if verb != Verb::Set && attempt < RETRIES => continue,
            Err(e) => return Err(e.into()),
        }
    };
    super::output::mark_applied();
    let encoded = document.encode(CHUNK_SIZE);
    let entries = document.authorized.entries().len();
    crate::outln!(
        "revision {revision} written: {entries} entries, {} ({} bytes in {} chunks)",
        encoded.pointer.digest,
        encoded.pointer.size,
        encoded.pointer.chunks.len()
    );
    if let Some(bound) = wait {
        wait_for(store, revision, bound).await?;
    }
    Ok(())
}

/// Waits until every live host enforces `revision`; prints each host's time.
async fn wait_for(store: &Store, revision: i64, bound: Duration) -> Result<()> {
    let start = Instant::now();
    let mut reported = std::collections::BTreeMap::new();
    loop {
        let fleet = store.view().await?;
        let (done, failed) = fleet.progress(revision);
        for host in &done {
            if !reported.contains_key(&host.host) {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                crate::outln!(
                    "{}: enforces revision {revision} after {ms:.0} ms",
                    host.host
                );
                reported.insert(host.host.clone(), ms);
            }
        }
        if let Some(host) = failed.first() {
            bail!(
                "host {} did not apply revision {revision}: {}",
                host.host,
                host.error.as_deref().unwrap_or("no reason given")
            );
        }
        let live = fleet.live();
        if done.len() == live {
            if live == 0 {
                crate::errln!(
                    "warning: no live host reports under {}; nobody to wait for",
                    store.config().hosts_prefix()
                );
            } else {
                crate::outln!("all {live} live hosts enforce revision {revision}");
            }
            return Ok(());
        }
        if start.elapsed() >= bound {
            let waiting: Vec<&str> = fleet
                .hosts
                .iter()
                .filter(|h| h.state != HostState::Gone && !done.iter().any(|d| d.host == h.host))
                .map(|h| h.host.as_str())
                .collect();
            bail!(
                "{} of {live} live hosts enforce revision {revision} after {:.1}s; still waiting \
                 for {} (apifence fleet status shows why)",
                done.len(),
                bound.as_secs_f64(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &str) -> FleetChangeArgs {
        FleetChangeArgs {
            input: ListInput {
                list: Some(list.into()),
                file: None,
                note: None,
                expires: None,
            },
            always_allow: None,
            mode: None,
            dry_run: false,
            wait: None,
        }
    }

    fn texts(document: &Document) -> Vec<String> {
        document
            .authorized
            .entries()
            .iter()
            .map(RangeEntry::text)
            .collect()
    }

    #[test]
    fn set_add_remove_keep_what_they_should() {
        let mut set = args("10.0.0.0/8, 2001:db8::/32");
        set.always_allow = Some("198.51.100.7".into());
        set.mode = Some("monitor".into());
        set.input.note = Some("vpn".into());
        let first = next(Verb::Set, &set, "10.0.0.0/8, 2001:db8::/32", None).unwrap();
        assert_eq!(texts(&first), ["10.0.0.0/8", "2001:db8::/32"]);
        assert_eq!(first.mode, Mode::Monitor);
        assert_eq!(first.always_allow.len(), 1);
        assert_eq!(first.authorized.entries()[0].note.as_deref(), Some("vpn"));

        let added = next(Verb::Add, &args("10.0.0.1"), "10.0.0.1", Some(&first)).unwrap();
        assert_eq!(
            texts(&added),
            ["10.0.0.0/8", "2001:db8::/32", "10.0.0.1/32"]
        );
        assert_eq!(added.mode, Mode::Monitor, "add keeps the mode");
        assert_eq!(
            added.always_allow, first.always_allow,
            "add keeps always_allow"
        );
        assert_eq!(
            describe(Some(&first), &added),
            ["+ 10.0.0.1/32"],
            "the dry run names what changes"
        );

        let removed = next(
            Verb::Remove,
            &args("10.0.0.0/8"),
            "10.0.0.0/8",
            Some(&added),
        )
        .unwrap();
        assert_eq!(texts(&removed), ["2001:db8::/32", "10.0.0.1/32"]);

        let reset = next(Verb::Set, &args("10.0.0.0/8"), "10.0.0.0/8", Some(&removed)).unwrap();
        assert_eq!(
            reset.mode,
            Mode::Monitor,
            "set keeps the mode unless --mode"
        );
    }

    #[test]
    fn bad_input_gets_the_ranges_error_or_says_which_flag() {
        let error = next(Verb::Set, &args("10.0.0.1/8"), "10.0.0.1/8", None).unwrap_err();
        assert!(
            error.to_string().contains("did you mean 10.0.0.0/8?"),
            "{error}"
        );
        let missing = next(Verb::Remove, &args("10.0.0.0/8"), "10.0.0.0/8", None).unwrap_err();
        assert!(
            missing.to_string().contains("apifence fleet set"),
            "{missing}"
        );
        let base = next(Verb::Set, &args("10.0.0.0/8"), "10.0.0.0/8", None).unwrap();
        let absent = next(
            Verb::Remove,
            &args("10.1.0.0/16"),
            "10.1.0.0/16",
            Some(&base),
        )
        .unwrap_err()
        .to_string();
        assert!(absent.contains("10.1.0.0/16"), "{absent}");
        let mut mode = args("10.0.0.1");
        mode.mode = Some("monitor".into());
        let error = next(Verb::Add, &mode, "10.0.0.1", Some(&base)).unwrap_err();
        assert!(error.to_string().contains("go with fleet set"), "{error}");
        let mut bad_mode = args("10.0.0.0/8");
        bad_mode.mode = Some("audit".into());
        let error = next(Verb::Set, &bad_mode, "10.0.0.0/8", None).unwrap_err();
        assert!(error.to_string().contains("--mode enforce"), "{error}");
        let mut past = args("10.0.0.0/8");
        past.input.expires = Some("2000-01-01T00:00:00Z".into());
        let error = next(Verb::Set, &past, "10.0.0.0/8", None).unwrap_err();
        assert!(
            error.to_string().contains("is not in the future"),
            "{error}"
        );
    }

    #[test]
    fn a_list_that_opens_or_closes_everything_is_warned_about() {
        let disabled = next(Verb::Set, &args(""), "", None).unwrap();
        assert!(warnings(&disabled)[0].contains("disables filtering on every host"));
        let closed = next(Verb::Set, &args("0.0.0.0/32"), "0.0.0.0/32", None).unwrap();
        assert!(warnings(&closed)[0].contains("drop every source"));
        let fine = next(Verb::Set, &args("10.0.0.0/8"), "10.0.0.0/8", None).unwrap();
        assert!(warnings(&fine).is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .to_string()
                .contains("--wait=30s")
        );
        assert!(
            parse_duration("5h")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
    }
}
