//! `team`: budgets per agent team (`set`, `ls`, `show`, `rm`).
//!
//! A team is an agent id and every id under it. The table shows each budget
//! as `used/budget` (`used` alone where no budget is set), so a team over
//! one reads at a glance; `OVER` names the budgets it is over now.

use std::process::ExitCode;

use anyhow::Result;
use corral_core::{AgentId, TeamBudget, TeamStatus};

use super::{Ctx, print_json, usage};
use crate::cli::{TeamAction, TeamArgs};
use crate::output::{Style, Table, key_values, size_mb};

/// `used/budget`, or `used` when there is no budget.
fn of(used: String, budget: Option<String>) -> String {
    match budget {
        Some(b) => format!("{used}/{b}"),
        None => used,
    }
}

/// The team's budgets and usage as table cells: memory, CPU, pids, agents.
pub fn cells(t: &TeamStatus) -> [String; 4] {
    let b = &t.budget;
    let u = &t.usage;
    [
        of(size_mb(u.memory_mb), b.memory_mb.map(size_mb)),
        of(
            format!("{:.0}%", u.cpu_percent),
            b.cpu_percent
                .map(|c| format!("{}%", corral_core::short_number(c))),
        ),
        of(u.pids.to_string(), b.pids.map(|p| p.to_string())),
        of(u.agents.to_string(), b.max_agents.map(|n| n.to_string())),
    ]
}

/// `corral team ls`'s table.
pub fn table(teams: &[TeamStatus]) -> Table {
    let mut t = Table::new(vec![
        "TEAM", "MEMORY", "CPU", "PIDS", "AGENTS", "OVER", "ENFORCED",
    ])
    .id_column(0)
    .droppable(&[6]);
    for team in teams {
        let [mem, cpu, pids, agents] = cells(team);
        let over = if team.over.is_empty() {
            "-".to_owned()
        } else {
            team.over.join(",")
        };
        t.push(vec![
            team.team.clone().into(),
            mem.into(),
            cpu.into(),
            pids.into(),
            agents.into(),
            over.into(),
            team.enforcement.clone().into(),
        ]);
    }
    t
}

/// `corral team show`'s text: the budgets, then the members.
pub fn show_text(t: &TeamStatus) -> String {
    let [mem, cpu, pids, agents] = cells(t);
    let over = if t.over.is_empty() {
        "-".to_owned()
    } else {
        t.over.join(", ")
    };
    let mut out = key_values(vec![
        ("team", t.team.clone()),
        ("memory", mem),
        ("cpu", cpu),
        ("pids", pids),
        ("agents", agents),
        ("over", over),
        (
            "enforced",
            format!("{} (max_agents: at spawn)", t.enforcement),
        ),
    ]);
    let members = t.members.as_deref().unwrap_or_default();
    if members.is_empty() {
        out.push_str("no members\n");
    } else {
        let mut table = Table::new(vec!["MEMBER", "STATE", "CPU", "MEM", "PIDS"]).id_column(0);
        for m in members {
            let live = m.state.is_busy();
            table.push(vec![
                m.agent_id.clone().into(),
                m.state.to_string().into(),
                if live {
                    format!("{:.1}%", m.cpu_percent)
                } else {
                    "-".into()
                }
                .into(),
                size_mb(m.memory_mb).into(),
                if live { m.pids.to_string() } else { "-".into() }.into(),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render(Style::stdout(false)));
    }
    out
}

fn checked(id: &str) -> Result<AgentId> {
    AgentId::new(id).map_err(|e| usage(format!("team id {e}")))
}

pub async fn run(ctx: &Ctx, args: &TeamArgs) -> Result<ExitCode> {
    match &args.action {
        TeamAction::Set(a) => {
            let id = checked(&a.id)?;
            let budget = TeamBudget {
                memory_mb: a.memory,
                cpu_percent: a.cpu,
                pids: a.pids,
                max_agents: a.max_agents,
            };
            if budget.is_empty() {
                return Err(usage(
                    "give at least one of --memory, --cpu, --pids, --max-agents (`corral team rm` removes a team's budgets)",
                ));
            }
            let team = ctx.client().await?.set_team(id.as_str(), &budget).await?;
            if ctx.json {
                print_json(&team)?;
            } else {
                print!("{}", show_text(&team));
            }
        }
        TeamAction::Ls(_) => {
            let teams = ctx.client().await?.teams().await?;
            if ctx.json {
                print_json(&teams)?;
            } else if teams.is_empty() {
                println!("no team budgets");
            } else {
                print!("{}", table(&teams).render(Style::stdout(false)));
            }
        }
        TeamAction::Show(a) => {
            let id = checked(&a.id)?;
            let team = ctx.client().await?.team(id.as_str()).await?;
            if ctx.json {
                print_json(&team)?;
            } else {
                print!("{}", show_text(&team));
            }
        }
        TeamAction::Rm(a) => {
            let id = checked(&a.id)?;
            let removed = ctx.client().await?.remove_team(id.as_str()).await?;
            if ctx.json {
                print_json(&removed)?;
            } else {
                println!("team {}: budgets removed", removed.team);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
