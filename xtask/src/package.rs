//! `cargo xtask package`: the Debian package of apifence, then its check. cargo-deb (pinned,
//! installed into the project-local tools prefix, `~/.cache/apifence/tools`) builds it from `[package.metadata.deb]` in
//! `filter-user/Cargo.toml` out of the release binary, the man pages and completions that
//! `filter-user/examples/gen_docs.rs` generates from the CLI's clap definition, the unit and the
//! example config. The check reads the `.deb` back with `dpkg-deb` (every file an operator
//! needs, a man page for every command the binary lists, the config as a conffile, the version
//! of the changelog) and runs lintian, which must report no errors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{DEFAULT_TIMEOUT, output_with_timeout, run_ok};

use crate::build::{self, BUILD_TIMEOUT};
use crate::process::{cargo, run_live, run_live_lines, workspace_root};
use crate::setup;

/// cargo-deb version the package metadata is written for.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Debian package name (`[package.metadata.deb] name`).
const PACKAGE: &str = "apifence";

/// Files every package must ship, besides a man page per command.
const REQUIRED_FILES: [&str; 9] = [
    "/usr/bin/apifence",
    "/usr/lib/systemd/system/apifence.service",
    "/etc/apifence/apifence.toml",
    "/usr/share/man/man1/apifence.1.gz",
    "/usr/share/bash-completion/completions/apifence",
    "/usr/share/zsh/vendor-completions/_apifence",
    "/usr/share/fish/vendor_completions.d/apifence.fish",
    "/usr/share/doc/apifence/copyright",
    "/usr/share/doc/apifence/changelog.Debian.gz",
];

/// The config the operator owns: must be a conffile, so upgrades keep their edits.
const CONFFILE: &str = "/etc/apifence/apifence.toml";

/// Bound on `cargo install cargo-deb` (about 3 minutes on two busy cores).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Bound on lintian (about 10 s).
const LINTIAN_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Builds the package, checks it, and returns the path of the `.deb`.
pub fn run() -> Result<PathBuf> {
    setup::run(&[setup::Task::Package])?;
    let binary = build::release()?;
    let docs = docs_dir();
    run_live(
        cargo()
            .args(["run", "-p", "filter-user", "--example", "gen_docs", "--"])
            .arg(&docs),
        BUILD_TIMEOUT,
    )?;
    let cargo_deb = cargo_deb()?;
    let mut printed = Vec::new();
    run_live_lines(
        Command::new(&cargo_deb)
            .current_dir(workspace_root())
            .args(["--no-build", "-p", "filter-user"]),
        BUILD_TIMEOUT,
        |line| printed.push(line.to_owned()),
    )?;
    let deb = printed
        .iter()
        .rev()
        .map(|l| PathBuf::from(l.trim()))
        .find(|p| p.extension().is_some_and(|e| e == "deb") && p.is_file())
        .context("cargo-deb did not print the path of the .deb it wrote")?;
    check(&deb, &binary)?;
    println!("package: {} (contents and lintian checked)", deb.display());
    Ok(deb)
}

/// `target/apifence-docs`: where gen_docs writes and `[package.metadata.deb] assets` reads.
fn docs_dir() -> PathBuf {
    workspace_root().join("target/apifence-docs")
}

/// `bin/cargo-deb` of the project-local tools prefix at [`CARGO_DEB_VERSION`], installed there
/// when missing or of another version (never into `~/.cargo/bin`).
fn cargo_deb() -> Result<PathBuf> {
    let root = crate::tools_dir::tools_prefix().context("HOME is not set")?;
    let path = root.join("bin/cargo-deb");
    if version_of(&path).is_some_and(|v| v.contains(CARGO_DEB_VERSION)) {
        println!("package: cargo-deb {CARGO_DEB_VERSION} present");
        return Ok(path);
    }
    run_live(
        Command::new("cargo")
            .args([
                "install",
                "cargo-deb",
                "--version",
                CARGO_DEB_VERSION,
                "--locked",
            ])
            .arg("--root")
            .arg(&root),
        INSTALL_TIMEOUT,
    )?;
    match version_of(&path) {
        Some(v) if v.contains(CARGO_DEB_VERSION) => Ok(path),
        other => bail!(
            "{} still not cargo-deb {CARGO_DEB_VERSION} after install: {other:?}",
            path.display()
        ),
    }
}

