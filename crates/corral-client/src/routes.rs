//! A typed method for every route of the API: the one place a client names a
//! path. Request and answer types are `corral-proto`'s, the same the daemon
//! serves (and its OpenAPI document describes).

use std::collections::BTreeMap;

use corral_proto::{
    AgentHistory, AgentStatus, BatchRequest, BatchResponse, CleanupOptions, DaemonHealth,
    DaemonStopRequest, DaemonStopResponse, EventsQuery, HealthReport, HistoryQuery, KillRequest,
    KillResponse, ListQuery, LogsQuery, PauseReport, PauseRequest, ProcessSummary, ProgressUpdate,
    Removal, RunInfo, SpawnRequest, SpawnResponse, StopManyRequest, StopReport, TeamBudget,
    TeamRemoval, TeamStatus, UiLogin, WaitQuery, percent_encode,
};
use serde::Serialize;

use crate::streams::{EventStream, LogStream};
use crate::transport::{Client, ClientError, EVENT_STALL, Method};

/// `/v1/agents/{id}{rest}`, the id encoded (an id the daemon would refuse
/// reaches it as written, and is refused naming it, rather than changing the path).
fn agent(id: &str, rest: &str) -> String {
    format!("/v1/agents/{}{rest}", percent_encode(id))
}

/// `path?query` from a query struct's set fields (none: `path`).
fn with_query(path: &str, query: &impl Serialize) -> String {
    let pairs: Vec<String> = match serde_json::to_value(query) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                format!("{k}={}", percent_encode(&v))
            })
            .collect(),
        _ => Vec::new(),
    };
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

impl Client {
    /// `GET /v1/teams`: every team with budgets, with what each uses.
    pub async fn teams(&self) -> Result<Vec<TeamStatus>, ClientError> {
        self.get("/v1/teams").await
    }

    /// `GET /v1/teams/{id}`: one team's budgets, usage and members.
    pub async fn team(&self, id: &str) -> Result<TeamStatus, ClientError> {
        self.get(&format!("/v1/teams/{}", percent_encode(id))).await
    }

    /// `PUT /v1/teams/{id}`: set (replace) a team's budgets.
    pub async fn set_team(&self, id: &str, budget: &TeamBudget) -> Result<TeamStatus, ClientError> {
        let path = format!("/v1/teams/{}", percent_encode(id));
        self.call(Method::PUT, &path, Some(budget)).await
    }

