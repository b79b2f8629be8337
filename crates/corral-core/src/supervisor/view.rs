//! What readers see of an agent: the snapshot its owner published after its
//! last committed transition, plus the sampler's latest figures.
//!
//! A [`View`] is immutable and shared (`Arc`); the owner replaces it after each
//! commit. Readers (status, listing, summary, the dashboard) never wait for the
//! owner: they read the latest view and check the process's pidfd, so a status
//! never says "alive" about a process that has exited, even in the instant
//! before its end is recorded (it is then a zombie, which is what it says).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::id::AgentId;
use crate::model::{
    AgentState, AgentStatus, Health, LimitState, PersistentStatus, PlacementInfo, SpawnResponse,
    StopInfo, TreeSummary, quote_argv,
};
use crate::platform::{self, ExitKind, ProcessHandle};
use crate::store::RunRecord;

use super::spec::Spec;

/// The latest metrics of one agent, from one sampling pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    /// State letter of the agent's process.
    pub state: char,
    /// Percent of one CPU over the last interval.
    pub cpu_percent: f64,
    /// RSS, MiB.
    pub memory_mb: f64,
    /// Threads.
    pub num_threads: u32,
    /// The whole tree.
    pub tree: TreeSummary,
    /// Tasks (threads) of the whole tree.
    pub tree_tasks: u64,
    /// When it was taken (boot-clock seconds).
    pub taken_s: f64,
}

/// A live process of an agent, shared between its owner (which waits on it),
/// the sampler (which writes its figures) and readers.
#[derive(Debug)]
pub(crate) struct Proc {
    /// The pidfd and identity.
    pub handle: ProcessHandle,
    /// Boot-clock seconds at which it started.
    pub started_s: f64,
    /// The run's cgroup, when it is contained in one.
    pub leaf: Option<crate::platform::cgroup::Leaf>,
    /// Written by the sampler.
    pub sample: Mutex<Option<Sample>>,
    /// CPU ticks of its tree's processes at the last sample taken for a
    /// reader of this agent alone (see `sampler::sample_one`); empty until one is.
    pub alone: Mutex<std::collections::HashMap<(i32, u64), (u64, f64)>>,
}

impl Proc {
    pub(crate) fn new(
        handle: ProcessHandle,
        leaf: Option<crate::platform::cgroup::Leaf>,
        ticks_per_second: f64,
    ) -> Self {
        Self {
            started_s: handle.start_ticks() as f64 / ticks_per_second,
            handle,
            leaf,
            sample: Mutex::new(None),
            alone: Mutex::default(),
        }
    }

    pub(crate) fn sample(&self) -> Option<Sample> {
        *self.sample.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether its figures were taken within the last `max_age_s` seconds.
    pub(crate) fn sampled_within(&self, max_age_s: f64) -> bool {
        self.sample()
            .is_some_and(|s| crate::platform::boottime_seconds() - s.taken_s <= max_age_s)
    }

    pub(crate) fn set_sample(&self, s: Sample) {
        *self.sample.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }

    /// It has exited and is not reaped: `/proc` shows it as a zombie (one
    /// read of its stat, checked against its start time).
    pub(crate) fn is_zombie(&self) -> bool {
        self.handle.sample().is_ok_and(|s| s.state == 'Z')
    }
}

impl std::os::fd::AsRawFd for Proc {
    /// The pidfd: readable once the process has exited.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.handle.as_raw_fd()
    }
}

/// An agent as last committed by its owner.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub id: AgentId,
    pub spec: Arc<Spec>,
    /// Store row of the current run.
    pub run_id: i64,
    /// The current run's number.
    pub run: u32,
    pub log_dir: PathBuf,
    pub status: PersistentStatus,
    /// The owner's committed state.
    pub state: AgentState,
    /// The stop under way, while stopping.
    pub stop: Option<StopInfo>,
    /// The process while it has not been reaped (a zombie of another parent
    /// stays here after its end, so it is shown as one).
    pub proc_: Option<Arc<Proc>>,
    pub pid: Option<i32>,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Seconds it ran, once it has ended (or is known to have).
    pub runtime_at_end: Option<f64>,
    pub exit: Option<ExitKind>,
    pub end_reason: Option<String>,
    pub progress: Option<u8>,
    pub progress_message: Option<String>,
    pub progress_at: Option<String>,
    pub next_restart_at: Option<String>,
    /// `cgroup` or `process-group`.
    pub containment: &'static str,
    pub ready: Option<bool>,
    pub probes: Option<Arc<super::probes::ProbeCell>>,
    pub limits: std::collections::BTreeMap<String, LimitState>,
    /// The run's job, when it is placed on a cluster engine.
    pub job: Option<JobView>,
    /// Seconds the run's finished pauses took.
    pub paused_s: f64,
    /// Since when it is paused, while it is (wall clock).
    pub paused_since: Option<std::time::SystemTime>,
    /// `paused_s` when progress was last reported: the pauses since then are
    /// left out of `progress_stale_s`'s clock (0 when not known: a report
    /// recovered from the store counts every pause of the run as later).
    pub progress_paused_s: f64,
}