/// What `PROGRAM --version` prints, if it runs.
fn version_of(program: &Path) -> Option<String> {
    let out = output_with_timeout(Command::new(program).arg("--version"), DEFAULT_TIMEOUT).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Checks `deb` (built from `binary`): name and version, the files, the conffile, the unit's
/// programs, and lintian.
fn check(deb: &Path, binary: &Path) -> Result<()> {
    let dpkg_deb = |args: &[&str]| run_ok(Command::new("dpkg-deb").args(args).arg(deb));
    let package = dpkg_deb(&["--showformat=${Package}", "--show"])?;
    let version = dpkg_deb(&["--showformat=${Version}", "--show"])?;
    if package.trim() != PACKAGE {
        bail!("package name is {:?}, expected {PACKAGE}", package.trim());
    }
    let changelog_path = workspace_root().join("filter-user/debian/changelog");
    let changelog = std::fs::read_to_string(&changelog_path)
        .with_context(|| format!("reading {}", changelog_path.display()))?;
    let changelog_version = changelog_version(&changelog).with_context(|| {
        format!(
            "no version on the first line of {}",
            changelog_path.display()
        )
    })?;
    if changelog_version != version.trim() {
        bail!(
            "package version {} but {} starts with {changelog_version}: add a changelog entry \
             for the new version",
            version.trim(),
            changelog_path.display()
        );
    }

    let contents = package_files(&dpkg_deb(&["--contents"])?);
    let help = run_ok(Command::new(binary).arg("--help"))?;
    let commands = help_commands(&help);
    if commands.len() < 2 {
        bail!("found only {commands:?} under Commands: in `apifence --help`");
    }
    let mut expected: Vec<String> = REQUIRED_FILES.iter().map(|f| (*f).to_owned()).collect();
    expected.extend(
        commands
            .iter()
            .map(|c| format!("/usr/share/man/man1/apifence-{c}.1.gz")),
    );
    let missing: Vec<&String> = expected.iter().filter(|f| !contents.contains(f)).collect();
    if !missing.is_empty() {
        bail!("the package lacks {missing:?}");
    }
    println!(
        "package: {} files, among them the binary, unit, config, completions and {} man pages",
        contents.len(),
        contents.iter().filter(|f| f.ends_with(".1.gz")).count()
    );

    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(deb)
            .arg("conffiles"),
    )?;
    if !conffiles.lines().any(|l| l.trim() == CONFFILE) {
        bail!("{CONFFILE} is not a conffile (conffiles: {conffiles:?})");
    }

    let unit_path = workspace_root().join("filter-user/systemd/apifence.service");
    let unit = std::fs::read_to_string(&unit_path)
        .with_context(|| format!("reading {}", unit_path.display()))?;
    let unshipped: Vec<&str> = unit_programs(&unit)
        .into_iter()
        .filter(|p| p.contains(PACKAGE) && !contents.iter().any(|f| f == p))
        .collect();
    if !unshipped.is_empty() {
        bail!("the unit runs {unshipped:?}, which the package does not ship");
    }

    lintian(deb)
}

