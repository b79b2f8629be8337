//! `corral up` / `corral down`: a team of agents described in `corral.toml`.
//!
//! `up` makes the running set match the file, and only as much as needed:
//! agents that run with the same definition are left alone, changed ones are
//! restarted, missing ones started, and agents of the project that the file no
//! longer names are stopped. Each agent carries two labels, the project's name
//! (`corral.project`) and a hash of its full spawn request (`corral.spec`),
//! which is how `up` tells "unchanged" from "changed".
//!
//! Projects don't collide: an agent's id is scoped by its project
//! (`PREFIX.NAME`, the prefix being the project's name unless `prefix =` says
//! otherwise; `prefix = ""` gives bare names), and it carries the absolute path
//! of its file (`corral.project_file`). `up`, `down` and `up`'s stopping of
//! what the file no longer names act only on agents of this project — same
//! name, same file — and `up` refuses, before changing anything, when an id it
//! needs belongs to another project or was spawned by hand. A project whose
//! recorded file no longer exists (the directory moved) is taken over.
//!
//! `depends_on` orders
//! starts: an agent starts once every instance of what it depends on is ready
//! (or running, when it has no readiness probe). `down` stops them, dependents
//! first. Unknown keys and type errors name the file, the line and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::Client;
use corral_core::{
    AgentStatus, BatchRequest, BatchResponse, BatchResult, Limits, ListQuery, LogRotation, Probes,
    RestartPolicy, SpawnRequest, StopManyRequest, StopReport,
};
use serde::Deserialize;

use super::{Ctx, print_json, usage};
use crate::cli::{DownArgs, UpArgs};
use crate::output::{Style, Table};

/// Label naming the project an agent belongs to.
pub const PROJECT_LABEL: &str = "corral.project";
/// Label holding the absolute path of the project file an agent came from.
pub const FILE_LABEL: &str = "corral.project_file";
/// Label holding the hash of an agent's spawn request.
pub const SPEC_LABEL: &str = "corral.spec";
/// How long `up` waits for what an agent depends on.
const DEPENDENCY_WAIT: Duration = Duration::from_secs(120);

/// One agent's definition (and the `[defaults]` table's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentDef {
    command: Option<Vec<String>>,
    /// A shell command line, run by `sh -c` (instead of `command`).
    shell: Option<String>,
    /// A dotenv file (relative to the project file) under `env`.
    env_file: Option<PathBuf>,
    count: Option<u32>,
    #[serde(default)]
    depends_on: Vec<String>,
    cwd: Option<PathBuf>,
    env: Option<BTreeMap<String, String>>,
    agent_dir: Option<PathBuf>,
    labels: Option<BTreeMap<String, String>>,
    stop_timeouts: Option<Vec<f64>>,
    verify_ms: Option<u64>,
    restart: Option<RestartPolicy>,
    max_runtime_s: Option<f64>,
    limits: Option<Limits>,
    probes: Option<Probes>,
    user: Option<String>,
    inherit_env: Option<bool>,
    logs: Option<LogRotation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    /// The project's name (default: the name of the file's directory).
    name: Option<String>,
    /// What the project's agent ids start with (default: the name; "" for none).
    prefix: Option<String>,
    #[serde(default)]
    defaults: AgentDef,
    #[serde(default)]
    agents: BTreeMap<String, AgentDef>,
}

/// A project file, read and checked.
struct Project {
    name: String,
    /// The file, absolute: with the name, what makes an agent this project's.
    file: PathBuf,
    /// Agent names in start order (dependencies first).
    order: Vec<String>,
    agents: BTreeMap<String, Agent>,
}

struct Agent {
    depends_on: Vec<String>,
    /// The ids and spawn requests of its instances.
    instances: Vec<SpawnRequest>,
    has_readiness: bool,
}

/// `file:line:column: message` for a parse or type error in the file.
fn located(file: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let (line, col) = e.span().map_or((1, 1), |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    });
    usage(format!(
        "{}:{line}:{col}: {}",
        file.display(),
        e.message().trim()
    ))
}

/// The line of `[agents.NAME]` in the file, for errors about that agent.
fn line_of(text: &str, name: &str) -> usize {
    let header = format!("[agents.{name}]");
    text.lines()
        .position(|l| l.trim() == header)
        .map_or(1, |i| i + 1)
}

