//! Checking a spawn request and filling in its defaults, before anything is
//! created: every refusal here is a 400 naming the field, and nothing is
//! started or recorded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::id::AgentId;
use crate::model::{
    LogRotation, Probe, Probes, RestartPolicy, SlurmPlacement, SpawnRequest, short_number,
};
use crate::platform::files::User;

/// Staged-stop waits when none are given: SIGTERM, 10 s, SIGTERM, 5 s, SIGKILL, 5 s.
pub const DEFAULT_STOP_TIMEOUTS: [f64; 3] = [10.0, 5.0, 5.0];
/// Verification window when none is given, ms.
pub const DEFAULT_VERIFY_MS: u64 = 100;
/// Longest verification window accepted, ms.
pub const MAX_VERIFY_MS: u64 = 60_000;
/// Longest single stop-stage wait accepted, seconds (one day); also the
/// longest backoff, restart window and probe setting.
pub const MAX_STOP_WAIT_S: f64 = 86_400.0;
/// Longest `max_runtime_s` accepted: ten years.
pub const MAX_RUNTIME_S: f64 = 315_360_000.0;
/// Most labels per agent.
pub const MAX_LABELS: usize = 64;
/// Longest label key, bytes.
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value, bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Longest progress message kept, bytes.
pub const MAX_PROGRESS_MESSAGE: usize = 1024;
/// Smallest `logs.max_mb` accepted, MiB (about 1 KiB).
pub const MIN_LOG_MAX_MB: f64 = 0.001;
/// Most rotated copies `logs.keep` may ask for.
pub const MAX_LOG_KEEP: u32 = 100;

/// A checked spawn request: what an agent's owner runs, run after run.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The agent.
    pub id: AgentId,
    /// The request with every default filled in (absolute `cwd` and `agent_dir`,
    /// `stop_timeouts`, `verify_ms`, `restart`): what is stored, so a restarted
    /// daemon supervises the same way.
    pub request: SpawnRequest,
    /// Where the run logs go.
    pub agent_dir: PathBuf,
    /// Working directory.
    pub cwd: PathBuf,
    /// Staged-stop waits.
    pub stop_timeouts: [f64; 3],
    /// Verification window.
    pub verify: Duration,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Who its processes run as.
    pub user: RunAs,
}

/// Who an agent's processes (runs and exec probes) run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunAs {
    /// The daemon's own user: the request names none.
    Daemon,
    /// The request's user, as looked up.
    User(User),
    /// The request names a user that could not be looked up (deleted since,
    /// or the user database unreachable): nothing of the agent runs until it
    /// can be, and never as another uid.
    Unresolved {
        /// The name (or uid) the request gave.
        name: String,
        /// Why it could not be looked up.
        why: String,
    },
}

impl RunAs {
    /// Looks `name` up (blocking: may ask NSS).
    pub(crate) fn lookup(name: Option<&str>) -> Self {
        let Some(name) = name else {
            return Self::Daemon;
        };
        match crate::platform::files::lookup_user(name) {
            Ok(Some(user)) => Self::User(user),
            Ok(None) => Self::Unresolved {
                name: name.to_owned(),
                why: "no such user".into(),
            },
            Err(e) => Self::Unresolved {
                name: name.to_owned(),
                why: format!("cannot look it up: {e}"),
            },
        }
    }

    /// The user to switch to (`None`: stay the daemon's user), or why nothing
    /// may run.
    pub(crate) fn user(&self) -> std::result::Result<Option<&User>, String> {
        match self {
            Self::Daemon => Ok(None),
            Self::User(u) => Ok(Some(u)),
            Self::Unresolved { name, why } => Err(format!(
                "user {name:?} cannot be resolved ({why}); corral never runs it as another user"
            )),
        }
    }

    /// The name shown in the status.
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Self::Daemon => None,
            Self::User(u) => Some(&u.name),
            Self::Unresolved { name, .. } => Some(name),
        }
    }
}

fn invalid(id: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        agent_id: crate::model::elide(id, 100),
        reason: reason.into(),
    }
}

