//! `corral mcp`: a Model Context Protocol server on stdin/stdout, so an AI agent
//! (an MCP host: an editor, a chat app, an orchestrator) can spawn, watch and
//! stop agents through corral.
//!
//! What this module owns: the eight tools of the contract (`spawn_agent`,
//! `list_agents`, `get_agent_status`, `stop_agents`, `read_logs`, `wait_agent`,
//! `get_process_summary`, `report_progress`), their input and output schemas,
//! their text renderings, and the mapping of the daemon's errors to tool
//! errors. It owns nothing about processes: like every other command it is a
//! client of the daemon's HTTP API, and it starts a daemon the same way
//! ([`Ctx::client`]) when none answers — lazily, on a tool call, so a host that
//! launches all its configured servers at start-up and only lists their tools
//! does not start a daemon.
//!
//! Theory of operation:
//! - The protocol (JSON-RPC 2.0 framing, the `initialize` handshake, version
//!   negotiation from 2024-11-05 on, `ping`, cancellation) is `rmcp`, the
//!   official Rust SDK. Its `stdio_pipes` transport reads and writes the pipes
//!   an MCP host gives its servers on the I/O reactor.
//! - `tools/list` and `tools/call` are implemented here by hand rather than with
//!   rmcp's `#[tool]` macros: the macros derive an output schema from a
//!   `schemars` derive on the answer type, but corral's answers are the wire
//!   types of `corral-proto`, whose schemas come from their `utoipa` derives.
//!   Each output schema is therefore the API's own component schema, taken from
//!   [`corral_api::openapi_json`] and inlined under `$defs`, so the schema a host
//!   validates against cannot drift from what the daemon answers.
//! - Tool inputs are small structs here deriving `schemars::JsonSchema`, with
//!   descriptions written for a model (units in names and docs). They are
//!   converted to the proto types through serde, so the proto crate stays the
//!   one authority on defaults and on unknown fields.
//! - Every outcome of a tool call is a tool result, never a crash of the
//!   server: an answer is `structuredContent` plus a text rendering; an error
//!   (bad arguments, no daemon, an API error) is `isError: true` with the
//!   daemon's message, which the model can read and act on. Only an unknown
//!   tool name is a JSON-RPC error, as the specification asks.
//! - Stdout is the protocol, so nothing here prints: diagnostics go to stderr
//!   through `tracing` (filter in `CORRAL_LOG`, default `warn`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use corral_api::ClientError;
use corral_api::client::Method;
use corral_core::{
    AgentId, AgentStatus, CleanupOptions, PersistentStatus, ProcessSummary, ProgressUpdate,
    Selector, SpawnRequest, SpawnResponse, StopManyRequest, StopReport,
};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::output::{self, Style};

/// Most bytes of one log stream `read_logs` returns; older text is cut. Hosts
/// pass tool results into a model's context, where a megabyte of log is noise.
const MAX_LOG_BYTES: usize = 64 * 1024;
/// How often `wait_agent` tells a host that asked for progress that it is still waiting.
const WAIT_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What the server tells the model about itself in the `initialize` answer.
const INSTRUCTIONS: &str = "corral supervises long-running processes (\"agents\"): it starts them, \
proves they started, reports their health, CPU, memory and progress, stops each one together with \
every process it started, and remembers all of it. Typical use: spawn_agent, then get_agent_status \
or list_agents and read_logs to watch, then wait_agent for one that should finish or stop_agents for \
one that should not. Agents keep running after this server exits: stop what you started when you no \
longer need it.";

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// Serves MCP on stdin/stdout until the host closes stdin.
pub async fn run(ctx: Ctx) -> Result<ExitCode> {
    init_stderr_logging();
    let server = CorralMcp::new(ctx);
    let (read, write, writer) = framing();
    let running = server
        .serve((read, write))
        .await
        .context("the MCP session did not start")?;
    let reason = running
        .waiting()
        .await
        .context("the MCP session ended abnormally")?;
    tracing::debug!(?reason, "MCP session ended");
    // The last answers are on their way to stdout.
    let _ = writer.await;
    Ok(ExitCode::SUCCESS)
}

/// The session's pipes, between stdin/stdout and rmcp: a line that is not
/// JSON gets JSON-RPC's parse error (-32700, `id` null) on stdout, as the
/// specification asks, and the session goes on; every other line passes
/// through as it came. One task owns stdout, so an error never lands inside
/// one of rmcp's messages.
fn framing() -> (
    tokio::io::DuplexStream,
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    const PIPE: usize = 1 << 20;
    let (mut to_rmcp, rmcp_in) = tokio::io::duplex(PIPE);
    let (rmcp_out, from_rmcp) = tokio::io::duplex(PIPE);
    let (errors, mut error_lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(_) => {
                    let sent = to_rmcp.write_all(line.as_bytes()).await;
                    if sent.is_err() || to_rmcp.write_all(b"\n").await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let answer = json!({
                        "jsonrpc": "2.0",
                        "id": null,
                        "error": {"code": -32700, "message": format!("parse error: {e}")},
                    });
                    if errors.send(answer.to_string()).is_err() {
                        return;
                    }
                }
            }
        }
        // The host closed stdin: rmcp sees the end of its input and stops.
        let _ = to_rmcp.shutdown().await;
    });
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut answers = BufReader::new(from_rmcp).lines();
        loop {
            let line = tokio::select! {
                line = answers.next_line() => match line {
                    Ok(Some(line)) => line,
                    _ => break,
                },
                Some(error) = error_lines.recv() => error,
            };
            let written = stdout.write_all(line.as_bytes()).await;
            if written.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    (rmcp_in, rmcp_out, writer)
}

/// Diagnostics (ours and rmcp's) to stderr: stdout carries the protocol.
fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second subscriber (there is none in this process) would only be refused.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .try_init();
}

