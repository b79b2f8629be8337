//! The owner's steps for a run placed on a cluster engine (the engine's side
//! is `execution/job.rs`): the same lifecycle as a local run.
//!
//! A queued job is `starting` (its status says why it waits); the window
//! opens when a poll first sees it RUNNING and closes when a poll begun after
//! it still does. A job the engine queues again after it started (requeue,
//! preemption) is the same run, `starting` again. Its end comes from the
//! engine, and goes the same way as a local exit (`end.rs`). A restarted daemon follows the job by its id, or —
//! when it died between `sbatch` and the commit — by its tag.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::{AgentState, PersistentStatus};
use crate::platform::ExitKind;
use crate::store::{self, JobRecord, RunRecord};

use super::super::execution::job::{engine_words, job_files};
use super::super::execution::local::{StartError, probe_state};
use super::super::execution::slurm::{JobState, Slurm, Stop, Submission};
use super::super::execution::{self as placement, Execution, JobRun};
use super::super::lifecycle::Happening;
use super::super::view::JobView;
use super::Owner;

/// How long a restarted daemon waits for the engine's word on a job before
/// showing it as it is on record.
const ADOPT_WAIT: Duration = Duration::from_secs(5);

impl Owner {
    /// Starts the run as a job: files and script, `sbatch`, the job id on record.
    pub(crate) async fn submit_job(&mut self) {
        let view = self.current();
        let (run, run_id) = (view.run, view.run_id);
        let engine = self.sh.slurm();
        let tag = placement::job_tag(&engine.host, &self.sh.config.state_dir, run_id);
        let (sh, spec) = (self.sh.clone(), self.spec.clone());
        let script = tokio::task::spawn_blocking(move || job_files(&sh, &spec, run, run_id))
            .await
            .unwrap_or_else(|e| Err(StartError::Exec(std::io::Error::other(e.to_string()))));
        let script = match script {
            Ok(p) => p,
            Err(e) => return self.start_failed(e).await,
        };
        let slurm = placement::slurm_of(self.spec.request.placement.as_ref())
            .cloned()
            .unwrap_or_default();
        let submission = Submission {
            name: self.spec.id.to_string(),
            tag: tag.clone(),
            script,
            cwd: self.spec.cwd.clone(),
            stdout: view.stdout_log(),
            stderr: view.stderr_log(),
            placement: slurm,
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
        self.exec = Some(Execution::Job(Box::new(job)));
        self.publish(|v| {
            v.containment = "slurm";
            v.job = Some(JobView::of(&record));
        });
    }

    /// The job's state changed: follow it.
    pub(crate) async fn on_job(&mut self) {
        let state = self.life().wire();
        let Some(Execution::Job(job)) = self.exec.as_mut() else {
            return;
        };
        let info = job.take_info();
        if job.ended {
            // Its end is on record; what follows only matters to a stop's look.
            return self.look().await;
        }
        match info.state {
            JobState::Unknown => {}
            // Queued again after it had started: requeued by the engine.
            JobState::Pending { reason } if job.has_run() => self.job_requeued(reason).await,
            JobState::Pending { reason } => self.publish(|v| {
                if let Some(j) = v.job.as_mut() {
                    j.info.pending_reason = Some(reason);
                }
            }),
            JobState::Running { node } => match state {
                AgentState::Starting if job.running_since.is_none() => self.job_started(node).await,
                AgentState::Stopping => self.look().await,
                _ => self.publish(|v| {
                    if let Some(j) = v.job.as_mut() {
                        j.sample = info.sample;
                    }
                }),
            },
            JobState::Ended {
                state,
                reason,
                exit,
                node,
            } => {
                if let Some(node) = node
                    && job.record.node.is_none()
                {
                    job.record.node = Some(node);
                }
                let words = engine_words(&state, &reason, exit, job.record.node.as_deref());
                self.job_ended(exit, words).await;
            }
            JobState::Gone => {
                let words = format!(
                    "exit status lost: Slurm no longer knows job {} (nor its completion log)",
                    job.record.job_id
                );
                self.job_ended(None, Some(words)).await;
            }
        }
    }

    /// The engine runs the job: record where, open the window.
    async fn job_started(&mut self, node: String) {
        let verify = !self.spec.verify.is_zero();
        let Some(Execution::Job(job)) = self.exec.as_mut() else {
            return;
        };
        job.record.node = Some(node.clone());
        job.running_since = Some(super::super::now());
        job.engine.urgent(&job.record.job_id, verify);
        let record = job.record.clone();
        let (status, verify_until) = self.window();
        let run_id = self.current().run_id;
        let transition = (!verify).then_some((status, AgentState::Running));
        let write = store::set_job(run_id, record.clone(), transition);
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record where a job runs");
        }
        self.apply(Happening::Started { verify_until });
        self.publish(|v| {
            v.status = status;
            if let Some(j) = v.job.as_mut() {
                j.info.node = Some(node.clone());
                j.info.pending_reason = None;
                j.running = true;
                j.since = Some(SystemTime::now());
            }
            (v.ready, v.probes) = probe_state(&v.spec);
        });
        self.start_probes();
        tracing::info!(agent_id = %self.spec.id, job_id = record.job_id, node, "job running");
        if !verify {
            let response = self.current().spawn_response(None);
            self.answer(Ok(response));
        }
    }

