//! `corral mcp`: a Model Context Protocol server on stdin/stdout, so an AI agent
//! (an MCP host: an editor, a chat app, an orchestrator) can spawn, watch and
//! stop agents — one or a team — through corral.
//!
//! What this module owns: the tools (the contract's eight, `spawn_agent`,
//! `list_agents`, `get_agent_status`, `stop_agents`, `read_logs`, `wait_agent`,
//! `get_process_summary`, `report_progress`, and `spawn_agents`, `list_runs`,
//! `read_events`, `restart_agents`, `kill_agent`, `pause_agents`, `team_budget`),
//! their input and output
//! schemas, their text renderings, and the mapping of the daemon's errors to
//! tool errors. It owns nothing about processes: like every other command it is
//! a client of the daemon's HTTP API (a typed method of
//! [`corral_api::Client`] per route), and it starts a daemon the same way
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
//!   rmcp's `#[tool]` macros, and every schema is written here, small on
//!   purpose: a host puts the whole `tools/list` answer into a model's context
//!   on every turn, so it is kept within 16 KiB all told (a unit test checks
//!   it). Descriptions are short and say units; output schemas name
//!   the key fields of each answer with their types and allow the rest
//!   (`additionalProperties`), instead of repeating the API's whole status
//!   schema; `spawn_agent`'s input schema names every field of the API's spawn
//!   request in a line each (nested objects by their keys) and hands them to the
//!   proto type's own deserialiser, which checks them and names what is wrong.
//!   Unit tests keep the schemas honest: every input schema's properties are
//!   its params type's fields (or the API's spawn request's), and the wire
//!   types' JSON satisfies each output schema.
//! - Tool inputs are small serde structs here; they are converted to the proto
//!   types through serde, so the proto crate stays the one authority on
//!   defaults and on unknown fields.
//! - Answers meant to be read on by a model carry a cursor: `read_logs` with
//!   `offset` returns `next_offset`, `read_events` returns `next_since`, and
//!   both are bounded (64 KiB of log text; at most `limit` events), so a model
//!   pages instead of re-reading. The daemon's logs route has no offset: the
//!   tool reads the run's log from its start and skips `offset` bytes, which
//!   costs a read of what is skipped (fine for logs of megabytes; for logs of
//!   gigabytes, rotate them with `logs.max_mb`).
//! - `wait_agent` waits on one id (its status, as the contract has it) or on a
//!   selector (`PREFIX.*`), for the first of the running agents to end or for
//!   all of them: one wait per running agent, concurrently, each the daemon's
//!   own wait (so an agent with a restart policy has ended once it will not be
//!   restarted).
//! - Every outcome of a tool call is a tool result, never a crash of the
//!   server: an answer is `structuredContent` plus a text rendering; an error
//!   (bad arguments, no daemon, an API error) is `isError: true` with the
//!   daemon's message, which the model can read and act on. Only an unknown
//!   tool name is a JSON-RPC error, as the specification asks.
//! - Stdout is the protocol, so nothing here prints: diagnostics go to stderr
//!   through `tracing` (filter in `CORRAL_LOG`, default `warn`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use corral_api::ClientError;
use corral_api::client::{EventStream, LogStream};
use corral_core::{
    AgentId, AgentState, AgentStatus, BatchRequest, BatchResponse, BatchResult, CleanupOptions,
    Event, EventsQuery, KillRequest, KillResponse, ListQuery, LogsQuery, PauseRequest,
    PersistentStatus, ProcessSummary, ProgressUpdate, RunInfo, Selector, SpawnRequest,
    SpawnResponse, StopManyRequest, StopReport, WaitQuery,
};
use futures_util::StreamExt as _;
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
use crate::output::{self, Style, Table};

/// Most bytes of one log stream `read_logs` returns; older text is cut (or,
/// reading from an offset, newer text is left for the next call). Hosts pass
/// tool results into a model's context, where a megabyte of log is noise.
const MAX_LOG_BYTES: usize = 64 * 1024;
/// Most bytes of events (as JSON) one `read_events` answer holds.
const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Most events one `read_events` call reads past, matching or not, before it
/// answers with what it has (and `more`).
const MAX_EVENTS_SCANNED: usize = 20_000;
/// `read_events`' default and largest `limit`.
const DEFAULT_EVENTS: usize = 100;
const MAX_EVENTS: usize = 1000;
/// Most agents one `spawn_agents` call starts.
const MAX_BATCH: usize = 500;
/// How often `wait_agent` tells a host that asked for progress that it is still waiting.
const WAIT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Most of a selector's agents `wait_agent` waits on at once.
const WAIT_CONCURRENCY: usize = 32;
/// How often `wait_agent` looks at the listing, waiting for the first of more
/// than [`WAIT_CONCURRENCY`] agents.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What the server tells the model about itself in the `initialize` answer.
const INSTRUCTIONS: &str = "corral supervises long-running processes (\"agents\"): it starts them, \
proves they started, reports their health, CPU, memory and progress, stops each one together with \
every process it started, and remembers all of it. Typical use: spawn_agent (or spawn_agents for a \
team with ids PREFIX.1..N), then get_agent_status or list_agents (with `fields` for a short answer), \
read_events with the cursor it returns, and read_logs (with `offset` to read on) to watch; then \
wait_agent (an id, or a selector PREFIX.* with mode first or all) for agents that should finish, or \
stop_agents for those that should not. Agents keep running after this server exits: stop what you \
started when you no longer need it.";

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
    SpawnMany,
    List,
    Status,
    Runs,
    Logs,
    Events,
    Wait,
    Stop,
    Restart,
    Kill,
    Summary,
    Progress,
    Pause,
    Team,
}

impl ToolName {
    const ALL: [Self; 15] = [
        Self::Spawn,
        Self::SpawnMany,
        Self::List,
        Self::Status,
        Self::Runs,
        Self::Logs,
        Self::Events,
        Self::Wait,
        Self::Stop,
        Self::Restart,
        Self::Kill,
        Self::Summary,
        Self::Progress,
        Self::Pause,
        Self::Team,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Spawn => "spawn_agent",
            Self::SpawnMany => "spawn_agents",
            Self::List => "list_agents",
            Self::Status => "get_agent_status",
            Self::Runs => "list_runs",
            Self::Logs => "read_logs",
            Self::Events => "read_events",
            Self::Wait => "wait_agent",
            Self::Stop => "stop_agents",
            Self::Restart => "restart_agents",
            Self::Kill => "kill_agent",
            Self::Summary => "get_process_summary",
            Self::Progress => "report_progress",
            Self::Pause => "pause_agents",
            Self::Team => "team_budget",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    fn title(self) -> &'static str {
        match self {
            Self::Spawn => "Spawn an agent",
            Self::SpawnMany => "Spawn agents",
            Self::List => "List agents",
            Self::Status => "Agent status",
            Self::Runs => "An agent's runs",
            Self::Logs => "Read an agent's logs",
            Self::Events => "Read events",
            Self::Wait => "Wait for agents to end",
            Self::Stop => "Stop agents",
            Self::Restart => "Restart agents",
            Self::Kill => "Kill an agent",
            Self::Summary => "Fleet summary",
            Self::Progress => "Report progress",
            Self::Pause => "Pause or resume agents",
            Self::Team => "Team budget",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::Spawn => {
                "Start a long-running process (an agent) and prove it started. `command` is an \
                 argv, no shell; output goes to log files (read_logs); it outlives this server. \
                 Failing to start, or exiting non-zero within verify_ms, is a tool error with the \
                 reason and stderr tail. A running id is refused; an ended one starts a new run."
            }
            Self::SpawnMany => {
                "Spawn a team in one call: `agents` (spawn_agent arguments), or `count` agents \
                 PREFIX.1..PREFIX.count from one `request` (no agent_id; each finds its id in \
                 $CORRAL_AGENT_ID). One result each, in order."
            }
            Self::List => {
                "List agents (the latest run of each id), optionally only a `selector`, a \
                 `state` and/or a `node`. Each entry has get_agent_status's fields, or only `fields`."
            }
            Self::Status => {
                "One agent's status: state, health, pid, exit, end_reason, cpu_percent (of one \
                 CPU), memory_mb (MiB; `tree`: whole tree), progress, run, times, log paths."
            }
            Self::Runs => "Every run of an agent, oldest first: pid, times, status, exit, reason.",
            Self::Logs => {
                "Read an agent's output (the current run unless `run`): the last `tail` lines \
                 (default 100) of `stream`, or with `offset` (bytes into one stream) the text \
                 from there and `next_offset` to read on. At most 64 KiB a stream; no waiting."
            }
            Self::Events => {
                "Events after the cursor `since` (0: from the start), oldest first: states, \
                 progress, stops, restarts, limits, probes, budgets. At most `limit`; pass \
                 `next_since` next time. Does not wait."
            }
            Self::Wait => {
                "Wait until agents have ended (and will not be restarted). `agent_id`: returns \
                 its final status. `selector`: mode `all` (every agent) or `first`; returns \
                 `ended` and `pending` ids. After `timeout_s`: a tool error; agents keep running."
            }
            Self::Stop => {
                "Stop agents with their whole process trees (and agents below them): SIGTERM, \
                 wait, SIGTERM, wait, SIGKILL (waits 10, 5, 5 s by default), or SIGKILL at once \
                 with `force`. Exactly one of agent_id, selector, all. One report each."
            }
            Self::Restart => {
                "Restart agents: the staged stop of each that runs, then a new run of the request \
                 it was spawned with. Exactly one of agent_id, selector, all. One result each."
            }
            Self::Kill => {
                "End one agent and its tree: the staged stop, or SIGKILL at once with `force`. \
                 Returns whether this call ended it, and the stop report."
            }
            Self::Summary => {
                "Counts over all agents (latest run of each): total, by persistent_status, by \
                 state (`states`), zombies; MiB and CPU percent summed over live agents."
            }
            Self::Progress => {
                "Record an agent's progress (0-100) and a short message; statuses show it and a \
                 progress_stale_s liveness probe counts it. agent_id defaults to \
                 $CORRAL_AGENT_ID when this server runs as an agent. Returns the status."
            }
            Self::Pause => {
                "Freeze agents' whole trees (state paused; their clocks stop), or thaw them with \
                 `resume`. Exactly one of agent_id, selector, all. One report each."
            }
            Self::Team => {
                "Read, or set (replacing), the budgets of `team` (that id and all below). Over \
                 memory_mb (MiB) or pids: its largest agent is stopped; max_agents: spawns \
                 refused. Returns budget and usage."
            }
        }
    }

