//! Team budgets: caps on the sum over every agent of a team.
//!
//! A team is an agent id and every id under it: team `L2` is `L2` itself and
//! every `L2.…` (`L2.1`, `L2.1.3`) — the agent whose id names the team
//! counts, as the lead of its own team. Budgets are kept in the store (table
//! `teams`), loaded at open and held in [`Shared::teams`]; a change is
//! committed before it takes effect.
//!
//! Who enforces what:
//!
//! - `max_agents` is checked at spawn, under the registry's lock that takes
//!   the new id ([`admit`]): two spawns at once cannot both take a team's
//!   last place, and a refused spawn leaves nothing behind (no owner, no
//!   record). Live agents count (every state but `ended`); a restart by an
//!   agent's restart policy, or a restart of a live member on request, is not
//!   a new agent and is never refused. Lowering the budget below the count
//!   stops nobody: it refuses new spawns until the team is under it.
//! - `memory_mb`, `pids` and `cpu_percent` are checked by the sampler, over the
//!   same pass that gives every agent its figures ([`Check`]): corral's cgroup
//!   layout is one leaf per run directly under the daemon's subtree, so a
//!   team has no cgroup of its own for the kernel to cap, and every budget
//!   answers `"enforcement": "sampler"`. Over `memory_mb` (the summed RSS of
//!   the members' trees), the member with the largest tree is stopped (cause
//!   `limit`, `end_reason` naming the team, the budget and the usage), then
//!   its restart policy applies; over `pids` (summed tasks), the member with
//!   the most tasks, the same way. No second member is stopped for a team
//!   until the first stop has taken effect — its run is gone from the pass,
//!   so the next sums no longer hold it — nor while any member is stopping
//!   for another reason. Over `cpu_percent` for three samples in a row, a
//!   `budget` event is recorded on the member that used the most (action
//!   `none`), once per crossing: again only after the team has been under
//!   it. CPU over a budget slows others down but harms nothing; stopping
//!   work for it would cost more than it saves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::id::AgentId;
use crate::model::{
    BudgetEvent, EventBody, TeamBudget, TeamMember, TeamRemoval, TeamStatus, TeamUsage,
};
use crate::store;

use super::view::View;
use super::{Cmd, Shared, Slot, Supervisor, lock};

/// Largest `memory_mb` budget (16 TiB).
pub const MAX_TEAM_MEMORY_MB: f64 = 16.0 * 1024.0 * 1024.0;
/// Largest `cpu_percent` budget (10 000 CPUs).
pub const MAX_TEAM_CPU_PERCENT: f64 = 1_000_000.0;
/// Largest `pids` budget (the kernel's own most, `PID_MAX_LIMIT`).
pub const MAX_TEAM_PIDS: u64 = 4_194_304;
/// Largest `max_agents` budget.
pub const MAX_TEAM_AGENTS: u32 = 1_000_000;

/// Samples in a row over the CPU budget before the crossing is recorded.
const CPU_SAMPLES: u32 = super::limits::CPU_SAMPLES;

/// How the resource budgets are enforced (see the module's docs).
const ENFORCEMENT: &str = "sampler";

/// Checks a budget: each value positive and bounded, at least one given.
/// The message names the field.
pub(crate) fn validate(team: &AgentId, b: &TeamBudget) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::InvalidBudget {
            team: team.to_string(),
            reason,
        })
    };
    if b.is_empty() {
        return bad("give at least one budget (memory_mb, cpu_percent, pids, max_agents); DELETE /v1/teams/{id} removes a team's budgets".into());
    }
    if let Some(m) = b.memory_mb
        && !(m.is_finite() && m > 0.0 && m <= MAX_TEAM_MEMORY_MB)
    {
        return bad(format!(
            "memory_mb must be more than 0 and at most {MAX_TEAM_MEMORY_MB} (MiB); got {}",
            crate::model::short_number(m)
        ));
    }
    if let Some(c) = b.cpu_percent
        && !(c.is_finite() && c > 0.0 && c <= MAX_TEAM_CPU_PERCENT)
    {
        return bad(format!(
            "cpu_percent must be more than 0 and at most {MAX_TEAM_CPU_PERCENT} (percent of one CPU); got {}",
            crate::model::short_number(c)
        ));
    }
    if let Some(p) = b.pids
        && !(1..=MAX_TEAM_PIDS).contains(&p)
    {
        return bad(format!("pids must be 1–{MAX_TEAM_PIDS}; got {p}"));
    }
    if let Some(n) = b.max_agents
        && !(1..=MAX_TEAM_AGENTS).contains(&n)
    {
        return bad(format!("max_agents must be 1–{MAX_TEAM_AGENTS}; got {n}"));
    }
    Ok(())
}

