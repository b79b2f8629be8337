//! An agent's owner running its runs as cluster jobs (see the seam in
//! `placement/mod.rs`): the same actor and the same states as a local run,
//! with each step done through the engine.
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
//!   forgotten the job); engine-side ends (time limit, node failure, launch
//!   failure, a cancel from outside) are said so in `end_reason`.
//! - **Adopt**: a restarted daemon follows the job by its id, name and tag; a
//!   job that ended meanwhile gets its real exit from the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::model::{PersistentStatus, StopStage};
use crate::platform::{self, ExitKind};
use crate::store::{self, JobRecord, RunRecord};

use super::super::Shared;
use super::super::actor::{Actor, Phase};
use super::super::run::StartError;
use super::super::state::{Happening, Tag};
use super::super::view::{JobView, View};
use super::slurm::{JobInfo, JobState, Slurm, Stop, Submission};

/// How long a restarted daemon waits for the engine's word on a job before
/// showing it as it is on record.
const ADOPT_WAIT: Duration = Duration::from_secs(5);

/// How long a spawn waits for a queued job before answering `spawning`.
pub(crate) const PENDING_ANSWER: Duration = Duration::from_secs(5);

/// The current run's job.
pub(crate) struct JobRun {
    pub engine: Arc<Slurm>,
    pub record: JobRecord,
    rx: watch::Receiver<JobInfo>,
    /// The latest state taken from the engine.
    pub info: JobInfo,
    /// When it was first seen running (monotonic, for the runtime limit).
    pub running_since: Option<Instant>,
    /// Its end is committed.
    pub ended: bool,
    /// A user asked for the stop: the run is `cancelled` and never restarted.
    pub user_stop: bool,
    /// When a spawn still waiting is answered, while the job is queued (the
    /// timer runs only while a spawn waits).
    pub answer_by: Instant,
    /// The run's row, for finding its processes on this host.
    run_id: i64,
    /// The run's probe task, when it has probes.
    pub probes: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for JobRun {
    fn drop(&mut self) {
        self.stop_probes();
        self.engine.forget(&self.record.job_id);
    }
}

impl JobRun {
    fn new(engine: Arc<Slurm>, record: JobRecord, run_id: i64, agent_id: &str) -> Self {
        let rx = engine.watch(&record.job_id, agent_id, &record.tag);
        let info = rx.borrow().clone();
        Self {
            info,
            rx,
            engine,
            record,
            running_since: None,
            ended: false,
            user_stop: false,
            answer_by: Instant::now() + PENDING_ANSWER,
            run_id,
            probes: None,
        }
    }

    /// Ends the run's probe checks.
    pub(crate) fn stop_probes(&mut self) {
        if let Some(task) = self.probes.take() {
            task.abort();
        }
    }

    fn running(&self) -> bool {
        matches!(self.info.state, JobState::Running { .. })
    }

    /// Whether it has started on a node (so a stop signals, not cancels).
    fn has_run(&self) -> bool {
        self.running_since.is_some() || self.running()
    }

