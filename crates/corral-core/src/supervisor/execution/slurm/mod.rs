//! Slurm, driven through its own command-line tools.
//!
//! One [`Slurm`] per supervisor, started on first use. It owns every call to
//! the engine, and batches them: whatever number of agents are on Slurm,
//! - **one poll per interval** (`squeue -h -t all -j ID,ID,…`) gives every
//!   job's state, node and pending reason; the jobs seen ending in it get their
//!   raw wait status from one `squeue --json`, and jobs the controller has
//!   already forgotten (after `MinJobAge`) theirs from one `sacct -c` (the
//!   job-completion log); every few seconds one `sstat` gives the running jobs'
//!   CPU time and peak memory;
//! - **signals are coalesced**: the staged stops of a thousand agents become
//!   one `scancel` per kind of signal.
//!
//! Each job's owner (an agent's actor) subscribes to its job's [`JobInfo`] and
//! is woken when it changes; an owner that needs a look *after* some moment
//! (the end of a verification window) asks for a [`Slurm::fresh`] poll. Polls
//! run every 100 ms while any job is starting, verifying or stopping, and at
//! the sampling interval otherwise. Every command has a timeout: with the
//! controller down, `squeue` and `sbatch` block ~9 s before failing, and a
//! failed poll changes nothing (a job is never taken for ended because the
//! engine did not answer).
//!
//! A job id is unique only within one life of the engine's state (a wiped
//! state dir starts again at 1), so a job is recognised by its id *and* its
//! name (the agent id) and comment (a tag made for the run).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::model::SlurmPlacement;
use crate::platform::ExitKind;

mod parse;

use super::super::helper::{self, Helper, Output};
use super::super::{Shared, lock};
pub(crate) use parse::decode_wait_status;
use parse::{Class, Row, classify, exit_code_field, parse_exit_pair, parse_squeue, parse_sstat};

/// Poll interval while any job is starting, verifying or stopping.
const FAST: Duration = Duration::from_millis(100);
/// How often `sstat` is asked for running jobs' figures (Slurm itself gathers
/// them every `JobAcctGatherFrequency`, 30 s by default).
const SSTAT_EVERY: Duration = Duration::from_secs(5);
/// Longest an engine command may take (a dead controller takes ~9 s to refuse).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Most output kept from one command.
const OUTPUT_LIMIT: usize = 64 << 20;

/// Where a job is, as last seen.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobState {
    /// Not looked at yet.
    Unknown,
    /// Queued: why the engine has not started it.
    Pending { reason: String },
    /// Allocated and running (or completing) on `node`.
    Running { node: String },
    /// Ended, as the engine says: its final state word, reason and exit.
    Ended {
        state: String,
        reason: String,
        exit: Option<ExitKind>,
        node: Option<String>,
    },
    /// The engine knows no such job (or the id is now another job's).
    Gone,
}

/// A job's latest state and figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobInfo {
    pub state: JobState,
    pub sample: Option<JobSample>,
}

/// A running job's figures, from `sstat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct JobSample {
    /// Percent of one CPU between the last two samples.
    pub cpu_percent: f64,
    /// Peak RSS of the batch step, MiB.
    pub memory_mb: f64,
}

/// How to stop a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Stop {
    /// SIGTERM to the batch script and its children, every step.
    Term,
    /// SIGKILL to the whole batch step (its cgroup), then to every step.
    Kill,
    /// A job that has not started: take it out of the queue.
    Cancel,
}

/// What a job is submitted with.
pub(crate) struct Submission {
    /// Job name: the agent id.
    pub name: String,
    /// Job comment: the run's tag.
    pub tag: String,
    pub script: PathBuf,
    pub cwd: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub placement: SlurmPlacement,
}

struct Watched {
    tx: watch::Sender<JobInfo>,
    name: String,
    tag: String,
    /// Its owner wants it looked at often.
    urgent: bool,
    /// CPU seconds at the last `sstat`, and when.
    cpu: Option<(f64, Instant)>,
}

/// The engine: its jobs, its poller and its signaller.
pub(crate) struct Slurm {
    sh: Weak<Shared>,
    jobs: Mutex<HashMap<String, Watched>>,
    /// Poll now.
    wake: Arc<Notify>,
    /// When the latest finished poll began.
    polled: watch::Sender<Option<Instant>>,
    signals: Mutex<Vec<(String, Stop)>>,
    signal_wake: Arc<Notify>,
    /// The latest scan of this host's processes that belong to runs, shared
    /// by every stop that looks for leftovers.
    local: tokio::sync::Mutex<Option<(Instant, Arc<LocalRuns>)>>,
    /// This host's short name: jobs on it can be checked in `/proc`.
    pub host: String,
}