    fn input_schema(self) -> Value {
        let id = json!({"type": "string"});
        let selector =
            json!({"type": "string", "description": "ID, or PREFIX.* (PREFIX and all below)."});
        let timeouts = json!({"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3,
            "description": "This call's stop waits, s (after TERM, TERM, KILL)."});
        let target = |what: &str| {
            json!({
                "agent_id": id,
                "selector": selector,
                "all": {"type": "boolean", "description": format!("{what} every agent.")},
                "force": {"type": "boolean", "description": "SIGKILL at once."},
                "stop_timeouts": timeouts,
            })
        };
        let (props, required) = match self {
            Self::Spawn => (spawn_properties(), &["agent_id", "command"][..]),
            Self::SpawnMany => (
                json!({
                    "agents": {"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH,
                        "description": "spawn_agent arguments, one per agent."},
                    "count": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH},
                    "prefix": {"type": "string", "description": "Ids are PREFIX.1..PREFIX.count."},
                    "request": {"type": "object", "description": "spawn_agent arguments without agent_id."},
                }),
                &[][..],
            ),
            Self::List => (
                json!({
                    "selector": selector,
                    "state": {"enum": ["spawning", "running", "completed", "failed", "cancelled", "live"],
                        "description": "persistent_status; live: spawning or running."},
                    "fields": {"type": "array", "items": {"type": "string"},
                        "description": "Only these status fields, e.g. [\"state\",\"progress\"]."},
                    "node": {"type": ["string", "array"], "items": {"type": "string"},
                        "description": "Only agents on these Slurm nodes."},
                }),
                &[][..],
            ),
            Self::Status | Self::Runs => (json!({"agent_id": id}), &["agent_id"][..]),
            Self::Logs => (
                json!({
                    "agent_id": id,
                    "stream": {"enum": ["stdout", "stderr", "both"]},
                    "tail": {"type": "integer", "minimum": 0, "description": "Lines. Default 100."},
                    "run": {"type": "integer", "minimum": 1},
                    "offset": {"type": "integer", "minimum": 0, "description": "Byte offset; use next_offset."},
                }),
                &["agent_id"][..],
            ),
            Self::Events => (
                json!({
                    "since": {"type": "integer", "minimum": 0, "description": "Cursor: a seq, or 0."},
                    "selector": selector,
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_EVENTS, "description": "Default 100."},
                }),
                &[][..],
            ),
            Self::Wait => (
                json!({
                    "agent_id": id,
                    "selector": selector,
                    "mode": {"enum": ["all", "first"], "description": "With selector. Default all."},
                    "timeout_s": {"type": "number", "minimum": 0, "maximum": 3600, "description": "Default 30."},
                }),
                &[][..],
            ),
            Self::Stop => (target("Stop"), &[][..]),
            Self::Restart => (target("Restart"), &[][..]),
            Self::Kill => (
                json!({"agent_id": id, "force": {"type": "boolean", "description": "SIGKILL at once."}}),
                &["agent_id"][..],
            ),
            Self::Summary => (json!({}), &[][..]),
            Self::Pause => (
                json!({
                    "agent_id": id,
                    "selector": selector,
                    "all": {"type": "boolean", "description": "Every agent."},
                    "resume": {"type": "boolean", "description": "Thaw instead."},
                }),
                &[][..],
            ),
            Self::Progress => (
                json!({
                    "agent_id": {"type": "string", "description": "Default: $CORRAL_AGENT_ID."},
                    "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                    "message": {"type": "string", "description": "A few words (at most 1 KiB)."},
                }),
                &["progress"][..],
            ),
            Self::Team => (
                json!({"team": id, "memory_mb": {"type": "number"}, "cpu_percent": {"type": "number"},
                    "pids": {"type": "integer"}, "max_agents": {"type": "integer"}}),
                &["team"][..],
            ),
        };
        object_schema(props, required, true)
    }

    fn output_schema(self) -> Value {
        let list = |field: &str, item: Value| {
            object_schema(
                json!({field: {"type": "array", "items": item}, "count": {"type": "integer"}}),
                &[field, "count"],
                false,
            )
        };
        match self {
            Self::Spawn => spawn_response_schema(),
            Self::SpawnMany | Self::Restart => outcomes_schema(),
            Self::List => list(
                "agents",
                object_schema(
                    json!({"agent_id": {"type": "string"}}),
                    &["agent_id"],
                    false,
                ),
            ),
            Self::Status => status_schema(),
            // The status comes back whole; the schema names what a report changed.
            Self::Progress => object_schema(
                json!({"agent_id": {"type": "string"}, "progress": {"type": ["integer", "null"]}}),
                &["agent_id"],
                false,
            ),
            Self::Runs => {
                let mut schema = list("runs", run_schema());
                schema["properties"]["agent_id"] = json!({"type": "string"});
                schema
            }
            Self::Logs => object_schema(
                json!({
                    "agent_id": {"type": "string"},
                    "run": {"type": "integer"},
                    "stdout": {"type": "string"},
                    "stderr": {"type": "string"},
                    "truncated": {"type": "boolean", "description": "Older text was cut."},
                    "offset": {"type": "integer"},
                    "next_offset": {"type": "integer", "description": "Where to read on."},
                    "more": {"type": "boolean", "description": "More text is there now."},
                    "reset": {"type": "boolean", "description": "offset was past the end (rotated): read from 0."},
                }),
                &["agent_id", "run", "truncated"],
                false,
            ),
            Self::Events => object_schema(
                json!({
                    "events": {"type": "array", "items": object_schema(json!({
                        "seq": {"type": "integer"}, "at": {"type": "string"},
                        "agent_id": {"type": "string"}, "run": {"type": "integer"},
                        "kind": {"type": "string"},
                    }), &["seq", "agent_id", "run", "kind"], false)},
                    "count": {"type": "integer"},
                    "next_since": {"type": "integer"},
                    "more": {"type": "boolean"},
                }),
                &["events", "count", "next_since", "more"],
                false,
            ),
            Self::Wait => {
                // One id: its status. A selector: ended and pending.
                let mut schema = status_schema();
                if let Some(fields) = schema.as_object_mut() {
                    fields.remove("required");
                }
                schema["properties"]["ended"] = json!({"type": "array", "items": run_schema()});
                schema["properties"]["pending"] =
                    json!({"type": "array", "items": {"type": "string"}});
                schema
            }
            Self::Stop => list("reports", stop_report_schema()),
            Self::Pause => list(
                "reports",
                object_schema(
                    json!({
                        "agent_id": {"type": "string"},
                        "outcome": {"type": "string"},
                        "state": {"type": "string"},
                    }),
                    &["agent_id", "outcome", "state"],
                    false,
                ),
            ),
            Self::Kill => object_schema(
                json!({
                    "agent_id": {"type": "string"},
                    "killed": {"type": "boolean", "description": "This call ended it."},
                    "report": stop_report_schema(),
                }),
                &["agent_id", "killed", "report"],
                false,
            ),
            Self::Summary => {
                let mut props = Map::new();
                for n in [
                    "total",
                    "spawning",
                    "running",
                    "completed",
                    "failed",
                    "cancelled",
                    "zombie",
                ] {
                    props.insert(n.into(), json!({"type": "integer"}));
                }
                for n in ["total_memory_mb", "total_cpu_percent"] {
                    props.insert(n.into(), json!({"type": "number"}));
                }
                props.insert("states".into(), json!({"type": "object"}));
                object_schema(Value::Object(props), &["total", "running"], false)
            }
            Self::Team => object_schema(
                json!({"team": {"type": "string"}, "budget": {"type": "object"}, "usage": {"type": "object"}}),
                &["team", "budget", "usage"],
                false,
            ),
        }
    }

    fn annotations(self) -> ToolAnnotations {
        let base = ToolAnnotations::default();
        match self {
            Self::List
            | Self::Status
            | Self::Runs
            | Self::Logs
            | Self::Events
            | Self::Wait
            | Self::Summary => base.read_only(true),
            Self::Spawn | Self::SpawnMany => base.read_only(false).destructive(false),
            Self::Stop | Self::Kill => base.read_only(false).destructive(true).idempotent(true),
            Self::Restart => base.read_only(false).destructive(true),
            Self::Progress | Self::Pause | Self::Team => {
                base.read_only(false).destructive(false).idempotent(true)
            }
        }
    }

    fn tool(self) -> Tool {
        let mut tool = Tool::new(
            self.name(),
            self.description(),
            Arc::new(object(self.input_schema())),
        );
        tool.title = Some(self.title().to_owned());
        tool.output_schema = Some(Arc::new(object(self.output_schema())));
        tool.annotations = Some(self.annotations());
        tool
    }
}

/// Every tool, as `tools/list` answers.
fn tools() -> Vec<Tool> {
    ToolName::ALL.into_iter().map(ToolName::tool).collect()
}

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

/// `{"type": "object", "properties", "required"}`; `closed` allows no other
/// properties (an input), otherwise others may come (an answer's other fields:
/// JSON Schema's default, left implicit to keep `tools/list` small).
fn object_schema(props: Value, required: &[&str], closed: bool) -> Value {
    let mut schema = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    if closed {
        schema["additionalProperties"] = json!(false);
    }
    schema
}