/// The MCP server: the CLI's options (state dir, autostart, TCP daemon) and the
/// directory relative paths are resolved against.
#[derive(Clone)]
struct CorralMcp {
    ctx: Arc<Ctx>,
    /// This server's working directory when it started: the default `cwd` of a
    /// spawned agent (as for `corral spawn`) and the base of relative paths.
    cwd: Option<PathBuf>,
}

impl CorralMcp {
    fn new(ctx: Ctx) -> Self {
        Self {
            ctx: Arc::new(ctx),
            cwd: std::env::current_dir().ok(),
        }
    }
}

impl ServerHandler for CorralMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("corral", env!("CARGO_PKG_VERSION"))
                    .with_title("corral agent supervisor"),
            )
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        ToolName::parse(name).map(ToolName::tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(tool) = ToolName::parse(&request.name) else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool {:?}; corral's tools are {}",
                    corral_core::elide(&request.name, 80),
                    ToolName::ALL.map(ToolName::name).join(", ")
                ),
                None,
            ));
        };
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match self.call(tool, args, &context).await {
            Ok(result) => result,
            Err(e) => error_result(&e),
        };
        Ok(result.into())
    }
}

// ---------------------------------------------------------------------------
// The tools
// ---------------------------------------------------------------------------

/// The tools, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToolName {
    Spawn,
    List,
    Status,
    Stop,
    Logs,
    Wait,
    Summary,
    Progress,
}

impl ToolName {
    const ALL: [Self; 8] = [
        Self::Spawn,
        Self::List,
        Self::Status,
        Self::Stop,
        Self::Logs,
        Self::Wait,
        Self::Summary,
        Self::Progress,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Spawn => "spawn_agent",
            Self::List => "list_agents",
            Self::Status => "get_agent_status",
            Self::Stop => "stop_agents",
            Self::Logs => "read_logs",
            Self::Wait => "wait_agent",
            Self::Summary => "get_process_summary",
            Self::Progress => "report_progress",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    fn title(self) -> &'static str {
        match self {
            Self::Spawn => "Spawn an agent",
            Self::List => "List agents",
            Self::Status => "Agent status",
            Self::Stop => "Stop agents",
            Self::Logs => "Read an agent's logs",
            Self::Wait => "Wait for an agent to end",
            Self::Summary => "Fleet summary",
            Self::Progress => "Report progress",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::Spawn => {
                "Start a long-running process (an \"agent\") under corral's supervision and \
                 prove it started. `command` is an argv run without a shell (use [\"sh\", \"-c\", \
                 \"...\"] for a shell line); the agent's stdout and stderr go to log files (see \
                 read_logs); it keeps running after this call and after this server exits. \
                 corral watches the new process for `verify_ms` milliseconds (default 100) before \
                 answering: a program that cannot start (missing, not executable, bad cwd) or exits \
                 non-zero within that window is a tool error with the reason and the tail of its \
                 stderr. Returns the spawn response: agent_id, run (1 for the first run of an id), \
                 pid, status (`running`, or `completed` when it already exited with code 0), \
                 started_at (RFC 3339), the log paths. An id that is still running is refused \
                 (conflict); an id whose last run ended can be spawned again as a new run."
            }
            Self::List => {
                "List agents with their status: one entry per agent id (its latest run), \
                 optionally only those matching `selector` (an id, or `PREFIX.*` for PREFIX and \
                 every id below it) and/or in one lifecycle `state`. Returns {agents: [status], \
                 count}; each status has the fields of get_agent_status. The text rendering is a \
                 table: id, pid, health, state, readiness, CPU percent, memory MiB, threads, \
                 runtime, restarts, progress."
            }
            Self::Status => {
                "One agent's current status. Key fields: persistent_status (spawning, running, \
                 completed, failed, cancelled), health (healthy, zombie, completed, failed, \
                 unknown), pid, process_alive, exit_code / exit_signal / end_reason once it \
                 ended, cpu_percent (percent of one CPU, may exceed 100), memory_mb (MiB, the \
                 agent process itself; `tree` sums its whole process tree), runtime_seconds, \
                 num_threads, progress (0-100) and progress_message, run and restarts, \
                 started_at / ended_at (RFC 3339), stdout_log / stderr_log paths. An unknown id \
                 is a tool error (not found)."
            }
            Self::Stop => {
                "Stop agents gracefully, each with its whole process tree: SIGTERM, wait, SIGTERM \
                 again, wait, SIGKILL (default waits 10, 5 and 5 seconds; ends as soon as the tree \
                 is gone). Give exactly one of `agent_id`, `selector` (`PREFIX.*`, or an id) or \
                 `all: true`. `force: true` sends SIGKILL at once. Several agents stop in \
                 parallel; the call returns when they are all gone. Stopped agents end \
                 `cancelled` and are never restarted by their restart policy. Returns {reports: \
                 [stop report], count}; each report has agent_id, pid, stage (already_ended, term, \
                 second_term, kill), duration_ms, exit_code / exit_signal, descendants_killed and \
                 the final persistent_status."
            }
            Self::Logs => {
                "Read the end of an agent's output: the last `tail` lines (default 100) of its \
                 stdout, stderr or both (default both), of its current run or of an earlier \
                 `run`. Returns {agent_id, run, stdout, stderr, truncated}: each requested stream \
                 as text (at most 64 KiB each; when more was there, the oldest text is cut and \
                 `truncated` is true). Does not wait for new output."
            }
            Self::Wait => {
                "Wait until an agent's current run has ended (for an agent with a restart \
                 policy: until it will not be restarted), then return its final status (the \
                 fields of get_agent_status: persistent_status, exit_code, exit_signal, \
                 end_reason, ended_at...). Waits at most `timeout_s` seconds (default 30, at most \
                 3600); when the agent is still running then, this is a tool error (timeout) and \
                 the agent keeps running. Returns at once for an agent that already ended."
            }
            Self::Summary => {
                "Counts and totals over all agents (the latest run of each id): total, spawning, \
                 running, completed, failed, cancelled, zombie, total_memory_mb (MiB, summed \
                 resident memory of live agents) and total_cpu_percent (percent of one CPU, \
                 summed over live agents)."
            }
            Self::Progress => {
                "Record an agent's progress (0-100 percent) and an optional short message; \
                 list_agents and get_agent_status show them, and a `progress_stale_s` liveness \
                 probe counts them as signs of life. Use it to note how far an agent you \
                 supervise has got, or, when this server itself runs as a corral agent, to \
                 report your own progress (agent_id then defaults to $CORRAL_AGENT_ID; from \
                 inside an agent corral accepts progress only for that agent). Returns the \
                 agent's status."
            }
        }
    }