fn load(file: &Path) -> Result<Project> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("read the project file {}", file.display()))?;
    let parsed: ProjectFile = toml::from_str(&text).map_err(|e| located(file, &text, &e))?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    let base = std::path::absolute(dir.unwrap_or(Path::new(".")))?;
    let name = parsed.name.clone().unwrap_or_else(|| {
        base.file_name()
            .map_or("project".into(), |n| n.to_string_lossy().into_owned())
    });
    let abs_file = std::fs::canonicalize(file).unwrap_or_else(|_| base.join(file));
    let prefix = match &parsed.prefix {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(corral_core::AgentId::new(p.as_str()).map_err(|e| {
            usage(format!(
                "{}: prefix {p:?} cannot start an agent id: {e}",
                file.display()
            ))
        })?),
        None => Some(corral_core::AgentId::new(id_part(&name)).map_err(|e| {
            usage(format!(
                "{}: the project name {name:?} cannot start an agent id ({e}); set prefix = \"…\"",
                file.display()
            ))
        })?),
    };
    let scoped = |agent: &str| match &prefix {
        Some(p) => format!("{p}.{agent}"),
        None => agent.to_owned(),
    };
    let at = |agent: &str, msg: String| {
        usage(format!(
            "{}:{}: agent {agent}: {msg}",
            file.display(),
            line_of(&text, agent)
        ))
    };
    let mut agents = BTreeMap::new();
    for (agent, def) in &parsed.agents {
        corral_core::AgentId::new(agent.as_str()).map_err(|e| at(agent, e.to_string()))?;
        for dep in &def.depends_on {
            if !parsed.agents.contains_key(dep) {
                return Err(at(
                    agent,
                    format!("depends_on names {dep:?}, which the file does not define"),
                ));
            }
        }
        if def.command.is_some() && def.shell.is_some() {
            return Err(at(
                agent,
                "give either command (a list) or shell (a string), not both".into(),
            ));
        }
        let mut merged = merge(&parsed.defaults, def);
        let command = match (&merged.command, &merged.shell) {
            (Some(c), _) if !c.is_empty() => c.clone(),
            (None, Some(line)) if !line.trim().is_empty() => {
                vec!["sh".into(), "-c".into(), line.clone()]
            }
            _ => {
                return Err(at(
                    agent,
                    "needs a command (a list: [\"program\", \"arg\"]) or shell (\"a command line\")"
                        .into(),
                ));
            }
        };
        if let Some(file) = &merged.env_file {
            // Its variables under the table's own `env`, which wins.
            let mut env = super::spawn::env_file(&base.join(file), "env_file")
                .map_err(|e| at(agent, e.to_string()))?;
            env.extend(merged.env.take().unwrap_or_default());
            merged.env = (!env.is_empty()).then_some(env);
        }
        let count = merged.count.unwrap_or(1);
        if count == 0 {
            return Err(at(agent, "count must be at least 1".into()));
        }
        let instances = (1..=count)
            .map(|i| {
                let id = if merged.count.is_some() {
                    scoped(&format!("{agent}.{i}"))
                } else {
                    scoped(agent)
                };
                corral_core::AgentId::new(id.as_str()).map_err(|e| at(agent, e.to_string()))?;
                let mut req = request(&name, &base, id, command.clone(), &merged);
                req.labels
                    .insert(FILE_LABEL.into(), abs_file.to_string_lossy().into_owned());
                Ok(req)
            })
            .collect::<Result<Vec<_>>>()?;
        let has_readiness = merged
            .probes
            .as_ref()
            .is_some_and(|p| p.readiness.is_some());
        agents.insert(
            agent.clone(),
            Agent {
                depends_on: def.depends_on.clone(),
                instances,
                has_readiness,
            },
        );
    }
    let order = start_order(&agents).map_err(|cycle| {
        usage(format!(
            "{}: depends_on goes round in a circle: {}",
            file.display(),
            cycle.join(" → ")
        ))
    })?;
    Ok(Project {
        name,
        file: abs_file,
        order,
        agents,
    })
}

/// A project name as the start of an id: what an id may not hold becomes `-`.
fn id_part(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut out = mapped.trim_start_matches(['.', '-']).to_owned();
    while out.contains("..") {
        out = out.replace("..", ".");
    }
    let out = out.trim_end_matches('.').to_owned();
    if out.is_empty() {
        "project".into()
    } else {
        out
    }
}

