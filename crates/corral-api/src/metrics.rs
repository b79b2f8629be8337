//! `GET /metrics`: the Prometheus text format (exposition format 0.0.4).
//!
//! Per agent: `corral_agent_up`, `corral_agent_cpu_percent`,
//! `corral_agent_memory_bytes`, `corral_agent_restarts_total`; for the fleet:
//! `corral_agents{state}` (the lifecycle's states: `starting`, `running`,
//! `stopping`, `paused`, `backoff`, `ended`), `corral_agents_by_status{status}`
//! (the stored status, and `zombie`), `corral_spawns_total`,
//! `corral_stop_stage_total{stage}`;
//! and the daemon's own `process_*` metrics, as Prometheus's client libraries
//! name them. Written straight from the latest statuses — no registry to keep
//! in step with agents that come and go.
//!
//! The agents' part is rendered once per sample: it is kept with what it was
//! rendered from (the sampler's generation, the newest event, the number of
//! agents) and rendered again only when one of those has moved or it is a
//! second old, so scrapes between two samples cost a copy. The daemon's own
//! figures are kept with it; its counters are read at every scrape.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use corral_core::{AgentStatus, Supervisor};

/// Escapes a label value: backslash, double quote and newline.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One per-agent family: name, type, help, and how to read it off a status.
type PerAgent = (
    &'static str,
    &'static str,
    &'static str,
    fn(&AgentStatus) -> f64,
);

/// The agents' and the daemon's metrics as Prometheus text.
pub fn render(
    statuses: &[AgentStatus],
    counters: corral_core::DaemonCounters,
    process: &ProcessFigures,
) -> String {
    let mut out = render_agents(statuses);
    render_daemon(&mut out, counters, process);
    out
}

/// The families read off the agents' statuses.
fn render_agents(statuses: &[AgentStatus]) -> String {
    let mut out = String::with_capacity(256 + statuses.len() * 400);
    family(
        &mut out,
        "corral_agents",
        "gauge",
        "Agents by state: starting, running, stopping, paused, backoff, ended.",
    );
    let mut states = corral_core::StateCounts::default();
    for s in statuses {
        states.add(s.state);
    }
    for state in corral_core::AgentState::ALL {
        let _ = writeln!(
            out,
            "corral_agents{{state=\"{state}\"}} {}",
            states.get(state)
        );
    }
    family(
        &mut out,
        "corral_agents_by_status",
        "gauge",
        "Agents by the stored status of their current run, and zombies.",
    );
    for status in ["spawning", "running", "completed", "failed", "cancelled"] {
        let n = statuses
            .iter()
            .filter(|s| s.persistent_status.as_str() == status)
            .count();
        let _ = writeln!(out, "corral_agents_by_status{{status=\"{status}\"}} {n}");
    }
    let zombies = statuses.iter().filter(|s| s.is_zombie).count();
    let _ = writeln!(
        out,
        "corral_agents_by_status{{status=\"zombie\"}} {zombies}"
    );
    let per_agent: [PerAgent; 4] = [
        (
            "corral_agent_up",
            "gauge",
            "1 while the agent's process is alive.",
            |s| f64::from(u8::from(s.process_alive)),
        ),
        (
            "corral_agent_cpu_percent",
            "gauge",
            "CPU of the agent's process over the last sampling interval, percent of one CPU.",
            |s| s.cpu_percent,
        ),
        (
            "corral_agent_memory_bytes",
            "gauge",
            "Resident memory of the agent's process.",
            |s| s.memory_mb * 1024.0 * 1024.0,
        ),
        (
            "corral_agent_restarts_total",
            "counter",
            "Earlier runs of this agent id (re-spawns and restarts).",
            |s| f64::from(s.restarts),
        ),
    ];
    for (name, kind, help, value) in per_agent {
        family(&mut out, name, kind, help);
        for s in statuses {
            let _ = writeln!(
                out,
                "{name}{{agent_id=\"{}\"}} {}",
                label(&s.agent_id),
                value(s)
            );
        }
    }
    out
}

/// The daemon's counters and its own process figures.
fn render_daemon(
    out: &mut String,
    counters: corral_core::DaemonCounters,
    process: &ProcessFigures,
) {
    family(
        out,
        "corral_spawns_total",
        "counter",
        "Runs started since the daemon started (spawns and restarts).",
    );
    let _ = writeln!(out, "corral_spawns_total {}", counters.spawns);
    family(
        out,
        "corral_stop_stage_total",
        "counter",
        "Stop stages begun since the daemon started.",
    );
    for (stage, n) in ["term", "second_term", "kill"]
        .iter()
        .zip(counters.stop_stages)
    {
        let _ = writeln!(out, "corral_stop_stage_total{{stage=\"{stage}\"}} {n}");
    }
    process.write(out);
}

