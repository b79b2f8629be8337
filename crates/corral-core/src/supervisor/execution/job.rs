//! A run as a cluster job (see the seam in `execution/mod.rs`): the same
//! owner and the same lifecycle as a local run, with each step done through
//! the engine (the owner's side is `owner/job.rs`).
//!
//! - **Start**: the run's files and a batch script (`job.sh` in the run's log
//!   dir: the request's environment, `CORRAL_AGENT_ID`, `CORRAL_RUN_ID`, then
//!   `exec` of the argv, every word quoted) are created on a blocking thread,
//!   the job submitted, its id committed. The agent stays `starting` while the
//!   job is queued (its status says why); the spawn is answered once the job
//!   ran through its verification window, or ended, or after
//!   [`PENDING_ANSWER`] in the queue (status `spawning`, the pending reason).
//! - **Verify**: the window opens when a poll first sees the job RUNNING; it
//!   is verified when a poll begun after the window still does.
//! - **Stop**: the same three stages, as `scancel` calls (TERM to the batch
//!   script and its children; the same again; SIGKILL to the batch step's
//!   cgroup and every step); a job not yet running is cancelled. Each stage
//!   ends early when the engine reports the job ended. On this host, the stop
//!   ends only once no process of the run is left in `/proc` (found by the
//!   `CORRAL_RUN_ID` and `CORRAL_AGENT_ID` in their environment): the engine
//!   can call a job cancelled while a late-launched copy still runs, and such
//!   leftovers are killed.
//! - **End**: the exit comes from the engine (the raw wait status of
//!   `squeue --json`, or the job-completion log once the controller has
//!   forgotten the job); engine-side ends (time limit, node failure — naming
//!   the node —, launch failure, a cancel from outside) are said so in
//!   `end_reason`. Jobs are submitted `--no-requeue` unless the placement asks
//!   for `requeue`, so a failed node ends the run and the restart policy, not
//!   the engine, decides what follows.
//! - **Requeue**: a job seen queued again after it had started (requeued by
//!   an admin, a preemption, or a failed node when `requeue` is on) takes the
//!   same run back to `starting`; it is verified anew when it runs again.
//! - **Adopt**: a restarted daemon follows the job by its id, name and tag; a
//!   job that ended meanwhile gets its real exit from the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::model::StopStage;
use crate::platform::{self, ExitKind};
use crate::store::JobRecord;

use super::super::Shared;
use super::local::StartError;
use super::slurm::{JobInfo, JobState, Slurm, Stop};
use super::{Event, Look};

/// How long a spawn waits for a queued job before answering `spawning`.
pub(crate) const PENDING_ANSWER: Duration = Duration::from_secs(5);
/// How long after its SIGKILL stage a job gets for the engine to report its end.
const KILL_SETTLE: Duration = Duration::from_secs(5);
/// How often a stop looks again for processes of an ended job on this host.
const RECHECK: Duration = Duration::from_millis(50);

/// The current run's job.
pub(crate) struct JobRun {
    pub engine: Arc<Slurm>,
    pub record: JobRecord,
    rx: watch::Receiver<JobInfo>,
    /// The latest state taken from the engine.
    pub info: JobInfo,
    /// When it was first seen running (monotonic, for the runtime limit).
    pub running_since: Option<Instant>,
    /// The engine has reported its end.
    pub ended: bool,
    /// Its end is on record.
    pub recorded: bool,
    /// When a spawn still waiting is answered, while the job is queued (the
    /// timer runs only while a spawn waits).
    pub answer_by: Instant,
    /// The run's row, for finding its processes on this host.
    run_id: i64,
    /// The run's probes, when it has any (dropped, they end).
    pub probes: Option<super::super::probes::Registration>,
    /// The stop stage whose `scancel` has gone out.
    opened: Option<StopStage>,
    /// When it went out.
    last_signal: Option<Instant>,
    /// Look again then (processes of the ended job still on this host).
    recheck: Option<Instant>,
}

impl Drop for JobRun {
    fn drop(&mut self) {
        self.stop_probes();
        self.engine.forget(&self.record.job_id);
    }
}

impl JobRun {
    pub(crate) fn new(engine: Arc<Slurm>, record: JobRecord, run_id: i64, agent_id: &str) -> Self {
        let rx = engine.watch(&record.job_id, agent_id, &record.tag);
        let info = rx.borrow().clone();
        Self {
            info,
            rx,
            engine,
            record,
            running_since: None,
            ended: false,
            recorded: false,
            answer_by: Instant::now() + PENDING_ANSWER,
            run_id,
            probes: None,
            opened: None,
            last_signal: None,
            recheck: None,
        }
    }