    fn input_schema(self) -> Arc<JsonObject> {
        let schema = match self {
            Self::Spawn => input_schema_of::<SpawnParams>(),
            Self::List => input_schema_of::<ListParams>(),
            Self::Status => input_schema_of::<AgentParams>(),
            Self::Stop => input_schema_of::<StopParams>(),
            Self::Logs => input_schema_of::<LogsParams>(),
            Self::Wait => input_schema_of::<WaitParams>(),
            Self::Summary => input_schema_of::<NoParams>(),
            Self::Progress => input_schema_of::<ProgressParams>(),
        };
        schema.unwrap_or_else(|e| {
            // Every params type here is a struct, so this cannot happen; stay usable anyway.
            tracing::error!(tool = self.name(), error = %e, "no input schema");
            Arc::new(object(json!({"type": "object"})))
        })
    }

    fn output_schema(self) -> Arc<JsonObject> {
        let list_of = |field: &str, item: &str, what: &str| {
            json!({
                "type": "object",
                "properties": {
                    field: {
                        "type": "array",
                        "items": {"$ref": format!("#/components/schemas/{item}")},
                        "description": what,
                    },
                    "count": {"type": "integer", "minimum": 0, "description": "Entries in the list."},
                },
                "required": [field, "count"],
            })
        };
        let root = match self {
            Self::Spawn => api_ref("SpawnResponse"),
            Self::Status | Self::Wait | Self::Progress => api_ref("AgentStatus"),
            Self::Summary => api_ref("ProcessSummary"),
            Self::List => list_of("agents", "AgentStatus", "The agents' statuses, by id."),
            Self::Stop => list_of("reports", "StopReport", "One stop report per agent."),
            Self::Logs => return Arc::new(logs_output_schema()),
        };
        Arc::new(inline_api_schema(root))
    }

    fn annotations(self) -> ToolAnnotations {
        let base = ToolAnnotations::with_title(self.title());
        match self {
            Self::List | Self::Status | Self::Logs | Self::Wait | Self::Summary => {
                base.read_only(true)
            }
            Self::Spawn => base.read_only(false).destructive(false),
            Self::Stop => base.read_only(false).destructive(true).idempotent(true),
            Self::Progress => base.read_only(false).destructive(false).idempotent(true),
        }
    }

    fn tool(self) -> Tool {
        let mut tool = Tool::new(self.name(), self.description(), self.input_schema());
        tool.title = Some(self.title().to_owned());
        tool.output_schema = Some(self.output_schema());
        tool.annotations = Some(self.annotations());
        tool
    }
}

/// Every tool, as `tools/list` answers.
fn tools() -> Vec<Tool> {
    ToolName::ALL.into_iter().map(ToolName::tool).collect()
}