impl Slurm {
    /// Starts the engine's poller and signaller for this supervisor.
    pub(crate) fn start(sh: &Arc<Shared>) -> Arc<Self> {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .split('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let slurm = Arc::new(Self {
            sh: Arc::downgrade(sh),
            jobs: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            polled: watch::channel(None).0,
            signals: Mutex::new(Vec::new()),
            signal_wake: Arc::new(Notify::new()),
            local: tokio::sync::Mutex::new(None),
            host,
        });
        let interval = sh.config.sample_interval.max(Duration::from_millis(500));
        tokio::spawn(poll_loop(Arc::downgrade(&slurm), interval));
        tokio::spawn(signal_loop(Arc::downgrade(&slurm)));
        slurm
    }

    /// Submits a job; its id.
    pub(crate) async fn submit(&self, sub: Submission) -> Result<String, String> {
        let sh = self.shared()?;
        let p = &sub.placement;
        let mut argv = vec![
            "sbatch".to_owned(),
            "--parsable".into(),
            format!("--job-name={}", sub.name),
            format!("--comment={}", sub.tag),
            format!("--chdir={}", sub.cwd.display()),
            format!("--output={}", sub.stdout.display()),
            format!("--error={}", sub.stderr.display()),
            "--open-mode=append".into(),
            "--export=ALL".into(),
        ];
        argv.extend(p.partition.as_ref().map(|v| format!("--partition={v}")));
        argv.extend(p.nodes.as_ref().map(|v| format!("--nodelist={v}")));
        argv.extend(p.cpus.map(|v| format!("--cpus-per-task={v}")));
        argv.extend(p.mem_mb.map(|v| format!("--mem={v}M")));
        argv.extend(p.time_limit.as_ref().map(|v| format!("--time={v}")));
        // corral's restart policy owns what follows a failed node unless the
        // agent lets the engine requeue its job (then the same run waits again).
        argv.push(
            if p.requeue == Some(true) {
                "--requeue"
            } else {
                "--no-requeue"
            }
            .into(),
        );
        argv.push(sub.script.display().to_string());
        let out = command(&sh, argv).await?;
        if !out.success() {
            return Err(format!("sbatch refused the job: {}", out.error_text()));
        }
        // `--parsable` prints `ID` or `ID;CLUSTER`.
        let text = out.text();
        let id = text.trim().split(';').next().unwrap_or_default().to_owned();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
            return Err(format!("sbatch answered {:?}, not a job id", text.trim()));
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Follows job `id` (named `name`, tagged `tag`): its state from the next poll on.
    pub(crate) fn watch(&self, id: &str, name: &str, tag: &str) -> watch::Receiver<JobInfo> {
        let mut jobs = lock(&self.jobs);
        let w = jobs.entry(id.to_owned()).or_insert_with(|| Watched {
            tx: watch::channel(JobInfo {
                state: JobState::Unknown,
                sample: None,
            })
            .0,
            name: name.to_owned(),
            tag: tag.to_owned(),
            urgent: true,
            cpu: None,
        });
        self.wake.notify_one();
        w.tx.subscribe()
    }

    /// Stops following job `id`.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.jobs).remove(id);
    }

    /// Polls job `id` often (starting, verifying, stopping) or not.
    pub(crate) fn urgent(&self, id: &str, urgent: bool) {
        if let Some(w) = lock(&self.jobs).get_mut(id) {
            w.urgent = urgent;
        }
        if urgent {
            self.wake.notify_one();
        }
    }

    /// Returns once a poll that began after this call has finished.
    pub(crate) async fn fresh(&self) {
        let after = Instant::now();
        let mut rx = self.polled.subscribe();
        self.wake.notify_one();
        let _ = rx.wait_for(|p| p.is_some_and(|at| at >= after)).await;
    }

    /// Queues a signal (or a cancel) for job `id`; sent with every other queued one.
    pub(crate) fn signal(&self, id: &str, how: Stop) {
        lock(&self.signals).push((id.to_owned(), how));
        self.signal_wake.notify_one();
    }

    /// Finds the job of a run whose submission was never recorded: its name
    /// and tag, among the jobs the engine knows.
    pub(crate) async fn find(&self, name: &str, tag: &str) -> Result<Option<String>, String> {
        let sh = self.shared()?;
        let argv = ["squeue", "-h", "-t", "all", "--name", name, "-o", "%i|%k"]
            .map(String::from)
            .to_vec();
        let out = command(&sh, argv).await?;
        if !out.success() {
            return Err(format!("squeue failed: {}", out.error_text()));
        }
        Ok(out.text().lines().find_map(|l| {
            let (id, comment) = l.split_once('|')?;
            (comment.trim() == tag).then(|| id.trim().to_owned())
        }))
    }

    /// This host's live processes of runs (their `CORRAL_AGENT_ID` and
    /// `CORRAL_RUN_ID`), from a scan begun at or after `after`: one scan
    /// however many stops ask at once (blocking work, on a blocking thread).
    pub(crate) async fn local_runs(&self, after: Instant) -> Arc<LocalRuns> {
        let mut latest = self.local.lock().await;
        if let Some((at, runs)) = latest.as_ref()
            && *at >= after
        {
            return runs.clone();
        }
        let at = Instant::now();
        let runs = Arc::new(
            tokio::task::spawn_blocking(scan_local_runs)
                .await
                .unwrap_or_default(),
        );
        *latest = Some((at, runs.clone()));
        runs
    }

    fn shared(&self) -> Result<Arc<Shared>, String> {
        self.sh
            .upgrade()
            .ok_or_else(|| "the supervisor has shut down".to_owned())
    }

    /// One poll of every followed job.
    async fn poll(&self, sh: &Arc<Shared>, sample: bool) -> Result<(), String> {
        let ids: Vec<(String, String, String)> = lock(&self.jobs)
            .iter()
            .map(|(id, w)| (id.clone(), w.name.clone(), w.tag.clone()))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let rows = self.squeue(sh, &ids).await?;
        let (mut states, ended, missing) = sort_rows(&ids, &rows);
        if !ended.is_empty() {
            let exits = self.exits_from_json(sh).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read exit statuses from squeue --json");
                HashMap::new()
            });
            for (id, row) in ended {
                let exit = exits.get(&id).and_then(|&raw| decode_wait_status(raw));
                states.insert(
                    id,
                    JobState::Ended {
                        state: row.state,
                        reason: row.reason,
                        exit,
                        node: (!row.node.is_empty()).then_some(row.node),
                    },
                );
            }
        }
        if !missing.is_empty() {
            for (id, state) in self.ends_from_completion_log(sh, &missing).await? {
                states.insert(id, state);
            }
        }
        let samples = if sample {
            let running: Vec<&str> = states
                .iter()
                .filter(|(_, s)| matches!(s, JobState::Running { .. }))
                .map(|(id, _)| id.as_str())
                .collect();
            self.sstat(sh, &running).await
        } else {
            HashMap::new()
        };
        self.publish(states, &samples);
        Ok(())
    }

    /// `squeue` on the followed jobs: a row per job the controller still knows.
    async fn squeue(
        &self,
        sh: &Arc<Shared>,
        ids: &[(String, String, String)],
    ) -> Result<HashMap<String, Row>, String> {
        let list = ids
            .iter()
            .map(|(id, _, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let argv = [
            "squeue",
            "-h",
            "-t",
            "all",
            "-j",
            &list,
            "-o",
            "%i|%j|%T|%N|%r|%k",
        ]
        .map(String::from)
        .to_vec();
        let out = command(sh, argv).await?;
        // A single unknown id is an error ("Invalid job id specified"): that job is gone.
        if !out.success() && !out.error_text().contains("Invalid job id") {
            return Err(format!("squeue failed: {}", out.error_text()));
        }
        Ok(parse_squeue(&out.text()))
    }

    /// Hands each followed job its new state and figures; its owner is woken
    /// only when something changed.
    fn publish(&self, states: HashMap<String, JobState>, samples: &HashMap<String, (f64, f64)>) {
        let now = Instant::now();
        let mut jobs = lock(&self.jobs);
        for (id, state) in states {
            let Some(w) = jobs.get_mut(&id) else { continue };
            let sample = samples.get(&id).map(|&(cpu_s, memory_mb)| {
                let cpu_percent = match w.cpu {
                    Some((prev, at)) if now > at => {
                        ((cpu_s - prev).max(0.0) / (now - at).as_secs_f64()) * 100.0
                    }
                    _ => 0.0,
                };
                w.cpu = Some((cpu_s, now));
                JobSample {
                    cpu_percent,
                    memory_mb,
                }
            });
            w.tx.send_if_modified(|info| {
                let mut changed = false;
                if info.state != state {
                    info.state = state;
                    changed = true;
                }
                if let Some(s) = sample
                    && info.sample != Some(s)
                {
                    info.sample = Some(s);
                    changed = true;
                }
                changed
            });
        }
    }

    /// Raw wait statuses of every job the controller holds (`squeue --json`
    /// lists them all, whatever `-j` says).
    async fn exits_from_json(&self, sh: &Arc<Shared>) -> Result<HashMap<String, i64>, String> {
        let out = command(sh, vec!["squeue".into(), "--json".into()]).await?;
        if !out.success() {
            return Err(out.error_text());
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
        Ok(doc
            .get("jobs")
            .and_then(|j| j.as_array())
            .into_iter()
            .flatten()
            .filter_map(|job| {
                let id = job.get("job_id")?.as_i64()?.to_string();
                Some((id, exit_code_field(job.get("exit_code")?)?))
            })
            .collect())
    }

    /// How jobs the controller no longer holds ended: the job-completion log
    /// (`sacct -c`), matched by id and name (ids repeat across engine lives).
    async fn ends_from_completion_log(
        &self,
        sh: &Arc<Shared>,
        missing: &[(String, String)],
    ) -> Result<Vec<(String, JobState)>, String> {
        let list = missing
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let argv = [
            "sacct",
            "-c",
            "-n",
            "-P",
            "-j",
            &list,
            "--format=JobID,JobName,State,ExitCode,NodeList",
        ]
        .map(String::from)
        .to_vec();
        let out = command(sh, argv).await?;
        if !out.success() {
            return Err(format!("sacct -c failed: {}", out.error_text()));
        }
        let text = out.text();
        Ok(missing
            .iter()
            .map(|(id, name)| {
                // The last line for this id and name: the latest job of that id.
                let found = text.lines().rev().find_map(|l| {
                    let f: Vec<&str> = l.split('|').collect();
                    (f.len() >= 4 && f[0] == id && f[1] == name).then(|| {
                        let state = f[2].split_whitespace().next().unwrap_or("").to_owned();
                        JobState::Ended {
                            exit: parse_exit_pair(f[3], &state),
                            reason: String::new(),
                            node: f.get(4).filter(|n| !n.is_empty()).map(|n| (*n).to_owned()),
                            state,
                        }
                    })
                });
                (id.clone(), found.unwrap_or(JobState::Gone))
            })
            .collect())
    }

    /// CPU seconds and peak MiB of running jobs' batch steps.
    async fn sstat(&self, sh: &Arc<Shared>, ids: &[&str]) -> HashMap<String, (f64, f64)> {
        if ids.is_empty() {
            return HashMap::new();
        }
        let list = ids
            .iter()
            .map(|id| format!("{id}.batch"))
            .collect::<Vec<_>>()
            .join(",");
        let argv = [
            "sstat",
            "-n",
            "-P",
            "--noconvert",
            "-j",
            &list,
            "--format=JobID,AveCPU,MaxRSS",
        ]
        .map(String::from)
        .to_vec();
        match command(sh, argv).await {
            Ok(out) => parse_sstat(&out.text()),
            Err(e) => {
                tracing::debug!(error = %e, "sstat failed");
                HashMap::new()
            }
        }
    }
}

/// Runs one engine command with the daemon's environment.
async fn command(sh: &Arc<Shared>, argv: Vec<String>) -> Result<Output, String> {
    let helper = Helper {
        argv,
        envp: helper::daemon_env(sh),
        cwd: PathBuf::from("/"),
        credentials: None,
        merge_stderr: false,
    };
    helper::run(sh, helper, COMMAND_TIMEOUT, OUTPUT_LIMIT)
        .await
        .map_err(|e| e.to_string())
}

async fn poll_loop(weak: Weak<Slurm>, interval: Duration) {
    let mut last_sstat = Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        let Some(slurm) = weak.upgrade() else { return };
        let Some(sh) = slurm.sh.upgrade() else { return };
        if *sh.shutdown.borrow() {
            return;
        }
        let (empty, urgent) = {
            let jobs = lock(&slurm.jobs);
            (jobs.is_empty(), jobs.values().any(|w| w.urgent))
        };
        let began = Instant::now();
        let sample = began.duration_since(last_sstat) >= SSTAT_EVERY;
        if sample {
            last_sstat = began;
        }
        match slurm.poll(&sh, sample).await {
            Ok(()) => last_error = None,
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot poll Slurm; keeping the jobs' last known states");
                }
                last_error = Some(e);
            }
        }
        slurm.polled.send_replace(Some(began));
        let pause = if urgent { FAST } else { interval };
        // A wake-up sent meanwhile is kept as a permit: none is lost.
        let wake = slurm.wake.clone();
        drop((slurm, sh));
        let pause = if empty { interval } else { pause };
        let _ = tokio::time::timeout(pause, wake.notified()).await;
    }
}

