//! One run of one agent: building it from a stored record, sampling it, and
//! turning it into the status the API reports.

use super::*;

impl Agent {
    pub(super) fn new(
        record: RunRecord,
        restarts: u32,
        proc_: Option<Arc<ProcessHandle>>,
    ) -> Result<Self> {
        let id = AgentId::new(record.agent_id.clone())?;
        let ended = record.ended_at.is_some() || !record.status.is_live();
        Ok(Self {
            id,
            run_id: record.run_id,
            cmdline: record.command.join(" "),
            restarts,
            proc_,
            leaf: None,
            state: Mutex::new(LiveState {
                status: record.status,
                exit: None,
                reaped: ended,
                ended_at: record.ended_at.clone(),
                end_reason: record.end_reason.clone(),
                runtime_at_end: None,
                stop_requested: false,
                sample: None,
                progress: record.progress,
                progress_message: record.progress_message.clone(),
            }),
            transition: tokio::sync::Mutex::new(()),
            ended: watch::Sender::new(ended),
            record,
        })
    }

    pub(super) fn pid(&self) -> i32 {
        self.proc_
            .as_ref()
            .map_or(self.record.pid.unwrap_or(0), |p| p.pid())
    }

    pub(super) fn status_now(&self) -> PersistentStatus {
        lock(&self.state).status
    }

    pub(super) fn stdout_log(&self) -> PathBuf {
        self.record.agent_dir.join("stdout.log")
    }

    pub(super) fn stderr_log(&self) -> PathBuf {
        self.record.agent_dir.join("stderr.log")
    }

    /// Takes a fresh sample through the open stat file; false once the process is gone.
    pub(super) fn refresh_sample(&self, clock: &Clock) -> bool {
        let Some(proc_) = &self.proc_ else {
            return false;
        };
        let Ok(raw) = proc_.sample() else {
            return false;
        };
        let now = platform::boottime_seconds();
        let mut st = lock(&self.state);
        // The baseline of the first sample is the process's start: zero CPU time then.
        let (prev_ticks, prev_at) = st.sample.map_or(
            (0, proc_.start_ticks() as f64 / clock.ticks_per_second),
            |s| (s.cpu_ticks, s.at),
        );
        let elapsed = now - prev_at;
        let cpu_percent = if elapsed > 0.0 {
            (raw.cpu_ticks.saturating_sub(prev_ticks) as f64 / clock.ticks_per_second) / elapsed
                * 100.0
        } else {
            st.sample.map_or(0.0, |s| s.cpu_percent)
        };
        st.sample = Some(Sample {
            state: raw.state,
            cpu_ticks: raw.cpu_ticks,
            at: now,
            cpu_percent,
            memory_mb: (raw.rss_pages * clock.page_size) as f64 / (1024.0 * 1024.0),
            num_threads: raw.num_threads,
        });
        true
    }

    pub(super) fn status(&self, clock: &Clock) -> AgentStatus {
        let st = lock(&self.state);
        let live_proc = self.proc_.as_ref().filter(|_| !st.reaped);
        let exited = live_proc.is_some_and(|p| p.has_exited());
        let process_alive = live_proc.is_some() && !exited;
        let is_zombie = live_proc.is_some() && exited;
        let sample = st.sample.filter(|_| process_alive);
        let process_status = if is_zombie {
            "zombie"
        } else if process_alive {
            sample.map_or("running", |s| platform::psutil_status(s.state))
        } else {
            "dead"
        };
        let (exit_code, exit_signal) = match st.exit {
            Some(ExitKind::Code(c)) => (Some(c), None),
            Some(ExitKind::Signal(s)) => (None, Some(s)),
            None => (self.record.exit_code, self.record.exit_signal),
        };
        let runtime_seconds = match (live_proc, st.runtime_at_end) {
            (Some(p), _) => {
                platform::boottime_seconds() - p.start_ticks() as f64 / clock.ticks_per_second
            }
            (None, Some(r)) => r,
            (None, None) => stored_runtime(&self.record.started_at, st.ended_at.as_deref()),
        }
        .max(0.0);
        let health = if process_alive {
            Health::Healthy
        } else if is_zombie {
            Health::Zombie
        } else {
            match st.status {
                PersistentStatus::Completed => Health::Completed,
                PersistentStatus::Cancelled if exit_code == Some(0) => Health::Completed,
                PersistentStatus::Failed | PersistentStatus::Cancelled
                    if exit_code.is_some() || exit_signal.is_some() || self.pid() == 0 =>
                {
                    Health::Failed
                }
                _ => Health::Unknown,
            }
        };
        AgentStatus {
            agent_id: self.id.to_string(),
            pid: self.pid(),
            process_alive,
            process_status: process_status.to_owned(),
            exit_code,
            is_zombie,
            cpu_percent: sample.map_or(0.0, |s| s.cpu_percent),
            memory_mb: sample.map_or(0.0, |s| s.memory_mb),
            runtime_seconds,
            num_threads: sample.map_or(0, |s| s.num_threads),
            cmdline: self.cmdline.clone(),
            health,
            persistent_status: st.status,
            started_at: self.record.started_at.clone(),
            progress: st.progress,
            progress_message: st.progress_message.clone(),
            exit_signal,
            ended_at: st.ended_at.clone(),
            end_reason: st.end_reason.clone(),
            restarts: self.restarts,
            labels: self.record.labels.clone(),
            stdout_log: self.stdout_log(),
            stderr_log: self.stderr_log(),
            containment: if self.leaf.is_some() {
                "cgroup"
            } else {
                "process-group"
            }
            .to_owned(),
            tree: None,
        }
    }
}

fn stored_runtime(started_at: &str, ended_at: Option<&str>) -> f64 {
    let start = humantime::parse_rfc3339_weak(started_at).ok();
    let end = ended_at.and_then(|e| humantime::parse_rfc3339_weak(e).ok());
    match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s).map_or(0.0, |d| d.as_secs_f64()),
        _ => 0.0,
    }
}
