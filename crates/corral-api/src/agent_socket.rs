//! The agent socket: how agents that run as another user reach the daemon.
//!
//! The daemon's own socket is 0600 in a 0700 state dir, so an agent running as
//! `nobody` under a root daemon cannot reach it. A root daemon therefore also
//! serves a second socket, 0666 in a root-owned directory every user can
//! enter (by default `/run/corral/<hash of the state dir>.sock`), and gives its
//! path as `CORRAL_SOCKET` to agents of other users.
//!
//! Anyone may connect; nobody is trusted for it. Each request's caller is
//! known from the socket's peer credentials (`SO_PEERCRED` pid), and only a
//! process inside an agent (its cgroup, or its process tree: an unforgeable
//! ancestry, never the caller's environment) is served, and only on agent
//! routes, for agents under its own id — what delegation (`delegation.rs`) lets an
//! agent do with its own team: spawn below itself (as its own user), list,
//! read, wait for, stop, kill, restart and remove its team's agents, report
//! its own progress.
//!
//! Everything else is 404 or 403 here; a caller outside every agent, or asking
//! about an agent outside its own subtree, gets 403 naming who it is.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_core::{ErrorCode, Supervisor};
use tokio::net::UnixListener;

use crate::error::ApiError;
use crate::routes::Peer;

/// Where a root daemon puts agent sockets unless told otherwise.
pub const DEFAULT_DIR: &str = "/run/corral";

/// Where the agent socket of a daemon goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AgentSocket {
    /// [`default_path`] when the daemon runs as root (only a root daemon runs
    /// agents as other users); none otherwise.
    #[default]
    Default,
    /// No agent socket.
    Off,
    /// This path; its directory must be root's (or the daemon user's) and
    /// not writable by others.
    At(PathBuf),
}

impl AgentSocket {
    /// The path to serve, if any.
    pub fn path(&self, state_dir: &Path) -> Option<PathBuf> {
        match self {
            Self::Default => rustix::process::geteuid()
                .is_root()
                .then(|| default_path(state_dir)),
            Self::Off => None,
            Self::At(p) => Some(p.clone()),
        }
    }
}

/// `/run/corral/<16 hex digits>.sock`: a stable name per state dir (FNV-1a of
/// its path), so agents that outlive a daemon reach the next one.
pub fn default_path(state_dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let hash = corral_core::fnv1a(state_dir.as_os_str().as_bytes());
    Path::new(DEFAULT_DIR).join(format!("{hash:016x}.sock"))
}

/// Creates the socket's directory (0755) when missing and checks it: a real
/// directory of this user, not writable by group or others (else another
/// user could put their own socket in the daemon's place).
fn check_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    let problem = if meta.file_type().is_symlink() {
        Some("it is a symlink".to_owned())
    } else if !meta.is_dir() {
        Some("it is not a directory".to_owned())
    } else if meta.uid() != me {
        Some(format!("it is owned by uid {}, not {me}", meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "it is writable by group or others (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match problem {
        Some(why) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}", dir.display()),
        )),
        None => Ok(()),
    }
}

/// Binds the agent socket (mode 0666), replacing a stale one. Call only while
/// holding the state lock (the path is this state dir's).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    check_dir(dir)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)?;
            tracing::info!(socket = %path.display(), "replaced a stale agent socket");
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// The agent routes, each behind the caller check.
pub fn router(sup: Supervisor) -> Router {
    crate::routes::agent_routes(sup.clone())
        .layer(axum::middleware::from_fn_with_state(sup, only_agents))
}

/// Whether `id` names `caller` or an agent below it (an id that is not an
/// agent id at all is neither).
#[cfg(test)]
fn within(id: &str, caller: &corral_core::AgentId) -> bool {
    corral_core::AgentId::new(id).is_ok_and(|id| id.is_within(caller))
}

