//! Starting agents: id reservation, files, the process (into its cgroup when
//! there is one), the verification window.

use super::*;

impl Supervisor {
    /// The agent's current run, waiting (briefly) for a spawn of this id that is
    /// under way: an agent may report progress before its spawn call returns.
    pub(super) async fn settled_agent(&self, id: &AgentId) -> Result<Arc<Agent>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.inner.spawned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !lock(&self.inner.reserved).contains(id) {
                return self.agent(id);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.agent(id);
            }
        }
    }

    /// Starts an agent and verifies it: the seed's `spawn_agent`.
    ///
    /// Returns an error, with the OS reason, when the program cannot be started
    /// (the run is then recorded as failed). Otherwise waits for the verification
    /// window (`verify_ms`), returning early if the agent exits inside it; such an
    /// agent is reported `completed` or `failed` with its exit code and the tail of
    /// its stderr.
    pub async fn spawn_agent(&self, req: SpawnRequest) -> Result<SpawnResponse> {
        let id = AgentId::new(req.agent_id.clone())?;
        let invalid = |reason: String| Error::Invalid {
            agent_id: id.to_string(),
            reason,
        };
        let program = match req.command.first() {
            Some(p) if !p.is_empty() => p.clone(),
            _ => {
                return Err(invalid(
                    "command must name a program (got an empty command)".into(),
                ));
            }
        };
        let timeouts = validate_timeouts(
            id.as_str(),
            req.stop_timeouts
                .as_deref()
                .unwrap_or(&DEFAULT_STOP_TIMEOUTS),
        )?;
        let verify_ms = req.verify_ms.unwrap_or(DEFAULT_VERIFY_MS);
        if verify_ms > MAX_VERIFY_MS {
            return Err(invalid(format!(
                "verify_ms must be at most {MAX_VERIFY_MS}; got {verify_ms}"
            )));
        }
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid(format!(
                    "environment variable name {key:?} is not valid"
                )));
            }
        }
        for (what, path) in [("cwd", &req.cwd), ("agent_dir", &req.agent_dir)] {
            if let Some(p) = path
                && !p.is_absolute()
            {
                return Err(invalid(format!(
                    "{what} must be an absolute path; got {}",
                    p.display()
                )));
            }
        }
        let agent_dir = req
            .agent_dir
            .clone()
            .unwrap_or_else(|| self.inner.config.state_dir.join("agents").join(id.as_str()));
        let cwd = req.cwd.clone().unwrap_or_else(|| agent_dir.clone());

        // Reserve the id: refused while a run of it is alive or being started.
        let restarts = {
            let agents = lock(&self.inner.agents);
            let mut reserved = lock(&self.inner.reserved);
            if reserved.contains(&id) {
                return Err(Error::Conflict {
                    agent_id: id.to_string(),
                    status: "spawning".into(),
                    pid: 0,
                });
            }
            let restarts = match agents.get(&id) {
                Some(a) => {
                    let status = a.status_now();
                    if status.is_live() {
                        return Err(Error::Conflict {
                            agent_id: id.to_string(),
                            status: status.to_string(),
                            pid: a.pid(),
                        });
                    }
                    a.restarts + 1
                }
                None => 0,
            };
            reserved.insert(id.clone());
            restarts
        };
        let _reservation = Reservation {
            inner: &self.inner,
            id: id.clone(),
        };

        std::fs::create_dir_all(&agent_dir)
            .map_err(|e| Error::os(&id, format!("create agent dir {}", agent_dir.display()), e))?;
        let open_log = |name: &str| -> Result<File> {
            let path = agent_dir.join(name);
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(&path)
                .map_err(|e| Error::os(&id, format!("open {}", path.display()), e))
        };
        let stdout = open_log("stdout.log")?;
        let stderr = open_log("stderr.log")?;
        let stdin = File::open("/dev/null").map_err(|e| Error::os(&id, "open /dev/null", e))?;

        let mut record = RunRecord {
            run_id: 0,
            agent_id: id.to_string(),
            status: PersistentStatus::Spawning,
            command: req.command.clone(),
            cwd: cwd.clone(),
            agent_dir: agent_dir.clone(),
            env: req.env.clone(),
            labels: req.labels.clone(),
            stop_timeouts: timeouts,
            verify_ms,
            pid: None,
            start_ticks: None,
            boot_id: None,
            started_at: now_rfc3339(),
            ended_at: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            progress: None,
            progress_message: None,
        };
        record.run_id = self.inner.store.insert_run(&record).await?;

        let leaf = self.new_leaf(&id, record.run_id);
        let stdio = Stdio {
            stdin: stdin.as_fd(),
            stdout: stdout.as_fd(),
            stderr: stderr.as_fd(),
        };
        let (started, leaf) = match self.start_process(&record, stdio, leaf.clone()) {
            Ok(started) => started,
            Err(source) => {
                if let (Some(leaf), Ok(root)) = (&leaf, &self.inner.cgroup) {
                    let _ = root.remove_leaf(leaf);
                }
                let reason = format!("cannot start {program:?}: {source}");
                record.status = PersistentStatus::Failed;
                record.ended_at = Some(now_rfc3339());
                record.end_reason = Some(reason.clone());
                self.inner
                    .store
                    .finish(
                        record.run_id,
                        Ending {
                            status: PersistentStatus::Failed,
                            ended_at: record.ended_at.clone().unwrap_or_default(),
                            exit_code: None,
                            exit_signal: None,
                            end_reason: reason,
                        },
                    )
                    .await?;
                let agent = Arc::new(Agent::new(record, restarts, None)?);
                lock(&self.inner.agents).insert(id.clone(), agent);
                tracing::warn!(agent_id = %id, error = %source, "spawn failed");
                return Err(Error::Spawn {
                    agent_id: id.to_string(),
                    program,
                    source,
                });
            }
        };
        let pid = started.pid();
        let first_status = if verify_ms == 0 {
            PersistentStatus::Running
        } else {
            PersistentStatus::Spawning
        };
        record.pid = Some(pid);
        record.start_ticks = Some(started.start_ticks());
        record.boot_id = Some(self.inner.boot_id.clone());
        let start_ticks = started.start_ticks();
        let mut agent = Agent::new(record, restarts, Some(Arc::new(started)))?;
        agent.leaf = leaf;
        let agent = Arc::new(agent);
        // Visible at once (the agent may report progress inside its window), but
        // its transitions wait for this commit: the exit watcher and progress
        // reports take the same lock.
        let transition = agent.transition.lock().await;
        lock(&self.inner.agents).insert(id.clone(), agent.clone());
        drop(_reservation);
        agent.refresh_sample(&self.inner.clock);
        self.watch(agent.clone());
        let committed = self
            .inner
            .store
            .set_process(
                agent.run_id,
                pid,
                start_ticks,
                self.inner.boot_id.clone(),
                first_status,
            )
            .await;
        if committed.is_ok() {
            lock(&agent.state).status = first_status;
        }
        drop(transition);
        tracing::info!(agent_id = %id, pid, "agent started");
        committed?;

        if verify_ms > 0 {
            let mut ended = agent.ended.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(verify_ms), ended.wait_for(|e| *e))
                .await;
            self.transition_to_running(&agent).await?;
            // A sample at the end of the window shows the settled process, not the
            // instant after exec.
            agent.refresh_sample(&self.inner.clock);
        }
        Ok(self.spawn_response(&agent))
    }

    /// Removes the empty cgroups of runs that are not alive (left by a daemon
    /// that died before it could remove them).
    pub(super) fn sweep_stale_leaves(&self) {
        let Ok(root) = &self.inner.cgroup else { return };
        let live: HashSet<PathBuf> = lock(&self.inner.agents)
            .values()
            .filter(|a| a.status_now().is_live())
            .filter_map(|a| a.leaf.as_ref().map(|l| l.dir().to_owned()))
            .collect();
        let Ok(entries) = std::fs::read_dir(root.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) || live.contains(&entry.path()) {
                continue;
            }
            let leaf = root.leaf(&entry.file_name().to_string_lossy());
            if leaf.populated() {
                tracing::warn!(cgroup = %leaf.dir().display(), "processes of an ended run are still running in its cgroup");
            } else if let Err(e) = root.remove_leaf(&leaf) {
                tracing::warn!(cgroup = %leaf.dir().display(), error = %e, "cannot remove a stale cgroup");
            }
        }
    }

    /// Creates the cgroup leaf for a new run, when cgroups are available.
    pub(super) fn new_leaf(&self, id: &AgentId, run_id: i64) -> Option<Leaf> {
        let root = self.inner.cgroup.as_ref().ok()?;
        match root.create_leaf(&leaf_name(id.as_str(), run_id)) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                tracing::warn!(agent_id = %id, error = %e, "cannot create a cgroup; process-group containment only");
                None
            }
        }
    }

    /// Removes an ended run's cgroup once nothing is left in it.
    pub(super) fn release_leaf(&self, agent: &Agent) {
        if let (Some(leaf), Ok(root)) = (&agent.leaf, &self.inner.cgroup)
            && !leaf.populated()
        {
            let _ = root.remove_leaf(leaf);
        }
    }

    /// Resolves the program against the agent's PATH and starts it.
    pub(super) fn start_process(
        &self,
        record: &RunRecord,
        stdio: Stdio<'_>,
        leaf: Option<Leaf>,
    ) -> std::io::Result<(ProcessHandle, Option<Leaf>)> {
        let id = &record.agent_id;
        let program = record.command.first().map_or("", String::as_str);
        let cwd = record.cwd.as_path();
        let meta = std::fs::metadata(cwd).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("working directory {}: {e}", cwd.display()),
            )
        })?;
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("working directory {} is not a directory", cwd.display()),
            ));
        }
        let mut env: BTreeMap<OsString, OsString> = self.inner.base_env.iter().cloned().collect();
        for (k, v) in &record.env {
            env.insert(k.into(), v.into());
        }
        env.insert("CORRAL_AGENT_ID".into(), id.into());
        // Names this run: lets a restarted daemon find a process whose spawn it
        // could not record before it died.
        env.insert("CORRAL_RUN_ID".into(), record.run_id.to_string().into());
        if let Some(sock) = &self.inner.config.socket_path {
            env.insert("CORRAL_SOCKET".into(), sock.clone().into_os_string());
        }
        let path_var = env
            .get(std::ffi::OsStr::new("PATH"))
            .and_then(|p| p.to_str());
        let resolved = platform::resolve_program(program, path_var)?;
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                platform::c_string("environment variable", &kv)
            })
            .collect::<std::io::Result<Vec<CString>>>()?;
        let argv = record
            .command
            .iter()
            .map(|a| platform::c_string("argument", a.as_bytes()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let program_c = platform::c_path(&resolved)?;
        let cwd_c = platform::c_path(cwd)?;
        let procs = match &leaf {
            Some(leaf) => match leaf.open_dir() {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(agent_id = %id, error = %e, "cannot open the cgroup; process-group containment only");
                    None
                }
            },
            None => None,
        };
        let leaf = match (leaf, &procs) {
            (Some(leaf), None) => {
                if let Ok(root) = &self.inner.cgroup {
                    let _ = root.remove_leaf(&leaf);
                }
                None
            }
            (leaf, _) => leaf,
        };
        let (pid, leaf) = {
            let mut owned = lock(&self.inner.owned);
            let (pid, leaf) = match &procs {
                Some(dir) => match platform::spawn_into_cgroup(
                    &program_c,
                    &argv,
                    &envp,
                    &cwd_c,
                    &stdio,
                    dir.as_fd(),
                ) {
                    Ok(pid) => (pid, leaf),
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        tracing::warn!(agent_id = %id, error = %e, "process-group containment only for this agent");
                        if let (Some(leaf), Ok(root)) = (&leaf, &self.inner.cgroup) {
                            let _ = root.remove_leaf(leaf);
                        }
                        let pid = platform::spawn(&program_c, &argv, &envp, Some(&cwd_c), &stdio)?;
                        (pid, None)
                    }
                    Err(e) => return Err(e),
                },
                None => (
                    platform::spawn(&program_c, &argv, &envp, Some(&cwd_c), &stdio)?,
                    leaf,
                ),
            };
            owned.insert(pid.as_raw_nonzero().get());
            (pid, leaf)
        };
        match ProcessHandle::open(pid, None) {
            Ok(Some(handle)) => Ok((handle, leaf)),
            // Our own unreaped child cannot vanish; failing here means no fds left.
            Ok(None) => Err(std::io::Error::other(
                "the new process vanished before it could be watched",
            )),
            Err(e) => {
                platform::kill_and_reap_child(pid);
                lock(&self.inner.owned).remove(&pid.as_raw_nonzero().get());
                Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot watch the new process: {e}"),
                ))
            }
        }
    }

    pub(super) fn spawn_response(&self, agent: &Agent) -> SpawnResponse {
        let status = agent.status(&self.inner.clock);
        let error = match status.persistent_status {
            PersistentStatus::Failed => {
                let tail = logs::tail(&agent.stderr_log(), STDERR_TAIL_LINES).unwrap_or_default();
                let why = status.end_reason.clone().unwrap_or_else(|| "failed".into());
                Some(if tail.trim().is_empty() {
                    format!(
                        "agent {} {why} during verification (stderr is empty)",
                        agent.id
                    )
                } else {
                    format!(
                        "agent {} {why} during verification; last stderr lines:\n{}",
                        agent.id,
                        tail.trim_end()
                    )
                })
            }
            _ => None,
        };
        SpawnResponse {
            agent_id: status.agent_id,
            pid: status.pid,
            status: status.persistent_status,
            started_at: status.started_at,
            stdout_log: status.stdout_log,
            stderr_log: status.stderr_log,
            exit_code: status.exit_code,
            exit_signal: status.exit_signal,
            error,
        }
    }

    pub(super) async fn transition_to_running(&self, agent: &Agent) -> Result<()> {
        let _t = agent.transition.lock().await;
        if agent.status_now() != PersistentStatus::Spawning {
            return Ok(());
        }
        self.inner
            .store
            .set_status(agent.run_id, PersistentStatus::Running)
            .await?;
        lock(&agent.state).status = PersistentStatus::Running;
        tracing::info!(agent_id = %agent.id, pid = agent.pid(), "agent running");
        Ok(())
    }
}