/// The teams `id` belongs to, widest first: `L2`, `L2.1`, `L2.1.3` for `L2.1.3`.
fn teams_of(id: &AgentId) -> impl Iterator<Item = &str> {
    super::team_stop::above(id.as_str()).chain(std::iter::once(id.as_str()))
}

/// Whether `id` is in team `team` (is it, or under it).
fn in_team(id: &str, team: &str) -> bool {
    id == team || (id.starts_with(team) && id.as_bytes().get(team.len()) == Some(&b'.'))
}

/// Refuses a new agent `id` that would put one of its teams over
/// `max_agents`. Called with the registry locked (the lock that takes the
/// id), so concurrent spawns are counted one after the other.
pub(crate) fn admit(sh: &Shared, reg: &BTreeMap<AgentId, Slot>, id: &AgentId) -> Result<()> {
    let capped: Vec<(String, u32)> = {
        let budgets = lock(&sh.teams);
        if budgets.is_empty() {
            return Ok(());
        }
        teams_of(id)
            .filter_map(|t| {
                budgets
                    .get(t)
                    .and_then(|b| b.max_agents)
                    .map(|n| (t.to_owned(), n))
            })
            .collect()
    };
    for (team, max_agents) in capped {
        // The team is its own id and the agents below it.
        let count = reg
            .get_key_value(team.as_str())
            .into_iter()
            .chain(super::team_stop::below(reg, &team))
            .filter(|(other, slot)| *other != id && slot.published.borrow().busy)
            .count();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if count >= max_agents {
            return Err(Error::Budget {
                agent_id: id.to_string(),
                team,
                max_agents,
                count,
            });
        }
    }
    Ok(())
}

/// One live run's figures in a sampling pass.
pub(crate) struct Measured {
    pub view: Arc<View>,
    pub tx: mpsc::UnboundedSender<Cmd>,
    pub memory_mb: f64,
    pub cpu_percent: f64,
    pub tasks: u64,
}

/// What the sampler remembers of the teams from one pass to the next.
#[derive(Default)]
pub(crate) struct Check {
    /// The member stopped for a team's budget, until its run is gone.
    stopping: HashMap<String, (AgentId, u32)>,
    /// Samples in a row over a team's CPU budget.
    cpu_over: HashMap<String, u32>,
    /// Teams whose CPU crossing was recorded (until they are under again).
    cpu_told: HashSet<String>,
}

/// Whether any live run is in a team with a budget the sampler enforces:
/// then the sampler keeps full pace.
pub(crate) fn sampler_enforces(sh: &Shared, live: &[Arc<View>]) -> bool {
    let budgets = lock(&sh.teams);
    budgets
        .iter()
        .filter(|(_, b)| b.memory_mb.is_some() || b.pids.is_some() || b.cpu_percent.is_some())
        .any(|(team, _)| live.iter().any(|v| in_team(v.id.as_str(), team)))
}

impl Check {
    /// Checks every team budget against one pass's figures; tells the owner
    /// of a member to stop (or to record an event) where a team is over.
    pub(crate) fn pass(&mut self, sh: &Shared, measured: &[Measured]) {
        let budgets: Vec<(String, TeamBudget)> = lock(&sh.teams)
            .iter()
            .filter(|(_, b)| b.memory_mb.is_some() || b.pids.is_some() || b.cpu_percent.is_some())
            .map(|(t, b)| (t.clone(), b.clone()))
            .collect();
        let known: HashSet<&str> = budgets.iter().map(|(t, _)| t.as_str()).collect();
        self.stopping.retain(|t, _| known.contains(t.as_str()));
        self.cpu_over.retain(|t, _| known.contains(t.as_str()));
        self.cpu_told.retain(|t| known.contains(t.as_str()));
        for (team, budget) in budgets {
            let members: Vec<&Measured> = measured
                .iter()
                .filter(|m| in_team(m.view.id.as_str(), &team))
                .collect();
            self.team(&team, &budget, &members);
        }
    }