/// `spawn_agent`'s arguments: every field of the API's spawn request, in a
/// line each; nested objects by their keys (the API checks them).
fn spawn_properties() -> Value {
    let obj = |d: &str| json!({"type": "object", "description": d});
    let map = |d: &str| json!({"type": "object", "additionalProperties": {"type": "string"}, "description": d});
    json!({
        "agent_id": {"type": "string", "description": "1-128 of A-Za-z0-9._- ; dots nest (team.w1 is under team)."},
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "argv, no shell."},
        "cwd": {"type": "string", "description": "Default: this server's; relative to it."},
        "env": map("Added to the environment."),
        "inherit_env": {"type": "boolean", "description": "Start from the daemon's environment (default true)."},
        "agent_dir": {"type": "string", "description": "Log directory."},
        "labels": map("Free-form."),
        "stop_timeouts": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3,
            "description": "Stop waits, s (after TERM, TERM, KILL); default [10,5,5]."},
        "verify_ms": {"type": "integer", "minimum": 0, "description": "Verification window, ms; default 100."},
        "restart": obj("{policy: never|on-failure|always, max_restarts: 5, window_s: 60, backoff_s: [1,60]}"),
        "max_runtime_s": {"type": "number", "description": "Stop a run older than this (it ends failed)."},
        "limits": obj("Whole tree: {memory_mb, pids, nofile, cpu_percent}"),
        "probes": obj("{liveness, readiness: {exec: argv}|{http: url}|{tcp: host:port}|{progress_stale_s}|{log: regex}; interval_s: 10, timeout_s: 2, failures: 3}"),
        "user": {"type": "string", "description": "Run as (daemon as root)."},
        "logs": obj("Rotation: {max_mb, keep: 3}"),
        "placement": obj("{slurm: {partition, nodes, cpus, mem_mb, time_limit, requeue}}"),
    })
}

/// A status: its key fields (the others come too).
fn status_schema() -> Value {
    let int_or_null = json!({"type": ["integer", "null"]});
    object_schema(
        json!({
            "agent_id": {"type": "string"},
            "run": {"type": "integer"},
            "pid": int_or_null,
            "state": {"enum": ["starting", "running", "stopping", "paused", "backoff", "ended"]},
            "persistent_status": {"type": "string"},
            "health": {"type": "string"},
            "exit_code": int_or_null,
            "progress": int_or_null,
        }),
        &["agent_id", "run", "state", "persistent_status"],
        false,
    )
}

/// A run (of `list_runs`) or how an ended agent ended (of `wait_agent`).
fn run_schema() -> Value {
    object_schema(
        json!({
            "agent_id": {"type": "string"},
            "run": {"type": "integer"},
            "persistent_status": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
            "end_reason": {"type": ["string", "null"]},
        }),
        &["run", "persistent_status"],
        false,
    )
}

/// `spawn_agent`'s answer.
fn spawn_response_schema() -> Value {
    object_schema(
        json!({
            "agent_id": {"type": "string"},
            "run": {"type": "integer"},
            "pid": {"type": ["integer", "null"]},
            "status": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "stdout_log": {"type": "string"},
            "stderr_log": {"type": "string"},
        }),
        &["agent_id", "run", "status"],
        false,
    )
}

/// One result per agent of a batch (`spawn_agents`, `restart_agents`).
fn outcomes_schema() -> Value {
    object_schema(
        json!({
            "results": {"type": "array", "items": object_schema(json!({
                "agent_id": {"type": "string"},
                "started": {"type": "boolean"},
                "run": {"type": "integer"},
                "pid": {"type": "integer"},
                "status": {"type": "string"},
                "error": {"type": "string"},
            }), &["agent_id", "started"], false)},
            "started": {"type": "integer"},
            "failed": {"type": "integer"},
        }),
        &["results", "started", "failed"],
        false,
    )
}

/// What one agent's stop did.
fn stop_report_schema() -> Value {
    object_schema(
        json!({
            "agent_id": {"type": "string"},
            "stage": {"enum": ["already_ended", "term", "second_term", "kill", "unkillable"]},
            "persistent_status": {"type": "string"},
            "exit_code": {"type": ["integer", "null"]},
        }),
        &["agent_id", "stage", "persistent_status"],
        false,
    )
}

/// The object inside a JSON value (an empty object for anything else).
fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

