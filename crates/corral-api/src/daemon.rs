//! The daemon process: one per state dir.
//!
//! - **Exactly one.** An exclusive `flock` on the state dir itself, taken
//!   before anything else is touched: unlike a lock file, a directory cannot be
//!   deleted from under a running daemon while it holds files, so a second
//!   daemon cannot be let in by removing something. The holder's pid is written
//!   to `corral.lock` for people and tools. The socket is only ever bound by the
//!   lock holder, so a socket file the holder finds is stale and is replaced.
//! - **Private.** The state dir must be this user's and closed to group and
//!   others (`corral` refuses it otherwise); files in it are created without
//!   following symlinks.
//! - **Logs** go to `daemon.log` (see [`crate::logging`]).
//! - **Signals** never end it by their default action: TERM, INT and QUIT stop
//!   it gracefully, HUP reopens its log, the others are logged or ignored
//!   (see [`Signals`]).
//! - **A service manager** that waits for word (`$NOTIFY_SOCKET`, a systemd
//!   `Type=notify` unit) is told `READY=1` once the daemon serves requests,
//!   and `STOPPING=1` when it begins to stop (see [`crate::notify`]).
//! - When the daemon stops it leaves its agents running: they are not tied to
//!   it (own sessions, output to files), and the next daemon re-adopts them.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_core::{Config, Supervisor};
use tokio::net::UnixListener;

use crate::serve::{self, Limits};

/// File names inside the state dir.
pub const SOCKET_NAME: &str = "corral.sock";
/// Holds the daemon's pid (the lock itself is on the state dir).
pub const LOCK_NAME: &str = "corral.lock";
/// The daemon's log.
pub const LOG_NAME: &str = "daemon.log";

/// How to run a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The state dir it owns.
    pub state_dir: PathBuf,
    /// Metrics sampling interval.
    pub sample_interval: Duration,
    /// Started in the background: once serving, point stdio at /dev/null so a
    /// parent that stops reading cannot break the daemon's writes.
    pub detach: bool,
    /// Contain agents in cgroup v2 leaves where the machine allows it.
    pub cgroups: bool,
    /// Also serve on this TCP address; every request must carry the bearer token.
    pub listen: Option<std::net::SocketAddr>,
    /// File holding that token (required with `listen`).
    pub token_file: Option<PathBuf>,
    /// Refuse (instead of warning about) a token file others can read.
    pub strict: bool,
    /// Open connections per listener (default: from the open-file limit).
    pub max_connections: Option<usize>,
    /// How long request headers may take (default [`serve::HEADER_TIMEOUT`]).
    pub header_timeout: Option<Duration>,
    /// Where agents whose request names no placement run (`None`: this host).
    pub placement: Option<corral_core::model::Placement>,
    /// The agent socket, for agents that run as another user.
    pub agent_socket: crate::agent_socket::AgentSocket,
}

/// Shortest bearer token accepted, bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a daemon could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another daemon holds the state dir.
    #[error("a corral daemon (pid {pid}) already serves {}", state_dir.display())]
    AlreadyRunning {
        /// The state dir.
        state_dir: PathBuf,
        /// The holder's pid as written in the lock file (0 if unreadable).
        pid: i32,
    },
    /// A file or socket operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What the daemon was doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS's reason.
        #[source]
        source: std::io::Error,
    },
    /// The options do not make sense together, or the state dir is unsafe.
    #[error("{0}")]
    Config(String),
    /// The supervisor failed to open.
    #[error(transparent)]
    Core(#[from] corral_core::Error),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + use<> {
    let path = path.to_owned();
    move |source| DaemonError::Io {
        action,
        path,
        source,
    }
}

