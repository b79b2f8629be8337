//! Helpers shared by the library's integration tests: reading `/proc` directly
//! (never through corral) and waiting with a deadline.
#![allow(dead_code, unused_macros, clippy::unwrap_used)]

use std::time::{Duration, Instant};

/// Runs each named `async fn NAME(cgroups: bool)` twice, as two tests: with
/// cgroup containment (where the machine offers a writable cgroup2
/// hierarchy) and with the process-group/subreaper fallback.
macro_rules! both_containments {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn cgroup() {
                    super::$name(true).await
                }
                #[tokio::test]
                async fn process_group() {
                    super::$name(false).await
                }
            }
        )*
    };
}

use corral_core::{AgentId, AgentStatus, PersistentStatus, SpawnRequest, Supervisor};

pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn request(id: &str, argv: &[&str], verify_ms: u64) -> SpawnRequest {
    SpawnRequest {
        agent_id: id.into(),
        command: argv.iter().map(|s| s.to_string()).collect(),
        verify_ms: Some(verify_ms),
        ..Default::default()
    }
}

/// Fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...].
pub fn proc_stat(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Waits until `pid` has no /proc entry at all (not even a zombie).
pub async fn wait_gone(pid: i32) {
    let end = Instant::now() + DEADLINE;
    while let Some(stat) = proc_stat(pid) {
        assert!(
            Instant::now() < end,
            "pid {pid} still present (state {})",
            stat[0]
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn wait_status(sup: &Supervisor, id: &str, want: PersistentStatus) -> AgentStatus {
    let id = AgentId::new(id).unwrap();
    let end = Instant::now() + DEADLINE;
    loop {
        let s = sup.get_agent_status(&id).unwrap();
        if s.persistent_status == want {
            return s;
        }
        assert!(Instant::now() < end, "{id} never became {want}: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the file holds at least `lines` lines; returns them.
pub async fn wait_lines(path: &std::path::Path, lines: usize) -> Vec<String> {
    let end = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_owned).collect();
        if got.len() >= lines {
            return got;
        }
        assert!(
            Instant::now() < end,
            "{} has {} of {lines} lines",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pids whose parent is this test process.
pub fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| proc_stat(*pid).is_some_and(|s| s[1] == me))
        .collect()
}

/// Kills and reaps, by pid, everything still ours when a test ends — also when
/// it ends by a failed assertion — so a failing test leaks nothing. Tests make
/// themselves subreapers, so every descendant ends up as our child.
#[derive(Default)]
pub struct Cleanup {
    /// The test supervisor's cgroup subtree: its leaves are removed too.
    pub cgroup: Option<std::path::PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let end = Instant::now() + DEADLINE;
        loop {
            let kids = children();
            if kids.is_empty() || Instant::now() > end {
                if let Some(dir) = &self.cgroup {
                    for leaf in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        if leaf.file_type().is_ok_and(|t| t.is_dir()) {
                            let _ = std::fs::remove_dir(leaf.path());
                        }
                    }
                    let _ = std::fs::remove_dir(dir);
                }
                return;
            }
            for pid in kids {
                let Some(p) = rustix::process::Pid::from_raw(pid) else {
                    continue;
                };
                // Our own child: its pid cannot be reused before we reap it.
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
            }
        }
    }
}