// ---------------------------------------------------------------------------
// The calls
// ---------------------------------------------------------------------------

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
            ToolName::SpawnMany => self.spawn_many(parse_args(tool, args)?).await,
            ToolName::List => self.list(parse_args(tool, args)?).await,
            ToolName::Status => self.status(parse_args(tool, args)?).await,
            ToolName::Runs => self.runs(parse_args(tool, args)?).await,
            ToolName::Logs => self.logs(parse_args(tool, args)?).await,
            ToolName::Events => self.events(parse_args(tool, args)?).await,
            ToolName::Wait => self.wait(parse_args(tool, args)?, context).await,
            ToolName::Stop => self.stop(parse_args(tool, args)?).await,
            ToolName::Restart => self.restart(parse_args(tool, args)?).await,
            ToolName::Kill => self.kill(parse_args(tool, args)?).await,
            ToolName::Summary => {
                let NoParams {} = parse_args(tool, args)?;
                self.summary().await
            }
            ToolName::Progress => self.progress(parse_args(tool, args)?).await,
            ToolName::Pause => self.pause(parse_args(tool, args)?).await,
            ToolName::Team => self.team(parse_args(tool, args)?).await,
        }
    }

    async fn spawn(&self, params: SpawnParams) -> Result<CallToolResult> {
        let request = params.into_request(self.cwd.as_deref())?;
        let resp = self.ctx.client().await?.spawn(&request).await?;
        let started = started_ok(&resp);
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

    async fn spawn_many(&self, params: SpawnManyParams) -> Result<CallToolResult> {
        let agents = params
            .into_requests()?
            .into_iter()
            .map(|p| p.into_request(self.cwd.as_deref()))
            .collect::<Result<Vec<_>>>()?;
        let answer = self
            .ctx
            .client()
            .await?
            .spawn_batch(&BatchRequest { agents })
            .await?;
        outcomes_result(&answer, "started")
    }

    async fn list(&self, params: ListParams) -> Result<CallToolResult> {
        if let Some(raw) = params.selector.as_deref() {
            Selector::parse(raw).context("invalid selector")?;
        }
        let client = self.ctx.client().await?;
        let filtered = params.selector.is_some() || params.state.is_some() || params.node.is_some();
        let nothing = if filtered {
            "no agents match"
        } else {
            "no agents"
        };
        // The daemon picks the agents by id; the state filter here is on the
        // stored status (and `live`), which the daemon's `state` is not.
        let keep = |s: &Value| {
            params.state.is_none_or(|st| {
                serde_json::from_value::<PersistentStatus>(s["persistent_status"].clone())
                    .is_ok_and(|p| st.matches(p))
            })
        };
        let mut query = ListQuery {
            selector: params.selector.clone(),
            node: params.node.as_ref().map(Nodes::query),
            ..Default::default()
        };
        let Some(fields) = params.fields.as_ref() else {
            let picked: Vec<AgentStatus> = client
                .list(&query)
                .await?
                .into_values()
                .filter(|s| {
                    params
                        .state
                        .is_none_or(|st| st.matches(s.persistent_status))
                })
                .collect();
            let text = if picked.is_empty() {
                nothing.to_owned()
            } else {
                super::agents::ps_table(&picked.iter().collect::<Vec<_>>()).render(Style::plain())
            };
            let answer = json!({"count": picked.len(), "agents": picked});
            return structured(&answer, |_| text, false);
        };
        // A short answer: the daemon writes only these fields (and
        // persistent_status, when the state filter needs it).
        let mut asked: Vec<&str> = fields.iter().map(String::as_str).collect();
        let add_status = params.state.is_some() && !asked.contains(&"persistent_status");
        if add_status {
            asked.push("persistent_status");
        }
        query.fields = Some(asked.join(","));
        let mut picked: Vec<Map<String, Value>> = client
            .list_agent_fields(&query)
            .await?
            .into_values()
            .filter(|m| keep(&Value::Object(m.clone())))
            .collect();
        if add_status {
            picked.iter_mut().for_each(|m| {
                m.remove("persistent_status");
            });
        }
        let text = if picked.is_empty() {
            nothing.to_owned()
        } else {
            picked.iter().map(field_line).collect()
        };
        let answer = json!({"count": picked.len(), "agents": picked});
        structured(&answer, |_| text, false)
    }

    async fn team(&self, params: TeamParams) -> Result<CallToolResult> {
        let id = checked_id(&params.team)?;
        let budget = corral_core::TeamBudget {
            memory_mb: params.memory_mb,
            cpu_percent: params.cpu_percent,
            pids: params.pids,
            max_agents: params.max_agents,
        };
        let client = self.ctx.client().await?;
        let team = if budget.is_empty() {
            client.team(&id).await?
        } else {
            client.set_team(&id, &budget).await?
        };
        let text = super::team::show_text(&team);
        structured(&team, |_| text, false)
    }

    async fn status(&self, params: AgentParams) -> Result<CallToolResult> {
        let id = checked_id(&params.agent_id)?;
        let s = self.ctx.client().await?.status(&id).await?;
        let head = format!("{}: {}, {}", s.agent_id, s.state, s.health);
        structured(&s, |v| with_fields(head, v), false)
    }

    async fn runs(&self, params: AgentParams) -> Result<CallToolResult> {
        let id = checked_id(&params.agent_id)?;
        let runs = self.ctx.client().await?.runs(&id).await?;
        let text = runs_table(&runs);
        let answer = json!({"agent_id": id, "count": runs.len(), "runs": runs});
        structured(&answer, |_| text, false)
    }

    async fn stop(&self, params: TargetParams) -> Result<CallToolResult> {
        let client = self.ctx.client().await?;
        let opts = params.cleanup();
        let reports: Vec<StopReport> = match params.target("stop")? {
            Target::One(id) => vec![client.stop(&id, &opts).await?],
            Target::Many(req) => client.stop_many(&req).await?,
        };
        let text = stop_table(&reports);
        let answer = json!({"count": reports.len(), "reports": reports});
        structured(&answer, |_| text, false)
    }

    async fn restart(&self, params: TargetParams) -> Result<CallToolResult> {
        let client = self.ctx.client().await?;
        let opts = params.cleanup();
        let answer = match params.target("restart")? {
            Target::One(id) => BatchResponse {
                results: vec![BatchResult::Spawned(client.restart(&id, &opts).await?)],
            },
            Target::Many(req) => client.restart_many(&req).await?,
        };
        outcomes_result(&answer, "restarted")
    }

    async fn pause(&self, params: PauseParams) -> Result<CallToolResult> {
        let req = match (&params.agent_id, &params.selector, params.all) {
            (Some(id), None, false) => PauseRequest {
                agent_id: Some(checked_id(id)?),
                ..PauseRequest::default()
            },
            (None, Some(raw), false) => {
                Selector::parse(raw).context("invalid selector")?;
                PauseRequest {
                    selector: Some(raw.clone()),
                    ..PauseRequest::default()
                }
            }
            (None, None, true) => PauseRequest {
                all: true,
                ..PauseRequest::default()
            },
            _ => bail!(
                "say which agents to {} with exactly one of agent_id, selector (PREFIX.*) or all: true",
                if params.resume { "resume" } else { "pause" }
            ),
        };
        let client = self.ctx.client().await?;
        let reports = if params.resume {
            client.resume(&req).await?
        } else {
            client.pause(&req).await?
        };
        let text = if reports.is_empty() {
            "no agents matched\n".to_owned()
        } else {
            reports
                .iter()
                .map(|r| super::pause::line(r) + "\n")
                .collect()
        };
        let answer = json!({"count": reports.len(), "reports": reports});
        structured(&answer, |_| text, false)
    }

    async fn kill(&self, params: KillParams) -> Result<CallToolResult> {
        let id = checked_id(&params.agent_id)?;
        let req = KillRequest {
            force: params.force,
        };
        let answer: KillResponse = self.ctx.client().await?.kill(&id, &req).await?;
        let head = if answer.killed {
            format!("{id} killed")
        } else {
            format!("{id} had already ended")
        };
        let text = format!(
            "{head}\n{}",
            stop_table(std::slice::from_ref(&answer.report))
        );
        structured(&answer, |_| text, false)
    }

    async fn logs(&self, params: LogsParams) -> Result<CallToolResult> {
        let id = checked_id(&params.agent_id)?;
        let streams = params.streams()?;
        let client = self.ctx.client().await?;
        // Every stream comes from one run even if a restart starts another meanwhile.
        let run = match params.run {
            Some(run) => run,
            None => client.status(&id).await?.run,
        };
        let mut answer = LogsOutput {
            agent_id: id.clone(),
            run,
            stdout: None,
            stderr: None,
            truncated: false,
            offset: None,
            next_offset: None,
            more: None,
            reset: false,
        };
        let open = |tail: Option<u32>, stream: &str| {
            let query = LogsQuery {
                stream: Some(stream.to_owned()),
                tail: tail.map(|t| t as usize),
                follow: None,
                run: Some(run),
            };
            let client = client.clone();
            let id = id.clone();
            async move { client.logs(&id, &query).await }
        };
        for stream in streams {
            let text = match params.offset {
                None => {
                    let log = open(Some(params.tail.unwrap_or(100)), stream).await?;
                    let (text, cut) = read_end(log, MAX_LOG_BYTES).await?;
                    answer.truncated |= cut;
                    text
                }
                Some(offset) => {
                    let mut page = read_from(open(None, stream).await?, offset).await?;
                    if page.short {
                        // The log is shorter than the offset: it was rotated
                        // (copied and truncated) since. Its text now is new.
                        page = read_from(open(None, stream).await?, 0).await?;
                        answer.reset = true;
                    }
                    answer.offset = Some(page.offset);
                    answer.next_offset = Some(page.next_offset);
                    answer.more = Some(page.more);
                    page.text
                }
            };
            match *stream {
                "stdout" => answer.stdout = Some(text),
                _ => answer.stderr = Some(text),
            }
        }
        let text = render_logs(&answer);
        structured(&answer, |_| text, false)
    }

    async fn events(&self, params: EventsParams) -> Result<CallToolResult> {
        let selector = params
            .selector
            .as_deref()
            .map(Selector::parse)
            .transpose()
            .context("invalid selector")?;
        let since = params.since.unwrap_or(0);
        if since < 0 {
            bail!("since must be 0 or the seq of an event (next_since of the last call)");
        }
        let limit = params.limit.unwrap_or(DEFAULT_EVENTS);
        if !(1..=MAX_EVENTS).contains(&limit) {
            bail!("limit must be 1-{MAX_EVENTS}; got {limit}");
        }
        let query = EventsQuery {
            since: Some(since),
            follow: Some(false),
        };
        let stream = self.ctx.client().await?.events(&query).await?;
        let page = read_events(stream, EventPage::new(since, limit, selector)).await?;
        let text = render_events(&page);
        let answer = json!({
            "events": page.events,
            "count": page.events.len(),
            "next_since": page.next_since,
            "more": page.more,
        });
        structured(&answer, |_| text, false)
    }

    async fn wait(
        &self,
        params: WaitParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult> {
        let timeout_s = params.timeout_s;
        if !(timeout_s.is_finite() && (0.0..=3600.0).contains(&timeout_s)) {
            bail!("timeout_s must be 0-3600 seconds; got {timeout_s}");
        }
        match (&params.agent_id, &params.selector) {
            (Some(id), None) => self.wait_one(id, timeout_s, context).await,
            (None, Some(raw)) => {
                let mode = params.mode.unwrap_or_default();
                self.wait_many(raw, mode, timeout_s, context).await
            }
            _ => bail!("say what to wait for with exactly one of agent_id or selector (PREFIX.*)"),
        }
    }

    async fn wait_one(
        &self,
        id: &str,
        timeout_s: f64,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult> {
        let id = checked_id(id)?;
        let client = self.ctx.client().await?;
        let query = WaitQuery {
            timeout_s: Some(timeout_s),
        };
        let s = with_progress(client.wait(&id, &query), context, &id, timeout_s).await??;
        let head = format!(
            "{} ended: {} ({})",
            s.agent_id,
            s.persistent_status,
            how_ended(s.exit_code, s.exit_signal, s.end_reason.as_deref())
        );
        structured(&s, |v| with_fields(head, v), false)
    }

    /// Waits on the agents a selector picks: every one that runs, concurrently.
    async fn wait_many(
        &self,
        raw: &str,
        mode: WaitMode,
        timeout_s: f64,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult> {
        Selector::parse(raw).context("invalid selector")?;
        let client = self.ctx.client().await?;
        let query = ListQuery {
            selector: Some(raw.to_owned()),
            fields: Some(
                "run,state,persistent_status,exit_code,exit_signal,end_reason,ended_at".into(),
            ),
            ..Default::default()
        };
        let picked = client.list(&query).await?;
        if picked.is_empty() {
            bail!("no agent matches {raw}");
        }
        let running: Vec<String> = picked
            .values()
            .filter(|s| s.state != AgentState::Ended)
            .map(|s| s.agent_id.clone())
            .collect();
        let need = match mode {
            WaitMode::All => running.len(),
            WaitMode::First => running.len().min(1),
        };
        // A few waits at a time: each holds one of the daemon's connections
        // for as long as it waits, and the daemon serves others too (agents
        // reporting progress). Each asks for the time left, so a wait begun
        // late still ends at the deadline (at once, when its agent has ended).
        let deadline = Instant::now() + Duration::from_secs_f64(timeout_s);
        let mut waits = futures_util::stream::iter(running.clone())
            .map(|id| {
                let client = client.clone();
                async move {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let query = WaitQuery {
                        timeout_s: Some(left.as_secs_f64()),
                    };
                    let answer = client.wait(&id, &query).await;
                    (id, answer)
                }
            })
            .buffer_unordered(WAIT_CONCURRENCY);
        // Waiting for the first of more agents than are waited on at once,
        // the listing is looked at too, for one of the others.
        let look = mode == WaitMode::First && running.len() > WAIT_CONCURRENCY;
        let mut looks = tokio::time::interval(LOOK_EVERY);
        let mut ended: BTreeMap<String, AgentStatus> = BTreeMap::new();
        let mut gone: BTreeSet<String> = BTreeSet::new();
        let collect = async {
            while ended.len() < need {
                tokio::select! {
                    next = waits.next() => match next {
                        Some((id, Ok(s))) => {
                            ended.insert(id, s);
                        }
                        // Forgotten meanwhile (removed): no longer there to wait for.
                        Some((id, Err(e))) if e.code() == Some("not_found") => {
                            gone.insert(id);
                        }
                        // The waits share one deadline: the others end with it.
                        Some((_, Err(e))) if e.code() == Some("timeout") => return Ok(false),
                        Some((_, Err(e))) => return Err(e),
                        None => break,
                    },
                    _ = looks.tick(), if look => {
                        let now = client.list(&query).await?;
                        for id in &running {
                            if let Some(s) = now.get(id).filter(|s| s.state == AgentState::Ended) {
                                ended.insert(id.clone(), s.clone());
                            }
                        }
                    }
                }
            }
            Ok::<_, ClientError>(true)
        };
        let what = format!("{} running agents of {raw}", running.len());
        let done = with_progress(collect, context, &what, timeout_s).await??;
        drop(waits);
        // What the others are now, for the answer: the agents picked at the
        // start (one spawned since is not waited for), as they are now.
        let now = client.list(&query).await?;
        let mut outcome = WaitOutcome::default();
        for id in picked.keys().filter(|id| !gone.contains(*id)) {
            match ended.remove(id).or_else(|| now.get(id).cloned()) {
                Some(s) if s.state == AgentState::Ended => outcome.ended.push(Ended::of(&s)),
                Some(_) => outcome.pending.push(id.clone()),
                None => {}
            }
        }
        let text = render_wait(raw, mode, &outcome, done, timeout_s);
        structured(&outcome, |_| text, !done)
    }

    async fn summary(&self) -> Result<CallToolResult> {
        let s: ProcessSummary = self.ctx.client().await?.summary().await?;
        let head = format!("{} agents, {} running", s.total, s.running);
        structured(&s, |v| with_fields(head, v), false)
    }

    async fn progress(&self, params: ProgressParams) -> Result<CallToolResult> {
        let id = match params
            .agent_id
            .or_else(|| std::env::var("CORRAL_AGENT_ID").ok())
        {
            Some(id) => checked_id(&id)?,
            None => bail!(
                "say which agent the progress is for: agent_id (this server does not run as a corral agent, so there is no default)"
            ),
        };
        let body = ProgressUpdate {
            progress: params.progress,
            message: params.message,
        };
        let s = self.ctx.client().await?.progress(&id, &body).await?;
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

/// `fut`, telling a host that sent a progress token what it waits for at once
/// (once the agents to wait for are known), then how long it has been waiting
/// every few seconds (some hosts extend their request timeout on each progress
/// notification); an error when the host cancels the request.
async fn with_progress<T>(
    fut: impl std::future::Future<Output = T>,
    context: &RequestContext<RoleServer>,
    what: &str,
    timeout_s: f64,
) -> Result<T> {
    tokio::pin!(fut);
    let token = context.meta.get_progress_token();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(WAIT_PROGRESS_EVERY);
    loop {
        tokio::select! {
            answer = &mut fut => return Ok(answer),
            () = context.ct.cancelled() => bail!("the wait for {what} was cancelled"),
            _ = ticks.tick(), if token.is_some() => {
                if let Some(token) = token.clone() {
                    let waited = started.elapsed().as_secs_f64();
                    let note = ProgressNotificationParam::new(token, waited)
                        .with_total(timeout_s)
                        .with_message(format!("waiting for {what}: {waited:.0} s of {timeout_s} s"));
                    if let Err(e) = context.peer.notify_progress(note).await {
                        tracing::debug!(error = %e, "progress notification not sent");
                    }
                }
            }
        }
    }
}

/// A spawn that started: running, or already completed with code 0.
fn started_ok(resp: &SpawnResponse) -> bool {
    matches!(
        resp.status,
        PersistentStatus::Running | PersistentStatus::Completed
    ) && resp.exit_code.unwrap_or(0) == 0
}

/// A batch's answer (`spawn_agents`, `restart_agents`) as one short result
/// per agent; an error only when none started.
fn outcomes_result(answer: &BatchResponse, done: &str) -> Result<CallToolResult> {
    let results: Vec<Outcome> = answer.results.iter().map(Outcome::of).collect();
    let started = results.iter().filter(|o| o.started).count();
    let failed = results.len() - started;
    let mut text = format!("{started} {done}, {failed} failed\n");
    for o in &results {
        let line = match (&o.error, o.started) {
            (Some(e), _) => format!("{}  failed: {e}", o.agent_id),
            (None, _) => format!(
                "{}  {} (run {}, pid {})",
                o.agent_id,
                o.status.map_or("-", PersistentStatus::as_str),
                opt(o.run),
                opt(o.pid)
            ),
        };
        text.push_str(&line);
        text.push('\n');
    }
    let answer = json!({"results": results, "started": started, "failed": failed});
    structured(&answer, |_| text, started == 0 && failed > 0)
}

/// One agent of a batch.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    agent_id: String,
    started: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<PersistentStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Outcome {
    fn of(result: &BatchResult) -> Self {
        match result {
            BatchResult::Spawned(s) => {
                let started = started_ok(s);
                Self {
                    agent_id: s.agent_id.clone(),
                    started,
                    run: Some(s.run),
                    pid: s.pid,
                    status: Some(s.status),
                    error: (!started).then(|| {
                        s.error
                            .clone()
                            .unwrap_or_else(|| "it ended during the verification window".into())
                    }),
                }
            }
            BatchResult::Failed(f) => Self {
                agent_id: f.agent_id.clone(),
                started: false,
                run: None,
                pid: None,
                status: None,
                error: Some(format!(
                    "{} (error code: {})",
                    f.error.message, f.error.code
                )),
            },
        }
    }
}

/// `wait_agent`'s answer for a selector.
#[derive(Debug, Clone, Default, Serialize)]
struct WaitOutcome {
    /// The agents picked that have ended, each how.
    ended: Vec<Ended>,
    /// The agents picked that still run.
    pending: Vec<String>,
}

/// How an agent's run ended.
#[derive(Debug, Clone, Serialize)]
struct Ended {
    agent_id: String,
    run: u32,
    persistent_status: PersistentStatus,
    exit_code: Option<i32>,
    exit_signal: Option<i32>,
    end_reason: Option<String>,
    ended_at: Option<String>,
}

impl Ended {
    fn of(s: &AgentStatus) -> Self {
        Self {
            agent_id: s.agent_id.clone(),
            run: s.run,
            persistent_status: s.persistent_status,
            exit_code: s.exit_code,
            exit_signal: s.exit_signal,
            end_reason: s.end_reason.clone(),
            ended_at: s.ended_at.clone(),
        }
    }
}

// ---------------------------------------------------------------------------
// Reading logs and events
// ---------------------------------------------------------------------------

/// The end of a log: its last `max` bytes (cut at a line), and whether older
/// text was cut. Never holds much more than `max` bytes, however long the log.
async fn read_end(mut log: LogStream, max: usize) -> Result<(String, bool)> {
    let mut bytes = Vec::new();
    let mut cut = false;
    while let Some(chunk) = log.next_chunk().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() > 2 * max {
            bytes.drain(..bytes.len() - max - 1);
            cut = true;
        }
    }
    let (text, cut_here) = keep_end(&String::from_utf8_lossy(&bytes), max);
    Ok((text, cut || cut_here))
}

/// A page of a log read from a byte offset.
#[derive(Debug, Clone, PartialEq)]
struct LogPage {
    offset: u64,
    text: String,
    next_offset: u64,
    /// More text is there after `next_offset`.
    more: bool,
    /// The log is shorter than `offset`.
    short: bool,
}

/// Reads a log from its start, skipping `offset` bytes, up to [`MAX_LOG_BYTES`] after them.
async fn read_from(mut log: LogStream, offset: u64) -> Result<LogPage> {
    let mut reader = OffsetReader::new(offset, MAX_LOG_BYTES);
    while let Some(chunk) = log.next_chunk().await {
        if !reader.push(&chunk?) {
            break;
        }
    }
    // Dropping the stream ends the connection: the daemon stops reading.
    Ok(reader.finish())
}

/// Skips `offset` bytes, keeps up to `max` after them (and one byte more, to
/// know whether there is more).
struct OffsetReader {
    offset: u64,
    skip: u64,
    max: usize,
    kept: Vec<u8>,
}

impl OffsetReader {
    fn new(offset: u64, max: usize) -> Self {
        Self {
            offset,
            skip: offset,
            max,
            kept: Vec::new(),
        }
    }

    /// Takes the next piece; false once enough is kept.
    fn push(&mut self, mut chunk: &[u8]) -> bool {
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            chunk = &chunk[n..];
            self.skip -= n as u64;
        }
        self.kept.extend_from_slice(chunk);
        self.kept.len() <= self.max
    }

    /// The page: all that was kept when it fits, otherwise up to the last
    /// line end within `max` (or the last whole character, for a longer line).
    fn finish(self) -> LogPage {
        let more = self.kept.len() > self.max;
        let end = if more {
            let window = &self.kept[..self.max];
            match window.iter().rposition(|b| *b == b'\n') {
                Some(nl) => nl + 1,
                None => match std::str::from_utf8(window) {
                    Ok(_) => self.max,
                    Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                    Err(_) => self.max,
                },
            }
        } else {
            self.kept.len()
        };
        LogPage {
            offset: self.offset,
            text: String::from_utf8_lossy(&self.kept[..end]).into_owned(),
            next_offset: self.offset + end as u64,
            more,
            short: self.skip > 0,
        }
    }
}

/// The events of one `read_events` answer, gathered one at a time.
struct EventPage {
    selector: Option<Selector>,
    limit: usize,
    events: Vec<Value>,
    bytes: usize,
    scanned: usize,
    next_since: i64,
    more: bool,
}

impl EventPage {
    fn new(since: i64, limit: usize, selector: Option<Selector>) -> Self {
        Self {
            selector,
            limit,
            events: Vec::new(),
            bytes: 0,
            scanned: 0,
            next_since: since,
            more: false,
        }
    }

    /// Takes the next event; false once the page is full (`more` then says
    /// an event was left for the next page).
    fn offer(&mut self, ev: &Event) -> bool {
        let picked = self
            .selector
            .as_ref()
            .is_none_or(|s| AgentId::new(&ev.agent_id).is_ok_and(|id| s.matches(&id)));
        if !picked {
            self.next_since = ev.seq;
            self.scanned += 1;
            self.more = self.scanned >= MAX_EVENTS_SCANNED;
            return !self.more;
        }
        let value = serde_json::to_value(ev).unwrap_or(Value::Null);
        let size = value.to_string().len();
        let full = self.events.len() >= self.limit
            || (!self.events.is_empty() && self.bytes + size > MAX_EVENT_BYTES);
        if full {
            self.more = true;
            return false;
        }
        self.bytes += size;
        self.events.push(value);
        self.next_since = ev.seq;
        self.scanned += 1;
        self.more = self.scanned >= MAX_EVENTS_SCANNED;
        !self.more
    }
}

async fn read_events(mut stream: EventStream, mut page: EventPage) -> Result<EventPage> {
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                if !page.offer(&ev) {
                    break;
                }
            }
            // One event this build cannot read; the cursor moves past it with the next.
            Err(ClientError::Decode(e)) => tracing::warn!(error = %e, "an event left out"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(page)
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// `spawn_agent`'s arguments (and each of `spawn_agents`'): the API's spawn
/// request, with paths that may be relative to this server's working
/// directory. The fields this type does not name go to the API's request as
/// they are; its deserialiser checks them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpawnParams {
    agent_id: String,
    command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_dir: Option<String>,
    #[serde(flatten)]
    rest: Map<String, Value>,
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
        let id = self.agent_id.clone();
        let mut value = serde_json::to_value(&self).context("encode the spawn request")?;
        if let Value::Object(fields) = &mut value {
            for (key, path) in [("cwd", cwd), ("agent_dir", agent_dir)] {
                match path {
                    Some(p) => fields.insert(key.into(), Value::String(p.display().to_string())),
                    None => fields.remove(key),
                };
            }
        }
        serde_json::from_value(value)
            .with_context(|| format!("invalid spawn request for {}", corral_core::elide(&id, 130)))
    }
}

/// `spawn_agents`' arguments: a list of requests, or a count of one.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SpawnManyParams {
    #[serde(default)]
    agents: Option<Vec<Value>>,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    request: Option<Map<String, Value>>,
}

impl SpawnManyParams {
    /// Each agent's arguments, checked (an error names the entry).
    fn into_requests(self) -> Result<Vec<SpawnParams>> {
        let entries: Vec<Value> = match (self.agents, self.count, self.prefix, self.request) {
            (Some(agents), None, None, None) => agents,
            (None, Some(count), Some(prefix), Some(request)) => {
                if !(1..=MAX_BATCH).contains(&count) {
                    bail!("count must be 1-{MAX_BATCH}; got {count}");
                }
                AgentId::new(&prefix).context("invalid prefix")?;
                if request.contains_key("agent_id") {
                    bail!(
                        "request must not have an agent_id: the ids are {prefix}.1..{prefix}.{count}"
                    );
                }
                (1..=count)
                    .map(|i| {
                        let mut one = request.clone();
                        one.insert("agent_id".into(), Value::String(format!("{prefix}.{i}")));
                        Value::Object(one)
                    })
                    .collect()
            }
            _ => bail!(
                "give either agents (a list of spawn_agent arguments) or count, prefix and request"
            ),
        };
        if entries.is_empty() || entries.len() > MAX_BATCH {
            bail!("a batch has 1-{MAX_BATCH} agents; got {}", entries.len());
        }
        entries
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value(v).map_err(|e| {
                    anyhow!(
                        "invalid arguments for spawn_agents: agents[{i}]: {}",
                        corral_core::elide(&e.to_string(), 300)
                    )
                })
            })
            .collect()
    }
}

