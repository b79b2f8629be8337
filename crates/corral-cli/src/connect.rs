//! Finding the state dir and a daemon that serves it, starting one when none answers.
//!
//! Autostart is race-safe by construction: every CLI that finds no daemon starts
//! one, every such daemon first tries the state dir's exclusive lock, and all but
//! one exit at once. The CLIs then wait for the socket to answer, so each ends up
//! talking to the single winner.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::Client;
use corral_api::daemon::SOCKET_NAME;

/// How long a CLI waits for a daemon it started to answer.
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// The state dir: `--state-dir`, else `$CORRAL_STATE_DIR`, else
/// `$XDG_STATE_HOME/corral`, else `~/.local/state/corral`.
pub fn state_dir(flag: Option<&Path>) -> Result<PathBuf> {
    let from_env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = if let Some(d) = flag {
        d.to_owned()
    } else if let Some(d) = from_env("CORRAL_STATE_DIR") {
        d
    } else if let Some(d) = from_env("XDG_STATE_HOME") {
        d.join("corral")
    } else if let Some(home) = from_env("HOME") {
        home.join(".local/state/corral")
    } else {
        bail!("cannot find a state dir: set --state-dir, CORRAL_STATE_DIR or HOME");
    };
    // Agents and daemons see this path from other working directories.
    std::path::absolute(&dir).with_context(|| format!("state dir {}", dir.display()))
}

/// Whether a daemon answers on the socket — any HTTP answer counts (a daemon
/// whose store is failing answers 503 to readiness but still serves), and so
/// does an answer too large or not understood: something serves there, and
/// the command's own call reports what is wrong with it. A socket this user
/// cannot trust, or one that takes the request and never answers in time, is
/// an error, never a reason to start another daemon (which would find the
/// state dir locked).
async fn answers(client: &Client) -> Result<bool> {
    use corral_api::ClientError;
    match client.health().await {
        Ok(_)
        | Err(ClientError::Api { .. } | ClientError::TooLarge { .. } | ClientError::Decode(_)) => {
            Ok(true)
        }
        Err(
            e @ (ClientError::Untrusted { .. }
            | ClientError::Timeout { .. }
            | ClientError::BadTimeout(_)),
        ) => Err(e.into()),
        Err(_) => Ok(false),
    }
}

/// A client for the daemon already serving `state_dir` (never starts one).
pub async fn existing(state_dir: &Path) -> Result<Client> {
    let client = Client::new(state_dir.join(SOCKET_NAME));
    if answers(&client).await? {
        return Ok(client);
    }
    bail!("no corral daemon serves {}", state_dir.display());
}

/// A client for the daemon of `state_dir`, starting the daemon if none answers
/// (unless `autostart` is false); a started daemon is announced on stderr.
pub async fn client(state_dir: &Path, autostart: bool) -> Result<Client> {
    let client = Client::new(state_dir.join(SOCKET_NAME));
    if answers(&client).await? {
        return Ok(client);
    }
    if !autostart {
        bail!(
            "no corral daemon answers at {}; start one with `corral daemon` or drop --no-autostart",
            client.socket().display()
        );
    }
    let exe =
        std::env::current_exe().context("cannot find the corral executable to start a daemon")?;
    let mut child = Command::new(exe)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["daemon", "--detach"])
        // A daemon started in the background is not the process a service
        // manager started: it must not report readiness for the unit this
        // CLI happens to run in (see corral_api::notify).
        .env_remove(corral_api::notify::NOTIFY_SOCKET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start a corral daemon")?;
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let mut exited = None;
    loop {
        if answers(&client).await? {
            // Reap the child if it was a loser of the lock race; a winner keeps running.
            if let Ok(None) = child.try_wait() {
                crate::say(&format!(
                    "corral: started a daemon (pid {}) for {}",
                    child.id(),
                    state_dir.display()
                ));
            }
            return Ok(client);
        }
        if exited.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            // Losing the lock race means another daemon is starting: keep waiting for it.
            if status.code() != Some(i32::from(crate::commands::EXIT_ALREADY_RUNNING)) {
                let mut err = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut err);
                }
                bail!(
                    "the corral daemon did not start ({status}): {}",
                    err.trim().trim_start_matches("error: ")
                );
            }
            exited = Some(status);
        }
        if Instant::now() > deadline {
            bail!(
                "started a corral daemon but it did not answer at {} within {}s; see {}",
                client.socket().display(),
                STARTUP_DEADLINE.as_secs(),
                state_dir.join("daemon.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The address and token of a TCP daemon (`--url ADDR:PORT --token-file FILE`).
pub fn remote(url: &str, token_file: Option<&Path>) -> Result<(std::net::SocketAddr, String)> {
    let bare = url.trim_start_matches("http://").trim_end_matches('/');
    let addr: std::net::SocketAddr = bare
        .parse()
        .with_context(|| format!("--url {url:?} must be ADDR:PORT, like 127.0.0.1:7070"))?;
    let Some(file) = token_file else {
        bail!("--url needs --token-file: a TCP daemon accepts only requests with its bearer token");
    };
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("read token file {}", file.display()))?;
    Ok((addr, token.trim().to_owned()))
}
