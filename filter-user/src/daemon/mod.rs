//! `apifence daemon`: the one owner of the desired state, with live reload and restarts that
//! never leave a gap.
//!
//! One job per module: [`config`] (the TOML file, validated), [`desired`] (the desired state,
//! resolving names, diffs), [`state_file`] (durable state), [`protocol`] (the socket protocol
//! and the CLI's client), [`server`] (the socket), [`watch`] (reload on file change),
//! [`engine`] (the owner: every change, reload and tick), [`hooks`] (where service tags,
//! expiry, metrics, the deny log and the lockout guard plug in), [`telemetry`] (counters other
//! tasks read), [`check`] (`apifence check-config`), [`secure_dir`] (directories and files the
//! daemon trusts), [`bounded_read`] (operator input read with a size bound), [`link_events`]
//! (interfaces created or deleted, so stale attachments are repaired at once), [`bypass_log`]
//! (logs the interfaces traffic could arrive on unfiltered, as `apifence check` reports them).
//!
//! [`run`] is the daemon: it returns when `shutdown` resolves (SIGTERM/SIGINT in the binary,
//! anything in tests), leaving the filter attached and enforcing (fail-static). Only
//! `apifence detach` removes the filter.

pub mod bounded_read;
pub mod bypass_log;
pub mod check;
pub mod config;
pub mod denied;
pub mod desired;
pub mod engine;
pub mod external;
pub mod hooks;
pub mod link_events;
pub mod protocol;
pub mod secure_dir;
pub mod server;
pub mod state_file;
pub mod telemetry;
pub mod watch;

use std::{
    fmt,
    fs::File,
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch as channel};
use tracing::{error, info, warn};

pub use desired::{Desired, Resolved, TagSource, resolve};
pub use hooks::{Features, NoFeatures};

use crate::{
    daemon::{
        config::{ConfigFileError, LoadedConfig},
        desired::ResolveError,
        engine::{Command, Engine, EngineSetup},
        hooks::TaskContext,
        secure_dir::SecureDirError,
        state_file::StateError,
        telemetry::Telemetry,
    },
    kernel::bpffs::{self, BpffsError},
    kernel::operations::FilterError,
    kernel::paths::{PinLayout, StateLayout},
};

/// How often the engine ticks.
pub const TICK: Duration = Duration::from_secs(1);
/// How long shutdown waits for feature tasks before aborting them.
const TASK_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for the engine to finish the command in hand (an apply of a large
/// list takes well under a second).
const ENGINE_GRACE: Duration = Duration::from_secs(20);

/// How to run the daemon.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The config file.
    pub config: PathBuf,
    /// Swap the embedded program in on the existing links even when the pinned one is the same
    /// version (exercises the upgrade path).
    pub replace_program: bool,
    /// Reload when the config (or service tags) file changes; without it only SIGHUP and
    /// `apifence reload` reload.
    pub watch: bool,
}

/// Why the daemon could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// The state file.
    #[error(transparent)]
    State(#[from] StateError),
    /// Names in the list can't be resolved.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The service tags file.
    #[error("service tags: {0}")]
    Tags(String),
    /// The filter.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// Another daemon owns this state or socket.
    #[error(
        "another apifence daemon is running ({what}{}); stop it first (systemctl stop apifence), \
         or give this one its own state_dir and socket",
        pid.map(|p| format!(", pid {p}")).unwrap_or_default()
    )]
    AlreadyRunning {
        /// The state dir or socket in use.
        what: String,
        /// Its pid, when known.
        pid: Option<u32>,
    },
    /// The socket.
    #[error(
        "{action} socket {}: {source}; socket in the config must be a path in a directory root \
         can write",
        path.display()
    )]
    Socket {
        /// What was being done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something that is not a socket is where the socket goes.
    #[error(
        "socket {0} exists and is not a socket; set socket in the config to another path, or \
         move that file away"
    )]
    NotASocket(PathBuf),
    /// The state lock.
    #[error(
        "{action} {}: {source}; state_dir in the config must name a directory root can write",
        path.display()
    )]
    Lock {
        /// What was being done.
        action: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The engine thread died.
    #[error("the engine thread stopped unexpectedly: {0}")]
    Engine(String),
    /// A directory the daemon would have to trust is not safe.
    #[error(transparent)]
    Insecure(#[from] SecureDirError),
    /// The bpffs directory can't be used.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
}

/// Displays an error with its whole chain of sources (`outer: inner: innermost`), for logs and
/// replies.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(inner) = source {
            let inner_text = inner.to_string();
            // `#[error(transparent)]` wrappers repeat their source's message.
            if !self.0.to_string().ends_with(&inner_text) {
                text.push_str(": ");
                text.push_str(&inner_text);
            }
            source = inner.source();
        }
        // Control characters from echoed input never reach a log line or the CLI as they are.
        f.write_str(&crate::policy::echo::escape_keeping_lines(&text))
    }
}