/// `list_agents`' arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    state: Option<StateFilter>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    /// Cluster nodes: `"n2"` or `["n1", "n3"]`.
    #[serde(default)]
    node: Option<Nodes>,
}

/// One node name, or several.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Nodes {
    One(String),
    Many(Vec<String>),
}

impl Nodes {
    /// The listing's `node` parameter: names, comma-separated.
    fn query(&self) -> String {
        match self {
            Self::One(n) => n.clone(),
            Self::Many(ns) => ns.join(","),
        }
    }
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
    agent_id: String,
}

/// `stop_agents`' and `restart_agents`' arguments: which agents, and how to stop them.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TargetParams {
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    selector: Option<String>,
    /// Must be given explicitly: there is no accidental mass stop.
    #[serde(default)]
    all: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    stop_timeouts: Option<[f64; 3]>,
}

/// One agent, or a request for many.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    One(String),
    Many(StopManyRequest),
}

impl TargetParams {
    fn cleanup(&self) -> CleanupOptions {
        CleanupOptions {
            force: self.force,
            stop_timeouts: self.stop_timeouts.map(|t| t.to_vec()),
        }
    }

    fn target(&self, verb: &str) -> Result<Target> {
        match (&self.agent_id, &self.selector, self.all) {
            (Some(id), None, false) => Ok(Target::One(checked_id(id)?)),
            (None, selector @ Some(_), false) | (None, selector @ None, true) => {
                Ok(Target::Many(StopManyRequest {
                    all: self.all,
                    selector: selector.clone(),
                    force: self.force,
                    stop_timeouts: self.stop_timeouts.map(|t| t.to_vec()),
                    live_only: false,
                }))
            }
            _ => bail!(
                "say which agents to {verb} with exactly one of agent_id, selector (PREFIX.*) or all: true"
            ),
        }
    }
}