impl CorralMcp {
    /// Runs one tool; every failure is an error the caller turns into a tool error.
    async fn call(
        &self,
        tool: ToolName,
        args: Value,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult> {
        match tool {
            ToolName::Spawn => self.spawn(parse_args(tool, args)?).await,
            ToolName::List => self.list(parse_args(tool, args)?).await,
            ToolName::Status => self.status(parse_args(tool, args)?).await,
            ToolName::Stop => self.stop(parse_args(tool, args)?).await,
            ToolName::Logs => self.logs(parse_args(tool, args)?).await,
            ToolName::Wait => self.wait(parse_args(tool, args)?, context).await,
            ToolName::Summary => {
                let NoParams {} = parse_args(tool, args)?;
                self.summary().await
            }
            ToolName::Progress => self.progress(parse_args(tool, args)?).await,
        }
    }

    async fn spawn(&self, params: SpawnParams) -> Result<CallToolResult> {
        let request = params.into_request(self.cwd.as_deref())?;
        let client = self.ctx.client().await?;
        let resp: SpawnResponse = client
            .call(Method::POST, "/v1/agents", Some(&request))
            .await?;
        let started = matches!(
            resp.status,
            PersistentStatus::Running | PersistentStatus::Completed
        ) && resp.exit_code.unwrap_or(0) == 0;
        let head = if started {
            format!(
                "agent {} started (run {}, pid {}, {})",
                resp.agent_id,
                resp.run,
                opt(resp.pid),
                resp.status
            )
        } else {
            format!(
                "agent {} failed to start: {}",
                resp.agent_id,
                resp.error
                    .as_deref()
                    .unwrap_or("it ended during the verification window")
            )
        };
        // A failed start is still a spawn response (it conforms to the output
        // schema), so the model gets the run, exit code and log paths with the error.
        structured(&resp, |v| with_fields(head, v), !started)
    }

    async fn list(&self, params: ListParams) -> Result<CallToolResult> {
        if let Some(raw) = params.selector.as_deref() {
            Selector::parse(raw).context("invalid selector")?;
        }
        let client = self.ctx.client().await?;
        // The daemon picks the agents by id; the state filter here is on the
        // stored status (and `live`), which the daemon's `state` is not.
        let query = corral_core::ListQuery {
            selector: params.selector.clone(),
            ..Default::default()
        };
        let picked: BTreeMap<String, AgentStatus> = client
            .list_agents(&query)
            .await?
            .into_iter()
            .filter(|(_, s)| {
                params
                    .state
                    .is_none_or(|st| st.matches(s.persistent_status))
            })
            .collect();
        let text = if picked.is_empty() {
            let filtered = params.selector.is_some() || params.state.is_some();
            (if filtered {
                "no agents match"
            } else {
                "no agents"
            })
            .to_owned()
        } else {
            super::agents::ps_table(&picked.values().collect::<Vec<_>>()).render(Style::plain())
        };
        let count = picked.len();
        let answer = json!({"agents": picked.into_values().collect::<Vec<_>>(), "count": count});
        structured(&answer, |_| text, false)
    }

    async fn status(&self, params: AgentParams) -> Result<CallToolResult> {
        let path = format!("/v1/agents/{}", agent_path(&params.agent_id)?);
        let s: AgentStatus = self.ctx.client().await?.get(&path).await?;
        let head = format!("{}: {}, {}", s.agent_id, s.persistent_status, s.health);
        structured(&s, |v| with_fields(head, v), false)
    }

    async fn stop(&self, params: StopParams) -> Result<CallToolResult> {
        let timeouts = params.stop_timeouts.map(|t| t.to_vec());
        let client = self.ctx.client().await?;
        let reports: Vec<StopReport> = match (&params.agent_id, &params.selector, params.all) {
            (Some(id), None, false) => {
                let path = format!("/v1/agents/{}/stop", agent_path(id)?);
                let body = CleanupOptions {
                    force: params.force,
                    stop_timeouts: timeouts,
                };
                vec![client.call(Method::POST, &path, Some(&body)).await?]
            }
            (None, selector @ Some(_), false) | (None, selector @ None, true) => {
                let body = StopManyRequest {
                    all: params.all,
                    selector: selector.clone(),
                    force: params.force,
                    stop_timeouts: timeouts,
                    live_only: false,
                };
                client.call(Method::POST, "/v1/stop", Some(&body)).await?
            }
            _ => bail!(
                "say which agents to stop with exactly one of agent_id, selector (PREFIX.*) or all: true"
            ),
        };
        let text = stop_table(&reports);
        let answer = json!({"count": reports.len(), "reports": reports});
        structured(&answer, |_| text, false)
    }

    async fn logs(&self, params: LogsParams) -> Result<CallToolResult> {
        let id = agent_path(&params.agent_id)?;
        let client = self.ctx.client().await?;
        // Both streams come from one run even if a restart starts another meanwhile.
        let run = match params.run {
            Some(run) => run,
            None => {
                client
                    .get::<AgentStatus>(&format!("/v1/agents/{id}"))
                    .await?
                    .run
            }
        };
        let mut answer = LogsOutput {
            agent_id: id.clone(),
            run,
            stdout: None,
            stderr: None,
            truncated: false,
        };
        for stream in params.stream.streams() {
            let path = format!(
                "/v1/agents/{id}/logs?stream={stream}&tail={}&run={run}",
                params.tail
            );
            let mut bytes = Vec::new();
            client
                .stream(&path, |chunk| {
                    bytes.extend_from_slice(chunk);
                    true
                })
                .await?;
            let (text, cut) = keep_end(&String::from_utf8_lossy(&bytes), MAX_LOG_BYTES);
            answer.truncated |= cut;
            match *stream {
                "stdout" => answer.stdout = Some(text),
                _ => answer.stderr = Some(text),
            }
        }
        let text = render_logs(&answer);
        structured(&answer, |_| text, false)
    }

    async fn wait(
        &self,
        params: WaitParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult> {
        let id = agent_path(&params.agent_id)?;
        let timeout_s = params.timeout_s;
        let client = self.ctx.client().await?;
        let path = format!("/v1/agents/{id}/wait?timeout_s={timeout_s}");
        let waiting = client.get::<AgentStatus>(&path);
        tokio::pin!(waiting);
        // A host that sent a progress token hears from us while we wait; some
        // hosts extend their request timeout on each progress notification.
        let token = context.meta.get_progress_token();
        let started = Instant::now();
        let mut ticks = tokio::time::interval(WAIT_PROGRESS_EVERY);
        ticks.tick().await;
        let s = loop {
            tokio::select! {
                answer = &mut waiting => break answer?,
                () = context.ct.cancelled() => bail!("the wait for {id} was cancelled"),
                _ = ticks.tick(), if token.is_some() => {
                    if let Some(token) = token.clone() {
                        let waited = started.elapsed().as_secs_f64();
                        let note = ProgressNotificationParam::new(token, waited)
                            .with_total(timeout_s)
                            .with_message(format!("waiting for {id}: {waited:.0} s of {timeout_s} s"));
                        if let Err(e) = context.peer.notify_progress(note).await {
                            tracing::debug!(error = %e, "progress notification not sent");
                        }
                    }
                }
            }
        };
        let how = match (s.exit_code, s.exit_signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => s
                .end_reason
                .clone()
                .unwrap_or_else(|| "no exit status".into()),
        };
        let head = format!("{} ended: {} ({how})", s.agent_id, s.persistent_status);
        structured(&s, |v| with_fields(head, v), false)
    }

    async fn summary(&self) -> Result<CallToolResult> {
        let s: ProcessSummary = self.ctx.client().await?.get("/v1/summary").await?;
        let head = format!("{} agents, {} running", s.total, s.running);
        structured(&s, |v| with_fields(head, v), false)
    }

    async fn progress(&self, params: ProgressParams) -> Result<CallToolResult> {
        let id = match params
            .agent_id
            .or_else(|| std::env::var("CORRAL_AGENT_ID").ok())
        {
            Some(id) => id,
            None => bail!(
                "say which agent the progress is for: agent_id (this server does not run as a corral agent, so there is no default)"
            ),
        };
        let path = format!("/v1/agents/{}/progress", agent_path(&id)?);
        let body = ProgressUpdate {
            progress: params.progress,
            message: params.message,
        };
        let s: AgentStatus = self
            .ctx
            .client()
            .await?
            .call(Method::PUT, &path, Some(&body))
            .await?;
        let head = format!(
            "{}: progress {}%{}",
            s.agent_id,
            opt(s.progress),
            s.progress_message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        structured(&s, |v| with_fields(head, v), false)
    }
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// `spawn_agent`'s arguments: the API's spawn request, with paths that may be
/// relative to this server's working directory.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SpawnParams {
    /// The agent's id: 1-128 characters of A-Z a-z 0-9 . _ -, not starting with `.` or `-`,
    /// no `..`. Dots make a hierarchy (`team.worker.1` is under `team.worker`), which
    /// selectors such as `team.*` use.
    agent_id: String,
    /// The program and its arguments (argv), run without a shell, e.g.
    /// ["python3", "worker.py", "--shard", "1"]. For a shell line use ["sh", "-c", "LINE"].
    #[schemars(length(min = 1))]
    command: Vec<String>,
    /// Working directory. Default: this MCP server's working directory; a relative path is
    /// resolved against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    /// Environment variables added to the agent's environment (the daemon's own for an
    /// agent of the daemon's user, unless inherit_env is false; a clean one for another
    /// user). The agent also gets CORRAL_AGENT_ID and CORRAL_SOCKET.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    /// Whether an agent of the daemon's own user starts from the daemon's environment.
    /// Default true; false gives it only PATH, HOME, USER, LOGNAME, SHELL, LANG and `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inherit_env: Option<bool>,
    /// Directory for the agent's log files. Default: `<state dir>/agents/<agent_id>`; a
    /// relative path is resolved against this server's working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_dir: Option<String>,
    /// Free-form labels kept with the agent (at most 64; keys up to 128 bytes, values up
    /// to 1024).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    /// Staged-stop waits in seconds: after the first SIGTERM, after the second SIGTERM,
    /// after SIGKILL. Default [10, 5, 5].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stop_timeouts: Option<[f64; 3]>,
    /// Verification window in milliseconds: how long corral watches the new process
    /// before answering. Default 100; 0 answers as soon as the program was executed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verify_ms: Option<u64>,
    /// Restart policy. Default: never restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restart: Option<RestartParams>,
    /// Stop a run that has been running longer than this many seconds (staged stop); the
    /// run ends `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_runtime_s: Option<f64>,
    /// Resource limits of the agent's whole process tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsParams>,
    /// Liveness and readiness probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    probes: Option<ProbesParams>,
    /// Run the agent as this user (name or uid); only when the daemon runs as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// Rotation of the agent's log files (copy and truncate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logs: Option<LogRotationParams>,
    /// Where the agent runs. Default: this host (or the daemon's default placement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placement: Option<PlacementParams>,
}

/// Where an agent runs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PlacementParams {
    /// Run the agent as a job of the Slurm cluster this host submits to (`{}` for the
    /// engine's defaults). Its status then has `pid` null and `placement` naming the job
    /// and node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slurm: Option<SlurmParams>,
}

/// What a Slurm job is asked for; every field optional (the engine's defaults).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SlurmParams {
    /// The partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partition: Option<String>,
    /// Nodes the job may run on (a Slurm node list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nodes: Option<String>,
    /// CPUs for the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpus: Option<u32>,
    /// Memory for the job, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mem_mb: Option<u64>,
    /// Time limit in Slurm's format (`60`, `1:00:00`, `1-0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_limit: Option<String>,
}

/// When a run that ended on its own is started again.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RestartParams {
    /// `never` (default), `on-failure` (runs that end failed) or `always` (also runs that
    /// complete with code 0). A stop or kill by a user never causes a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<RestartMode>,
    /// More restarts than this within `window_s` is a crash loop: corral stops restarting.
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_restarts: Option<u32>,
    /// The crash-loop window in seconds; a run that stays up this long resets the backoff.
    /// Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window_s: Option<f64>,
    /// Delay before the first restart and the most it grows to, in seconds. Default [1, 60].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backoff_s: Option<[f64; 2]>,
}