/// Logs to stderr with structured fields; `APIFENCE_LOG` (or `RUST_LOG`) sets the filter,
/// default `info`.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("APIFENCE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called (inside the runtime), so a signal that arrives while the daemon starts is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let (Some(mut term), Some(mut int)) = (term, int) else {
            // Without handlers the default actions still stop the process.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => info!(signal = "SIGINT", "stopping"),
        }
    }
}

/// Tells systemd (`Type=notify`) about the daemon's state; does nothing outside systemd.
fn sd_notify(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    if let (Ok(socket), Ok(addr)) = (UnixDatagram::unbound(), addr) {
        let _ = socket.send_to_addr(state.as_bytes(), &addr);
    }
}

/// The daemon's exclusive lock on its state directory, held for its lifetime (released by the
/// kernel even after `kill -9`).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock, or fails naming the daemon that holds it.
    pub fn acquire(layout: &StateLayout) -> Result<Self, DaemonError> {
        let path = layout.lock_file();
        let lock_error = |action: &'static str| {
            let path = path.clone();
            move |source| DaemonError::Lock {
                action,
                path,
                source,
            }
        };
        state_file::ensure_dir(layout)?;
        let mut file = secure_dir::open_lock(&path).map_err(lock_error("opening"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                return Err(DaemonError::AlreadyRunning {
                    what: format!("state_dir {}", layout.dir().display()),
                    pid,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(lock_error("locking")(source)),
        }
        file.set_len(0).map_err(lock_error("truncating"))?;
        writeln!(file, "{}", std::process::id()).map_err(lock_error("writing"))?;
        Ok(Self { _file: file })
    }
}

/// Runs the daemon until `shutdown` resolves. Fails before touching the filter when the config
/// is invalid, another daemon owns the state or socket, or the desired state can't be
/// resolved. On return the filter stays attached and enforcing.
pub async fn run(
    mut options: DaemonOptions,
    features: Box<dyn Features>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    // Reloads re-read this path: make it independent of the working directory.
    if let Ok(absolute) = std::path::absolute(&options.config) {
        options.config = absolute;
    }
    // Installed first: SIGHUP's default action would end the process.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let loaded = config::load(&options.config)?;
    for warning in loaded.config.warnings() {
        warn!(warning = %warning, "config");
    }
    let config = loaded.config.clone();
    // Refused before anything is created, mounted or locked.
    bpffs::check_mount_target(&config.bpffs)?;
    let _lock = StateLock::acquire(&StateLayout::new(&config.state_dir))?;
    let listener = server::bind(&config.socket)?;
    let result = serve(options, loaded, features, listener, hangup, shutdown).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&config.socket);
    }
    result
}