/// What the agents' part was rendered from: while all of it is unchanged,
/// so is the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    sample_generation: u64,
    newest_event: i64,
    agents: usize,
}

/// The last scrape's agents' part and daemon figures, shared by a router's handlers.
#[derive(Debug, Default)]
pub struct MetricsCache {
    last: Mutex<Option<Rendered>>,
}

/// One rendering and what it was rendered from.
#[derive(Debug, Clone)]
struct Rendered {
    source: Source,
    at: Instant,
    agents: Arc<str>,
    process: ProcessFigures,
}

/// Longest a rendering is reused even when nothing it was rendered from
/// moved: what no counter follows (a cluster engine's figures, an exit not
/// yet on record, the daemon's own CPU and descriptors) shows up within this.
const MAX_AGE: Duration = Duration::from_secs(1);

impl Source {
    fn of(sup: &Supervisor) -> Self {
        Self {
            sample_generation: sup.sample_generation(),
            newest_event: *sup.subscribe_events().borrow(),
            agents: sup.agent_count(),
        }
    }
}

impl MetricsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Rendered>> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kept rendering, while what it was rendered from is unchanged.
    fn fresh(&self, source: Source) -> Option<Rendered> {
        self.lock()
            .as_ref()
            .filter(|r| r.source == source && r.at.elapsed() < MAX_AGE)
            .cloned()
    }
}

/// Renders the agents' part and reads the daemon's figures.
async fn render_now(sup: &Supervisor, source: Source) -> Rendered {
    let uptime = sup.uptime_s();
    let process = tokio::task::spawn_blocking(move || ProcessFigures::read(uptime))
        .await
        .unwrap_or_default();
    let statuses = sup.monitor_agents(|_| true);
    Rendered {
        source,
        at: Instant::now(),
        agents: render_agents(&statuses).into(),
        process,
    }
}

/// The daemon process's own figures, from `/proc/self`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: f64,
    open_fds: usize,
    max_fds: u64,
    start_time_s: f64,
}

impl ProcessFigures {
    /// Reads them (blocking: a few `/proc` files).
    pub fn read(uptime_s: f64) -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let tps = corral_core::process::clock_ticks_per_second() as f64;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            // Fields after the command: utime is the 12th, stime the 13th, rss the 22nd.
            cpu_seconds: (num(11) + num(12)) / tps,
            resident_bytes: num(21) * 4096.0,
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count),
            max_fds: rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(0),
            start_time_s: now - uptime_s,
        }
    }

    fn write(&self, out: &mut String) {
        let figures = [
            (
                "process_cpu_seconds_total",
                "counter",
                "CPU time of the daemon, seconds.",
                self.cpu_seconds,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the daemon.",
                self.resident_bytes,
            ),
            (
                "process_open_fds",
                "gauge",
                "Open descriptors of the daemon.",
                self.open_fds as f64,
            ),
            (
                "process_max_fds",
                "gauge",
                "The daemon's open-file limit.",
                self.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "When the daemon started, seconds since the epoch.",
                self.start_time_s,
            ),
        ];
        for (name, kind, help, value) in figures {
            family(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// Prometheus metrics of the agents and the daemon (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "daemon",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4")))]
pub(crate) async fn metrics(
    State(sup): State<Supervisor>,
    cache: Option<Extension<Arc<MetricsCache>>>,
) -> Response {
    // Figures at most an interval old (after a quiet spell this waits for a
    // sampling pass), then the source they came from.
    sup.fresh_figures().await;
    // Read before rendering: a change while it renders makes the next scrape render again.
    let source = Source::of(&sup);
    let rendered = match cache.as_ref().and_then(|c| c.fresh(source)) {
        Some(kept) => kept,
        None => {
            let new = render_now(&sup, source).await;
            if let Some(Extension(cache)) = &cache {
                *cache.lock() = Some(new.clone());
            }
            new
        }
    };
    let mut body = String::with_capacity(rendered.agents.len() + 2048);
    body.push_str(&rendered.agents);
    render_daemon(&mut body, sup.counters(), &rendered.process);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), r"x\ny");
    }
}