/// A restart policy's name.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum RestartMode {
    Never,
    OnFailure,
    Always,
}

/// Resource limits; each is optional.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LimitsParams {
    /// Most resident memory of the whole process tree, MiB; over it the run is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_mb: Option<f64>,
    /// Most processes and threads in the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pids: Option<u64>,
    /// Most open files of the agent process (RLIMIT_NOFILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nofile: Option<u64>,
    /// Most CPU of the tree, percent of one CPU (150 = one and a half CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_percent: Option<f64>,
}

/// Probes: liveness (failing `failures` times in a row ends the run as failed) and
/// readiness (sets the status field `ready`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProbesParams {
    /// Checked every `interval_s`; failing `failures` times in a row ends the run as failed
    /// (so the restart policy applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    liveness: Option<ProbeParams>,
    /// Sets `ready` in the status once it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    readiness: Option<ProbeParams>,
    /// Seconds between checks. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval_s: Option<f64>,
    /// Seconds one check may take. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_s: Option<f64>,
    /// Consecutive failures that count. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failures: Option<u32>,
}

/// One probe: an object with exactly one of these keys.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ProbeParams {
    /// Run this argv; exit code 0 passes.
    Exec(Vec<String>),
    /// GET this http:// URL; a 2xx or 3xx answer passes.
    Http(String),
    /// Connect to this HOST:PORT; a connection passes.
    Tcp(String),
    /// (liveness) no progress report for this many seconds fails: a stuck agent.
    ProgressStaleS(f64),
    /// (readiness) a line of the run's stdout or stderr matching this regular expression passes.
    Log(String),
}

/// Log rotation: copy and truncate a log once it grows over `max_mb`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogRotationParams {
    /// Rotate a log once it is larger than this, MiB.
    max_mb: f64,
    /// Rotated copies kept. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep: Option<u32>,
}

