//! The daemon process: one per state dir.
//!
//! Exactly-one is enforced by an exclusive `flock` on `corral.lock`, taken before
//! anything else is touched; the socket is only ever bound by the lock holder, so
//! a socket file found by the holder is stale and is replaced. Several CLIs
//! starting daemons at the same moment therefore end with one daemon: the others
//! fail to take the lock and exit with [`DaemonError::AlreadyRunning`].
//!
//! The daemon logs (tracing) to `daemon.log` in the state dir. When it stops it
//! leaves its agents running: they are not tied to it (own sessions, output to
//! files), and the next daemon re-adopts them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use corral_core::{Config, Supervisor};
use tokio::net::UnixListener;

/// File names inside the state dir.
pub const SOCKET_NAME: &str = "corral.sock";
/// The lock file; holds the daemon's pid.
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
}

/// Shortest bearer token accepted, bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// Reads and checks the TCP bearer token.
fn read_token(opts: &DaemonOptions) -> Result<Option<String>, DaemonError> {
    let Some(addr) = opts.listen else {
        return Ok(None);
    };
    let Some(file) = &opts.token_file else {
        return Err(DaemonError::Config(format!(
            "--listen {addr} needs --token-file: every TCP client must present a bearer token"
        )));
    };
    let token = std::fs::read_to_string(file).map_err(io_err("read token file", file))?;
    let token = token.trim().to_owned();
    if token.len() < MIN_TOKEN_LEN {
        return Err(DaemonError::Config(format!(
            "the token in {} is {} bytes; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
            file.display(),
            token.len()
        )));
    }
    Ok(Some(token))
}

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
    /// The options do not make sense together.
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

/// Holds the state dir's lock for as long as it lives.
pub struct StateLock {
    _file: File,
}

/// Takes the state dir's exclusive lock and writes our pid into it.
pub fn lock_state_dir(state_dir: &Path) -> Result<StateLock, DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io_err("create state dir", state_dir))?;
    let path = state_dir.join(LOCK_NAME);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            return Err(DaemonError::AlreadyRunning {
                state_dir: state_dir.to_owned(),
                pid,
            });
        }
        Err(e) => return Err(io_err("lock", &path)(e.into())),
    }
    file.set_len(0).map_err(io_err("write lock file", &path))?;
    writeln!(file, "{}", std::process::id()).map_err(io_err("write lock file", &path))?;
    Ok(StateLock { _file: file })
}

/// Sends tracing output to `daemon.log` in the state dir (append).
pub fn install_logging(state_dir: &Path) -> Result<(), DaemonError> {
    let path = state_dir.join(LOG_NAME);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open daemon log", &path))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(())
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

/// Runs a daemon until SIGTERM or SIGINT. Takes the lock first; fails with
/// [`DaemonError::AlreadyRunning`] when another daemon holds the state dir.
pub async fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    // Refuse bad options before touching anything.
    let token = read_token(&opts)?;
    let lock = lock_state_dir(&opts.state_dir)?;
    install_logging(&opts.state_dir)?;
    let nofile = corral_core::platform::raise_nofile_limit();
    if let Ok(meta) = std::fs::metadata(&opts.state_dir) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                state_dir = %opts.state_dir.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the state dir is open to other users; the socket is 0600, but agents' logs may not be private (chmod 700)"
            );
        }
    }
    let socket = opts.state_dir.join(SOCKET_NAME);
    let mut config = Config::new(&opts.state_dir);
    config.socket_path = Some(socket.clone());
    config.sample_interval = opts.sample_interval;
    config.subreaper = true;
    config.cgroups = opts.cgroups;
    let sup = Supervisor::open(config).await?;
    let listener = bind_socket(&socket)?;
    let tcp = match (opts.listen, token) {
        (Some(addr), Some(token)) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Config(format!("cannot listen on {addr}: {e}")))?;
            Some((l, token))
        }
        _ => None,
    };
    if opts.detach {
        // A background daemon must not pin the directory it happened to start in.
        let _ = std::env::set_current_dir("/");
    }
    if opts.detach
        && let Ok(null) = File::options().read(true).write(true).open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
    tracing::info!(pid = std::process::id(), state_dir = %opts.state_dir.display(), nofile, "daemon started");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let unix = crate::server::serve(listener, sup.clone(), stopped());
    let served = match tcp {
        Some((l, token)) => {
            tracing::info!(addr = %opts.listen.map(|a| a.to_string()).unwrap_or_default(), "serving TCP (bearer token required)");
            let tcp = crate::server::serve_tcp(l, sup, token, stopped());
            let (a, b) = tokio::join!(unix, tcp);
            a.and(b)
        }
        None => unix.await,
    };
    let _ = std::fs::remove_file(&socket);
    tracing::info!("daemon stopped; agents keep running");
    drop(lock);
    served.map_err(io_err("serve", &socket))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