/// Runs lintian on `deb`, listing every tag down to info and pedantic; fails on any error.
fn lintian(deb: &Path) -> Result<()> {
    let mut tags = Vec::new();
    let result = run_live_lines(
        Command::new("lintian")
            .args([
                "--display-info",
                "--pedantic",
                "--show-overrides",
                "--fail-on",
                "error",
            ])
            .arg(deb),
        LINTIAN_TIMEOUT,
        |line| tags.push(line.to_owned()),
    );
    let errors = lintian_errors(&tags);
    if !errors.is_empty() {
        bail!("lintian reports errors: {errors:?}");
    }
    result.context("lintian failed")?;
    let warnings = tags.iter().filter(|l| l.starts_with("W: ")).count();
    println!("package: lintian: no errors, {warnings} warning(s)");
    Ok(())
}

/// The paths (`/usr/bin/apifence`) of the regular files in `dpkg-deb --contents` output.
fn package_files(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

/// The command names under `Commands:` in clap's `--help` text, without `help`.
fn help_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The version in a Debian changelog's first line: `0.1.0-1` from `apifence (0.1.0-1) ...`.
fn changelog_version(changelog: &str) -> Option<&str> {
    let first = changelog.lines().next()?;
    let (_, rest) = first.split_once('(')?;
    let (version, _) = rest.split_once(')')?;
    Some(version)
}

/// The programs a unit's `Exec*=` lines run, without systemd's prefixes (`-`, `@`, `+`, `!`).
fn unit_programs(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Exec"))
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim()))
        .filter_map(|v| v.split_whitespace().next())
        .map(|p| p.trim_start_matches(['-', '@', '+', '!']))
        .collect()
}

/// The error tags (`E: ...`) in lintian's output.
fn lintian_errors(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("E: "))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_of_a_listing() {
        let listing = "\
drwxr-xr-x 0/0               0 2026-12-01 00:00 ./usr/bin/
-rwxr-xr-x 0/0         5161376 2026-12-01 00:00 ./usr/bin/apifence
-rw-r--r-- 0/0            3720 2026-12-01 00:00 ./etc/apifence/apifence.toml
lrwxrwxrwx 0/0               0 2026-12-01 00:00 ./usr/bin/af -> apifence
";
        assert_eq!(
            package_files(listing),
            ["/usr/bin/apifence", "/etc/apifence/apifence.toml"]
        );
    }

    #[test]
    fn commands_of_a_help_text() {
        let help = "\
apifence: only authorized source ranges reach the Kubernetes API server

Usage: apifence [OPTIONS] <COMMAND>

Commands:
  attach        Attach the filter to interfaces
  check-config  Validate a daemon config file
  help          Print this message or the help of the given subcommand(s)

Options:
      --bpffs <BPFFS>  bpffs directory
";
        assert_eq!(help_commands(help), ["attach", "check-config"]);
        assert!(help_commands("Usage: x\n\nOptions:\n  -h\n").is_empty());
    }

    #[test]
    fn version_of_a_changelog() {
        assert_eq!(
            changelog_version("apifence (0.1.0-1) unstable; urgency=medium\n\n  * x\n"),
            Some("0.1.0-1")
        );
        assert_eq!(changelog_version("apifence 0.1.0-1 unstable\n"), None);
        assert_eq!(changelog_version(""), None);
    }

    #[test]
    fn programs_of_a_unit() {
        let unit = "\
[Service]
ExecStartPre=-/usr/bin/apifence check-config /etc/apifence/apifence.toml
ExecStart=/usr/bin/apifence daemon
ExecReload=/bin/kill -HUP $MAINPID
# ExecStop=/nowhere
Environment=APIFENCE_LOG=info
";
        assert_eq!(
            unit_programs(unit),
            ["/usr/bin/apifence", "/usr/bin/apifence", "/bin/kill"]
        );
    }

    #[test]
    fn lintian_errors_only() {
        let lines: Vec<String> = [
            "running with root privileges is not recommended!",
            "E: apifence: description-starts-with-package-name",
            "W: apifence: initial-upload-closes-no-bugs",
            "I: apifence: no-md5sums-control-file",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            lintian_errors(&lines),
            ["E: apifence: description-starts-with-package-name"]
        );
    }
}