/// What readers see of a run's job on a cluster engine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobView {
    /// Engine, job id, node, pending reason.
    pub info: PlacementInfo,
    /// The engine says it runs.
    pub running: bool,
    /// When it was first seen running (wall clock).
    pub since: Option<std::time::SystemTime>,
    /// The engine's latest figures.
    pub sample: Option<super::execution::slurm::JobSample>,
}

impl JobView {
    /// A job as on record: not seen running yet.
    pub(crate) fn of(job: &crate::store::JobRecord) -> Self {
        Self {
            info: PlacementInfo {
                engine: job.engine.clone(),
                job_id: job.job_id.clone(),
                node: job.node.clone(),
                pending_reason: None,
            },
            running: false,
            since: None,
            sample: None,
        }
    }
}

impl View {
    /// The view of a stored run that has no process (ended, or not yet started).
    pub(crate) fn from_record(rec: &RunRecord, spec: Arc<Spec>) -> Self {
        let exit = match (rec.exit_code, rec.exit_signal) {
            (Some(c), _) => Some(ExitKind::Code(c)),
            (None, Some(s)) => Some(ExitKind::Signal(s)),
            _ => None,
        };
        Self {
            id: spec.id.clone(),
            spec,
            run_id: rec.run_id,
            run: rec.run,
            log_dir: rec.log_dir.clone(),
            status: rec.status,
            state: rec.state.unwrap_or(if rec.status.is_live() {
                AgentState::Starting
            } else {
                AgentState::Ended
            }),
            stop: None,
            proc_: None,
            pid: rec.pid,
            started_at: rec.started_at.clone(),
            ended_at: rec.ended_at.clone(),
            runtime_at_end: rec
                .ended_at
                .as_deref()
                .map(|end| seconds_between(&rec.started_at, end)),
            exit,
            end_reason: rec.end_reason.clone(),
            progress: rec.progress,
            progress_message: rec.progress_message.clone(),
            progress_at: rec.progress_at.clone(),
            next_restart_at: rec.next_restart_at.clone(),
            containment: if rec.job.is_some() {
                "slurm"
            } else {
                "process-group"
            },
            // Not ready until a check passes; never once ended.
            ready: rec
                .spec
                .probes
                .as_ref()
                .and_then(|p| p.readiness.as_ref())
                .map(|_| false),
            probes: None,
            limits: Default::default(),
            job: rec.job.as_ref().map(JobView::of),
            paused_s: rec.paused_s,
            paused_since: rec
                .paused_at
                .as_deref()
                .filter(|_| rec.state == Some(AgentState::Paused))
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
            progress_paused_s: 0.0,
        }
    }