async fn serve(
    options: DaemonOptions,
    loaded: LoadedConfig,
    features: Box<dyn Features>,
    listener: std::os::unix::net::UnixListener,
    hangup: Option<tokio::signal::unix::Signal>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let config = loaded.config.clone();
    let config_hash = watch::content_hash(loaded.text.as_bytes());
    let telemetry = Arc::new(Telemetry::default());
    let (stop_tx, stop_rx) = channel::channel(false);
    let (watched_tx, watched_rx) = channel::channel(Vec::new());
    let (commands_tx, commands_rx) = mpsc::channel::<Command>(64);
    let (external_sink, external_queue) = external::ExternalSink::new();
    let context = TaskContext {
        config: config.clone(),
        layout: PinLayout::new(&config.bpffs),
        telemetry: telemetry.clone(),
        shutdown: stop_rx.clone(),
        external: external_sink,
        applied_external: None,
    };
    let setup = EngineSetup {
        config_path: options.config.clone(),
        loaded,
        replace_program: options.replace_program,
        features,
        telemetry,
        watched: watched_tx,
    };
    let (started_tx, started_rx) = oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    let engine = std::thread::Builder::new()
        .name("apifence-engine".into())
        .spawn(move || engine_thread(setup, context, runtime, commands_rx, started_tx))
        .map_err(|e| DaemonError::Engine(e.to_string()))?;
    let tasks = match started_rx.await {
        Ok(Ok(tasks)) => tasks,
        Ok(Err(e)) => {
            let _ = engine.join();
            return Err(e);
        }
        Err(_) => {
            let _ = engine.join();
            return Err(DaemonError::Engine("it exited while starting".into()));
        }
    };

    let listener =
        tokio::net::UnixListener::from_std(listener).map_err(|source| DaemonError::Socket {
            action: "listening on",
            path: config.socket.clone(),
            source,
        })?;
    let server = tokio::spawn(server::serve(
        listener,
        config.socket.clone(),
        commands_tx.clone(),
        stop_rx.clone(),
    ));
    let watcher = options.watch.then(|| {
        tokio::spawn(watch::watch_files(
            options.config.clone(),
            config_hash,
            watched_rx,
            commands_tx.clone(),
            stop_rx.clone(),
        ))
    });
    let links = tokio::spawn(link_events::watch_links(
        commands_tx.clone(),
        stop_rx.clone(),
    ));
    let external = tokio::spawn(forward_external(
        external_queue,
        commands_tx.clone(),
        stop_rx.clone(),
    ));
    let background = tokio::spawn(signals_and_ticks(
        hangup,
        commands_tx.clone(),
        stop_rx.clone(),
    ));
    // Resolves if the engine thread ends on its own (a panic): a daemon without its engine
    // would answer nothing and reload nothing, so it exits and the service manager restarts
    // it (the filter keeps enforcing meanwhile). Dropped before the engine is joined.
    let engine_alive = commands_tx;

    info!(
        socket = %config.socket.display(),
        config = %options.config.display(),
        pid = std::process::id(),
        "ready"
    );
    sd_notify("READY=1");
    let engine_died = tokio::select! {
        () = shutdown => false,
        () = engine_alive.closed() => true,
    };
    drop(engine_alive);
    if engine_died {
        error!("the engine thread stopped unexpectedly; exiting so that the daemon is restarted");
    }
    sd_notify("STOPPING=1");
    let _ = stop_tx.send(true);
    let _ = server.await;
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let _ = background.await;
    let _ = links.await;
    let _ = external.await;
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout(TASK_GRACE, task).await.is_err() {
            abort.abort();
        }
    }
    // Once every sender is gone the engine finishes the command in hand and returns. A
    // connection stuck writing to a client that doesn't read would keep its sender: bounded.
    let joined = tokio::time::timeout(
        ENGINE_GRACE,
        tokio::task::spawn_blocking(move || engine.join()),
    )
    .await;
    match joined {
        Ok(Ok(Ok(()))) => {}
        Ok(_) => error!("the engine thread panicked"),
        Err(_) => warn!(
            "the engine did not finish within {}s; exiting anyway",
            ENGINE_GRACE.as_secs()
        ),
    }
    info!(
        bpffs = %config.bpffs.display(),
        "exiting; the filter stays attached and enforcing (`apifence detach --all` removes it)"
    );
    if engine_died {
        return Err(DaemonError::Engine(
            "it panicked (the log above says where); the filter stays attached and enforcing; \
             start the daemon again (systemctl restart apifence)"
                .into(),
        ));
    }
    Ok(())
}

type Started = Result<Vec<tokio::task::JoinHandle<()>>, DaemonError>;

fn engine_thread(
    setup: EngineSetup,
    context: TaskContext,
    runtime: tokio::runtime::Handle,
    mut commands: mpsc::Receiver<Command>,
    started: oneshot::Sender<Started>,
) {
    let mut engine = match Engine::start(setup) {
        Ok(engine) => engine,
        Err(e) => {
            // `run` returns the error; the binary prints it.
            let _ = started.send(Err(e));
            return;
        }
    };
    let tasks = {
        let _entered = runtime.enter();
        let context = TaskContext {
            config: engine.current_config().clone(),
            applied_external: engine.applied_external(),
            ..context
        };
        engine.spawn_tasks(&context)
    };
    if started.send(Ok(tasks)).is_err() {
        return;
    }
    engine.settle();
    while let Some(command) = commands.blocking_recv() {
        engine.handle(command);
        engine.settle();
    }
}

/// SIGHUP → reload; a tick every [`TICK`]; until `stop`.
/// Hands the external source's requests to the engine until the daemon stops.
async fn forward_external(
    mut queue: mpsc::Receiver<external::ExternalRequest>,
    commands: mpsc::Sender<Command>,
    mut stop: channel::Receiver<bool>,
) {
    loop {
        let request = tokio::select! {
            _ = stop.changed() => return,
            request = queue.recv() => request,
        };
        let Some(request) = request else { return };
        if commands.send(Command::External(request)).await.is_err() {
            return;
        }
    }
}

async fn signals_and_ticks(
    mut hangup: Option<tokio::signal::unix::Signal>,
    commands: mpsc::Sender<Command>,
    mut stop: channel::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => Command::Tick,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => Command::Reload { reason: "SIGHUP", reply: None },
        };
        // A full queue means the engine is busy; a tick can be skipped.
        let sent = match command {
            Command::Tick => commands.try_send(Command::Tick).or_else(|e| match e {
                mpsc::error::TrySendError::Full(_) => Ok(()),
                mpsc::error::TrySendError::Closed(c) => Err(c),
            }),
            other => commands.send(other).await.map_err(|e| e.0),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Whether `path` looks like a daemon socket that answers (for the CLI's messages).
pub fn answers(path: &Path) -> bool {
    protocol::call(path, &protocol::Request::Status, Duration::from_secs(5)).is_ok()
}