/// Reads and checks the TCP bearer token; with it, a warning to log when the
/// file is open to others (refused outright with `strict`).
fn read_token(opts: &DaemonOptions) -> Result<Option<(String, Option<String>)>, DaemonError> {
    let Some(addr) = opts.listen else {
        return Ok(None);
    };
    let Some(file) = &opts.token_file else {
        return Err(DaemonError::Config(format!(
            "--listen {addr} needs --token-file: every TCP client must present a bearer token"
        )));
    };
    let mode = std::fs::metadata(file)
        .map_err(io_err("read token file", file))?
        .permissions()
        .mode();
    let mut warning = None;
    if mode & 0o077 != 0 {
        let why = format!(
            "the token file {} is readable by group or others (mode {:o}); anyone who can read it can control every agent (chmod 600)",
            file.display(),
            mode & 0o777
        );
        if opts.strict {
            return Err(DaemonError::Config(format!("--strict: {why}")));
        }
        warning = Some(why);
    }
    let token = std::fs::read_to_string(file).map_err(io_err("read token file", file))?;
    let token = token.trim().to_owned();
    if token.len() < MIN_TOKEN_LEN {
        return Err(DaemonError::Config(format!(
            "the token in {} is {} bytes; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
            file.display(),
            token.len()
        )));
    }
    Ok(Some((token, warning)))
}

/// Holds the state dir's lock for as long as it lives.
pub struct StateLock {
    _dir: File,
}

/// Makes sure the state dir is private, takes its exclusive lock and writes our
/// pid to `corral.lock`.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, DaemonError> {
    corral_core::process::ensure_private_dir(state_dir).map_err(|e| {
        DaemonError::Config(format!(
            "refusing the state dir {}: {e}",
            state_dir.display()
        ))
    })?;
    let dir = File::open(state_dir).map_err(io_err("open state dir", state_dir))?;
    match rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = corral_core::process::open_nofollow(&state_dir.join(LOCK_NAME))
                .ok()
                .and_then(|mut f| {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut f, &mut s).ok()?;
                    s.trim().parse().ok()
                })
                .unwrap_or(0);
            return Err(DaemonError::AlreadyRunning {
                state_dir: state_dir.to_owned(),
                pid,
            });
        }
        Err(e) => return Err(io_err("lock", state_dir)(e.into())),
    }
    let path = state_dir.join(LOCK_NAME);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err("write lock file", &path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err("write lock file", &path))?;
    Ok(StateLock { _dir: dir })
}

/// Binds the daemon socket (mode 0600), replacing a stale one. Call only while
/// holding the state lock.
pub fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "replaced a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale socket", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod socket", path))?;
    Ok(listener)
}