async fn only_agents(State(sup): State<Supervisor>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().cloned().unwrap_or_default();
    let Some(pid) = peer.live_pid() else {
        return ApiError::new(
            ErrorCode::Forbidden,
            "the agent socket serves only live processes inside an agent (no peer credentials, or the process that connected has exited)",
        )
        .into_response();
    };
    // Looked up once per connection (a `/proc` read, a table scan without
    // cgroups); the process must still be the one that connected once it has
    // been (a pid freed meanwhile may be another's).
    let caller = peer
        .agent
        .get_or_init(|| sup.agent_containing(pid))
        .await
        .clone();
    let caller = caller.filter(|_| peer.live_pid() == Some(pid));
    let Some(caller) = caller else {
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "pid {pid} is not inside any agent; the agent socket serves only agents (use the daemon's own socket)"
            ),
        )
        .into_response();
    };
    // What an agent may do with its team, as on the daemon's own socket.
    crate::delegation::scope(&sup, caller, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subtree_is_the_id_and_what_is_below_it() {
        let me = corral_core::AgentId::new("team.1").unwrap();
        assert!(within("team.1", &me));
        assert!(within("team.1.a", &me));
        assert!(!within("team.10", &me));
        assert!(!within("team", &me));
        assert!(!within("team.2", &me));
    }

    #[test]
    fn default_paths_are_stable_and_differ_per_state_dir() {
        let a = default_path(Path::new("/var/lib/corral"));
        assert_eq!(a, default_path(Path::new("/var/lib/corral")));
        assert_ne!(a, default_path(Path::new("/var/lib/corral2")));
        assert!(a.starts_with(DEFAULT_DIR));
    }

    /// The peer's pid names the caller only while the process that connected
    /// lives: once it has exited (its connection held on by a child), the
    /// pid is free for another process, and the peer is nobody.
    #[test]
    fn a_peer_that_exited_is_nobody_though_its_connection_lives_on() {
        use std::os::fd::AsFd;
        use std::os::unix::net::UnixListener;
        // Orphans of this test come back to it, to be reaped (nextest runs
        // each test in a process of its own).
        corral_core::process::become_subreaper().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        // The child connects, hands the connection to a grandchild that
        // holds it, prints the grandchild's pid and exits.
        let script = "import os, socket, sys, time\n\
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
pid = os.fork()\n\
if pid == 0:\n    os.close(1); time.sleep(60); os._exit(0)\n\
print(pid, flush=True)\n";
        let child = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().unwrap();
        let pidfd = corral_core::process::peer_pidfd(stream.as_fd())
            .expect("SO_PEERPIDFD (Linux 6.5+) is needed by this test");
        let pid = rustix::net::sockopt::socket_peercred(&stream)
            .unwrap()
            .pid
            .as_raw_nonzero()
            .get();
        assert_eq!(pid as u32, child.id());
        let peer = Peer {
            pid: Some(pid),
            pidfd: Some(std::sync::Arc::new(pidfd)),
            ..Peer::default()
        };
        let out = child.wait_with_output().unwrap();
        let holder: i32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(peer.live_pid(), None, "the connecting process has exited");
        assert!(std::path::Path::new(&format!("/proc/{holder}")).exists());
        // The holder is the exited child's orphan, reparented to this
        // (subreaping) test: end it by pid and reap it.
        // SAFETY: a plain kill of a process this test started, not yet reaped.
        unsafe { libc::kill(holder, libc::SIGKILL) };
        let reaped = rustix::process::waitpid(
            rustix::process::Pid::from_raw(holder),
            rustix::process::WaitOptions::empty(),
        );
        assert!(reaped.is_ok_and(|r| r.is_some()), "holder {holder} reaped");
        drop(stream);
    }

    #[test]
    fn a_live_peer_is_itself() {
        use std::os::fd::AsFd;
        use std::os::unix::net::UnixStream;
        let (a, _b) = UnixStream::pair().unwrap();
        let pidfd = corral_core::process::peer_pidfd(a.as_fd()).expect("SO_PEERPIDFD");
        let peer = Peer {
            pid: Some(std::process::id() as i32),
            pidfd: Some(std::sync::Arc::new(pidfd)),
            ..Peer::default()
        };
        assert_eq!(peer.live_pid(), Some(std::process::id() as i32));
    }
}