/// Checks three stop-stage waits.
pub(crate) fn stop_timeouts(agent_id: &str, raw: &[f64]) -> Result<[f64; 3]> {
    match raw {
        [a, b, c]
            if raw
                .iter()
                .all(|t| t.is_finite() && *t >= 0.0 && *t <= MAX_STOP_WAIT_S) =>
        {
            Ok([*a, *b, *c])
        }
        _ => Err(invalid(
            agent_id,
            format!(
                "stop_timeouts must be three waits in seconds (TERM, TERM, KILL), each 0–{MAX_STOP_WAIT_S}; got [{}]",
                raw.iter()
                    .map(|t| short_number(*t))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn check_path(id: &str, field: &str, path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(invalid(id, format!("{field} contains a NUL byte")));
    }
    if !path.is_absolute() {
        return Err(invalid(
            id,
            format!(
                "{field} must be an absolute path; got {:?}",
                crate::model::elide(&path.to_string_lossy(), 200)
            ),
        ));
    }
    if path.components().any(|c| {
        matches!(
            c,
            std::path::Component::ParentDir | std::path::Component::CurDir
        )
    }) {
        return Err(invalid(
            id,
            format!(
                "{field} must not have a `..` or `.` part; got {:?}",
                crate::model::elide(&path.to_string_lossy(), 200)
            ),
        ));
    }
    for special in ["/proc", "/sys", "/dev"] {
        if path.starts_with(special) {
            return Err(invalid(
                id,
                format!(
                    "{field} must not be under {special}; got {}",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// What a job on Slurm can and cannot be asked for: the engine runs it (as the
/// daemon's user, on a node), so this host's limits, users and `exec` probes
/// do not apply.
fn check_slurm(id: &str, req: &SpawnRequest, slurm: &SlurmPlacement) -> Result<()> {
    if req.user.is_some() {
        return Err(invalid(
            id,
            "user: not with placement slurm (the job runs as the daemon's user)",
        ));
    }
    if req.limits.is_some() {
        return Err(invalid(
            id,
            "limits: not with placement slurm; ask the engine instead (placement.slurm.mem_mb, cpus, time_limit)",
        ));
    }
    let probes = req.probes.as_ref();
    if [
        probes.and_then(|p| p.liveness.as_ref()),
        probes.and_then(|p| p.readiness.as_ref()),
    ]
    .into_iter()
    .flatten()
    .any(|p| matches!(p, Probe::Exec(_)))
    {
        return Err(invalid(
            id,
            "probes: an exec probe would run on this host, not on the job's node; use http, tcp, log or progress_stale_s",
        ));
    }
    for key in req.env.keys() {
        let mut chars = key.chars();
        let shell_name = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !shell_name {
            return Err(invalid(
                id,
                format!(
                    "env: {:?} cannot be passed to a Slurm job (names are letters, digits and _)",
                    crate::model::elide(key, 100)
                ),
            ));
        }
    }
    for (field, value) in [
        ("partition", &slurm.partition),
        ("nodes", &slurm.nodes),
        ("time_limit", &slurm.time_limit),
    ] {
        if let Some(v) = value
            && (v.is_empty()
                || v.len() > 256
                || v.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid(
                id,
                format!(
                    "placement.slurm.{field} must be a non-empty word; got {:?}",
                    crate::model::elide(v, 100)
                ),
            ));
        }
    }
    if slurm.cpus == Some(0) || slurm.mem_mb == Some(0) {
        return Err(invalid(
            id,
            "placement.slurm.cpus and mem_mb must be at least 1",
        ));
    }
    Ok(())
}

fn check_strings(id: &str, req: &SpawnRequest) -> Result<()> {
    match req.command.first() {
        Some(p) if !p.is_empty() => {}
        _ => {
            return Err(invalid(
                id,
                "command must name a program (got an empty command)",
            ));
        }
    }
    if req.command.iter().any(|a| a.contains('\0')) {
        return Err(invalid(id, "command contains a NUL byte"));
    }
    for (key, value) in &req.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(
                id,
                format!(
                    "env: variable name {:?} is not valid",
                    crate::model::elide(key, 100)
                ),
            ));
        }
        if value.contains('\0') {
            return Err(invalid(id, format!("env: {key} contains a NUL byte")));
        }
    }
    if req.labels.len() > MAX_LABELS {
        return Err(invalid(
            id,
            format!(
                "labels: at most {MAX_LABELS} labels; got {}",
                req.labels.len()
            ),
        ));
    }
    for (key, value) in &req.labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY {
            return Err(invalid(
                id,
                format!(
                    "labels: a key must be 1–{MAX_LABEL_KEY} bytes; got {} bytes",
                    key.len()
                ),
            ));
        }
        if value.len() > MAX_LABEL_VALUE {
            return Err(invalid(
                id,
                format!(
                    "labels: the value of {:?} is {} bytes; at most {MAX_LABEL_VALUE}",
                    crate::model::elide(key, 100),
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

fn check_probe(id: &str, which: &str, probe: &Probe) -> Result<()> {
    let bad = |why: String| Err(invalid(id, format!("probes.{which}: {why}")));
    match probe {
        Probe::Exec(argv) if argv.first().is_none_or(|p| p.is_empty()) => {
            bad("exec needs a program".into())
        }
        Probe::Exec(argv) if argv.iter().any(|a| a.contains('\0')) => {
            bad("exec contains a NUL byte".into())
        }
        Probe::Http(url) if !url.starts_with("http://") => bad(format!(
            "http takes an http:// URL; got {:?}",
            crate::model::elide(url, 100)
        )),
        Probe::Tcp(addr)
            if addr
                .rsplit_once(':')
                .is_none_or(|(_, p)| p.parse::<u16>().is_err()) =>
        {
            bad(format!(
                "tcp takes HOST:PORT; got {:?}",
                crate::model::elide(addr, 100)
            ))
        }
        Probe::ProgressStaleS(s) if !(s.is_finite() && *s > 0.0 && *s <= MAX_STOP_WAIT_S) => {
            bad(format!(
                "progress_stale_s must be more than 0 and at most {MAX_STOP_WAIT_S}; got {}",
                short_number(*s)
            ))
        }
        Probe::Log(_) if which == "liveness" => {
            bad("log is a readiness probe (a line seen once cannot tell liveness)".into())
        }
        Probe::Log(re) if regex_lite_check(re).is_err() => bad(format!(
            "log is not a valid regular expression: {}",
            regex_lite_check(re).err().unwrap_or_default()
        )),
        _ => Ok(()),
    }
}

fn regex_lite_check(re: &str) -> std::result::Result<(), String> {
    regex::Regex::new(re).map(drop).map_err(|e| e.to_string())
}

fn check_probes(id: &str, probes: &Probes) -> Result<()> {
    let ok = |v: f64| v.is_finite() && v > 0.0 && v <= 86_400.0;
    if !ok(probes.interval_s) || !ok(probes.timeout_s) {
        return Err(invalid(
            id,
            "probes.interval_s and probes.timeout_s must be more than 0 and at most 86400",
        ));
    }
    if probes.failures == 0 {
        return Err(invalid(id, "probes.failures must be at least 1"));
    }
    if let Some(p) = &probes.liveness {
        check_probe(id, "liveness", p)?;
    }
    if let Some(p) = &probes.readiness {
        check_probe(id, "readiness", p)?;
    }
    Ok(())
}

fn check_logs(id: &str, logs: &LogRotation) -> Result<()> {
    let mb = logs.max_mb;
    if !(mb.is_finite() && mb >= MIN_LOG_MAX_MB) {
        return Err(invalid(
            id,
            format!(
                "logs.max_mb must be a size in MiB of at least {MIN_LOG_MAX_MB}; got {}",
                short_number(mb)
            ),
        ));
    }
    if !(1..=MAX_LOG_KEEP).contains(&logs.keep) {
        return Err(invalid(
            id,
            format!(
                "logs.keep must be 1–{MAX_LOG_KEEP} rotated copies; got {}",
                logs.keep
            ),
        ));
    }
    Ok(())
}

/// Checks `req` and fills in its defaults. `user` is the request's user,
/// already looked up. The state dir gives the default agent dir.
pub(crate) fn check(req: SpawnRequest, state_dir: &Path, user: RunAs) -> Result<Spec> {
    let id = AgentId::new(req.agent_id.clone())?;
    let raw = id.as_str();
    check_strings(raw, &req)?;
    let stop_timeouts = stop_timeouts(
        raw,
        req.stop_timeouts
            .as_deref()
            .unwrap_or(&DEFAULT_STOP_TIMEOUTS),
    )?;
    let verify_ms = req.verify_ms.unwrap_or(DEFAULT_VERIFY_MS);
    if verify_ms > MAX_VERIFY_MS {
        return Err(invalid(
            raw,
            format!("verify_ms must be at most {MAX_VERIFY_MS}; got {verify_ms}"),
        ));
    }
    for (field, path) in [("cwd", &req.cwd), ("agent_dir", &req.agent_dir)] {
        if let Some(p) = path {
            check_path(raw, field, p)?;
        }
    }
    let restart = req.restart.clone().unwrap_or_default();
    super::policy::validate(&restart).map_err(|why| invalid(raw, why))?;
    if let Some(t) = req.max_runtime_s
        && !(t.is_finite() && t > 0.0 && t <= MAX_RUNTIME_S)
    {
        return Err(invalid(
            raw,
            format!(
                "max_runtime_s must be more than 0 and at most {MAX_RUNTIME_S} (ten years); got {}",
                short_number(t)
            ),
        ));
    }
    if let Some(probes) = &req.probes {
        check_probes(raw, probes)?;
    }
    if let Some(limits) = &req.limits {
        super::limits::validate(limits).map_err(|why| invalid(raw, why))?;
    }
    if let Some(logs) = &req.logs {
        check_logs(raw, logs)?;
    }
    if let Some(slurm) = super::execution::slurm_of(req.placement.as_ref()) {
        check_slurm(raw, &req, slurm)?;
    }
    let agent_dir = req
        .agent_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("agents").join(raw));
    // An agent running as another user cannot enter corral's private state dir:
    // it starts in its home directory unless told otherwise.
    let cwd = match (&req.cwd, &user) {
        (Some(cwd), _) => cwd.clone(),
        (None, RunAs::User(u)) if u.home.is_dir() => u.home.clone(),
        (None, RunAs::User(_) | RunAs::Unresolved { .. }) => PathBuf::from("/"),
        (None, RunAs::Daemon) => agent_dir.clone(),
    };
    let mut request = req;
    request.cwd = Some(cwd.clone());
    request.agent_dir = Some(agent_dir.clone());
    request.stop_timeouts = Some(stop_timeouts.to_vec());
    request.verify_ms = Some(verify_ms);
    request.restart = Some(restart.clone());
    Ok(Spec {
        id,
        request,
        agent_dir,
        cwd,
        stop_timeouts,
        verify: Duration::from_millis(verify_ms),
        restart,
        user,
    })
}

impl Spec {
    /// Stores the agent dir as its real path (blocking): from now on nothing
    /// on it is followed if it is a symlink (`platform::agent_dir`), so one
    /// that appears later is an error, never a redirect.
    pub(crate) fn settle_paths(&mut self) -> Result<()> {
        let real = crate::platform::agent_dir::real_path(&self.agent_dir).map_err(|e| {
            invalid(
                self.id.as_str(),
                format!("agent_dir {}: {e}", self.agent_dir.display()),
            )
        })?;
        if self.cwd == self.agent_dir {
            self.cwd = real.clone();
            self.request.cwd = Some(real.clone());
        }
        self.request.agent_dir = Some(real.clone());
        self.agent_dir = real;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> SpawnRequest {
        serde_json::from_str(json).unwrap()
    }

    fn refused(json: &str, needle: &str) {
        let err = check(req(json), Path::new("/s"), RunAs::Daemon).unwrap_err();
        assert_eq!(err.code(), crate::error::ErrorCode::Invalid, "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        refused(r#"{"agent_id": "a", "command": []}"#, "empty command");
        refused(
            r#"{"agent_id": "a", "command": ["x"], "agent_dir": "/tmp/a\u0000b"}"#,
            "agent_dir contains a NUL",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "agent_dir": "/proc/self"}"#,
            "agent_dir must not be under /proc",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "cwd": "rel"}"#,
            "cwd must be an absolute path",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "env": {"A=B": "1"}}"#,
            "env",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "stop_timeouts": [1, 2]}"#,
            "stop_timeouts",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "verify_ms": 999999}"#,
            "verify_ms",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "max_runtime_s": -1}"#,
            "max_runtime_s",
        );
        // Every duration is bounded: nothing can overflow a timer.
        for (json, field) in [
            (r#""max_runtime_s": 1e300"#, "max_runtime_s"),
            (r#""max_runtime_s": 9.5e18"#, "max_runtime_s"),
            (r#""max_runtime_s": 315360001"#, "max_runtime_s"),
            (r#""stop_timeouts": [1, 1, 86401]"#, "stop_timeouts"),
            (r#""restart": {"window_s": 86401}"#, "restart.window_s"),
            (
                r#""restart": {"backoff_s": [1, 1e300]}"#,
                "restart.backoff_s",
            ),
            (r#""probes": {"interval_s": 1e300}"#, "probes.interval_s"),
            (
                r#""probes": {"liveness": {"progress_stale_s": 1e300}}"#,
                "progress_stale_s",
            ),
        ] {
            refused(
                &format!(r#"{{"agent_id": "a", "command": ["x"], {json}}}"#),
                field,
            );
        }
        let err = check(
            req(r#"{"agent_id": "a", "command": ["x"], "max_runtime_s": 1e300}"#),
            Path::new("/s"),
            RunAs::Daemon,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.len() < 200 && err.ends_with("got 1e300"),
            "a refusal does not echo 300 digits: {err}"
        );
        assert!(
            check(
                req(r#"{"agent_id": "a", "command": ["x"], "max_runtime_s": 315360000}"#),
                Path::new("/s"),
                RunAs::Daemon
            )
            .is_ok(),
            "ten years is allowed"
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "restart": {"policy": "always", "backoff_s": [9, 1]}}"#,
            "restart.backoff_s",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "probes": {"liveness": {"log": "x"}}}"#,
            "probes.liveness",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "probes": {"readiness": {"log": "("}}}"#,
            "not a valid regular expression",
        );
        refused(
            r#"{"agent_id": "a", "command": ["x"], "probes": {"liveness": {"tcp": "nohost"}}}"#,
            "HOST:PORT",
        );
    }

    #[test]
    fn log_rotation_is_checked_naming_the_field() {
        for (logs, needle) in [
            (r#"{"max_mb": 0}"#, "logs.max_mb"),
            (r#"{"max_mb": -5}"#, "logs.max_mb"),
            (
                r#"{"max_mb": 0.0001}"#,
                "logs.max_mb must be a size in MiB of at least 0.001; got 0.0001",
            ),
            (
                r#"{"max_mb": 10, "keep": 0}"#,
                "logs.keep must be 1–100 rotated copies; got 0",
            ),
            (r#"{"max_mb": 10, "keep": 101}"#, "logs.keep"),
        ] {
            refused(
                &format!(r#"{{"agent_id": "a", "command": ["x"], "logs": {logs}}}"#),
                needle,
            );
        }
        for logs in [
            r#"{"max_mb": 0.001, "keep": 1}"#,
            r#"{"max_mb": 100}"#,
            r#"{"max_mb": 5, "keep": 100}"#,
        ] {
            let json = format!(r#"{{"agent_id": "a", "command": ["x"], "logs": {logs}}}"#);
            let spec = check(req(&json), Path::new("/s"), RunAs::Daemon).unwrap();
            assert!(spec.request.logs.is_some(), "{logs}");
        }
    }

    #[test]
    fn labels_are_capped_and_the_message_names_the_limit() {
        let big = "v".repeat(900_000);
        let json = format!(r#"{{"agent_id": "a", "command": ["x"], "labels": {{"k": "{big}"}}}}"#);
        let err = check(req(&json), Path::new("/s"), RunAs::Daemon)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 1024"), "{err}");
        assert!(
            err.len() < 300,
            "the value is not echoed: {} bytes",
            err.len()
        );
        let many: Vec<String> = (0..65).map(|i| format!(r#""k{i}": "v""#)).collect();
        let json = format!(
            r#"{{"agent_id": "a", "command": ["x"], "labels": {{{}}}}}"#,
            many.join(",")
        );
        let err = check(req(&json), Path::new("/s"), RunAs::Daemon)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 64 labels"), "{err}");
    }

    #[test]
    fn defaults_are_filled_in() {
        let spec = check(
            req(r#"{"agent_id": "a.b", "command": ["x"]}"#),
            Path::new("/s"),
            RunAs::Daemon,
        )
        .unwrap();
        assert_eq!(spec.agent_dir, Path::new("/s/agents/a.b"));
        assert_eq!(spec.cwd, spec.agent_dir);
        assert_eq!(spec.stop_timeouts, DEFAULT_STOP_TIMEOUTS);
        assert_eq!(spec.request.verify_ms, Some(DEFAULT_VERIFY_MS));
        assert_eq!(spec.restart, RestartPolicy::default());
    }
}