/// Runs a daemon until SIGTERM, SIGINT or SIGQUIT (see [`Signals`]). Takes
/// the lock first; fails with [`DaemonError::AlreadyRunning`] when another
/// daemon holds the state dir.
pub async fn run(mut opts: DaemonOptions) -> Result<(), DaemonError> {
    // Listen for signals first: one that arrives while the daemon starts is
    // handled once it has started, instead of killing it half-way.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let signals = Signals::listen()?;
    // Refuse bad options before touching anything.
    let token = read_token(&opts)?;
    let lock = lock_state_dir(&opts.state_dir)?;
    // From here on the state dir is its real path: agent dirs below it are
    // reached without following symlinks, so a `$HOME` behind one (`/home` →
    // `/var/home`) must not make every removal fail.
    opts.state_dir = std::fs::canonicalize(&opts.state_dir)
        .map_err(io_err("resolve state dir", &opts.state_dir))?;
    let log_path = opts.state_dir.join(LOG_NAME);
    let log = crate::logging::install(&log_path).map_err(io_err("open daemon log", &log_path))?;
    let on_signal = stop_tx.clone();
    let reopener = log.reopener();
    tokio::spawn(async move {
        signals.serve(reopener).await;
        on_signal.send_replace(true);
    });
    if let Some((_, Some(warning))) = &token {
        tracing::warn!("{warning}");
    }
    let nofile = corral_core::process::raise_nofile_limit();
    let socket = opts.state_dir.join(SOCKET_NAME);
    let mut config = Config::new(&opts.state_dir);
    config.socket_path = Some(socket.clone());
    config.sample_interval = opts.sample_interval;
    config.subreaper = true;
    config.cgroups = opts.cgroups;
    config.default_placement = opts.placement.clone();
    if let (Some(addr), Some(file)) = (opts.listen, &opts.token_file) {
        // Agents on other hosts (cluster jobs) report progress over TCP.
        config.job_env.insert("CORRAL_URL".into(), addr.to_string());
        config.job_env.insert(
            "CORRAL_TOKEN_FILE".into(),
            std::path::absolute(file)
                .unwrap_or_else(|_| file.clone())
                .display()
                .to_string(),
        );
    }
    // Without it agents of other users cannot report progress; the daemon
    // serves everyone else all the same. Bound first, so that agents are told
    // of it (`CORRAL_SOCKET`) only when it is there.
    let agent_listener = opts
        .agent_socket
        .path(&opts.state_dir)
        .and_then(|path| match crate::agent_socket::bind(&path) {
            Ok(l) => {
                tracing::info!(agent_socket = %path.display(), "serving agents of other users");
                Some((l, RemovedOnDrop(path)))
            }
            Err(e) => {
                tracing::error!(agent_socket = %path.display(), error = %e, "cannot serve the agent socket; agents of other users cannot reach the daemon");
                None
            }
        });
    config.agent_socket_path = agent_listener.as_ref().map(|(_, path)| path.0.clone());
    let sup = Supervisor::open(config).await?;
    let listener = bind_socket(&socket)?;
    let tcp = match (opts.listen, token) {
        (Some(addr), Some((token, _))) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Config(format!("cannot listen on {addr}: {e}")))?;
            Some((l, token))
        }
        _ => None,
    };
    if opts.detach {
        // A background daemon must not pin the directory it happened to start in,
        // nor write to a terminal that may be gone.
        let _ = std::env::set_current_dir("/");
        if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
            let _ = rustix::stdio::dup2_stdin(&null);
            let _ = rustix::stdio::dup2_stdout(&null);
            let _ = rustix::stdio::dup2_stderr(&null);
        }
    }
    let mut limits = Limits::for_nofile(nofile);
    if let Some(n) = opts.max_connections {
        limits.max_connections = n;
    }
    if let Some(t) = opts.header_timeout {
        limits.header_timeout = t;
    }
    tracing::info!(pid = std::process::id(), state_dir = %opts.state_dir.display(), nofile, max_connections = limits.max_connections, "daemon started");
    // A service manager waiting for word (a `Type=notify` unit) hears that
    // the daemon is ready only now: its store is open and every socket
    // listens, so a request sent from here on is answered. It hears that the
    // daemon is stopping as soon as a stop begins (a signal, or
    // `POST /v1/daemon/stop`).
    tell_manager(
        &format!(
            "READY=1\nSTATUS=serving {}\n",
            socket.display().to_string().replace('\n', " ")
        ),
        "ready",
    );
    let mut stopping = stop_rx.clone();
    tokio::spawn(async move {
        if stopping.wait_for(|s| *s).await.is_ok() {
            tell_manager("STOPPING=1\n", "stopping");
        }
    });
    let ui_stop = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let tcp_addr = match &tcp {
        Some((l, _)) => Some(l.local_addr().map_err(|e| {
            DaemonError::Config(format!("cannot read the TCP listener's address: {e}"))
        })?),
        None => None,
    };
    let ui = crate::ui::Ui::new(tcp_addr);
    let app = crate::routes::router(sup.clone())
        .layer(axum::Extension(crate::routes::ShutdownTrigger(stop_tx)))
        .layer(axum::Extension(ui.clone()));
    // A dashboard login on a daemon without TCP starts a loopback listener
    // serving this same router (see `crate::ui`).
    ui.serve_with(app.clone(), limits, ui_stop);
    let agents_served = agent_listener.map(|(l, path)| {
        let app = crate::agent_socket::router(sup.clone());
        let served = tokio::spawn(serve::serve(serve::PinnedPeers(l), app, limits, stopped()));
        (served, path)
    });
    let unix = serve::serve(listener, app.clone(), limits, stopped());
    let served = match tcp {
        Some((l, token)) => {
            tracing::info!(addr = %opts.listen.map(|a| a.to_string()).unwrap_or_default(), "serving TCP (bearer token required)");
            let gate = std::sync::Arc::new(crate::auth::TokenGate::new(token));
            let port = tcp_addr.map_or(0, |a| a.port());
            let app = crate::ui::tcp_app(app, ui, Some(gate), port);
            let tcp = serve::serve(l, app, limits, stopped());
            let (a, b) = tokio::join!(unix, tcp);
            a.and(b)
        }
        None => unix.await,
    };
    if let Some((served, path)) = agents_served {
        let _ = served.await;
        drop(path);
    }
    sup.shutdown();
    let _ = std::fs::remove_file(&socket);
    tracing::info!(
        lost_log_lines = log.lost_lines(),
        "daemon stopped; agents keep running"
    );
    drop(log);
    drop(lock);
    served.map_err(io_err("serve", &socket))
}