    /// The engine took the started job off its node and queued it again
    /// (`scontrol requeue`, preemption, a failed node, for a job submitted
    /// with `requeue`): the same run, `starting` again until the job runs
    /// again (then a new window). Within a stop, the stop goes on, as a
    /// cancel of the queued job.
    async fn job_requeued(&mut self, reason: String) {
        let stopping = self.life().wire() == AgentState::Stopping;
        let Some(Execution::Job(job)) = self.exec.as_mut() else {
            return;
        };
        let left = job.requeued();
        job.engine.urgent(&job.record.job_id, true);
        let record = job.record.clone();
        tracing::info!(agent_id = %self.spec.id, job_id = record.job_id, node = left.as_deref().unwrap_or(""), reason, "job requeued by the engine");
        if stopping {
            return self.look().await;
        }
        let run_id = self.current().run_id;
        let write = store::requeue_job(run_id, record, left, reason.clone());
        if let Err(e) = self.sh.store.commit_retrying(write).await {
            tracing::error!(agent_id = %self.spec.id, error = %e, "cannot record a requeued job");
        }
        self.apply(Happening::Requeued);
        self.publish(|v| {
            v.status = PersistentStatus::Spawning;
            if let Some(j) = v.job.as_mut() {
                j.info.node = None;
                j.info.pending_reason = Some(reason);
                j.running = false;
                j.since = None;
                j.sample = None;
            }
            (v.ready, v.probes) = probe_state(&v.spec);
        });
    }

    /// The window has closed: verified if a poll begun since still sees the job running.
    pub(crate) async fn job_verify(&mut self) {
        let Some(Execution::Job(job)) = self.exec.as_ref() else {
            return;
        };
        let engine = job.engine.clone();
        engine.fresh().await;
        let Some(Execution::Job(job)) = self.exec.as_mut() else {
            return;
        };
        if job.has_news() {
            // Whatever changed (an end, most likely) is handled first.
            return self.on_job().await;
        }
        if job.running() {
            job.engine.urgent(&job.record.job_id, false);
            self.verified().await;
        }
    }

    /// A queued job has waited long enough: answer the spawn with what is known.
    pub(crate) fn answer_pending(&mut self) {
        let response = self.current().spawn_response(None);
        self.answer(Ok(response));
    }

    /// The job ended: record how (the same path as a local exit).
    async fn job_ended(&mut self, exit: Option<ExitKind>, words: Option<String>) {
        let Some(Execution::Job(job)) = self.exec.as_mut() else {
            return;
        };
        let ran_s = job.running_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        job.engine.urgent(&job.record.job_id, false);
        job.ended = true;
        job.stop_probes();
        let started = job.has_run();
        tracing::info!(agent_id = %self.spec.id, ?exit, words = words.as_deref().unwrap_or(""), started, "job ended");
        self.main_ended(exit, ran_s, words).await;
    }

    /// Takes over a run a previous daemon placed on Slurm: by its recorded job
    /// id, or — when the daemon died before recording it — by its tag.
    pub(crate) async fn adopt_job(&mut self, record: RunRecord) {
        let engine = self.sh.slurm();
        let job = match record.job.clone() {
            Some(job) => job,
            None => match self.find_unrecorded_job(&engine, &record).await {
                Ok(job) => job,
                Err(reason) => return self.lost(reason).await,
            },
        };
        let job_id = job.job_id.clone();
        let run = JobRun::new(engine.clone(), job.clone(), record.run_id, &record.agent_id);
        self.exec = Some(Execution::Job(Box::new(run)));
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
        let stopping = self.life().wire() == AgentState::Stopping;
        let Some(Execution::Job(run)) = self.exec.as_mut() else {
            return;
        };
        match run.take_info().state {
            JobState::Running { node } => self.adopted_running(&record, node).await,
            JobState::Ended { .. } | JobState::Gone => {
                self.publish(|_| {});
                return self.on_job().await;
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
        }
        if stopping {
            self.resume_stop().await;
        }
    }

    /// A re-adopted job the engine says runs on `node`.
    async fn adopted_running(&mut self, record: &RunRecord, node: String) {
        let stopping = self.life().wire() == AgentState::Stopping;
        let Some(Execution::Job(run)) = self.exec.as_mut() else {
            return;
        };
        run.record.node = Some(node.clone());
        run.running_since = Some(super::super::now());
        run.engine.urgent(&run.record.job_id, false);
        let job = run.record.clone();
        if record.status == PersistentStatus::Spawning && !stopping {
            let running = Some((PersistentStatus::Running, AgentState::Running));
            let write = store::set_job(record.run_id, job.clone(), running);
            if let Err(e) = self.sh.store.commit_retrying(write).await {
                tracing::error!(agent_id = %record.agent_id, error = %e, "cannot record a re-adopted job");
            }
        }
        if self.life().wire() == AgentState::Starting {
            self.apply(Happening::Started { verify_until: None });
        }
        let since = humantime::parse_rfc3339_weak(&record.started_at).ok();
        self.publish(|v| {
            if !stopping {
                v.status = PersistentStatus::Running;
            }
            if let Some(j) = v.job.as_mut() {
                j.info.node = Some(node.clone());
                j.running = true;
                j.since = since;
            }
            (v.ready, v.probes) = probe_state(&v.spec);
        });
        if !stopping {
            self.start_probes();
        }
        tracing::info!(agent_id = %record.agent_id, job_id = job.job_id, node, "re-adopted a running job");
    }

    /// The job of a run whose job id was never recorded (the daemon died
    /// between `sbatch` and the commit), found by its tag and recorded now; or
    /// why the run is over.
    async fn find_unrecorded_job(
        &self,
        engine: &Slurm,
        record: &RunRecord,
    ) -> Result<JobRecord, String> {
        let tag = placement::job_tag(&engine.host, &self.sh.config.state_dir, record.run_id);
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