/// `pause_agents`' arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PauseParams {
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    resume: bool,
}

/// `team_budget`'s arguments: no budget given reads them.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TeamParams {
    team: String,
    memory_mb: Option<f64>,
    cpu_percent: Option<f64>,
    pids: Option<u64>,
    max_agents: Option<u32>,
}

/// `kill_agent`'s arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KillParams {
    agent_id: String,
    #[serde(default)]
    force: bool,
}

/// `read_logs`' arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LogsParams {
    agent_id: String,
    /// Default: both, or stdout with an offset.
    #[serde(default)]
    stream: Option<StreamChoice>,
    /// Default 100 (without an offset).
    #[serde(default)]
    tail: Option<u32>,
    #[serde(default)]
    run: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
}

impl LogsParams {
    /// The streams to read: an offset is into one stream.
    fn streams(&self) -> Result<&'static [&'static str]> {
        match (self.offset, self.stream) {
            (None, stream) => Ok(stream.unwrap_or(StreamChoice::Both).streams()),
            (Some(_), _) if self.tail.is_some() => {
                bail!("give tail (the last lines) or offset (read from a byte), not both")
            }
            (Some(_), None | Some(StreamChoice::Stdout)) => Ok(StreamChoice::Stdout.streams()),
            (Some(_), Some(StreamChoice::Stderr)) => Ok(StreamChoice::Stderr.streams()),
            (Some(_), Some(StreamChoice::Both)) => {
                bail!("an offset is into one stream: say stream stdout or stderr")
            }
        }
    }
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

/// `read_events`' arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EventsParams {
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `wait_agent`'s arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    mode: Option<WaitMode>,
    #[serde(default = "default_wait_s")]
    timeout_s: f64,
}

fn default_wait_s() -> f64 {
    30.0
}

/// For a selector: until every agent picked has ended, or the first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum WaitMode {
    #[default]
    All,
    First,
}

/// `report_progress`' arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProgressParams {
    #[serde(default)]
    agent_id: Option<String>,
    progress: i64,
    #[serde(default)]
    message: Option<String>,
}

/// No arguments.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// `read_logs`' answer.
#[derive(Debug, Clone, Serialize)]
struct LogsOutput {
    agent_id: String,
    /// The run the text comes from.
    run: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    /// Older text of a stream was cut to keep the answer small.
    truncated: bool,
    /// Where the text starts, reading from an offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// Where to read on, reading from an offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<u64>,
    /// More text is there after `next_offset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    more: Option<bool>,
    /// The offset was past the log's end (it was rotated): the text is from 0.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    reset: bool,
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
fn checked_id(id: &str) -> Result<String> {
    Ok(AgentId::new(id)?.to_string())
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
/// fractions to two decimals; objects and arrays as compact JSON.
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

/// `exit code N`, `signal N`, or the reason.
fn how_ended(code: Option<i32>, signal: Option<i32>, reason: Option<&str>) -> String {
    match (code, signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => reason.unwrap_or("no exit status").to_owned(),
    }
}

/// One agent of a short listing: its id, then `field=value` for each field.
fn field_line(fields: &Map<String, Value>) -> String {
    let id = fields.get("agent_id").map(scalar).unwrap_or_default();
    let rest: Vec<String> = fields
        .iter()
        .filter(|(k, _)| *k != "agent_id")
        .map(|(k, v)| match v {
            Value::Null => format!("{k}=-"),
            v => format!("{k}={}", scalar(v)),
        })
        .collect();
    format!("{id}  {}\n", rest.join(" "))
}

/// The stop reports as a table.
fn stop_table(reports: &[StopReport]) -> String {
    if reports.is_empty() {
        return "no agents matched\n".into();
    }
    super::stop::reports_table(reports).render(Style::plain())
}

/// An agent's runs as a table.
fn runs_table(runs: &[RunInfo]) -> String {
    let mut t = Table::new(vec![
        "RUN", "PID", "STARTED", "ENDED", "STATUS", "EXIT", "REASON",
    ]);
    for r in runs {
        t.push(vec![
            r.run.to_string().into(),
            opt(r.pid).into(),
            r.started_at.as_str().into(),
            r.ended_at.clone().unwrap_or_else(|| "-".into()).into(),
            r.persistent_status.as_str().into(),
            super::agents::exit_words(r.exit_code, r.exit_signal).into(),
            r.end_reason.clone().unwrap_or_else(|| "-".into()).into(),
        ]);
    }
    t.render(Style::plain())
}

/// The logs with a header per stream.
fn render_logs(logs: &LogsOutput) -> String {
    let mut text = format!("{} run {}", logs.agent_id, logs.run);
    if logs.truncated {
        text.push_str(" (older output cut)");
    }
    if let (Some(from), Some(to)) = (logs.offset, logs.next_offset) {
        text.push_str(&format!(", bytes {from}-{to}"));
        if logs.reset {
            text.push_str(" (the log was rotated: read from 0)");
        }
        if logs.more == Some(true) {
            text.push_str(&format!(", more: read on from offset {to}"));
        }
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

/// Events, a line each, and the cursor.
fn render_events(page: &EventPage) -> String {
    let mut text = format!(
        "{} events; next_since {}{}\n",
        page.events.len(),
        page.next_since,
        if page.more { " (more)" } else { "" }
    );
    for v in &page.events {
        if let Ok(ev) = serde_json::from_value::<Event>(v.clone()) {
            text.push_str(&format!("{}  {}\n", ev.seq, super::agents::event_line(&ev)));
        }
    }
    text
}

/// A selector's wait: who ended how, who is still running.
fn render_wait(raw: &str, mode: WaitMode, o: &WaitOutcome, done: bool, timeout_s: f64) -> String {
    let total = o.ended.len() + o.pending.len();
    let mut text = if done {
        match mode {
            WaitMode::All => format!("{raw}: all {total} ended\n"),
            WaitMode::First => format!("{raw}: {} of {total} ended\n", o.ended.len()),
        }
    } else {
        format!(
            "timeout: after {timeout_s} s, {} of {total} agents of {raw} are still running (they keep running)\n",
            o.pending.len()
        )
    };
    for e in &o.ended {
        text.push_str(&format!(
            "{}  {} ({})\n",
            e.agent_id,
            e.persistent_status,
            how_ended(e.exit_code, e.exit_signal, e.end_reason.as_deref())
        ));
    }
    if !o.pending.is_empty() {
        text.push_str(&format!("pending: {}\n", o.pending.join(", ")));
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
    use corral_core::{EventBody, ProgressEvent, StopStage};

    /// The most bytes the `tools/list` answer may take, serialized.
    const TOOLS_LIST_BUDGET: usize = 16 * 1024;

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn strings(v: &Value) -> BTreeSet<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A small JSON Schema check, for the keywords these schemas use: type,
    /// enum, properties, required, additionalProperties (false), items,
    /// minItems, maxItems. Returns what does not conform.
    fn violations(schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                other => other
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap())
                    .collect(),
            };
            let ok = types.iter().any(|t| match *t {
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                "object" => v.is_object(),
                "array" => v.is_array(),
                other => panic!("{at}: a type this check does not know: {other}"),
            });
            if !ok {
                out.push(format!("{at}: {v} is not {t}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(v)
        {
            out.push(format!("{at}: {v} is not one of {allowed:?}"));
        }
        if let Value::Object(fields) = v {
            let props = schema.get("properties").and_then(Value::as_object);
            for r in strings(schema.get("required").unwrap_or(&Value::Null)) {
                if !fields.contains_key(&r) {
                    out.push(format!("{at}: {r} is required"));
                }
            }
            for (k, fv) in fields {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => violations(s, fv, &format!("{at}.{k}"), out),
                    None if schema.get("additionalProperties") == Some(&json!(false)) => {
                        out.push(format!("{at}: {k} is not allowed"));
                    }
                    None => {}
                }
            }
        }
        if let Value::Array(items) = v {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                out.push(format!("{at}: fewer than {min} items"));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                out.push(format!("{at}: more than {max} items"));
            }
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    violations(s, item, &format!("{at}[{i}]"), out);
                }
            }
        }
    }

    fn assert_conforms(tool: ToolName, value: &impl Serialize) {
        let v = serde_json::to_value(value).unwrap();
        let mut out = Vec::new();
        violations(&tool.output_schema(), &v, tool.name(), &mut out);
        assert!(out.is_empty(), "{out:#?}\n{v:#}");
    }

    /// Every schema keyword in use; no object without its properties, no
    /// required name that is not a property.
    fn check_schema_shape(schema: &Value, at: &str) {
        const KNOWN: [&str; 11] = [
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "enum",
            "description",
            "minimum",
            "maximum",
            "minItems",
            "maxItems",
        ];
        let Value::Object(map) = schema else {
            panic!("{at}: not an object")
        };
        for k in map.keys() {
            assert!(KNOWN.contains(&k.as_str()), "{at}: keyword {k}");
        }
        if let Some(props) = map.get("properties") {
            for (k, s) in props.as_object().unwrap() {
                check_schema_shape(s, &format!("{at}.{k}"));
            }
            for r in strings(map.get("required").unwrap_or(&Value::Null)) {
                assert!(props.get(&r).is_some(), "{at}: required {r} is no property");
            }
        }
        if let Some(items) = map.get("items") {
            check_schema_shape(items, &format!("{at}[]"));
        }
        if let Some(Value::Object(_)) = map.get("additionalProperties") {
            check_schema_shape(&map["additionalProperties"], &format!("{at}{{}}"));
        }
    }

    #[test]
    fn lists_the_tools_with_object_schemas() {
        let tools = tools();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "spawn_agent",
                "spawn_agents",
                "list_agents",
                "get_agent_status",
                "list_runs",
                "read_logs",
                "read_events",
                "wait_agent",
                "stop_agents",
                "restart_agents",
                "kill_agent",
                "get_process_summary",
                "report_progress",
                "pause_agents",
                "team_budget"
            ]
        );
        for t in &tools {
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            let out = t.output_schema.as_ref().unwrap();
            assert_eq!(out["type"], "object", "{}", t.name);
            assert!(t.description.as_ref().unwrap().len() > 60, "{}", t.name);
            assert_eq!(ToolName::parse(&t.name).map(ToolName::name), Some(&*t.name));
            check_schema_shape(&Value::Object((*t.input_schema).clone()), &t.name);
            check_schema_shape(&Value::Object((**out).clone()), &t.name);
        }
        assert_eq!(ToolName::parse("rm_rf"), None);
    }

