//! The team routes: budgets per team (`/v1/teams`, `/v1/teams/{id}`).
//!
//! A team is an agent id and every id under it; what each budget caps and
//! who enforces it is the library's (`Supervisor::set_team_budget`). A body
//! is read field by field, so a value of the wrong type is refused naming
//! its field, as a value out of bounds is.

use axum::Json;
use axum::extract::State;
use corral_core::{AgentId, ErrorBody, Supervisor, TeamBudget, TeamRemoval, TeamStatus};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::routes::{Body, IdPath};

/// A budget from a JSON object, each field parsed on its own.
fn budget(body: Map<String, Value>) -> Result<TeamBudget, ApiError> {
    fn field<T: DeserializeOwned>(name: &str, v: Value) -> Result<Option<T>, ApiError> {
        if v.is_null() {
            return Ok(None);
        }
        let shown = corral_core::elide(&v.to_string(), 60);
        serde_json::from_value(v).map(Some).map_err(|_| {
            let want = match name {
                "memory_mb" | "cpu_percent" => "a number more than 0",
                _ => "a whole number of at least 1",
            };
            ApiError::invalid(format!("{name} must be {want}; got {shown}"))
        })
    }
    let mut b = TeamBudget::default();
    for (k, v) in body {
        match k.as_str() {
            "memory_mb" => b.memory_mb = field("memory_mb", v)?,
            "cpu_percent" => b.cpu_percent = field("cpu_percent", v)?,
            "pids" => b.pids = field("pids", v)?,
            "max_agents" => b.max_agents = field("max_agents", v)?,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown field {:?}; a team's budgets are memory_mb, cpu_percent, pids and max_agents",
                    corral_core::elide(other, 60)
                )));
            }
        }
    }
    Ok(b)
}

/// Set a team's budgets (replacing those it had): caps on the sum over the
/// agent `id` and every agent under it. `memory_mb` (MiB of the trees' RSS:
/// over it, the team's largest agent is stopped, cause `limit`), `pids`
/// (tasks: over it, the agent with the most is stopped), `cpu_percent`
/// (over it for three samples in a row: a `budget` event), `max_agents`
/// (live agents: a spawn that would go over is refused, 409 `budget`).
/// `enforcement` says who enforces them.
#[utoipa::path(put, path = "/v1/teams/{id}", tag = "teams", params(("id" = String, Path)),
    request_body = TeamBudget,
    responses((status = 200, body = TeamStatus), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn set_team(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
    Body(body): Body<Map<String, Value>>,
) -> Result<Json<TeamStatus>, ApiError> {
    let budget = budget(body)?;
    Ok(Json(sup.set_team_budget(&id, budget).await?))
}

/// One team: its budgets, what it uses (summed over its live agents) and
/// every member. 404 for a team with no budget and no agent.
#[utoipa::path(get, path = "/v1/teams/{id}", tag = "teams", params(("id" = String, Path)),
    responses((status = 200, body = TeamStatus), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn team(
    State(sup): State<Supervisor>,
    caller: Option<axum::Extension<crate::delegation::Caller>>,
    IdPath(id): IdPath,
) -> Result<Json<TeamStatus>, ApiError> {
    sup.fresh_figures().await;
    let mut team = sup.team(&id)?;
    // From inside an agent: members outside its own subtree (its siblings,
    // in a team above it) are not its to see.
    if let (Some(axum::Extension(crate::delegation::Caller(me))), Some(members)) =
        (caller, team.members.as_mut())
    {
        members.retain(|m| AgentId::new(m.agent_id.as_str()).is_ok_and(|a| a.is_within(&me)));
    }
    Ok(Json(team))
}

/// Remove a team's budgets; answers what they were.
#[utoipa::path(delete, path = "/v1/teams/{id}", tag = "teams", params(("id" = String, Path)),
    responses((status = 200, body = TeamRemoval), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn remove_team(
    State(sup): State<Supervisor>,
    IdPath(id): IdPath,
) -> Result<Json<TeamRemoval>, ApiError> {
    Ok(Json(sup.remove_team_budget(&id).await?))
}

/// Every team with budgets, with what each uses (no member lists).
#[utoipa::path(get, path = "/v1/teams", tag = "teams",
    responses((status = 200, body = Vec<TeamStatus>), (status = 403, body = ErrorBody)))]
pub(crate) async fn teams(State(sup): State<Supervisor>) -> Json<Vec<TeamStatus>> {
    sup.fresh_figures().await;
    Json(sup.teams())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TeamBudget, String> {
        budget(serde_json::from_str(json).unwrap()).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn a_wrong_type_is_refused_naming_its_field() {
        assert!(
            parse(r#"{"pids": -1}"#)
                .unwrap_err()
                .starts_with("pids must be")
        );
        assert!(
            parse(r#"{"memory_mb": "lots"}"#)
                .unwrap_err()
                .starts_with("memory_mb must be")
        );
        assert!(
            parse(r#"{"max_agents": 1.5}"#)
                .unwrap_err()
                .starts_with("max_agents must be")
        );
        assert!(
            parse(r#"{"colour": 1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert_eq!(
            parse(r#"{"memory_mb": 200, "max_agents": 3, "pids": null}"#).unwrap(),
            TeamBudget {
                memory_mb: Some(200.0),
                max_agents: Some(3),
                ..TeamBudget::default()
            }
        );
    }
}