    fn on_this_host(&self) -> bool {
        self.record.node.as_deref() == Some(self.engine.host.as_str())
    }
}

/// Resolves when the job's state changes.
pub(crate) async fn changed(job: Option<&mut JobRun>) {
    let Some(job) = job else {
        return std::future::pending().await;
    };
    if job.rx.changed().await.is_err() {
        std::future::pending::<()>().await;
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

impl Actor {
    /// Starts the run as a job: files and script, `sbatch`, the job id on record.
    pub(crate) async fn submit_job(&mut self) {
        let view = self.current();
        let (run, run_id) = (view.run, view.run_id);
        let engine = self.sh.slurm();
        let tag = super::job_tag(&engine.host, &self.sh.config.state_dir, run_id);
        let (sh, spec) = (self.sh.clone(), self.spec.clone());
        let script = tokio::task::spawn_blocking(move || job_files(&sh, &spec, run, run_id))
            .await
            .unwrap_or_else(|e| Err(StartError::Exec(std::io::Error::other(e.to_string()))));
        let script = match script {
            Ok(p) => p,
            Err(e) => return self.start_failed(e).await,
        };
        let placement = super::slurm_of(self.spec.request.placement.as_ref())
            .cloned()
            .unwrap_or_default();
        let submission = Submission {
            name: self.spec.id.to_string(),
            tag: tag.clone(),
            script,
            cwd: self.spec.cwd.clone(),
            stdout: view.stdout_log(),
            stderr: view.stderr_log(),
            placement,
        };
        let job_id = match engine.submit(submission).await {
            Ok(id) => id,
            Err(why) => {
                return self.start_failed(StartError::Engine(why)).await;
            }
        };
        let record = JobRecord {
            engine: "slurm".into(),
            job_id: job_id.clone(),
            node: None,
            tag,
        };
        if let Err(e) = self
            .sh
            .store
            .commit(store::set_job(run_id, record.clone(), None))
            .await
        {
            // Never acknowledged, so it must not run.
            tracing::error!(agent_id = %self.spec.id, job_id, error = %e, "cannot record a submitted job; cancelling it");
            engine.signal(&job_id, Stop::Cancel);
            self.record_failed_start(format!(
                "the job could not be recorded ({e}); Slurm job {job_id} was cancelled"
            ))
            .await;
            return self.answer(Err(crate::Error::Unavailable {
                reason: e.to_string(),
            }));
        }
        self.sh
            .counters
            .spawns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(agent_id = %self.spec.id, job_id, run, "submitted to Slurm");
        let job = JobRun::new(engine, record.clone(), run_id, self.spec.id.as_str());
        self.job = Some(job);
        self.publish(|v| {
            v.containment = "slurm";
            v.job = Some(JobView::of(&record));
        });
    }

    /// The job's state changed: follow it.
    pub(crate) async fn on_job(&mut self) {
        let Some(job) = self.job.as_mut() else { return };
        let info = job.rx.borrow_and_update().clone();
        job.info = info.clone();
        if job.ended {
            return self.stop_step().await;
        }
        match info.state {
            JobState::Unknown => {}
            JobState::Pending { reason } => self.publish(|v| {
                if let Some(j) = v.job.as_mut() {
                    j.info.pending_reason = Some(reason);
                }
            }),
            JobState::Running { node } => {
                if matches!(self.phase, Phase::Starting) {
                    self.job_started(node).await;
                } else if matches!(self.phase, Phase::Stopping(_)) {
                    self.stop_step().await;
                } else {
                    self.publish(|v| {
                        if let Some(j) = v.job.as_mut() {
                            j.sample = info.sample;
                        }
                    });
                }
            }
            JobState::Ended {
                state,
                reason,
                exit,
                node,
            } => {
                let words = engine_words(&state, &reason, exit);
                if let (Some(node), Some(job)) = (node, self.job.as_mut())
                    && job.record.node.is_none()
                {
                    job.record.node = Some(node);
                }
                self.job_ended(exit, words).await;
            }
            JobState::Gone => {
                let id = self
                    .job
                    .as_ref()
                    .map(|j| j.record.job_id.clone())
                    .unwrap_or_default();
                let words = format!(
                    "exit status lost: Slurm no longer knows job {id} (nor its completion log)"
                );
                self.job_ended(None, Some(words)).await;
            }
        }
    }

    /// The engine runs the job: record where, open the window.
    async fn job_started(&mut self, node: String) {
        let verify = !self.spec.verify.is_zero();
        let Some(job) = self.job.as_mut() else { return };
        job.record.node = Some(node.clone());
        job.running_since = Some(Instant::now());
        job.engine.urgent(&job.record.job_id, verify);
        let record = job.record.clone();
        let status = if verify {
            PersistentStatus::Spawning
        } else {
            PersistentStatus::Running
        };
        let run_id = self.current().run_id;
        let write = store::set_job(run_id, record.clone(), (!verify).then_some(status));
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record where a job runs");
        }
        let tag = self.move_to(Happening::Started { verify });
        self.phase = match tag {
            Tag::Verifying => Phase::Verifying {
                until: Instant::now() + self.spec.verify,
            },
            _ => Phase::Running,
        };
        self.publish(|v| {
            v.status = status;
            if let Some(j) = v.job.as_mut() {
                j.info.node = Some(node.clone());
                j.info.pending_reason = None;
                j.running = true;
                j.since = Some(SystemTime::now());
            }
            (v.ready, v.probes) = super::super::run::probe_state(&v.spec);
        });
        self.start_probes();
        tracing::info!(agent_id = %self.spec.id, job_id = record.job_id, node, "job running");
        if !verify {
            let response = self.current().spawn_response(None);
            self.answer(Ok(response));
        }
    }

    /// The window has closed: verified if a poll begun since still sees the job running.
    pub(crate) async fn job_verify(&mut self) {
        let Some(engine) = self.job.as_ref().map(|j| j.engine.clone()) else {
            return;
        };
        engine.fresh().await;
        let Some(job) = self.job.as_mut() else { return };
        if job.rx.has_changed().unwrap_or(false) {
            // Whatever changed (an end, most likely) is handled first.
            return self.on_job().await;
        }
        if job.running() {
            job.engine.urgent(&job.record.job_id, false);
            self.verify_elapsed().await;
        }
    }

    /// A queued job has waited long enough: answer the spawn with what is known.
    pub(crate) fn answer_pending(&mut self) {
        let response = self.current().spawn_response(None);
        self.answer(Ok(response));
    }

    /// The job ended: record how (the same path as a local exit).
    async fn job_ended(&mut self, exit: Option<ExitKind>, engine_words: Option<String>) {
        let Some(job) = self.job.as_mut() else { return };
        let ran_s = job.running_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        job.engine.urgent(&job.record.job_id, false);
        let started = job.has_run();
        tracing::info!(agent_id = %self.spec.id, ?exit, words = engine_words.as_deref().unwrap_or(""), started, "job ended");
        self.record_end(exit, ran_s, engine_words).await;
    }

    /// One step of a job's staged stop.
    pub(crate) async fn job_stop_step(&mut self) {
        loop {
            let Phase::Stopping(s) = &mut self.phase else {
                return;
            };
            let Some(job) = self.job.as_mut() else {
                return self.finish_stop(None);
            };
            let (stage, sig, _) = s.stage();
            if job.ended {
                if !job.on_this_host() {
                    return self.finish_stop(Some(stage));
                }
                let runs = job.engine.local_runs(Instant::now()).await;
                let key = (self.spec.id.to_string(), job.run_id.to_string());
                let left = runs.get(&key).cloned().unwrap_or_default();
                if left.is_empty() {
                    return self.finish_stop(Some(stage));
                }
                // The engine says ended, yet processes of the run still run
                // here (a copy launched after the cancel): kill them.
                tracing::warn!(agent_id = %self.spec.id, job_id = job.record.job_id, count = left.len(), "processes of an ended job still run on this host; killing them");
                for (pid, ticks) in left {
                    if let Ok(Some(h)) = platform::ProcessHandle::open_member(pid, ticks) {
                        let _ = h.signal(rustix::process::Signal::KILL);
                    }
                }
                s.recheck = Some(Instant::now() + Duration::from_millis(50));
                if Instant::now() < s.deadline || !s.end_grace {
                    if Instant::now() >= s.deadline {
                        s.end_grace = true;
                        s.deadline = Instant::now() + super::super::stop::END_GRACE;
                    }
                    return;
                }
                tracing::error!(agent_id = %self.spec.id, "processes of the job survived SIGKILL");
                return self.finish_stop(Some(StopStage::Unkillable));
            }
            if !s.stage_opened {
                s.stage_opened = true;
                s.last_signal = Instant::now();
                let how = if !job.has_run() {
                    Stop::Cancel
                } else if sig == rustix::process::Signal::KILL {
                    Stop::Kill
                } else {
                    Stop::Term
                };
                job.engine.urgent(&job.record.job_id, true);
                job.engine.signal(&job.record.job_id, how);
            }
            let now = Instant::now();
            if now < s.deadline {
                return;
            }
            if s.index + 1 < s.stages.len() {
                s.index += 1;
                s.deadline = now + Duration::from_secs_f64(s.stage().2);
                s.stage_opened = false;
                self.record_stage();
                continue;
            }
            if !s.end_grace {
                // SIGKILL went out; the engine reports the end on its next polls.
                s.end_grace = true;
                s.deadline = now + super::super::stop::END_GRACE;
                return;
            }
            tracing::error!(agent_id = %self.spec.id, job_id = job.record.job_id, "the job did not end after SIGKILL");
            return self.finish_stop(Some(StopStage::Unkillable));
        }
    }

    /// Takes over a run a previous daemon placed on Slurm: by its recorded job
    /// id, or — when the daemon died before recording it — by its tag.
    pub(crate) async fn adopt_job(&mut self, record: RunRecord) {
        self.view = Some(Arc::new(View::from_record(&record, self.spec.clone())));
        self.history.attempt = record.restart_attempt;
        let engine = self.sh.slurm();
        let job = match record.job.clone() {
            Some(job) => job,
            None => match self.find_unrecorded_job(&engine, &record).await {
                Ok(job) => job,
                Err(reason) => return self.record_failed_start(reason).await,
            },
        };
        let job_id = job.job_id.clone();
        let run = JobRun::new(engine.clone(), job.clone(), record.run_id, &record.agent_id);
        self.job = Some(run);
        // The first state shown is the engine's answer (a daemon's first answers
        // never show running what has ended), unless the engine is too slow.
        if tokio::time::timeout(ADOPT_WAIT, engine.fresh())
            .await
            .is_err()
        {
            tracing::warn!(agent_id = %record.agent_id, job_id, "Slurm is slow to answer; showing the job as on record until it does");
        }
        if let Some(v) = self.view.as_mut() {
            // A job found by its tag is not in the record the view came from.
            let v = Arc::make_mut(v);
            v.containment = "slurm";
            v.job = Some(JobView {
                running: record.status == PersistentStatus::Running,
                ..JobView::of(&job)
            });
        }
        let Some(run) = self.job.as_mut() else { return };
        run.info = run.rx.borrow_and_update().clone();
        match run.info.state.clone() {
            JobState::Running { node } => {
                run.record.node = Some(node.clone());
                run.running_since = Some(Instant::now());
                run.engine.urgent(&job_id, false);
                if record.status == PersistentStatus::Spawning {
                    let write = store::set_job(
                        record.run_id,
                        run.record.clone(),
                        Some(PersistentStatus::Running),
                    );
                    if let Err(e) = self.sh.store.commit_retrying(write).await {
                        tracing::error!(agent_id = %record.agent_id, error = %e, "cannot record a re-adopted job");
                    }
                }
                self.move_to(Happening::Started { verify: false });
                self.phase = Phase::Running;
                let since = humantime::parse_rfc3339_weak(&record.started_at).ok();
                self.publish(|v| {
                    v.status = PersistentStatus::Running;
                    if let Some(j) = v.job.as_mut() {
                        j.info.node = Some(node.clone());
                        j.running = true;
                        j.since = since;
                    }
                    (v.ready, v.probes) = super::super::run::probe_state(&v.spec);
                });
                self.start_probes();
                tracing::info!(agent_id = %record.agent_id, job_id, node, "re-adopted a running job");
            }
            JobState::Pending { reason } => {
                tracing::info!(agent_id = %record.agent_id, job_id, reason, "re-adopted a queued job");
                self.publish(|v| {
                    if let Some(j) = v.job.as_mut() {
                        j.info.pending_reason = Some(reason);
                    }
                });
            }
            // Unknown: the engine did not answer; the next polls will tell.
            JobState::Unknown => {
                tracing::warn!(agent_id = %record.agent_id, job_id, "Slurm does not answer; following the job as it is on record");
                self.publish(|_| {});
            }
            JobState::Ended { .. } | JobState::Gone => self.on_job().await,
        }
    }
}

/// A job's files (blocking): the run's log files, and its batch script.
fn job_files(
    sh: &Shared,
    spec: &super::super::spec::Spec,
    run: u32,
    run_id: i64,
) -> Result<std::path::PathBuf, StartError> {
    platform::files::create_run_files(&spec.agent_dir, run, None).map_err(StartError::Files)?;
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
    platform::files::write_private(&path, text.as_bytes()).map_err(|source| {
        StartError::Files(platform::files::FilesError {
            path: path.clone(),
            source,
        })
    })?;
    Ok(path)
}

impl Actor {
    /// The job of a run whose job id was never recorded (the daemon died
    /// between `sbatch` and the commit), found by its tag and recorded now; or
    /// why the run is over.
    async fn find_unrecorded_job(
        &self,
        engine: &Slurm,
        record: &RunRecord,
    ) -> Result<JobRecord, String> {
        let tag = super::job_tag(&engine.host, &self.sh.config.state_dir, record.run_id);
        let job_id = match engine.find(&record.agent_id, &tag).await {
            Ok(Some(job_id)) => job_id,
            Ok(None) => {
                return Err(
                    "the daemon stopped before the job was submitted; the start did not complete"
                        .into(),
                );
            }
            Err(e) => {
                tracing::error!(agent_id = %record.agent_id, error = %e, "cannot look for an unrecorded job");
                return Err(format!(
                    "the daemon stopped before the job was recorded, and Slurm cannot be asked ({e})"
                ));
            }
        };
        let job = JobRecord {
            engine: "slurm".into(),
            job_id,
            node: None,
            tag,
        };
        let write = store::set_job(record.run_id, job.clone(), None);
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %record.agent_id, error = %e, "cannot record a found job");
        }
        Ok(job)
    }
}