async fn signal_loop(weak: Weak<Slurm>) {
    loop {
        let Some(slurm) = weak.upgrade() else { return };
        let queued = std::mem::take(&mut *lock(&slurm.signals));
        if queued.is_empty() {
            let wake = slurm.signal_wake.clone();
            drop(slurm);
            // Bounded, so the task notices when the supervisor is gone.
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        }
        let Some(sh) = slurm.sh.upgrade() else { return };
        let mut by_kind: HashMap<Stop, Vec<String>> = HashMap::new();
        for (id, how) in queued {
            let ids = by_kind.entry(how).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        for (how, ids) in by_kind {
            let flags: &[&[&str]] = match how {
                Stop::Term => &[&["--signal=TERM", "--full"]],
                // `--batch` KILLs the batch step's whole cgroup at once; `--full`
                // alone would be a cancel that waits `KillWait` first.
                Stop::Kill => &[&["--signal=KILL", "--batch"], &["--signal=KILL", "--full"]],
                Stop::Cancel => &[&[]],
            };
            for f in flags {
                let mut argv = vec!["scancel".to_owned()];
                argv.extend(f.iter().map(|s| (*s).to_owned()));
                argv.extend(ids.iter().cloned());
                match command(&sh, argv).await {
                    // A job that ended meanwhile makes scancel complain: expected.
                    Ok(out) if !out.success() => {
                        tracing::debug!(?how, error = %out.error_text(), "scancel said")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(?how, error = %e, "cannot signal Slurm jobs"),
                }
            }
        }
        slurm.wake.notify_one();
    }
}

/// The followed jobs (id, name, tag) sorted by what `squeue` says of them:
/// known states, ended jobs (their rows), and jobs it no longer knows (id, name).
type Sorted = (
    HashMap<String, JobState>,
    Vec<(String, Row)>,
    Vec<(String, String)>,
);

fn sort_rows(ids: &[(String, String, String)], rows: &HashMap<String, Row>) -> Sorted {
    let mut states: HashMap<String, JobState> = HashMap::new();
    let (mut ended, mut missing) = (Vec::new(), Vec::new());
    for (id, name, tag) in ids {
        match rows.get(id) {
            Some(row) if row.name != *name || row.comment != *tag => {
                states.insert(id.clone(), JobState::Gone);
            }
            Some(row) => match classify(&row.state) {
                Class::Pending => {
                    let reason = row.reason.clone();
                    states.insert(id.clone(), JobState::Pending { reason });
                }
                Class::Running => {
                    let node = row.node.clone();
                    states.insert(id.clone(), JobState::Running { node });
                }
                Class::Ended => ended.push((id.clone(), row.clone())),
            },
            None => missing.push((id.clone(), name.clone())),
        }
    }
    (states, ended, missing)
}

/// Live processes by (agent id, run id): identity (pid, start ticks).
pub(crate) type LocalRuns = HashMap<(String, String), Vec<(i32, u64)>>;

fn scan_local_runs() -> LocalRuns {
    let mut runs = LocalRuns::new();
    for p in crate::platform::process_table() {
        if p.state == 'Z' {
            continue;
        }
        let Some(run) = crate::platform::environ_var(p.pid, "CORRAL_RUN_ID") else {
            continue;
        };
        if let Some(agent) = crate::platform::environ_agent_id(p.pid) {
            runs.entry((agent, run))
                .or_default()
                .push((p.pid, p.start_ticks));
        }
    }
    runs
}