    fn team(&mut self, team: &str, budget: &TeamBudget, members: &[&Measured]) {
        let memory: f64 = members.iter().map(|m| m.memory_mb).sum();
        let tasks: u64 = members.iter().map(|m| m.tasks).sum();
        let cpu: f64 = members.iter().map(|m| m.cpu_percent).sum();
        // The stop of a member for this team is under way until its run
        // is gone from the pass: its memory still counts, and stopping a
        // second member for it would stop one too many.
        if let Some((id, run)) = self.stopping.get(team)
            && !members
                .iter()
                .any(|m| m.view.id == *id && m.view.run == *run)
        {
            self.stopping.remove(team);
        }
        // One budget stop at a time (the next pass must see what it freed);
        // a member stopping for another reason does not hold the check off:
        // its waits may be the agent's own choice.
        if !self.stopping.contains_key(team) {
            let over = if let Some(limit) = budget.memory_mb
                && memory > limit
            {
                members
                    .iter()
                    .max_by(|a, b| a.memory_mb.total_cmp(&b.memory_mb))
                    .map(|m| {
                        let reason = format!(
                            "team {team} over its memory budget: {memory:.0} MiB of {} MiB; its largest agent, {} ({:.0} MiB), is stopped",
                            crate::model::short_number(limit),
                            m.view.id,
                            m.memory_mb
                        );
                        (m, reason, "memory_mb", limit, memory, m.memory_mb)
                    })
            } else if let Some(limit) = budget.pids
                && tasks > limit
            {
                members.iter().max_by_key(|m| m.tasks).map(|m| {
                    let reason = format!(
                        "team {team} over its pids budget: {tasks} tasks of {limit}; its agent with the most tasks, {} ({}), is stopped",
                        m.view.id, m.tasks
                    );
                    (m, reason, "pids", limit as f64, tasks as f64, m.tasks as f64)
                })
            } else {
                None
            };
            if let Some((m, reason, which, limit, usage, agent_usage)) = over {
                tracing::warn!(team, agent_id = %m.view.id, reason = %reason, "team over its budget; stopping an agent");
                let event = EventBody::Budget(BudgetEvent {
                    team: team.to_owned(),
                    budget: which.to_owned(),
                    limit,
                    usage,
                    action: "stop".into(),
                    agent_usage,
                });
                if m.tx
                    .send(Cmd::Limit {
                        run: m.view.run,
                        reason,
                        event,
                    })
                    .is_ok()
                {
                    self.stopping
                        .insert(team.to_owned(), (m.view.id.clone(), m.view.run));
                }
            }
        }
        match budget.cpu_percent {
            Some(limit) if cpu > limit => {
                let n = self.cpu_over.entry(team.to_owned()).or_default();
                *n += 1;
                if *n >= CPU_SAMPLES && self.cpu_told.insert(team.to_owned()) {
                    let top = members
                        .iter()
                        .max_by(|a, b| a.cpu_percent.total_cmp(&b.cpu_percent));
                    if let Some(m) = top {
                        tracing::warn!(team, cpu_percent = cpu, limit, "team over its CPU budget");
                        let _ = m.tx.send(Cmd::Note {
                            run: m.view.run,
                            event: EventBody::Budget(BudgetEvent {
                                team: team.to_owned(),
                                budget: "cpu_percent".into(),
                                limit,
                                usage: cpu,
                                action: "none".into(),
                                agent_usage: m.cpu_percent,
                            }),
                        });
                    }
                }
            }
            _ => {
                self.cpu_over.remove(team);
                self.cpu_told.remove(team);
            }
        }
    }
}

/// The budgets it is over now.
fn over(b: &TeamBudget, u: &TeamUsage) -> Vec<String> {
    let mut out = Vec::new();
    if b.memory_mb.is_some_and(|l| u.memory_mb > l) {
        out.push("memory_mb".to_owned());
    }
    if b.cpu_percent.is_some_and(|l| u.cpu_percent > l) {
        out.push("cpu_percent".to_owned());
    }
    if b.pids.is_some_and(|l| u.pids > l) {
        out.push("pids".to_owned());
    }
    if b.max_agents.is_some_and(|l| u.agents > l) {
        out.push("max_agents".to_owned());
    }
    out
}