    /// Ends the run's probe checks.
    pub(crate) fn stop_probes(&mut self) {
        self.probes = None;
    }

    pub(crate) fn running(&self) -> bool {
        matches!(self.info.state, JobState::Running { .. })
    }

    /// The engine queued the started job again: not running, not on a node,
    /// and a stop's stage goes out again (as a cancel). The node it left.
    pub(crate) fn requeued(&mut self) -> Option<String> {
        self.running_since = None;
        self.opened = None;
        self.stop_probes();
        self.record.node.take()
    }

    /// Whether it has started on a node (so a stop signals, not cancels).
    pub(crate) fn has_run(&self) -> bool {
        self.running_since.is_some() || self.running()
    }

    fn on_this_host(&self) -> bool {
        self.record.node.as_deref() == Some(self.engine.host.as_str())
    }

    /// The engine's latest word on the job (and marks it seen).
    pub(crate) fn take_info(&mut self) -> JobInfo {
        let info = self.rx.borrow_and_update().clone();
        self.info = info.clone();
        info
    }

    /// Whether the engine has said something not taken yet.
    pub(crate) fn has_news(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Resolves when the job's state changes, or a stop's recheck is due.
    pub(crate) async fn event(&mut self) -> Event {
        let recheck = self.recheck;
        tokio::select! {
            r = self.rx.changed() => {
                if r.is_err() {
                    std::future::pending::<()>().await;
                }
                Event::Job
            }
            () = async {
                match recheck {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                self.recheck = None;
                Event::Tree
            }
        }
    }

    /// Sends `stage` as `scancel` (a job not yet running is taken out of the queue).
    pub(crate) fn open_stage(&mut self, stage: StopStage) {
        if self.opened == Some(stage) || self.ended {
            return;
        }
        self.opened = Some(stage);
        self.last_signal = Some(Instant::now());
        let how = if !self.has_run() {
            Stop::Cancel
        } else if stage == StopStage::Kill {
            Stop::Kill
        } else {
            Stop::Term
        };
        self.engine.urgent(&self.record.job_id, true);
        self.engine.signal(&self.record.job_id, how);
    }

    /// What is left: the job until the engine reports its end; then, when it
    /// ran on this host, any process of it still here (killed: the engine can
    /// call a job cancelled while a late-launched copy still runs).
    pub(crate) async fn look(&mut self, agent_id: &str, stage: StopStage) -> Look {
        if !self.ended {
            self.open_stage(stage);
            return Look::Left;
        }
        if !self.on_this_host() {
            return Look::Gone;
        }
        let runs = self.engine.local_runs(Instant::now()).await;
        let key = (agent_id.to_owned(), self.run_id.to_string());
        let left = runs.get(&key).cloned().unwrap_or_default();
        if left.is_empty() {
            return Look::Gone;
        }
        tracing::warn!(
            agent_id,
            job_id = self.record.job_id,
            count = left.len(),
            "processes of an ended job still run on this host; killing them"
        );
        for (pid, ticks) in left {
            if let Ok(Some(h)) = platform::ProcessHandle::open_member(pid, ticks) {
                let _ = h.signal(rustix::process::Signal::KILL);
            }
        }
        self.last_signal = Some(Instant::now());
        self.recheck = Some(Instant::now() + RECHECK);
        Look::Left
    }

    /// Until when the engine gets to report the end of a job it was told to
    /// kill: a while after the kill stage's wait (its polls come at intervals).
    pub(crate) fn settle_until(&self, deadline: Instant) -> Option<Instant> {
        self.last_signal.map(|t| t.max(deadline) + KILL_SETTLE)
    }
}

/// `'word'`, safe in a POSIX shell.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The batch script of a run: its environment, then `exec` of its argv.
pub(crate) fn batch_script(
    agent_id: &str,
    run: u32,
    run_id: i64,
    env: &BTreeMap<String, String>,
    socket: Option<&std::path::Path>,
    argv: &[String],
) -> String {
    let mut s = format!("#!/bin/sh\n# corral: agent {agent_id}, run {run}\n");
    let mut vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.push(("CORRAL_AGENT_ID".into(), agent_id.to_owned()));
    vars.push(("CORRAL_RUN_ID".into(), run_id.to_string()));
    if let Some(sock) = socket {
        vars.push(("CORRAL_SOCKET".into(), sock.display().to_string()));
    }
    for (k, v) in vars {
        s.push_str(&format!("export {k}={}\n", sh_quote(&v)));
    }
    let words: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
    s.push_str(&format!("exec {}\n", words.join(" ")));
    s
}

impl Shared {
    /// The Slurm engine of this supervisor, started on first use.
    pub(crate) fn slurm(self: &Arc<Self>) -> Arc<Slurm> {
        self.slurm.get_or_init(|| Slurm::start(self)).clone()
    }
}

/// A job's files (blocking): the run's log files, and its batch script.
pub(crate) fn job_files(
    sh: &Shared,
    spec: &super::super::spec::Spec,
    run: u32,
    run_id: i64,
) -> Result<std::path::PathBuf, StartError> {
    platform::agent_dir::create_run_files(&spec.agent_dir, run, None).map_err(StartError::Files)?;
    let mut env = sh.config.job_env.clone();
    env.extend(spec.request.env.clone());
    let text = batch_script(
        spec.id.as_str(),
        run,
        run_id,
        &env,
        sh.config.socket_path.as_deref(),
        &spec.request.command,
    );
    let path = spec
        .agent_dir
        .join("runs")
        .join(run.to_string())
        .join("job.sh");
    platform::agent_dir::write_new(&path, text.as_bytes()).map_err(|source| {
        StartError::Files(platform::files::FilesError {
            path: path.clone(),
            source,
        })
    })?;
    Ok(path)
}

/// What the engine says about an end that the exit alone does not: a time
/// limit, a node failure (naming the node), a launch failure, a cancel.
pub(crate) fn engine_words(
    state: &str,
    reason: &str,
    exit: Option<ExitKind>,
    node: Option<&str>,
) -> Option<String> {
    let words = match state {
        "COMPLETED" => return None,
        "FAILED" if reason == "JobLaunchFailure" && exit.is_none() => {
            "Slurm could not launch the job (JobLaunchFailure)".to_owned()
        }
        "FAILED" => return None,
        "CANCELLED" => "Slurm cancelled the job (CANCELLED)".to_owned(),
        "TIMEOUT" => "the job reached its Slurm time limit (TIMEOUT)".to_owned(),
        "OUT_OF_MEMORY" => "Slurm ended the job: out of memory (OUT_OF_MEMORY)".to_owned(),
        "NODE_FAIL" => match node {
            Some(node) => format!("the job's node {node} failed (NODE_FAIL)"),
            None => "the job's node failed (NODE_FAIL)".to_owned(),
        },
        "PREEMPTED" => "Slurm preempted the job (PREEMPTED)".to_owned(),
        "BOOT_FAIL" => "the job's node failed to boot (BOOT_FAIL)".to_owned(),
        "DEADLINE" => "the job missed its deadline (DEADLINE)".to_owned(),
        other => format!("Slurm ended the job ({other})"),
    };
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_script_quotes_every_word() {
        let env = BTreeMap::from([("GREETING".to_owned(), "it's \"here\" $HOME".to_owned())]);
        let argv = vec![
            "python3".to_owned(),
            "-c".into(),
            "print('hi'); x = 1".into(),
        ];
        let s = batch_script(
            "team.a",
            2,
            41,
            &env,
            Some("/s/corral.sock".as_ref()),
            &argv,
        );
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains("export GREETING='it'\\''s \"here\" $HOME'\n"),
            "{s}"
        );
        assert!(s.contains("export CORRAL_AGENT_ID='team.a'\n"));
        assert!(s.contains("export CORRAL_RUN_ID='41'\n"));
        assert!(s.contains("export CORRAL_SOCKET='/s/corral.sock'\n"));
        assert!(
            s.ends_with("exec 'python3' '-c' 'print('\\''hi'\\''); x = 1'\n"),
            "{s}"
        );
        // The shell reads it back word for word.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(s.replace("exec ", "printf '%s\\n' "))
            .output()
            .expect("sh runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "python3\n-c\nprint('hi'); x = 1\n"
        );
    }

    #[test]
    fn engine_ends_are_said_in_words() {
        assert_eq!(
            engine_words("COMPLETED", "None", Some(ExitKind::Code(0)), None),
            None
        );
        assert_eq!(
            engine_words("FAILED", "NonZeroExitCode", Some(ExitKind::Code(3)), None),
            None
        );
        assert!(
            engine_words("FAILED", "JobLaunchFailure", None, None)
                .is_some_and(|w| w.contains("could not launch"))
        );
        assert!(
            engine_words("TIMEOUT", "TimeLimit", None, None)
                .is_some_and(|w| w.contains("time limit"))
        );
        assert_eq!(
            engine_words("NODE_FAIL", "NodeDown", None, Some("n2")).as_deref(),
            Some("the job's node n2 failed (NODE_FAIL)")
        );
    }
}