impl SpawnParams {
    /// The API's spawn request: relative paths made absolute against `base`, the
    /// default cwd filled in, and every other field handed to the proto type's own
    /// deserialiser (its defaults, its checks).
    fn into_request(self, base: Option<&std::path::Path>) -> Result<SpawnRequest> {
        // The daemon takes no path with a `..` part: one that exists is
        // resolved here; a missing one is refused there, naming the field.
        let resolve = |p: &str| {
            let joined = match base {
                Some(base) => base.join(p),
                None => PathBuf::from(p),
            };
            if joined
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                std::fs::canonicalize(&joined).unwrap_or(joined)
            } else {
                joined
            }
        };
        let cwd = match &self.cwd {
            Some(dir) => Some(resolve(dir)),
            None => base.map(std::path::Path::to_path_buf),
        };
        let agent_dir = self.agent_dir.as_deref().map(resolve);
        let mut value = serde_json::to_value(&self).context("encode the spawn request")?;
        if let Value::Object(fields) = &mut value {
            for (key, path) in [("cwd", cwd), ("agent_dir", agent_dir)] {
                match path {
                    Some(p) => fields.insert(key.into(), Value::String(p.display().to_string())),
                    None => fields.remove(key),
                };
            }
        }
        serde_json::from_value(value).context("invalid spawn request")
    }
}

/// `list_agents`'s arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only this agent (an id) or this subtree (`PREFIX.*`: PREFIX and every id below it,
    /// e.g. `team.*`). Default: every agent.
    #[serde(default)]
    selector: Option<String>,
    /// Only agents whose latest run is in this lifecycle state; `live` means spawning or
    /// running. Default: any state.
    #[serde(default)]
    state: Option<StateFilter>,
}

/// A lifecycle state to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum StateFilter {
    Spawning,
    Running,
    Completed,
    Failed,
    Cancelled,
    Live,
}

impl StateFilter {
    fn matches(self, status: PersistentStatus) -> bool {
        match self {
            Self::Spawning => status == PersistentStatus::Spawning,
            Self::Running => status == PersistentStatus::Running,
            Self::Completed => status == PersistentStatus::Completed,
            Self::Failed => status == PersistentStatus::Failed,
            Self::Cancelled => status == PersistentStatus::Cancelled,
            Self::Live => status.is_live(),
        }
    }
}

/// Arguments naming one agent.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AgentParams {
    /// The agent's id.
    agent_id: String,
}

/// `stop_agents`'s arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StopParams {
    /// Stop this one agent.
    #[serde(default)]
    agent_id: Option<String>,
    /// Stop every agent of this subtree (`PREFIX.*`) or this id.
    #[serde(default)]
    selector: Option<String>,
    /// Stop every agent. Must be given explicitly: there is no accidental mass stop.
    #[serde(default)]
    all: bool,
    /// Send SIGKILL at once instead of the staged stop.
    #[serde(default)]
    force: bool,
    /// This call's staged-stop waits in seconds: after the first SIGTERM, after the second
    /// SIGTERM, after SIGKILL. Default: each agent's own (normally [10, 5, 5]).
    #[serde(default)]
    stop_timeouts: Option<[f64; 3]>,
}

/// `read_logs`'s arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogsParams {
    /// The agent's id.
    agent_id: String,
    /// Which output: `stdout`, `stderr` or `both` (default).
    #[serde(default)]
    stream: StreamChoice,
    /// How many lines from the end of each stream. Default 100.
    #[serde(default = "default_tail")]
    tail: u32,
    /// The run to read (1, 2, ...). Default: the current run.
    #[serde(default)]
    run: Option<u32>,
}

fn default_tail() -> u32 {
    100
}

/// Which log streams to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum StreamChoice {
    Stdout,
    Stderr,
    #[default]
    Both,
}

impl StreamChoice {
    fn streams(self) -> &'static [&'static str] {
        match self {
            Self::Stdout => &["stdout"],
            Self::Stderr => &["stderr"],
            Self::Both => &["stdout", "stderr"],
        }
    }
}

/// `wait_agent`'s arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    /// The agent's id.
    agent_id: String,
    /// Longest wait in seconds, 0-3600. Default 30.
    #[serde(default = "default_wait_s")]
    #[schemars(range(min = 0, max = 3600))]
    timeout_s: f64,
}

fn default_wait_s() -> f64 {
    30.0
}

/// `report_progress`'s arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProgressParams {
    /// The agent the progress is for. Default: $CORRAL_AGENT_ID, when this server itself
    /// runs as a corral agent.
    #[serde(default)]
    agent_id: Option<String>,
    /// Percent done, 0-100.
    #[schemars(range(min = 0, max = 100))]
    progress: i64,
    /// What the agent is doing, in a few words (at most 1 KiB).
    #[serde(default)]
    message: Option<String>,
}

/// No arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// `read_logs`'s answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
struct LogsOutput {
    /// The agent.
    agent_id: String,
    /// The run the text comes from.
    run: u32,
    /// The end of its stdout, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    /// The end of its stderr, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    /// True when older text of a stream was cut to keep the answer small.
    truncated: bool,
}

/// Arguments decoded into `T`; a mismatch is a tool error the model can correct.
fn parse_args<T: DeserializeOwned>(tool: ToolName, args: Value) -> Result<T> {
    serde_json::from_value(args).map_err(|e| {
        anyhow!(
            "invalid arguments for {}: {}",
            tool.name(),
            corral_core::elide(&e.to_string(), 300)
        )
    })
}

/// An id checked locally, so a bad one is a clear error rather than a mangled URL.
fn agent_path(id: &str) -> Result<String> {
    Ok(AgentId::new(id)?.to_string())
}

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

/// A params type's input schema (JSON Schema 2020-12, root `type: object`).
fn input_schema_of<T: JsonSchema + 'static>() -> Result<Arc<JsonObject>, String> {
    rmcp::handler::server::tool::schema_for_input::<T>()
}

/// `read_logs`'s output schema, from its answer type.
fn logs_output_schema() -> JsonObject {
    rmcp::handler::server::tool::schema_for_output::<LogsOutput>()
        .as_ref()
        .clone()
}

/// A reference to one of the API's component schemas.
fn api_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The API's OpenAPI document, parsed once.
fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(corral_api::openapi_json()).unwrap_or(Value::Null))
}