/// Sends `state` to the service manager, if one waits for word (see
/// [`crate::notify`]); logs what came of it.
fn tell_manager(state: &str, what: &'static str) {
    match crate::notify::notify(state) {
        Ok(true) => tracing::info!(state = what, "told the service manager (NOTIFY_SOCKET)"),
        Ok(false) => {}
        Err(e) => tracing::error!(state = what, error = %e, "cannot tell the service manager"),
    }
}

/// A socket file removed when the daemon is done with it (also when it
/// fails to start after binding it).
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The signals a service manager, logrotate or a person may send, each
/// handled so that none ends the daemon by its default action (which would
/// leave the socket behind and cut requests in flight):
///
/// - SIGTERM, SIGINT, SIGQUIT: a graceful stop (agents keep running), logged;
/// - SIGHUP: `daemon.log` is reopened at its path (after logrotate moved it),
///   logged — the daemon carries on;
/// - SIGUSR1, SIGUSR2, SIGALRM (runit's `sv alarm`, s6's `s6-svc -a`):
///   logged, otherwise ignored;
/// - SIGPIPE: ignored (a closed peer is an error of its connection). Rust
///   ignores it before `main`, but a caller may have restored it (`corral`
///   does for its client commands), so the daemon says so itself;
/// - SIGXFSZ: ignored, so that a file-size limit set by a service manager
///   makes a write fail (the log writer counts it) instead of ending the
///   daemon;
/// - SIGPWR, SIGIO, SIGPROF, SIGVTALRM, SIGSTKFLT and the real-time signals:
///   ignored (their default would end the daemon; none is meant for it).
///
/// All are registered at once, before anything else is done, so that one
/// that arrives while the daemon starts is not missed.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
    alrm: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers every handled signal; ignores SIGPIPE and SIGXFSZ.
    pub fn listen() -> Result<Self, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        // SAFETY: signal(2) with constant signals and SIG_IGN: no handler
        // runs. Agents get every disposition back at its default when they
        // are spawned, so they do not inherit these.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            // Every other signal whose default action ends a process and that
            // nobody means for a daemon: power events (SIGPWR, sent by init),
            // async I/O, profiling timers, the real-time signals.
            for sig in [
                libc::SIGPWR,
                libc::SIGIO,
                libc::SIGPROF,
                libc::SIGVTALRM,
                libc::SIGSTKFLT,
            ]
            .into_iter()
            .chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
            {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
        let listen = |kind| {
            signal(kind).map_err(|e| DaemonError::Config(format!("cannot listen for signals: {e}")))
        };
        Ok(Self {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
            quit: listen(SignalKind::quit())?,
            hup: listen(SignalKind::hangup())?,
            usr1: listen(SignalKind::user_defined1())?,
            usr2: listen(SignalKind::user_defined2())?,
            alrm: listen(SignalKind::alarm())?,
        })
    }

    /// Handles signals as they come; returns at the first one that stops the
    /// daemon, once it is logged.
    pub async fn serve(mut self, log: crate::logging::LogReopener) {
        loop {
            let name = tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
                _ = self.quit.recv() => "SIGQUIT",
                _ = self.hup.recv() => {
                    let reopen = log.clone();
                    match tokio::task::spawn_blocking(move || reopen.reopen()).await {
                        Ok(Ok(())) => tracing::info!(signal = "SIGHUP", log = %log.path().display(), "signal received; daemon log reopened"),
                        Ok(Err(e)) => tracing::warn!(signal = "SIGHUP", log = %log.path().display(), error = %e, "signal received; cannot reopen the daemon log, still writing to the old one"),
                        Err(e) => tracing::warn!(signal = "SIGHUP", error = %e, "signal received; reopening the daemon log failed"),
                    }
                    continue;
                }
                _ = self.usr1.recv() => "SIGUSR1",
                _ = self.usr2.recv() => "SIGUSR2",
                _ = self.alrm.recv() => "SIGALRM",
            };
            if matches!(name, "SIGUSR1" | "SIGUSR2" | "SIGALRM") {
                tracing::info!(
                    signal = name,
                    "signal received; it has no use in corral, the daemon carries on"
                );
                continue;
            }
            tracing::info!(
                signal = name,
                "signal received; stopping the daemon (agents keep running)"
            );
            return;
        }
    }
}