/// A member as a reader sees it: its tree's latest figures (none once ended).
fn member(v: &View) -> TeamMember {
    let sample = v
        .proc_
        .as_ref()
        .filter(|_| v.state.is_busy())
        .and_then(|p| p.sample());
    TeamMember {
        agent_id: v.id.to_string(),
        state: v.state,
        memory_mb: sample.map_or(0.0, |s| s.tree.memory_mb),
        cpu_percent: sample.map_or(0.0, |s| s.tree.cpu_percent),
        pids: sample.map_or(0, |s| s.tree_tasks),
    }
}

impl Supervisor {
    /// Sets (replacing) a team's budgets: committed to the store, then in
    /// effect. Answers the team as [`Supervisor::team`] does.
    pub async fn set_team_budget(&self, team: &AgentId, budget: TeamBudget) -> Result<TeamStatus> {
        validate(team, &budget)?;
        self.refuse_if_failing()?;
        {
            // One change at a time: the record and the map take them in the same order.
            let _turn = self.sh.team_writes.lock().await;
            self.sh
                .store
                .commit(store::set_team(team.as_str(), &budget))
                .await?;
            lock(&self.sh.teams).insert(team.to_string(), budget);
        }
        tracing::info!(team = %team, "team budgets set");
        // The sampler now has budgets to enforce.
        self.sh.pace.want();
        self.team(team)
    }

    /// Removes a team's budgets; answers what they were.
    pub async fn remove_team_budget(&self, team: &AgentId) -> Result<TeamRemoval> {
        self.refuse_if_failing()?;
        let _turn = self.sh.team_writes.lock().await;
        let Some(budget) = lock(&self.sh.teams).get(team.as_str()).cloned() else {
            return Err(Error::TeamNotFound {
                team: team.to_string(),
            });
        };
        self.sh
            .store
            .commit(store::delete_team(team.as_str()))
            .await?;
        lock(&self.sh.teams).remove(team.as_str());
        tracing::info!(team = %team, "team budgets removed");
        Ok(TeamRemoval {
            team: team.to_string(),
            budget,
        })
    }

    /// One team: its budgets (none set: empty), what it uses, every member.
    /// A team with no budget and no member is not found.
    pub fn team(&self, team: &AgentId) -> Result<TeamStatus> {
        self.sh.pace.want();
        let budget = lock(&self.sh.teams).get(team.as_str()).cloned();
        let mut views: Vec<Arc<View>> = self.views();
        views.retain(|v| v.id.is_within(team));
        if budget.is_none() && views.is_empty() {
            return Err(Error::TeamNotFound {
                team: team.to_string(),
            });
        }
        views.sort_by(|a, b| crate::model::natural_cmp(a.id.as_str(), b.id.as_str()));
        let members: Vec<TeamMember> = views.iter().map(|v| member(v)).collect();
        Ok(status(
            team.to_string(),
            budget.unwrap_or_default(),
            Some(members),
        ))
    }

    /// Every team with budgets, by id, with what each uses (no member lists).
    pub fn teams(&self) -> Vec<TeamStatus> {
        self.sh.pace.want();
        let budgets: BTreeMap<String, TeamBudget> = lock(&self.sh.teams).clone();
        if budgets.is_empty() {
            return Vec::new();
        }
        let views = self.views();
        let mut out: Vec<TeamStatus> = budgets
            .into_iter()
            .map(|(team, budget)| {
                let members = views
                    .iter()
                    .filter(|v| in_team(v.id.as_str(), &team))
                    .map(|v| member(v))
                    .collect();
                let mut s = status(team, budget, Some(members));
                s.members = None;
                s
            })
            .collect();
        out.sort_by(|a, b| crate::model::natural_cmp(&a.team, &b.team));
        out
    }
}