/// `root` as a self-contained JSON Schema: every `#/components/schemas/X` it
/// reaches, directly or through other components, is copied under `$defs` and
/// the references rewritten to `#/$defs/X`. OpenAPI 3.1 schemas are JSON Schema
/// 2020-12, so nothing else needs translating.
fn inline_api_schema(mut root: Value) -> JsonObject {
    const FROM: &str = "#/components/schemas/";
    fn rewrite(v: &mut Value, found: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get_mut("$ref")
                    && let Some(name) = r.strip_prefix(FROM)
                {
                    found.push(name.to_owned());
                    *r = format!("#/$defs/{name}");
                }
                map.values_mut().for_each(|v| rewrite(v, found));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, found)),
            _ => {}
        }
    }
    let components = &openapi()["components"]["schemas"];
    let mut todo = Vec::new();
    // A bare reference as the root becomes the component itself: hosts want a
    // root `type: object`.
    if let Some(name) = root
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(FROM))
        && let Some(schema) = components.get(name)
    {
        root = schema.clone();
    }
    rewrite(&mut root, &mut todo);
    let mut defs = Map::new();
    while let Some(name) = todo.pop() {
        if defs.contains_key(&name) {
            continue;
        }
        let mut schema = components.get(&name).cloned().unwrap_or_else(|| {
            tracing::error!(component = %name, "the OpenAPI document lacks a component");
            json!({})
        });
        rewrite(&mut schema, &mut todo);
        defs.insert(name, schema);
    }
    let mut schema = object(root);
    schema.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    if !defs.is_empty() {
        schema.insert("$defs".into(), Value::Object(defs));
    }
    schema
}

/// The object inside a JSON value (an empty object for anything else).
fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

/// A result with `value` as structured content and `text(value)` as its text.
fn structured(
    value: &impl Serialize,
    text: impl FnOnce(&Value) -> String,
    is_error: bool,
) -> Result<CallToolResult> {
    let value = serde_json::to_value(value).context("encode the tool's answer")?;
    let mut result = CallToolResult::success(vec![ContentBlock::text(text(&value))]);
    result.structured_content = Some(value);
    result.is_error = Some(is_error);
    Ok(result)
}

/// `head` on its own line, then every field of `value` as aligned `key  value` lines.
fn with_fields(head: String, value: &Value) -> String {
    let mut text = head;
    text.push('\n');
    text.push_str(&render_fields(value));
    text
}

/// A tool error: the error and its causes on one line. An API error keeps the
/// daemon's message word for word and adds its stable code.
fn error_result(e: &anyhow::Error) -> CallToolResult {
    let text = match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api { code, message, .. }) => format!("{message} (error code: {code})"),
        _ => crate::one_line(e),
    };
    CallToolResult::error(vec![ContentBlock::text(text)])
}

/// `a.b  value` lines for every non-null leaf of `value`, in key order.
fn render_fields(value: &Value) -> String {
    fn walk(prefix: &str, v: &Value, rows: &mut Vec<Vec<String>>) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            Value::Null => {}
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(&key(k), v, rows)),
            Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                if !items.is_empty() {
                    let cells: Vec<String> = items.iter().map(scalar).collect();
                    rows.push(vec![prefix.to_owned(), cells.join(" ")]);
                }
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .for_each(|(i, v)| walk(&format!("{prefix}[{i}]"), v, rows)),
            other => rows.push(vec![prefix.to_owned(), scalar(other)]),
        }
    }
    let mut rows = Vec::new();
    walk("", value, &mut rows);
    output::key_values(rows.iter().map(|r| (r[0].as_str(), r[1].clone())).collect())
}

/// A scalar as text: strings bare (on one line, so the table stays a table),
/// fractions to two decimals.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim_end().replace('\n', " | "),
        Value::Number(n) if n.is_f64() => n
            .as_f64()
            .map(|f| {
                let s = format!("{f:.2}");
                s.trim_end_matches('0').trim_end_matches('.').to_owned()
            })
            .unwrap_or_default(),
        other => other.to_string(),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The stop reports as a table.
fn stop_table(reports: &[StopReport]) -> String {
    if reports.is_empty() {
        return "no agents matched\n".into();
    }
    super::stop::reports_table(reports).render(Style::plain())
}