/// Whose an agent on the daemon is, as far as this project is concerned.
#[derive(Debug, PartialEq)]
enum Owner {
    /// This project's: same name, and the same file (or one that no longer exists).
    Ours,
    /// Spawned without a project.
    Hand,
    /// Another project's: its name and file.
    Other(String, Option<String>),
}

fn owner(p: &Project, s: &AgentStatus) -> Owner {
    let Some(name) = s.labels.get(PROJECT_LABEL) else {
        return Owner::Hand;
    };
    let file = s.labels.get(FILE_LABEL);
    let same_file = file.is_none_or(|f| Path::new(f) == p.file || !Path::new(f).exists());
    if *name == p.name && same_file {
        Owner::Ours
    } else {
        Owner::Other(name.clone(), file.cloned())
    }
}

/// Refuses, naming each, the ids this run of `up` needs that are not the project's.
fn check_ids(
    p: &Project,
    picked: &BTreeSet<String>,
    current: &BTreeMap<String, AgentStatus>,
) -> Result<()> {
    let mut taken = Vec::new();
    for name in p.order.iter().filter(|n| picked.contains(*n)) {
        for req in &p.agents[name].instances {
            let Some(s) = current.get(&req.agent_id) else {
                continue;
            };
            match owner(p, s) {
                Owner::Ours => {}
                Owner::Hand => taken.push(format!(
                    "{} is taken by an agent spawned without a project ({})",
                    req.agent_id, s.persistent_status
                )),
                Owner::Other(other, file) => taken.push(format!(
                    "{} is taken by project {other:?}{}",
                    req.agent_id,
                    file.map(|f| format!(" ({f})")).unwrap_or_default()
                )),
            }
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    bail!(
        "project {:?} ({}) cannot use ids that are not its own, so nothing was changed:\n  {}\n\
         Give this project another name or prefix (name = \"…\" or prefix = \"…\" in its file), \
         or stop and forget the agent (corral stop ID && corral rm ID).",
        p.name,
        p.file.display(),
        taken.join("\n  ")
    )
}

/// An agent's definition with the defaults under it (maps are merged).
fn merge(defaults: &AgentDef, def: &AgentDef) -> AgentDef {
    let maps = |d: &Option<BTreeMap<String, String>>, a: &Option<BTreeMap<String, String>>| {
        let mut m = d.clone().unwrap_or_default();
        m.extend(a.clone().unwrap_or_default());
        (!m.is_empty()).then_some(m)
    };
    AgentDef {
        // An agent's own command, in either form, wins over the defaults'.
        command: def.command.clone().or_else(|| {
            def.shell
                .is_none()
                .then(|| defaults.command.clone())
                .flatten()
        }),
        shell: def.shell.clone().or_else(|| {
            def.command
                .is_none()
                .then(|| defaults.shell.clone())
                .flatten()
        }),
        env_file: def.env_file.clone().or_else(|| defaults.env_file.clone()),
        count: def.count.or(defaults.count),
        depends_on: def.depends_on.clone(),
        cwd: def.cwd.clone().or_else(|| defaults.cwd.clone()),
        env: maps(&defaults.env, &def.env),
        agent_dir: def.agent_dir.clone().or_else(|| defaults.agent_dir.clone()),
        labels: maps(&defaults.labels, &def.labels),
        stop_timeouts: def
            .stop_timeouts
            .clone()
            .or_else(|| defaults.stop_timeouts.clone()),
        verify_ms: def.verify_ms.or(defaults.verify_ms),
        restart: def.restart.clone().or_else(|| defaults.restart.clone()),
        max_runtime_s: def.max_runtime_s.or(defaults.max_runtime_s),
        limits: def.limits.clone().or_else(|| defaults.limits.clone()),
        probes: def.probes.clone().or_else(|| defaults.probes.clone()),
        user: def.user.clone().or_else(|| defaults.user.clone()),
        inherit_env: def.inherit_env.or(defaults.inherit_env),
        logs: def.logs.clone().or_else(|| defaults.logs.clone()),
    }
}

/// The spawn request of one instance, labelled with the project and its hash.
fn request(
    project: &str,
    base: &Path,
    id: String,
    command: Vec<String>,
    d: &AgentDef,
) -> SpawnRequest {
    // The daemon takes no path with a `..` part: resolve one that exists
    // (a missing one is sent as written and refused, naming the field).
    let rel = |p: &Option<PathBuf>| {
        p.as_ref().map(|p| {
            let joined = base.join(p);
            let dotted = joined.components().any(|c| {
                matches!(
                    c,
                    std::path::Component::ParentDir | std::path::Component::CurDir
                )
            });
            if dotted {
                std::fs::canonicalize(&joined).unwrap_or(joined)
            } else {
                joined
            }
        })
    };
    let mut req = SpawnRequest {
        agent_id: id,
        command,
        cwd: rel(&d.cwd).or_else(|| Some(base.to_owned())),
        env: d.env.clone().unwrap_or_default(),
        inherit_env: d.inherit_env,
        agent_dir: rel(&d.agent_dir),
        labels: d.labels.clone().unwrap_or_default(),
        stop_timeouts: d.stop_timeouts.clone(),
        verify_ms: d.verify_ms,
        restart: d.restart.clone(),
        max_runtime_s: d.max_runtime_s,
        limits: d.limits.clone(),
        probes: d.probes.clone(),
        user: d.user.clone(),
        logs: d.logs.clone(),
        placement: None,
    };
    let hash = fnv(&serde_json::to_string(&req).unwrap_or_default());
    req.labels.insert(PROJECT_LABEL.into(), project.into());
    req.labels.insert(SPEC_LABEL.into(), hash);
    req
}

/// FNV-1a, 64 bits, as hex: a stable fingerprint of a spawn request.
fn fnv(text: &str) -> String {
    format!("{:016x}", corral_core::fnv1a(text.as_bytes()))
}

/// Agent names, dependencies first; the names of a cycle when there is one.
fn start_order(agents: &BTreeMap<String, Agent>) -> std::result::Result<Vec<String>, Vec<String>> {
    fn visit(
        name: &str,
        agents: &BTreeMap<String, Agent>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> std::result::Result<(), Vec<String>> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(i) = path.iter().position(|p| p == name) {
            let mut cycle = path[i..].to_vec();
            cycle.push(name.to_owned());
            return Err(cycle);
        }
        path.push(name.to_owned());
        for dep in agents
            .get(name)
            .map(|a| a.depends_on.as_slice())
            .unwrap_or_default()
        {
            visit(dep, agents, done, path, out)?;
        }
        path.pop();
        done.insert(name.to_owned());
        out.push(name.to_owned());
        Ok(())
    }
    let (mut done, mut out) = (BTreeSet::new(), Vec::new());
    for name in agents.keys() {
        visit(name, agents, &mut done, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// `names` and everything they depend on (`up`), or everything that depends on
/// them (`down`); every agent when `names` is empty.
fn selection(p: &Project, names: &[String], dependents: bool) -> Result<BTreeSet<String>> {
    if let Some(bad) = names.iter().find(|n| !p.agents.contains_key(*n)) {
        return Err(usage(format!(
            "the project defines no agent {bad:?} (it has: {})",
            p.agents.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    if names.is_empty() {
        return Ok(p.agents.keys().cloned().collect());
    }
    let mut picked: BTreeSet<String> = names.iter().cloned().collect();
    loop {
        let before = picked.len();
        for (name, a) in &p.agents {
            if dependents {
                if a.depends_on.iter().any(|d| picked.contains(d)) {
                    picked.insert(name.clone());
                }
            } else if picked.contains(name) {
                picked.extend(a.depends_on.iter().cloned());
            }
        }
        if picked.len() == before {
            return Ok(picked);
        }
    }
}

fn project_file(file: &Option<PathBuf>) -> PathBuf {
    file.clone().unwrap_or_else(|| PathBuf::from("corral.toml"))
}

#[derive(serde::Serialize)]
struct Action {
    agent_id: String,
    action: &'static str,
    pid: Option<i32>,
    status: String,
    note: String,
}

pub async fn up(ctx: &Ctx, args: &UpArgs) -> Result<ExitCode> {
    let file = project_file(&args.file);
    let p = load(&file)?;
    let picked = selection(&p, &args.names, false)?;
    let client = ctx.client().await?;
    let current = agents_now(&client).await?;
    check_ids(&p, &picked, &current)?;
    // With --restart, the named agents (every one when none is named) start
    // again from the file even when unchanged; what they depend on does not.
    let again: BTreeSet<&String> = if args.names.is_empty() {
        picked.iter().collect()
    } else {
        args.names.iter().collect()
    };
    let mut actions = Vec::new();
    for name in p.order.iter().filter(|n| picked.contains(*n)) {
        let agent = &p.agents[name];
        for dep in &agent.depends_on {
            wait_ready(&client, &p.agents[dep]).await?;
        }
        let restart = args.restart && again.contains(name);
        actions.extend(bring_up(&client, &current, agent, restart).await?);
    }
    if args.names.is_empty() {
        actions.extend(stop_strays(&client, &current, &p).await?);
    }
    let failed = actions.iter().any(|a| a.action == "failed");
    if ctx.json {
        print_json(&actions)?;
    } else {
        let mut t = Table::new(vec!["AGENT", "ACTION", "PID", "STATUS", "NOTE"])
            .shrinkable(&[4])
            .id_column(0);
        for a in &actions {
            t.push(vec![
                a.agent_id.as_str().into(),
                a.action.into(),
                a.pid.map_or("-".into(), |p| p.to_string()).into(),
                a.status.as_str().into(),
                a.note.as_str().into(),
            ]);
        }
        print!("{}", t.render(Style::stdout(false)));
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Starts what is missing of one agent and restarts what changed.
async fn bring_up(
    client: &Client,
    current: &BTreeMap<String, AgentStatus>,
    agent: &Agent,
    restart: bool,
) -> Result<Vec<Action>> {
    let mut actions = Vec::new();
    let mut to_spawn = Vec::new();
    for req in &agent.instances {
        let now = current.get(&req.agent_id);
        let live =
            now.is_some_and(|s| s.persistent_status.is_live() || s.next_restart_at.is_some());
        let same =
            !restart && now.is_some_and(|s| s.labels.get(SPEC_LABEL) == req.labels.get(SPEC_LABEL));
        match (live, same) {
            (true, true) => {
                let s = now.map(|s| (s.pid, s.persistent_status.to_string()));
                actions.push(Action {
                    agent_id: req.agent_id.clone(),
                    action: "unchanged",
                    pid: s.as_ref().and_then(|s| s.0),
                    status: s.map(|s| s.1).unwrap_or_default(),
                    note: String::new(),
                });
            }
            (true, false) => {
                stop(client, &req.agent_id).await?;
                to_spawn.push((req.clone(), "restarted"));
            }
            (false, _) => to_spawn.push((req.clone(), "started")),
        }
    }
    if to_spawn.is_empty() {
        return Ok(actions);
    }
    let batch = BatchRequest {
        agents: to_spawn.iter().map(|(r, _)| r.clone()).collect(),
    };
    let answer: BatchResponse = client.spawn_batch(&batch).await?;
    for ((req, action), result) in to_spawn.into_iter().zip(answer.results) {
        actions.push(match result {
            BatchResult::Spawned(s) => Action {
                agent_id: req.agent_id,
                action: if s.status.is_live() || s.exit_code == Some(0) {
                    action
                } else {
                    "failed"
                },
                pid: s.pid,
                status: s.status.to_string(),
                note: s
                    .error
                    .unwrap_or_default()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            },
            BatchResult::Failed(f) => Action {
                agent_id: req.agent_id,
                action: "failed",
                pid: None,
                status: "-".into(),
                note: f.error.message,
            },
        });
    }
    Ok(actions)
}

/// Stops the project's agents that the file no longer names.
async fn stop_strays(
    client: &Client,
    current: &BTreeMap<String, AgentStatus>,
    p: &Project,
) -> Result<Vec<Action>> {
    let wanted: BTreeSet<&str> = p
        .agents
        .values()
        .flat_map(|a| a.instances.iter().map(|r| r.agent_id.as_str()))
        .collect();
    let mut actions = Vec::new();
    for s in current.values() {
        let ours = owner(p, s) == Owner::Ours;
        if ours && s.persistent_status.is_live() && !wanted.contains(s.agent_id.as_str()) {
            let r = stop(client, &s.agent_id).await?;
            actions.push(Action {
                agent_id: s.agent_id.clone(),
                action: "stopped",
                pid: r.pid,
                status: r.persistent_status.to_string(),
                note: "no longer in the project file".into(),
            });
        }
    }
    Ok(actions)
}

/// Every agent, with what `up` and `down` read of each: whose it is, whether
/// it lives, its spec's hash, its pid.
async fn agents_now(client: &Client) -> Result<BTreeMap<String, AgentStatus>> {
    let query = ListQuery {
        fields: Some("labels,persistent_status,next_restart_at,pid".into()),
        ..ListQuery::default()
    };
    Ok(client.list(&query).await?)
}

async fn stop(client: &Client, id: &str) -> Result<StopReport> {
    Ok(client
        .stop(id, &corral_core::CleanupOptions::default())
        .await?)
}

/// Waits until every instance of `dep` is ready (or running, without a readiness probe).
async fn wait_ready(client: &Client, dep: &Agent) -> Result<()> {
    let end = Instant::now() + DEPENDENCY_WAIT;
    for req in &dep.instances {
        loop {
            let s: AgentStatus = client.status(&req.agent_id).await?;
            let ok = if dep.has_readiness {
                s.ready == Some(true)
            } else {
                s.persistent_status.is_live()
                    || s.persistent_status == corral_core::PersistentStatus::Completed
            };
            if ok {
                break;
            }
            if !s.persistent_status.is_live() && s.next_restart_at.is_none() {
                bail!(
                    "{} ended ({}) before it was ready: {}",
                    req.agent_id,
                    s.persistent_status,
                    s.end_reason.unwrap_or_default()
                );
            }
            if Instant::now() > end {
                bail!(
                    "{} was not ready within {} s",
                    req.agent_id,
                    DEPENDENCY_WAIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub async fn down(ctx: &Ctx, args: &DownArgs) -> Result<ExitCode> {
    let file = project_file(&args.file);
    let p = load(&file)?;
    let picked = selection(&p, &args.names, true)?;
    let client = ctx.client().await?;
    let current = agents_now(&client).await?;
    let mut ids = Vec::new();
    if args.names.is_empty() {
        // Agents of the project its file no longer names go first: nothing
        // in the file depends on them any more.
        let named: BTreeSet<&str> = p
            .agents
            .values()
            .flat_map(|a| a.instances.iter().map(|r| r.agent_id.as_str()))
            .collect();
        ids.extend(
            current
                .values()
                .filter(|s| owner(&p, s) == Owner::Ours && !named.contains(s.agent_id.as_str()))
                .map(|s| s.agent_id.clone()),
        );
    }
    // Dependents first: the start order, reversed.
    for name in p.order.iter().rev().filter(|n| picked.contains(*n)) {
        for req in &p.agents[name].instances {
            match current.get(&req.agent_id).map(|s| owner(&p, s)) {
                None => {}
                Some(Owner::Ours) => ids.push(req.agent_id.clone()),
                Some(Owner::Hand) => eprintln!(
                    "corral: left {} alone: it was spawned without a project",
                    req.agent_id
                ),
                Some(Owner::Other(other, _)) => eprintln!(
                    "corral: left {} alone: it belongs to project {other:?}",
                    req.agent_id
                ),
            }
        }
    }
    let mut reports: Vec<StopReport> = Vec::new();
    for id in ids {
        let body = StopManyRequest {
            selector: Some(id),
            live_only: true,
            ..StopManyRequest::default()
        };
        let r: Vec<StopReport> = client.stop_many(&body).await?;
        reports.extend(r);
    }
    if ctx.json {
        print_json(&reports)?;
    } else if reports.is_empty() {
        println!("nothing of {} was running", p.name);
    } else {
        let mut t = Table::new(vec!["AGENT", "ACTION", "PID", "STAGE", "STATUS"]).id_column(0);
        for r in &reports {
            t.push(vec![
                r.agent_id.as_str().into(),
                "stopped".into(),
                r.pid.map_or("-".into(), |p| p.to_string()).into(),
                r.stage.as_str().into(),
                r.persistent_status.as_str().into(),
            ]);
        }
        print!("{}", t.render(Style::stdout(false)));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("corral.toml");
        std::fs::write(&file, text).unwrap();
        (dir, file)
    }

    #[test]
    fn shell_lines_and_env_files_fill_the_request() {
        let (d, file) = write(
            r#"
[defaults]
shell = "echo default"
env_file = "common.env"
[agents.web]
shell = "python3 -m http.server 8000 | tee web.log"
env = { PORT = "9000" }
[agents.plain]
command = ["sleep", "60"]
[agents.inherits]
"#,
        );
        std::fs::write(
            d.path().join("common.env"),
            "# shared\nexport PORT=8000\nGREETING=\"hello world\"\n\n",
        )
        .unwrap();
        let p = load(&file).unwrap();
        let web = &p.agents["web"].instances[0];
        assert_eq!(
            web.command,
            ["sh", "-c", "python3 -m http.server 8000 | tee web.log"]
        );
        assert_eq!(web.env["PORT"], "9000", "the table's own env wins");
        assert_eq!(web.env["GREETING"], "hello world");
        let plain = &p.agents["plain"].instances[0];
        assert_eq!(
            plain.command,
            ["sleep", "60"],
            "its own command beats the default shell"
        );
        assert_eq!(
            p.agents["inherits"].instances[0].command,
            ["sh", "-c", "echo default"]
        );

        let (_d, both) = write("[agents.x]\ncommand = [\"true\"]\nshell = \"true\"\n");
        let err = load(&both).err().unwrap().to_string();
        assert!(err.contains("agent x") && err.contains("not both"), "{err}");
        let (_d, missing) = write("[agents.x]\nshell = \"true\"\nenv_file = \"nope.env\"\n");
        let err = load(&missing).err().unwrap().to_string();
        assert!(
            err.contains("env_file") && err.contains("nope.env"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_name_becomes_a_valid_prefix() {
        assert_eq!(id_part("my project"), "my-project");
        assert_eq!(id_part(".hidden"), "hidden");
        assert_eq!(id_part("a..b."), "a.b");
        assert_eq!(id_part("ünï"), "n-");
        assert_eq!(id_part("--"), "project");
        let (_d, file) = write("prefix = \"bad/one\"\n[agents.a]\ncommand = [\"true\"]\n");
        let err = load(&file).err().unwrap().to_string();
        assert!(err.contains("prefix \"bad/one\""), "{err}");
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let (_d, file) = write("[agents.web]\ncommand = [\"true\"]\ncolour = \"red\"\n");
        let err = load(&file).err().unwrap().to_string();
        assert!(err.contains("corral.toml:3:1"), "{err}");
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn counts_defaults_and_dependencies_make_the_plan() {
        let (_d, file) = write(
            r#"
name = "demo"
[defaults]
stop_timeouts = [1, 1, 1]
env = { A = "1" }
inherit_env = false
[agents.web]
command = ["python3", "-m", "http.server"]
depends_on = ["indexer"]
[agents.indexer]
command = ["sleep", "60"]
count = 2
env = { B = "2" }
"#,
        );
        let p = load(&file).unwrap();
        assert_eq!(p.order, ["indexer", "web"]);
        let ids: Vec<&str> = p.agents["indexer"]
            .instances
            .iter()
            .map(|r| r.agent_id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["demo.indexer.1", "demo.indexer.2"],
            "scoped by the project"
        );
        let r = &p.agents["indexer"].instances[0];
        assert_eq!(r.env.len(), 2, "defaults and the agent's own, merged");
        assert_eq!(r.stop_timeouts, Some(vec![1.0, 1.0, 1.0]));
        assert_eq!(r.inherit_env, Some(false), "from the defaults");
        assert_eq!(r.labels[PROJECT_LABEL], "demo");
        assert_eq!(p.agents["web"].instances[0].agent_id, "demo.web");
        let picked = selection(&p, &["web".into()], false).unwrap();
        assert_eq!(picked.len(), 2, "web and what it depends on");
        let picked = selection(&p, &["indexer".into()], true).unwrap();
        assert_eq!(picked.len(), 2, "indexer and what depends on it");
    }

    #[test]
    fn cycles_and_unknown_dependencies_are_refused() {
        let (_d, file) = write(
            "[agents.a]\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n[agents.b]\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n",
        );
        let err = load(&file).err().unwrap().to_string();
        assert!(err.contains("circle"), "{err}");
        let (_d, file) = write("[agents.a]\ncommand = [\"true\"]\ndepends_on = [\"ghost\"]\n");
        let err = load(&file).err().unwrap().to_string();
        assert!(
            err.contains("corral.toml:1: agent a") && err.contains("ghost"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_definition_changes_the_hash_and_nothing_else_does() {
        let base = Path::new("/p");
        let d = AgentDef::default();
        let a = request("p", base, "x".into(), vec!["true".into()], &d);
        let b = request("p", base, "x".into(), vec!["true".into()], &d);
        let c = request("p", base, "x".into(), vec!["false".into()], &d);
        assert_eq!(a.labels[SPEC_LABEL], b.labels[SPEC_LABEL]);
        assert_ne!(a.labels[SPEC_LABEL], c.labels[SPEC_LABEL]);
    }
}