    #[test]
    fn tools_list_fits_the_budget() {
        let answer = ListToolsResult::with_all_items(tools());
        let total = serde_json::to_string(&answer).unwrap().len();
        let size = |o: &JsonObject| serde_json::to_string(o).unwrap().len();
        for t in tools() {
            println!(
                "{:<20} {:>5} bytes (input schema {}, output schema {}, description {})",
                t.name,
                serde_json::to_string(&t).unwrap().len(),
                size(&t.input_schema),
                size(t.output_schema.as_ref().unwrap()),
                t.description.as_ref().unwrap().len(),
            );
        }
        println!("tools/list: {total} bytes of {TOOLS_LIST_BUDGET}");
        assert!(
            total <= TOOLS_LIST_BUDGET,
            "tools/list takes {total} bytes, over {TOOLS_LIST_BUDGET}"
        );
    }

    #[test]
    fn input_schemas_name_the_params_fields() {
        fn fields<T: JsonSchema>() -> (BTreeSet<String>, BTreeSet<String>) {
            let s = serde_json::to_value(schemars::schema_for!(T)).unwrap();
            (keys(&s["properties"]), strings(&s["required"]))
        }
        for tool in ToolName::ALL {
            let ours = tool.input_schema();
            let theirs = match tool {
                ToolName::Spawn => {
                    let api = &crate_openapi()["components"]["schemas"]["SpawnRequest"];
                    (keys(&api["properties"]), strings(&api["required"]))
                }
                ToolName::SpawnMany => fields::<SpawnManyParams>(),
                ToolName::List => fields::<ListParams>(),
                ToolName::Status | ToolName::Runs => fields::<AgentParams>(),
                ToolName::Logs => fields::<LogsParams>(),
                ToolName::Events => fields::<EventsParams>(),
                ToolName::Wait => fields::<WaitParams>(),
                ToolName::Stop | ToolName::Restart => fields::<TargetParams>(),
                ToolName::Kill => fields::<KillParams>(),
                ToolName::Summary => fields::<NoParams>(),
                ToolName::Progress => fields::<ProgressParams>(),
                ToolName::Pause => fields::<PauseParams>(),
                ToolName::Team => fields::<TeamParams>(),
            };
            let required = strings(&ours["required"]);
            assert_eq!(
                (keys(&ours["properties"]), required),
                theirs,
                "{}",
                tool.name()
            );
        }
    }

    fn crate_openapi() -> Value {
        serde_json::from_str(corral_api::openapi_json()).unwrap()
    }

    #[test]
    fn spawn_schema_mentions_every_nested_field_of_the_api_request() {
        let doc = crate_openapi();
        let components = &doc["components"]["schemas"];
        let props = spawn_properties();
        for (field, component) in [
            ("restart", "RestartPolicy"),
            ("limits", "Limits"),
            ("probes", "Probes"),
            ("logs", "LogRotation"),
            ("placement", "Placement"),
            ("placement", "SlurmPlacement"),
        ] {
            let words = props[field]["description"].as_str().unwrap();
            for key in keys(&components[component]["properties"]) {
                assert!(words.contains(&key), "{field}: {key} is not mentioned");
            }
        }
    }

    #[test]
    fn output_schemas_accept_the_wire_types() {
        let mut s = AgentStatus::blank("team.w1");
        s.pid = Some(42);
        s.run = 2;
        s.exit_code = Some(0);
        s.progress = Some(40);
        s.end_reason = Some("exited".into());
        for tool in [ToolName::Status, ToolName::Progress, ToolName::Wait] {
            assert_conforms(tool, &s);
        }
        assert_conforms(
            ToolName::List,
            &json!({"agents": [s.clone(), {"agent_id": "x", "state": "running"}], "count": 2}),
        );
        let spawned = SpawnResponse {
            agent_id: "a".into(),
            run: 1,
            pid: Some(7),
            status: PersistentStatus::Running,
            started_at: "2026-01-01T00:00:00Z".into(),
            stdout_log: "/l/stdout.log".into(),
            stderr_log: "/l/stderr.log".into(),
            exit_code: None,
            exit_signal: None,
            error: None,
            placement: None,
        };
        assert_conforms(ToolName::Spawn, &spawned);
        let mut failed = spawned.clone();
        failed.status = PersistentStatus::Failed;
        failed.exit_code = Some(3);
        failed.error = Some("boom".into());
        let batch = BatchResponse {
            results: vec![
                BatchResult::Spawned(spawned.clone()),
                BatchResult::Spawned(failed),
                BatchResult::Failed(corral_core::BatchFailure {
                    agent_id: "b".into(),
                    error: corral_core::ErrorDetail {
                        code: "conflict".into(),
                        message: "b is running".into(),
                    },
                }),
            ],
        };
        let r = outcomes_result(&batch, "started").unwrap();
        assert_eq!(r.is_error, Some(false));
        assert_eq!(r.structured_content.as_ref().unwrap()["started"], 1);
        assert_eq!(r.structured_content.as_ref().unwrap()["failed"], 2);
        assert_conforms(ToolName::SpawnMany, r.structured_content.as_ref().unwrap());
        assert_conforms(ToolName::Restart, r.structured_content.as_ref().unwrap());
        let report = StopReport {
            agent_id: "a".into(),
            pid: Some(7),
            stage: StopStage::Term,
            duration_ms: 12.5,
            exit_code: None,
            exit_signal: Some(15),
            descendants_killed: Some(0),
            persistent_status: PersistentStatus::Cancelled,
            complete: Some(true),
            incomplete_reason: None,
        };
        assert_conforms(
            ToolName::Stop,
            &json!({"reports": [report.clone()], "count": 1}),
        );
        assert_conforms(
            ToolName::Kill,
            &KillResponse {
                agent_id: "a".into(),
                killed: true,
                report,
            },
        );
        let run = RunInfo {
            run: 1,
            pid: None,
            started_at: "t".into(),
            ended_at: Some("t".into()),
            persistent_status: PersistentStatus::Failed,
            exit_code: None,
            exit_signal: Some(9),
            end_reason: None,
            stdout_log: "/o".into(),
            stderr_log: "/e".into(),
        };
        assert_conforms(
            ToolName::Runs,
            &json!({"agent_id": "a", "runs": [run], "count": 1}),
        );
        assert_conforms(ToolName::Summary, &ProcessSummary::default());
        let mut page = EventPage::new(0, 10, None);
        assert!(page.offer(&event(5, "a", 40)));
        assert_conforms(
            ToolName::Events,
            &json!({"events": page.events, "count": 1, "next_since": 5, "more": false}),
        );
        let outcome = WaitOutcome {
            ended: vec![Ended::of(&s)],
            pending: vec!["team.w2".into()],
        };
        assert_conforms(ToolName::Wait, &outcome);
        let logs = LogsOutput {
            agent_id: "a".into(),
            run: 1,
            stdout: Some("hi\n".into()),
            stderr: None,
            truncated: false,
            offset: Some(0),
            next_offset: Some(3),
            more: Some(false),
            reset: true,
        };
        assert_conforms(ToolName::Logs, &logs);

        // The check itself catches a mismatch.
        let mut out = Vec::new();
        violations(
            &ToolName::Status.output_schema(),
            &json!({"agent_id": 1}),
            "x",
            &mut out,
        );
        assert!(out.len() >= 4, "{out:?}");
    }