/// The logs with a header per stream.
fn render_logs(logs: &LogsOutput) -> String {
    let mut text = format!("{} run {}", logs.agent_id, logs.run);
    if logs.truncated {
        text.push_str(" (older output cut)");
    }
    text.push('\n');
    for (name, body) in [("stdout", &logs.stdout), ("stderr", &logs.stderr)] {
        if let Some(body) = body {
            text.push_str(&format!("--- {name} ---\n"));
            text.push_str(if body.is_empty() { "(empty)\n" } else { body });
            if !text.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    text
}

/// The last `max` bytes of `text`, starting at a line (or at least a character)
/// boundary, and whether anything was cut.
fn keep_end(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    let tail = match tail.find('\n') {
        Some(nl) if nl + 1 < tail.len() => &tail[nl + 1..],
        _ => tail,
    };
    (tail.to_owned(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(schema: &JsonObject) -> Vec<String> {
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn lists_the_eight_tools_with_object_schemas() {
        let tools = tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "spawn_agent",
                "list_agents",
                "get_agent_status",
                "stop_agents",
                "read_logs",
                "wait_agent",
                "get_process_summary",
                "report_progress"
            ]
        );
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            let out = t.output_schema.as_ref().unwrap();
            assert_eq!(out["type"], "object", "{}", t.name);
            assert!(t.description.as_ref().unwrap().len() > 80, "{}", t.name);
            assert_eq!(ToolName::parse(&t.name).map(ToolName::name), Some(&*t.name));
        }
        assert_eq!(ToolName::parse("rm_rf"), None);
    }

    #[test]
    fn output_schemas_are_self_contained() {
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        for t in tools() {
            let schema = Value::Object(t.output_schema.unwrap().as_ref().clone());
            let mut found = Vec::new();
            refs(&schema, &mut found);
            for r in found {
                let name = r.strip_prefix("#/$defs/").unwrap_or_else(|| panic!("{r}"));
                assert!(schema["$defs"][name].is_object(), "{}: {r}", t.name);
            }
        }
        let status = ToolName::Status.output_schema();
        assert!(props(&status).contains(&"persistent_status".to_owned()));
        assert!(status["$defs"]["Health"].is_object());
    }

    #[test]
    fn spawn_schema_covers_the_api_spawn_request() {
        // Every field of the API's request is reachable from the tool.
        let api = inline_api_schema(api_ref("SpawnRequest"));
        let api_fields = props(&api);
        assert_eq!(props(&ToolName::Spawn.input_schema()), api_fields);
        let ours = Value::Object(ToolName::Spawn.input_schema().as_ref().clone());
        let defs = ours["$defs"].as_object().unwrap();
        for (mine, theirs) in [
            ("RestartParams", "RestartPolicy"),
            ("LimitsParams", "Limits"),
            ("ProbesParams", "Probes"),
            ("LogRotationParams", "LogRotation"),
            ("PlacementParams", "Placement"),
            ("SlurmParams", "SlurmPlacement"),
        ] {
            let a = defs[mine]["properties"].as_object().unwrap();
            let b = api["$defs"][theirs]["properties"].as_object().unwrap();
            assert_eq!(
                a.keys().collect::<Vec<_>>(),
                b.keys().collect::<Vec<_>>(),
                "{mine}"
            );
        }
    }

    #[test]
    fn spawn_arguments_become_the_api_request() {
        let args = json!({
            "agent_id": "team.w1", "command": ["sh", "-c", "echo hi"], "cwd": "sub",
            "env": {"K": "V"}, "agent_dir": "/abs/logs", "labels": {"team": "a"},
            "stop_timeouts": [1, 2, 3], "verify_ms": 0,
            "restart": {"policy": "on-failure", "max_restarts": 2},
            "max_runtime_s": 60, "limits": {"memory_mb": 512, "nofile": 64},
            "probes": {"liveness": {"progress_stale_s": 300}, "readiness": {"log": "ready"}},
            "user": "nobody", "logs": {"max_mb": 10}
        });
        let params: SpawnParams = parse_args(ToolName::Spawn, args).unwrap();
        let req = params
            .into_request(Some(std::path::Path::new("/work")))
            .unwrap();
        assert_eq!(req.cwd.as_deref(), Some(std::path::Path::new("/work/sub")));
        assert_eq!(
            req.agent_dir.as_deref(),
            Some(std::path::Path::new("/abs/logs"))
        );
        assert_eq!(req.stop_timeouts, Some(vec![1.0, 2.0, 3.0]));
        let restart = req.restart.unwrap();
        assert_eq!(restart.policy, corral_core::RestartMode::OnFailure);
        assert_eq!((restart.max_restarts, restart.window_s), (2, 60.0));
        assert_eq!(req.limits.unwrap().memory_mb, Some(512.0));
        let probes = req.probes.unwrap();
        assert_eq!(
            probes.liveness,
            Some(corral_core::Probe::ProgressStaleS(300.0))
        );
        assert_eq!(probes.interval_s, 10.0);
        assert_eq!(req.logs.unwrap().keep, 3);

        // The default cwd is the server's own.
        let minimal: SpawnParams = parse_args(
            ToolName::Spawn,
            json!({"agent_id": "a", "command": ["true"]}),
        )
        .unwrap();
        let req = minimal
            .into_request(Some(std::path::Path::new("/srv")))
            .unwrap();
        assert_eq!(req.cwd.as_deref(), Some(std::path::Path::new("/srv")));
    }

    #[test]
    fn bad_arguments_are_errors_naming_the_problem() {
        let e = parse_args::<SpawnParams>(ToolName::Spawn, json!({"agent_id": "a"})).unwrap_err();
        assert!(e.to_string().contains("missing field `command`"), "{e}");
        let e = parse_args::<StopParams>(ToolName::Stop, json!({"agnet_id": "a"})).unwrap_err();
        assert!(e.to_string().contains("unknown field `agnet_id`"), "{e}");
        let e = parse_args::<LogsParams>(ToolName::Logs, json!({"agent_id": "a", "stream": "x"}))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid arguments for read_logs"),
            "{e}"
        );
        let p: LogsParams = parse_args(ToolName::Logs, json!({"agent_id": "a"})).unwrap();
        assert_eq!((p.stream, p.tail, p.run), (StreamChoice::Both, 100, None));
        assert!(agent_path("../etc").is_err());
    }

    #[test]
    fn api_errors_keep_the_daemons_message() {
        let e = anyhow::Error::from(ClientError::Api {
            status: 404,
            code: "not_found".into(),
            message: "agent nope not found".into(),
        });
        let r = error_result(&e);
        assert_eq!(r.is_error, Some(true));
        assert!(r.structured_content.is_none());
        let text = &r.content[0].as_text().unwrap().text;
        assert_eq!(text, "agent nope not found (error code: not_found)");

        let e = anyhow!("cannot connect").context("no daemon");
        let r = error_result(&e);
        assert_eq!(
            r.content[0].as_text().unwrap().text,
            "no daemon: cannot connect"
        );
    }

    #[test]
    fn results_carry_structure_and_text() {
        let value = json!({"a": 1.23456, "b": null, "c": {"d": "x"}});
        let r = structured(&value, |v| with_fields("head".into(), v), false).unwrap();
        assert_eq!(r.is_error, Some(false));
        assert_eq!(r.structured_content.as_ref().unwrap()["a"], 1.23456);
        let text = &r.content[0].as_text().unwrap().text;
        assert_eq!(text, "head\na    1.23\nc.d  x\n");
    }

    #[test]
    fn state_filter_and_log_trimming() {
        assert!(StateFilter::Live.matches(PersistentStatus::Spawning));
        assert!(!StateFilter::Live.matches(PersistentStatus::Failed));
        assert_eq!(keep_end("abc", 10), ("abc".into(), false));
        assert_eq!(keep_end("one\ntwo\nthree\n", 9), ("three\n".into(), true));
        assert_eq!(keep_end("ééé", 3), ("é".into(), true));
    }
}
