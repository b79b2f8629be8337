//! The bench's private daemon: a child of this process in a temp state dir.
//! This process is a subreaper for the run, so everything the daemon starts is
//! stopped and reaped here at the end — also when the bench fails half-way.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::Client;
use corral_core::process as platform;

/// The private daemon and everything it started; stopped and reaped on drop.
pub struct Private {
    dir: tempfile::TempDir,
    daemon: std::process::Child,
    pub client: Client,
}

impl Private {
    pub async fn start(no_cgroups: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("corral-bench-").tempdir()?;
        let state = dir.path().join("state");
        let exe = std::env::current_exe()?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--state-dir")
            .arg(&state)
            .args(["daemon", "--sample-ms", "1000"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Not the service's own daemon: it tells no service manager anything.
            .env_remove(corral_api::notify::NOTIFY_SOCKET);
        if no_cgroups {
            cmd.env("CORRAL_NO_CGROUPS", "1");
        } else {
            cmd.env_remove("CORRAL_NO_CGROUPS");
        }
        let daemon = cmd.spawn().context("start the private daemon")?;
        let client = Client::new(state.join(corral_api::daemon::SOCKET_NAME));
        let end = Instant::now() + Duration::from_secs(10);
        // Any answer will do: it serves.
        while !matches!(
            client.health().await,
            Ok(_) | Err(corral_api::ClientError::Api { .. })
        ) {
            if Instant::now() > end {
                bail!("the private daemon did not answer");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            dir,
            daemon,
            client,
        })
    }

    pub fn pid(&self) -> i32 {
        self.daemon.id() as i32
    }

    /// A scratch dir for the bare baselines' files, on the same filesystem.
    pub fn scratch(&self) -> std::path::PathBuf {
        self.dir.path().join("bare")
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        // Agents first (the daemon reaps them), then the daemon, then anything
        // that was reparented to us: killed and reaped by pid.
        let state = self.dir.path().join("state");
        if let Ok(exe) = std::env::current_exe() {
            let _ = std::process::Command::new(exe)
                .arg("--state-dir")
                .arg(&state)
                .args(["--no-autostart", "stop", "--all", "--force"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid()).unwrap_or(rustix::process::Pid::INIT),
            rustix::process::Signal::TERM,
        );
        let _ = self.daemon.wait();
        for _ in 0..100 {
            let left = platform::children();
            if left.is_empty() {
                break;
            }
            for pid in left {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    // Our own child: its pid cannot be reused before we reap it.
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    let _ =
                        rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
                }
            }
        }
    }
}