    /// Seconds the run has spent paused, the pause under way included.
    pub(crate) fn paused_total_s(&self) -> f64 {
        let now = self.paused_since.map_or(0.0, |since| {
            std::time::SystemTime::now()
                .duration_since(since)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        self.paused_s + now
    }

    pub(crate) fn stdout_log(&self) -> PathBuf {
        self.log_dir.join("stdout.log")
    }

    pub(crate) fn stderr_log(&self) -> PathBuf {
        self.log_dir.join("stderr.log")
    }

    /// The status the API reports, from this view and the process as it is now.
    pub(crate) fn status(&self) -> AgentStatus {
        self.status_of(&|_| true)
    }

    /// The status with only the fields `want` names filled in (the others
    /// keep cheap defaults that nobody reads: a listing with `fields` writes
    /// only those). The live check of the process is made only when a field
    /// that depends on it is wanted.
    pub(crate) fn status_of(&self, want: &dyn Fn(&str) -> bool) -> AgentStatus {
        if let Some(job) = &self.job {
            return self.job_status(job);
        }
        const LIVE: [&str; 9] = [
            "process_alive",
            "process_status",
            "is_zombie",
            "cpu_percent",
            "memory_mb",
            "runtime_seconds",
            "num_threads",
            "health",
            "tree",
        ];
        if !LIVE.iter().any(|f| want(f)) {
            return self.ended_status_of(want);
        }
        let live = self.proc_.as_ref();
        let exited = live.is_some_and(|p| p.handle.has_exited());
        let process_alive = live.is_some() && !exited;
        // Exited and not reaped: ours until its end is on record, or another
        // parent's that does not reap it (a re-adopted agent).
        let is_zombie = exited && live.is_some_and(|p| p.is_zombie());
        let sample = live.and_then(|p| p.sample()).filter(|_| process_alive);
        let process_status = if is_zombie {
            "zombie"
        } else if process_alive {
            sample.map_or("running", |s| platform::psutil_status(s.state))
        } else {
            "dead"
        };
        let runtime_seconds = match (live, self.runtime_at_end) {
            (Some(p), _) if !exited => platform::boottime_seconds() - p.started_s,
            (_, Some(r)) => r,
            (Some(p), None) => platform::boottime_seconds() - p.started_s,
            (None, None) => 0.0,
        }
        .max(0.0);
        let mut status = self.ended_status_of(want);
        status.process_alive = process_alive;
        status.process_status = process_status.to_owned();
        status.is_zombie = is_zombie;
        status.cpu_percent = sample.map_or(0.0, |s| s.cpu_percent);
        status.memory_mb = sample.map_or(0.0, |s| s.memory_mb);
        status.runtime_seconds = runtime_seconds;
        status.num_threads = sample.map_or(0, |s| s.num_threads);
        status.health = self.health(
            process_alive,
            is_zombie,
            status.exit_code,
            status.exit_signal,
        );
        status.tree = sample.map(|s| s.tree);
        status
    }

    /// The status of a run placed on an engine: `pid` null, the figures the
    /// engine gives, `process_status` `running`, `pending` or `dead`.
    fn job_status(&self, job: &JobView) -> AgentStatus {
        let alive = job.running && self.status.is_live();
        let mut status = self.ended_status();
        let sample = job.sample.filter(|_| alive);
        status.process_alive = alive;
        status.process_status = if alive {
            "running"
        } else if self.status.is_live() {
            "pending"
        } else {
            "dead"
        }
        .to_owned();
        status.cpu_percent = sample.map_or(0.0, |s| s.cpu_percent);
        status.memory_mb = sample.map_or(0.0, |s| s.memory_mb);
        status.runtime_seconds = match (alive, job.since, self.runtime_at_end) {
            (true, Some(since), _) => std::time::SystemTime::now()
                .duration_since(since)
                .map_or(0.0, |d| d.as_secs_f64()),
            (_, _, Some(r)) => r,
            _ => 0.0,
        };
        status.health = self.health(alive, false, status.exit_code, status.exit_signal);
        status.placement = Some(job.info.clone());
        status.containment = "slurm".to_owned();
        status
    }

    /// The status with no process to look at: what is on record.
    fn ended_status(&self) -> AgentStatus {
        self.ended_status_of(&|_| true)
    }

    /// [`View::ended_status`] with the costly fields (copies, quoting, path
    /// joins) filled in only when `want` names them.
    fn ended_status_of(&self, want: &dyn Fn(&str) -> bool) -> AgentStatus {
        let (exit_code, exit_signal) = match self.exit {
            Some(ExitKind::Code(c)) => (Some(c), None),
            Some(ExitKind::Signal(s)) => (None, Some(s)),
            None => (None, None),
        };
        AgentStatus {
            agent_id: self.id.to_string(),
            pid: self.pid,
            process_alive: false,
            process_status: "dead".to_owned(),
            exit_code,
            is_zombie: false,
            cpu_percent: 0.0,
            memory_mb: 0.0,
            runtime_seconds: self.runtime_at_end.unwrap_or(0.0),
            num_threads: 0,
            cmdline: if want("cmdline") {
                quote_argv(&self.spec.request.command)
            } else {
                String::new()
            },
            health: self.health(false, false, exit_code, exit_signal),
            persistent_status: self.status,
            state: self.state,
            stop: if want("stop") {
                self.stop.clone()
            } else {
                None
            },
            started_at: if want("started_at") {
                self.started_at.clone()
            } else {
                String::new()
            },
            progress: self.progress,
            progress_message: if want("progress_message") {
                self.progress_message.clone()
            } else {
                None
            },
            progress_at: if want("progress_at") {
                self.progress_at.clone()
            } else {
                None
            },
            exit_signal,
            ended_at: if want("ended_at") {
                self.ended_at.clone()
            } else {
                None
            },
            end_reason: if want("end_reason") {
                self.end_reason.clone()
            } else {
                None
            },
            run: self.run,
            restarts: self.run.saturating_sub(1),
            next_restart_at: if want("next_restart_at") {
                self.next_restart_at.clone()
            } else {
                None
            },
            restart_policy: if want("restart_policy") {
                self.spec.restart.policy.as_str().to_owned()
            } else {
                String::new()
            },
            stop_timeouts: if want("stop_timeouts") {
                self.spec.stop_timeouts.to_vec()
            } else {
                Vec::new()
            },
            ready: self.ready,
            probe: if want("probe") {
                self.probes.as_ref().map(|c| super::lock(c).clone())
            } else {
                None
            },
            limits: if want("limits") {
                self.limits.clone()
            } else {
                Default::default()
            },
            labels: if want("labels") {
                self.spec.request.labels.clone()
            } else {
                Default::default()
            },
            stdout_log: if want("stdout_log") {
                self.stdout_log()
            } else {
                PathBuf::new()
            },
            stderr_log: if want("stderr_log") {
                self.stderr_log()
            } else {
                PathBuf::new()
            },
            containment: if want("containment") {
                self.containment.to_owned()
            } else {
                String::new()
            },
            user: if want("user") {
                self.spec.user.name().map(str::to_owned)
            } else {
                None
            },
            placement: None,
            tree: None,
        }
    }

    fn health(
        &self,
        alive: bool,
        zombie: bool,
        exit_code: Option<i32>,
        exit_signal: Option<i32>,
    ) -> Health {
        if alive && self.state == AgentState::Paused {
            return Health::Paused;
        }
        if alive {
            return Health::Healthy;
        }
        if zombie {
            return Health::Zombie;
        }
        match self.status {
            PersistentStatus::Completed => Health::Completed,
            PersistentStatus::Cancelled => Health::Cancelled,
            PersistentStatus::Failed
                if exit_code.is_some() || exit_signal.is_some() || self.pid.is_none() =>
            {
                Health::Failed
            }
            _ => Health::Unknown,
        }
    }

    /// The spawn answer, from this view (one snapshot: status and exit agree).
    pub(crate) fn spawn_response(&self, error: Option<String>) -> SpawnResponse {
        let (exit_code, exit_signal) = match self.exit {
            Some(ExitKind::Code(c)) => (Some(c), None),
            Some(ExitKind::Signal(s)) => (None, Some(s)),
            None => (None, None),
        };
        SpawnResponse {
            agent_id: self.id.to_string(),
            run: self.run,
            pid: self.pid,
            status: self.status,
            started_at: self.started_at.clone(),
            stdout_log: self.stdout_log(),
            stderr_log: self.stderr_log(),
            exit_code,
            exit_signal,
            error,
            placement: self.job.as_ref().map(|j| j.info.clone()),
        }
    }
}

/// Seconds from one RFC 3339 time to another (0 when either does not parse).
pub(crate) fn seconds_between(start: &str, end: &str) -> f64 {
    let start = humantime::parse_rfc3339_weak(start).ok();
    let end = humantime::parse_rfc3339_weak(end).ok();
    match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s).map_or(0.0, |d| d.as_secs_f64()),
        _ => 0.0,
    }
}

/// The published state of one agent id: its last committed view (none before
/// the first commit of a new id), and whether an owner still supervises it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    pub view: Option<Arc<View>>,
    /// An owner is at work (starting, running, stopping, waiting to restart):
    /// the id is taken.
    pub busy: bool,
}