/// What the engine says about an end that the exit alone does not: a time
/// limit, a node failure, a launch failure, a cancel.
fn engine_words(state: &str, reason: &str, exit: Option<ExitKind>) -> Option<String> {
    let words = match state {
        "COMPLETED" => return None,
        "FAILED" if reason == "JobLaunchFailure" && exit.is_none() => {
            "Slurm could not launch the job (JobLaunchFailure)".to_owned()
        }
        "FAILED" => return None,
        "CANCELLED" => "Slurm cancelled the job (CANCELLED)".to_owned(),
        "TIMEOUT" => "the job reached its Slurm time limit (TIMEOUT)".to_owned(),
        "OUT_OF_MEMORY" => "Slurm ended the job: out of memory (OUT_OF_MEMORY)".to_owned(),
        "NODE_FAIL" => "the job's node failed (NODE_FAIL)".to_owned(),
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
            engine_words("COMPLETED", "None", Some(ExitKind::Code(0))),
            None
        );
        assert_eq!(
            engine_words("FAILED", "NonZeroExitCode", Some(ExitKind::Code(3))),
            None
        );
        assert!(
            engine_words("FAILED", "JobLaunchFailure", None)
                .is_some_and(|w| w.contains("could not launch"))
        );
        assert!(
            engine_words("TIMEOUT", "TimeLimit", None).is_some_and(|w| w.contains("time limit"))
        );
    }
}