    fn event(seq: i64, agent: &str, progress: u8) -> Event {
        Event {
            seq,
            at: "2026-01-01T00:00:00Z".into(),
            agent_id: agent.into(),
            run: 1,
            body: EventBody::Progress(ProgressEvent {
                progress,
                message: None,
            }),
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
            "user": "nobody", "logs": {"max_mb": 10}, "inherit_env": false
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
        assert_eq!(req.inherit_env, Some(false));
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

        // What the API's request does not know is refused, naming it.
        for (bad, word) in [
            (
                json!({"agent_id": "a", "command": ["x"], "bogus": 1}),
                "bogus",
            ),
            (
                json!({"agent_id": "a", "command": ["x"], "restart": {"policy": "sometimes"}}),
                "sometimes",
            ),
            (
                json!({"agent_id": "a", "command": ["x"], "limits": {"memroy_mb": 1}}),
                "memroy_mb",
            ),
        ] {
            let p: SpawnParams = parse_args(ToolName::Spawn, bad).unwrap();
            let e = format!("{:#}", p.into_request(None).unwrap_err());
            assert!(
                e.contains("invalid spawn request for a") && e.contains(word),
                "{e}"
            );
        }
    }

    #[test]
    fn a_batch_is_a_list_or_a_count_of_one_request() {
        let many: SpawnManyParams = parse_args(
            ToolName::SpawnMany,
            json!({"agents": [{"agent_id": "x", "command": ["true"]}, {"agent_id": "y", "command": ["false"]}]}),
        )
        .unwrap();
        let ids: Vec<String> = many
            .into_requests()
            .unwrap()
            .into_iter()
            .map(|p| p.agent_id)
            .collect();
        assert_eq!(ids, ["x", "y"]);

        let count: SpawnManyParams = parse_args(
            ToolName::SpawnMany,
            json!({"count": 3, "prefix": "team", "request": {"command": ["sleep", "9"], "verify_ms": 0}}),
        )
        .unwrap();
        let reqs = count.into_requests().unwrap();
        let ids: Vec<&str> = reqs.iter().map(|p| p.agent_id.as_str()).collect();
        assert_eq!(ids, ["team.1", "team.2", "team.3"]);
        let req = reqs[2].clone().into_request(None).unwrap();
        assert_eq!((req.command.len(), req.verify_ms), (2, Some(0)));

        for (bad, says) in [
            (json!({}), "either agents"),
            (
                json!({"agents": [], "count": 1, "prefix": "t", "request": {}}),
                "either agents",
            ),
            (json!({"count": 2, "prefix": "t"}), "either agents"),
            (
                json!({"count": 0, "prefix": "t", "request": {"command": ["x"]}}),
                "count must be 1-500",
            ),
            (
                json!({"count": 501, "prefix": "t", "request": {"command": ["x"]}}),
                "count must be 1-500",
            ),
            (
                json!({"count": 2, "prefix": "../t", "request": {"command": ["x"]}}),
                "invalid prefix",
            ),
            (
                json!({"count": 2, "prefix": "t", "request": {"agent_id": "z", "command": ["x"]}}),
                "must not have an agent_id",
            ),
            (json!({"agents": []}), "1-500 agents"),
            (
                json!({"agents": [{"agent_id": "x", "command": ["true"]}, {"agent_id": "y"}]}),
                "agents[1]: missing field `command`",
            ),
        ] {
            let p: SpawnManyParams = parse_args(ToolName::SpawnMany, bad.clone()).unwrap();
            let e = format!("{:#}", p.into_requests().unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_arguments_are_errors_naming_the_problem() {
        let e = parse_args::<SpawnParams>(ToolName::Spawn, json!({"agent_id": "a"})).unwrap_err();
        assert!(e.to_string().contains("missing field `command`"), "{e}");
        let e = parse_args::<TargetParams>(ToolName::Stop, json!({"agnet_id": "a"})).unwrap_err();
        assert!(e.to_string().contains("unknown field `agnet_id`"), "{e}");
        let e = parse_args::<LogsParams>(ToolName::Logs, json!({"agent_id": "a", "stream": "x"}))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("invalid arguments for read_logs"),
            "{e}"
        );
        let e = parse_args::<WaitParams>(ToolName::Wait, json!({"selector": "t.*", "mode": "any"}))
            .unwrap_err();
        assert!(e.to_string().contains("unknown variant `any`"), "{e}");
        assert!(checked_id("../etc").is_err());
    }

    #[test]
    fn log_arguments_pick_the_streams() {
        let p = |v: Value| parse_args::<LogsParams>(ToolName::Logs, v).unwrap();
        let both = p(json!({"agent_id": "a"}));
        assert_eq!(
            (both.stream, both.tail, both.run, both.offset),
            (None, None, None, None)
        );
        assert_eq!(both.streams().unwrap(), ["stdout", "stderr"]);
        assert_eq!(
            p(json!({"agent_id": "a", "offset": 10})).streams().unwrap(),
            ["stdout"]
        );
        assert_eq!(
            p(json!({"agent_id": "a", "offset": 0, "stream": "stderr", "run": 2}))
                .streams()
                .unwrap(),
            ["stderr"]
        );
        let e = p(json!({"agent_id": "a", "offset": 0, "stream": "both"}))
            .streams()
            .unwrap_err();
        assert!(e.to_string().contains("one stream"), "{e}");
        let e = p(json!({"agent_id": "a", "offset": 0, "tail": 5}))
            .streams()
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
        assert!(
            parse_args::<LogsParams>(ToolName::Logs, json!({"agent_id": "a", "offset": -1}))
                .is_err()
        );
    }

    #[test]
    fn reading_from_an_offset_skips_and_stops_at_a_line() {
        let read = |chunks: &[&[u8]], offset: u64, max: usize| {
            let mut r = OffsetReader::new(offset, max);
            for c in chunks {
                if !r.push(c) {
                    break;
                }
            }
            r.finish()
        };
        // Everything after the offset, across chunks.
        let page = read(&[b"abc\nde", b"f\ngh"], 2, 100);
        assert_eq!(page.text, "c\ndef\ngh");
        assert_eq!(
            (page.offset, page.next_offset, page.more, page.short),
            (2, 10, false, false)
        );
        // At the end: nothing, and nothing more.
        let page = read(&[b"abc\n"], 4, 100);
        assert_eq!(
            (page.text.as_str(), page.next_offset, page.more, page.short),
            ("", 4, false, false)
        );
        // Past the end: the log is shorter (rotated).
        assert!(read(&[b"abc\n"], 9, 100).short);
        // Over the limit: up to the last line end within it.
        let page = read(&[b"one\ntwo\nthree\n"], 0, 10);
        assert_eq!(
            (page.text.as_str(), page.next_offset, page.more),
            ("one\ntwo\n", 8, true)
        );
        // A line longer than the limit: cut at a whole character.
        let page = read(&["aéé".as_bytes()], 0, 4);
        assert_eq!(
            (page.text.as_str(), page.next_offset, page.more),
            ("aé", 3, true)
        );
        // Reading on from next_offset gives the rest, nothing twice.
        let log = "one\ntwo\nthree\n".as_bytes();
        let mut at = 0;
        let mut all = String::new();
        loop {
            let page = read(&[log], at, 6);
            all.push_str(&page.text);
            at = page.next_offset;
            if !page.more {
                break;
            }
        }
        assert_eq!(all, "one\ntwo\nthree\n");
    }

    #[test]
    fn event_pages_have_a_cursor_and_a_bound() {
        let mut page = EventPage::new(3, 2, None);
        assert!(page.offer(&event(4, "a", 1)));
        assert!(page.offer(&event(5, "b", 2)));
        // Full: the third is left for the next page.
        assert!(!page.offer(&event(6, "a", 3)));
        assert_eq!(
            (page.events.len(), page.next_since, page.more),
            (2, 5, true)
        );

        let picked = Selector::parse("team.*").unwrap();
        let mut page = EventPage::new(0, 10, Some(picked));
        for (seq, id) in [(1, "team.1"), (2, "other"), (3, "team"), (4, "teams.1")] {
            assert!(page.offer(&event(seq, id, 5)));
        }
        let ids: Vec<&str> = page
            .events
            .iter()
            .map(|e| e["agent_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["team.1", "team"]);
        // The cursor moves past what was left out too.
        assert_eq!((page.next_since, page.more), (4, false));
        assert_eq!(page.events[0]["kind"], "progress");

        // However few match, a call reads a bounded number of events.
        let mut page = EventPage::new(0, 10, Some(Selector::parse("none").unwrap()));
        let mut n = 0;
        while page.offer(&event(n + 1, "a", 0)) {
            n += 1;
        }
        assert_eq!(n as usize + 1, MAX_EVENTS_SCANNED);
        assert!(page.more && page.events.is_empty());
        assert_eq!(page.next_since, MAX_EVENTS_SCANNED as i64);
    }

    #[test]
    fn wait_and_target_arguments() {
        let w: WaitParams = parse_args(
            ToolName::Wait,
            json!({"selector": "team.*", "mode": "first"}),
        )
        .unwrap();
        assert_eq!((w.mode, w.timeout_s), (Some(WaitMode::First), 30.0));
        let w: WaitParams = parse_args(ToolName::Wait, json!({"agent_id": "a"})).unwrap();
        assert_eq!(
            (w.mode.unwrap_or_default(), w.agent_id.as_deref()),
            (WaitMode::All, Some("a"))
        );

        let t = |v: Value| parse_args::<TargetParams>(ToolName::Restart, v).unwrap();
        assert_eq!(
            t(json!({"agent_id": "a"})).target("restart").unwrap(),
            Target::One("a".into())
        );
        let Target::Many(req) =
            t(json!({"selector": "t.*", "force": true, "stop_timeouts": [1, 1, 1]}))
                .target("restart")
                .unwrap()
        else {
            panic!("one")
        };
        assert!(req.force && !req.all && req.selector.as_deref() == Some("t.*"));
        assert_eq!(req.stop_timeouts, Some(vec![1.0; 3]));
        assert!(matches!(
            t(json!({"all": true})).target("stop").unwrap(),
            Target::Many(StopManyRequest { all: true, .. })
        ));
        for bad in [
            json!({}),
            json!({"agent_id": "a", "all": true}),
            json!({"agent_id": "a", "selector": "b"}),
        ] {
            let e = t(bad).target("restart").unwrap_err();
            assert!(e.to_string().contains("to restart with exactly one"), "{e}");
        }
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
        let line = field_line(&object(
            json!({"agent_id": "t.1", "state": "running", "exit_code": null}),
        ));
        assert_eq!(line, "t.1  exit_code=- state=running\n");
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
