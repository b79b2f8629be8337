//! Short-lived helper processes the supervisor runs itself: a probe's `exec`
//! check, the cluster engine's commands (`sbatch`, `squeue`, `scancel`...).
//!
//! A helper is a child of this process, so the orphan sweep (which reaps every
//! child it does not know) must leave its exit status alone: its pid enters
//! `owned` under the spawn gate before the sweep can look, exactly as an
//! agent's does. It runs in a session of its own with stdin on `/dev/null`,
//! its output read through pipes without blocking a worker; it is waited for
//! through its pidfd, bounded by a timeout, and on every way out (done, timed
//! out, the caller gone) its whole group is killed and it is reaped.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::platform::{self, Credentials, ExitKind, ProcessHandle, Stdio};

use super::{Shared, lock};

/// What to run.
pub(crate) struct Helper {
    /// Program and arguments; the program is looked up in `envp`'s `PATH`.
    pub argv: Vec<String>,
    /// The whole environment, `K=V`.
    pub envp: Vec<CString>,
    pub cwd: PathBuf,
    pub credentials: Option<Credentials>,
    /// Send stderr into stdout's pipe (a probe's output is one text).
    pub merge_stderr: bool,
}

/// How a helper ended and what it wrote (each stream cut at the limit).
#[derive(Debug)]
pub(crate) struct Output {
    pub exit: Option<ExitKind>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub(crate) fn success(&self) -> bool {
        self.exit == Some(ExitKind::Code(0))
    }

    /// stdout as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as one trimmed line of text, for an error message.
    pub(crate) fn error_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        if text.is_empty() {
            match self.exit {
                Some(ExitKind::Code(c)) => format!("exit {c}, no message"),
                Some(ExitKind::Signal(s)) => format!("killed by signal {s}"),
                None => "ended, status unknown".into(),
            }
        } else {
            text.replace('\n', "; ")
        }
    }
}

/// Why a helper gave no output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelperError {
    #[error("cannot run {program:?}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("{program:?} gave no answer within {seconds} s; killed")]
    TimedOut { program: String, seconds: f64 },
}

/// Runs `helper` for at most `timeout`, keeping up to `limit` bytes of each stream.
pub(crate) async fn run(
    sh: &Arc<Shared>,
    helper: Helper,
    timeout: Duration,
    limit: usize,
) -> Result<Output, HelperError> {
    let program = helper.argv.first().cloned().unwrap_or_default();
    let shared = sh.clone();
    let started = tokio::task::spawn_blocking(move || start(&shared, &helper))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    let (handle, out, err) = started.map_err(|source| HelperError::Start {
        program: program.clone(),
        source,
    })?;
    let handle = Arc::new(handle);
    let _reaper = Reaper {
        sh: sh.clone(),
        handle: handle.clone(),
    };
    let finished = tokio::time::timeout(timeout, async {
        tokio::join!(read(out, limit), read(err, limit), exited(&handle))
    })
    .await;
    match finished {
        Ok((stdout, stderr, exit)) => Ok(Output {
            exit,
            stdout,
            stderr,
        }),
        Err(_) => Err(HelperError::TimedOut {
            program,
            seconds: timeout.as_secs_f64(),
        }),
    }
}

/// Reads a pipe to its end, keeping the first `limit` bytes.
async fn read(fd: Option<OwnedFd>, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let Some(fd) = fd else { return out };
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return out;
    };
    let mut buf = [0u8; 8192];
    while let Ok(n) = rx.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if out.len() < limit {
            out.extend_from_slice(&buf[..n.min(limit - out.len())]);
        }
    }
    out
}

/// Waits for the helper to exit, without polling; its status.
async fn exited(h: &Arc<ProcessHandle>) -> Option<ExitKind> {
    // SAFETY: the Arc keeps the ProcessHandle, and so its pidfd, alive and
    // unchanged for as long as the AsyncFd exists.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(h.clone(), tokio::io::Interest::READABLE)
    }
    .ok()?;
    loop {
        let mut ready = afd.readable().await.ok()?;
        if h.has_exited() {
            return h.peek_exit().ok().flatten();
        }
        ready.clear_ready();
    }
}

/// Kills a helper's whole group (it may have run out of time) and reaps it.
struct Reaper {
    sh: Arc<Shared>,
    handle: Arc<ProcessHandle>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.handle.signal_group(rustix::process::Signal::KILL);
        let (sh, handle) = (self.sh.clone(), self.handle.clone());
        // Reaping waits for the kill to land: off the async workers.
        tokio::task::spawn_blocking(move || {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while !handle.has_exited() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = handle.reap();
            lock(&sh.owned).remove(&handle.pid());
        });
    }
}

type Pipes = (ProcessHandle, Option<OwnedFd>, Option<OwnedFd>);

/// A non-blocking read end and a blocking write end.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // The runtime reads without blocking; the child writes as usual.
    rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK)?;
    Ok((read, write))
}

/// Starts a helper (blocking). Its pid enters `owned` under the spawn gate, so
/// the orphan sweep leaves its status to us.
fn start(sh: &Shared, helper: &Helper) -> std::io::Result<Pipes> {
    let path_var = helper
        .envp
        .iter()
        .find_map(|kv| kv.to_bytes().strip_prefix(b"PATH="))
        .and_then(|p| std::str::from_utf8(p).ok());
    let first = helper.argv.first().map_or("", String::as_str);
    let resolved = platform::resolve_program(first, path_var)?;
    let argv = helper
        .argv
        .iter()
        .map(|a| platform::c_string("argument", a.as_bytes()))
        .collect::<std::io::Result<Vec<_>>>()?;
    let program = platform::c_path(&resolved)?;
    let cwd = platform::c_path(&helper.cwd)?;
    let (out_read, out_write) = pipe()?;
    let err = if helper.merge_stderr {
        None
    } else {
        Some(pipe()?)
    };
    let stdin = std::fs::File::open("/dev/null")?;
    let spawn_spec = platform::SpawnSpec {
        program: &program,
        argv: &argv,
        envp: &helper.envp,
        cwd: &cwd,
        stdio: Stdio {
            stdin: stdin.as_fd(),
            stdout: out_write.as_fd(),
            stderr: err.as_ref().map_or(out_write.as_fd(), |(_, w)| w.as_fd()),
        },
        cgroup: None,
        credentials: helper.credentials.as_ref(),
        nofile: None,
    };
    let pid = {
        let _gate = sh.spawn_gate.read().unwrap_or_else(|p| p.into_inner());
        let pid = platform::spawn(&spawn_spec)?;
        lock(&sh.owned).insert(pid.as_raw_nonzero().get());
        pid
    };
    match ProcessHandle::open(pid, None) {
        Ok(Some(h)) => Ok((h, Some(out_read), err.map(|(r, _)| r))),
        other => {
            platform::kill_and_reap_child(pid);
            lock(&sh.owned).remove(&pid.as_raw_nonzero().get());
            Err(other
                .err()
                .unwrap_or_else(|| std::io::Error::other("the helper vanished")))
        }
    }
}

/// The daemon's own environment as `K=V` strings (what engine commands get).
pub(crate) fn daemon_env(sh: &Shared) -> Vec<CString> {
    use std::os::unix::ffi::OsStrExt;
    sh.base_env
        .iter()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect()
}