    /// `DELETE /v1/teams/{id}`: remove a team's budgets.
    pub async fn remove_team(&self, id: &str) -> Result<TeamRemoval, ClientError> {
        let path = format!("/v1/teams/{}", percent_encode(id));
        self.call(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v1/health`: the daemon answers and its store takes writes.
    pub async fn health(&self) -> Result<DaemonHealth, ClientError> {
        self.get("/v1/health").await
    }

    /// `POST /v1/daemon/stop`: the daemon exits; its agents keep running.
    pub async fn stop_daemon(
        &self,
        req: &DaemonStopRequest,
    ) -> Result<DaemonStopResponse, ClientError> {
        self.call(Method::POST, "/v1/daemon/stop", Some(req)).await
    }

    /// `GET /v1/openapi.json`: the API's OpenAPI document.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/openapi.json").await
    }

    /// `POST /v1/agents`: spawn one agent (`spawn_agent`); the answer comes
    /// once it has stayed up for its verification window, or failed in it.
    pub async fn spawn(&self, req: &SpawnRequest) -> Result<SpawnResponse, ClientError> {
        self.call(Method::POST, "/v1/agents", Some(req)).await
    }

    /// `POST /v1/agents/batch`: spawn many, one result each, in request order.
    pub async fn spawn_batch(&self, req: &BatchRequest) -> Result<BatchResponse, ClientError> {
        self.call(Method::POST, "/v1/agents/batch", Some(req)).await
    }

    /// `GET /v1/agents`: the agents a query picks, by id (see
    /// [`Client::list_agents`] for `fields`).
    pub async fn list(
        &self,
        query: &ListQuery,
    ) -> Result<BTreeMap<String, AgentStatus>, ClientError> {
        self.list_agents(query).await
    }

    /// `GET /v1/agents/{id}`: one agent's status.
    pub async fn status(&self, id: &str) -> Result<AgentStatus, ClientError> {
        self.get(&agent(id, "")).await
    }

    /// `DELETE /v1/agents/{id}`: forget an ended agent.
    pub async fn remove(&self, id: &str) -> Result<Removal, ClientError> {
        self.call(Method::DELETE, &agent(id, ""), None::<&()>).await
    }

    /// `GET /v1/agents/{id}/health` (`check_process_health`).
    pub async fn agent_health(&self, id: &str) -> Result<HealthReport, ClientError> {
        self.get(&agent(id, "/health")).await
    }

    /// `PUT /v1/agents/{id}/progress`.
    pub async fn progress(
        &self,
        id: &str,
        update: &ProgressUpdate,
    ) -> Result<AgentStatus, ClientError> {
        self.call(Method::PUT, &agent(id, "/progress"), Some(update))
            .await
    }

    /// `POST /v1/agents/{id}/stop`: the staged stop of one agent and its tree.
    pub async fn stop(&self, id: &str, opts: &CleanupOptions) -> Result<StopReport, ClientError> {
        self.call(Method::POST, &agent(id, "/stop"), Some(opts))
            .await
    }

    /// `POST /v1/agents/{id}/kill` (`kill_agent`).
    pub async fn kill(&self, id: &str, req: &KillRequest) -> Result<KillResponse, ClientError> {
        self.call(Method::POST, &agent(id, "/kill"), Some(req))
            .await
    }

    /// `POST /v1/agents/{id}/restart`: its staged stop, then a new run of the same request.
    pub async fn restart(
        &self,
        id: &str,
        opts: &CleanupOptions,
    ) -> Result<SpawnResponse, ClientError> {
        self.call(Method::POST, &agent(id, "/restart"), Some(opts))
            .await
    }

    /// `GET /v1/agents/{id}/runs`: every recorded run, oldest first.
    pub async fn runs(&self, id: &str) -> Result<Vec<RunInfo>, ClientError> {
        self.get(&agent(id, "/runs")).await
    }

    /// `GET /v1/agents/{id}/history`: its tree's recent CPU and memory, oldest first.
    pub async fn history(
        &self,
        id: &str,
        query: &HistoryQuery,
    ) -> Result<AgentHistory, ClientError> {
        self.get(&with_query(&agent(id, "/history"), query)).await
    }

    /// `POST /v1/ui/login`: a one-time login URL for the web dashboard.
    pub async fn ui_login(&self) -> Result<UiLogin, ClientError> {
        self.call(Method::POST, "/v1/ui/login", None::<&()>).await
    }

    /// `GET /v1/agents/{id}/wait`: the status once the agent has ended (408
    /// `timeout` after `timeout_s`).
    pub async fn wait(&self, id: &str, query: &WaitQuery) -> Result<AgentStatus, ClientError> {
        self.get(&with_query(&agent(id, "/wait"), query)).await
    }

    /// `POST /v1/stop`: the staged stop of every agent a selector picks (`cleanup`).
    pub async fn stop_many(&self, req: &StopManyRequest) -> Result<Vec<StopReport>, ClientError> {
        self.call(Method::POST, "/v1/stop", Some(req)).await
    }

    /// `POST /v1/restart`: restart every agent a selector picks.
    pub async fn restart_many(&self, req: &StopManyRequest) -> Result<BatchResponse, ClientError> {
        self.call(Method::POST, "/v1/restart", Some(req)).await
    }

    /// `POST /v1/pause`: freeze the whole tree of one agent (`agent_id`), or
    /// of every agent a selector (or `all`) picks; one report each.
    pub async fn pause(&self, req: &PauseRequest) -> Result<Vec<PauseReport>, ClientError> {
        self.call(Method::POST, "/v1/pause", Some(req)).await
    }

    /// `POST /v1/resume`: thaw paused agents, picked as [`Client::pause`] picks them.
    pub async fn resume(&self, req: &PauseRequest) -> Result<Vec<PauseReport>, ClientError> {
        self.call(Method::POST, "/v1/resume", Some(req)).await
    }

    /// `POST /v1/reap` (`reap_zombies`): the agents whose exits had to be reaped.
    pub async fn reap(&self) -> Result<Vec<String>, ClientError> {
        self.call(Method::POST, "/v1/reap", None::<&()>).await
    }

    /// `POST /v1/prune`: forget every ended run.
    pub async fn prune(&self) -> Result<Removal, ClientError> {
        self.call(Method::POST, "/v1/prune", None::<&()>).await
    }

    /// `GET /v1/summary` (`get_process_summary`).
    pub async fn summary(&self) -> Result<ProcessSummary, ClientError> {
        self.get("/v1/summary").await
    }

    /// `GET /metrics`: Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self.raw(Method::GET, "/metrics", None).await?;
        if !status.is_success() {
            return Err(crate::transport::api_error(status, &body));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /v1/agents/{id}/logs`: a run's output, streamed (followed with `follow`).
    pub async fn logs(&self, id: &str, query: &LogsQuery) -> Result<LogStream, ClientError> {
        let path = with_query(&agent(id, "/logs"), query);
        Ok(LogStream::new(self.open_stream(&path, None).await?))
    }

    /// `GET /v1/events`: the stored events after `since`, then (with `follow`,
    /// the default) new ones as they are committed.
    pub async fn events(&self, query: &EventsQuery) -> Result<EventStream, ClientError> {
        let path = with_query("/v1/events", query);
        Ok(EventStream::new(
            self.open_stream(&path, Some(EVENT_STALL)).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_carry_ids_and_queries_encoded() {
        assert_eq!(agent("L2.1", "/stop"), "/v1/agents/L2.1/stop");
        assert_eq!(agent("a/../b", ""), "/v1/agents/a%2F..%2Fb");
        let q = LogsQuery {
            stream: Some("both".into()),
            tail: Some(5),
            follow: None,
            run: Some(2),
        };
        assert_eq!(
            with_query("/v1/agents/x/logs", &q),
            "/v1/agents/x/logs?run=2&stream=both&tail=5"
        );
        assert_eq!(
            with_query("/v1/events", &EventsQuery::default()),
            "/v1/events"
        );
        let w = WaitQuery {
            timeout_s: Some(2.5),
        };
        assert_eq!(with_query("/w", &w), "/w?timeout_s=2.5");
    }
}