fn status(team: String, budget: TeamBudget, members: Option<Vec<TeamMember>>) -> TeamStatus {
    let mut usage = TeamUsage::default();
    for m in members.iter().flatten().filter(|m| m.state.is_busy()) {
        usage.agents += 1;
        usage.memory_mb += m.memory_mb;
        usage.cpu_percent += m.cpu_percent;
        usage.pids += m.pids;
    }
    TeamStatus {
        over: over(&budget, &usage),
        team,
        budget,
        enforcement: ENFORCEMENT.to_owned(),
        usage,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_in_its_own_team_and_every_one_above_it() {
        let id = AgentId::new("L2.1.3").unwrap();
        assert_eq!(teams_of(&id).collect::<Vec<_>>(), ["L2", "L2.1", "L2.1.3"]);
        assert!(in_team("L2", "L2"));
        assert!(in_team("L2.1", "L2"));
        assert!(!in_team("L20", "L2"));
        assert!(!in_team("L", "L2"));
    }

    #[test]
    fn nonsense_budgets_are_refused_naming_the_field() {
        let team = AgentId::new("L2").unwrap();
        let cases = [
            (TeamBudget::default(), "at least one"),
            (
                TeamBudget {
                    memory_mb: Some(0.0),
                    ..TeamBudget::default()
                },
                "memory_mb",
            ),
            (
                TeamBudget {
                    memory_mb: Some(f64::NAN),
                    ..TeamBudget::default()
                },
                "memory_mb",
            ),
            (
                TeamBudget {
                    cpu_percent: Some(-1.0),
                    ..TeamBudget::default()
                },
                "cpu_percent",
            ),
            (
                TeamBudget {
                    pids: Some(0),
                    ..TeamBudget::default()
                },
                "pids",
            ),
            (
                TeamBudget {
                    pids: Some(MAX_TEAM_PIDS + 1),
                    ..TeamBudget::default()
                },
                "pids",
            ),
            (
                TeamBudget {
                    max_agents: Some(0),
                    ..TeamBudget::default()
                },
                "max_agents",
            ),
        ];
        for (b, field) in cases {
            let e = validate(&team, &b).unwrap_err();
            assert_eq!(e.code(), crate::error::ErrorCode::Invalid);
            assert!(e.to_string().contains(field), "{e} should name {field}");
        }
        assert!(
            validate(
                &team,
                &TeamBudget {
                    memory_mb: Some(200.0),
                    cpu_percent: Some(150.0),
                    pids: Some(100),
                    max_agents: Some(3),
                }
            )
            .is_ok()
        );
    }

    /// One live run of `id` as a pass measured it, and its owner's end of the channel.
    fn measured(
        id: &str,
        state: crate::model::AgentState,
        memory_mb: f64,
        cpu_percent: f64,
        tasks: u64,
    ) -> (Measured, mpsc::UnboundedReceiver<Cmd>) {
        let req = crate::model::SpawnRequest {
            agent_id: id.into(),
            command: vec!["true".into()],
            ..Default::default()
        };
        let spec = super::super::spec::check(
            req,
            std::path::Path::new("/s"),
            super::super::spec::RunAs::Daemon,
        )
        .unwrap();
        let rec = store::RunRecord {
            run_id: 1,
            run: 1,
            agent_id: id.into(),
            status: crate::model::PersistentStatus::Running,
            spec: spec.request.clone(),
            log_dir: "/s/l".into(),
            pid: None,
            start_ticks: None,
            boot_id: None,
            started_at: "t".into(),
            ended_at: None,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            progress: None,
            progress_message: None,
            progress_at: None,
            next_restart_at: None,
            restart_attempt: 0,
            job: None,
            state: Some(state),
            stop: None,
            paused_at: None,
            paused_s: 0.0,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let view = Arc::new(View::from_record(&rec, Arc::new(spec)));
        (
            Measured {
                view,
                tx,
                memory_mb,
                cpu_percent,
                tasks,
            },
            rx,
        )
    }

    /// What the check told an owner: the reason of a stop, or `note` for an event alone.
    fn told(rx: &mut mpsc::UnboundedReceiver<Cmd>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Cmd::Limit { reason, event, .. } => {
                    assert!(matches!(event, EventBody::Budget(ref b) if b.action == "stop"));
                    out.push(reason);
                }
                Cmd::Note { event, .. } => {
                    assert!(matches!(event, EventBody::Budget(ref b) if b.action == "none"));
                    out.push("note".into());
                }
                _ => out.push("other".into()),
            }
        }
        out
    }

    #[test]
    fn one_member_is_stopped_at_a_time_the_largest() {
        use crate::model::AgentState::{Running, Stopping};
        let budget = TeamBudget {
            memory_mb: Some(100.0),
            ..TeamBudget::default()
        };
        let (small, mut small_rx) = measured("T.1", Running, 30.0, 1.0, 1);
        let (large, mut large_rx) = measured("T.2", Running, 90.0, 1.0, 1);
        let mut check = Check::default();
        check.team("T", &budget, &[&small, &large]);
        assert_eq!(
            told(&mut large_rx),
            [
                "team T over its memory budget: 120 MiB of 100 MiB; its largest agent, T.2 (90 MiB), is stopped"
            ]
        );
        assert!(told(&mut small_rx).is_empty());
        // Its run is still in the pass (stopping, or not yet): nobody else goes.
        check.team("T", &budget, &[&small, &large]);
        let (stopping, mut stopping_rx) = measured("T.2", Stopping, 90.0, 1.0, 1);
        check.team("T", &budget, &[&small, &stopping]);
        assert!(told(&mut small_rx).is_empty() && told(&mut stopping_rx).is_empty());
        // Gone from the pass: the team is under, nothing more happens.
        check.team("T", &budget, &[&small]);
        assert!(told(&mut small_rx).is_empty());
        // A member stopping for another reason (with waits it may have chosen
        // itself) does not hold the team's budget off: the largest is told,
        // and its owner makes that stop a SIGKILL.
        let (other, mut other_rx) = measured("T.3", Stopping, 80.0, 1.0, 1);
        check.team("T", &budget, &[&small, &other]);
        assert!(told(&mut small_rx).is_empty());
        assert_eq!(told(&mut other_rx).len(), 1);
    }

    #[test]
    fn pids_stop_the_member_with_the_most_tasks() {
        use crate::model::AgentState::Running;
        let budget = TeamBudget {
            pids: Some(20),
            ..TeamBudget::default()
        };
        let (few, mut few_rx) = measured("T.1", Running, 500.0, 1.0, 5);
        let (many, mut many_rx) = measured("T.2", Running, 10.0, 1.0, 30);
        Check::default().team("T", &budget, &[&few, &many]);
        assert_eq!(
            told(&mut many_rx),
            [
                "team T over its pids budget: 35 tasks of 20; its agent with the most tasks, T.2 (30), is stopped"
            ]
        );
        assert!(told(&mut few_rx).is_empty());
    }

    #[test]
    fn cpu_over_its_budget_is_told_once_per_crossing() {
        use crate::model::AgentState::Running;
        let budget = TeamBudget {
            cpu_percent: Some(100.0),
            ..TeamBudget::default()
        };
        let (busy, mut busy_rx) = measured("T.1", Running, 1.0, 90.0, 1);
        let (idle, mut idle_rx) = measured("T.2", Running, 1.0, 20.0, 1);
        let (quiet, _quiet_rx) = measured("T.1", Running, 1.0, 10.0, 1);
        let mut check = Check::default();
        for _ in 0..CPU_SAMPLES - 1 {
            check.team("T", &budget, &[&busy, &idle]);
        }
        assert!(
            told(&mut busy_rx).is_empty(),
            "not before {CPU_SAMPLES} samples"
        );
        for _ in 0..5 {
            check.team("T", &budget, &[&busy, &idle]);
        }
        assert_eq!(
            told(&mut busy_rx),
            ["note"],
            "once, on the member that used most"
        );
        assert!(told(&mut idle_rx).is_empty());
        // Under, then over again: a new crossing.
        check.team("T", &budget, &[&quiet, &idle]);
        for _ in 0..CPU_SAMPLES {
            check.team("T", &budget, &[&busy, &idle]);
        }
        assert_eq!(told(&mut busy_rx), ["note"]);
    }

    #[test]
    fn over_names_each_budget_the_usage_passes() {
        let b = TeamBudget {
            memory_mb: Some(100.0),
            cpu_percent: Some(50.0),
            pids: Some(10),
            max_agents: Some(2),
        };
        let u = TeamUsage {
            memory_mb: 101.0,
            cpu_percent: 10.0,
            pids: 11,
            agents: 2,
        };
        assert_eq!(over(&b, &u), ["memory_mb", "pids"]);
        assert!(over(&TeamBudget::default(), &u).is_empty());
    }
}
