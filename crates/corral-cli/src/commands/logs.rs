//! `corral logs`: agents' output through the API (so it works over `--url` too).
//!
//! One agent's log, asked plainly, passes through as the daemon sends it.
//! Anything more — a team (`PREFIX.*`, `--all`), labelled streams (`--both`),
//! `--timestamps`, `--since`, `--json` — is read as lines: one request per
//! member, run and stream, each line written whole with its prefix (the id,
//! padded and coloured on a terminal; `out`/`err`). Without `-f` members come
//! one after another in natural id order; with `-f` lines interleave as they
//! come, and a team is watched (its listing, twice a second) for members that
//! start, restart or appear, each new run read from its first line.
//!
//! Times: corral hands agents files and never reads their output on the way
//! (which is what keeps their logs when corral is down), so a line carries no
//! time of its writing. `--timestamps` is the time this command read it, and
//! `--since` picks runs (those live since then), not lines.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use corral_api::Client;
use corral_core::{ListQuery, LogsQuery, Selector};
use futures_util::StreamExt;

use super::Ctx;
use crate::cli::LogsArgs;
use crate::output::Style;

/// Trailing lines shown first when `-n` is not given (and `--since` is not).
const DEFAULT_LINES: usize = 20;
/// How often a followed team's listing is read for new members and runs.
const WATCH: Duration = Duration::from_millis(500);
/// Reads in flight at once when a team's logs are read without `-f`.
const PARALLEL: usize = 16;
/// Logs followed at once at most (each holds a connection to the daemon).
const MAX_FOLLOWED: usize = 128;
/// Colours of ids on a terminal (none red: red is `err`).
const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "96"];

pub async fn run(ctx: &Ctx, args: &LogsArgs) -> Result<ExitCode> {
    let selector = match (&args.target, args.all) {
        (_, true) => Selector::All,
        (Some(t), false) => super::agents::checked_selector(t)?,
        (None, false) => return Err(super::usage("name an agent, PREFIX.*, or --all")),
    };
    let streams: &[bool] = if args.both {
        &[false, true]
    } else if args.stderr {
        &[true]
    } else {
        &[false]
    };
    let client = ctx.client().await?;
    let team = !matches!(selector, Selector::One(_));
    if let Selector::One(id) = &selector
        && !(args.both || args.timestamps || args.since.is_some() || ctx.json)
    {
        return passthrough(&client, id.as_str(), streams[0], args).await;
    }
    let tail = args.lines.or(if args.since.is_some() {
        None
    } else {
        Some(DEFAULT_LINES)
    });
    let members = list_members(&client, &selector).await?;
    let style = Style::stdout(false);
    let printer = Arc::new(Mutex::new(Printer {
        out: Box::new(std::io::stdout()),
        json: ctx.json,
        colour: style.colour,
        timestamps: args.timestamps,
        ids: team,
        labels: args.both,
        width: members.keys().map(String::len).max().unwrap_or(0),
        gone: false,
    }));
    let mut failed = false;

    // What was: every run live since --since but the current one, or the
    // current run's tail when not following; in member order.
    let mut reads = Vec::new();
    let mut followed = BTreeMap::new();
    for (id, m) in sorted(&members) {
        if let Some(since) = args.since {
            match client.runs(id).await {
                Ok(runs) => {
                    for r in runs
                        .iter()
                        .filter(|r| live_since(r.ended_at.as_deref(), since))
                    {
                        if !(args.follow && r.run == m.run) {
                            reads.push(Read::new(id, Some(r.run), tail, false));
                        }
                    }
                }
                Err(e) if team => {
                    eprintln!("corral: {id}: {e}");
                    failed = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            if args.follow && (live_since(m.ended_at.as_deref(), since) || m.live) {
                followed.insert(id.clone(), m.run);
            }
        } else if args.follow {
            followed.insert(id.clone(), m.run);
        } else {
            let run = args.run.or((m.run > 0).then_some(m.run));
            reads.push(Read::new(id, run, tail, false));
        }
    }
    if !team && members.is_empty() {
        // Let the daemon say what is wrong with the id (404 naming it).
        let Selector::One(id) = &selector else {
            unreachable!("not a team")
        };
        if args.follow {
            followed.insert(id.to_string(), 0);
        } else {
            reads.push(Read::new(id.as_str(), args.run, tail, false));
        }
    }
    let results: Vec<_> = futures_util::stream::iter(reads)
        .map(|r| {
            let client = client.clone();
            async move {
                let mut lines = Vec::new();
                for &err in streams {
                    let got = r
                        .fetch(&client, err, |line| {
                            lines.push((err, line));
                            true
                        })
                        .await;
                    if let Err(e) = got {
                        return (r, Err(e));
                    }
                }
                (r, Ok(lines))
            }
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    for (r, got) in results {
        match got {
            Ok(lines) => {
                let mut p = lock(&printer);
                for (err, line) in lines {
                    p.line(&r.id, r.run, err, &line);
                }
            }
            Err(e) if team => {
                eprintln!("corral: {}: {e}", r.id);
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if lock(&printer).gone || followed.is_empty() && !(team && args.follow) {
        return Ok(exit(failed));
    }

    // Each followed log holds a connection until its run ends; the daemon
    // caps connections, and other clients need theirs.
    if followed.len() * streams.len() > MAX_FOLLOWED {
        return Err(super::usage(format!(
            "{} logs to follow is more than {MAX_FOLLOWED} at once: name a smaller team (PREFIX.*), or read them without -f",
            followed.len() * streams.len()
        )));
    }
    // Following: the current runs, from their tail; then, for a team, every
    // run that starts after, from its first line.
    let mut tasks = tokio::task::JoinSet::new();
    for (id, run) in &followed {
        let run = (*run > 0).then_some(*run);
        follow(
            &mut tasks,
            &client,
            &printer,
            streams,
            Read::new(id, run, tail, true),
        );
    }
    if !team {
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                return Err(e.into());
            }
        }
        return Ok(exit(failed));
    }
    let mut seen: BTreeMap<String, (u32, String)> = members
        .iter()
        .map(|(id, m)| (id.clone(), (m.run, m.started_at.clone())))
        .collect();
    let mut tick = tokio::time::interval(WATCH);
    loop {
        tick.tick().await;
        while let Some(done) = tasks.try_join_next() {
            if let Ok(Err(e)) = done {
                eprintln!("corral: {e}");
            }
        }
        if lock(&printer).gone {
            return Ok(exit(failed));
        }
        let Ok(now) = list_members(&client, &selector).await else {
            // The daemon went away (or restarts): keep what runs, look again.
            continue;
        };
        for (id, m) in sorted(&now) {
            // Run numbers start again at 1 for an agent removed and spawned
            // anew: a run lower than the last one seen is a new agent.
            // (Its current run then has another start than the one seen.)
            let from = seen
                .get(id)
                .filter(|(r, at)| *r < m.run || (*r == m.run && *at == m.started_at))
                .map_or(1, |(r, _)| r + 1);
            for run in from..=m.run {
                // A run that came and went between two looks is read whole.
                follow(
                    &mut tasks,
                    &client,
                    &printer,
                    streams,
                    Read::new(id, Some(run), None, true),
                );
            }
            seen.insert(id.clone(), (m.run, m.started_at.clone()));
        }
        let widest = now.keys().map(String::len).max().unwrap_or(0);
        let mut p = lock(&printer);
        p.width = p.width.max(widest);
    }
}

fn exit(failed: bool) -> ExitCode {
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn lock(p: &Mutex<Printer>) -> std::sync::MutexGuard<'_, Printer> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One agent's log, plainly: the daemon's bytes as they come.
async fn passthrough(client: &Client, id: &str, err: bool, args: &LogsArgs) -> Result<ExitCode> {
    let query = LogsQuery {
        stream: Some(if err { "stderr" } else { "stdout" }.into()),
        tail: Some(args.lines.unwrap_or(DEFAULT_LINES)),
        follow: Some(args.follow),
        run: args.run,
    };
    let mut log = client.logs(id, &query).await?;
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = log.next_chunk().await {
        if out.write_all(&chunk?).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the listing says of a member.
struct Member {
    run: u32,
    /// When the current run started: tells a new agent of the same id from the old.
    started_at: String,
    live: bool,
    ended_at: Option<String>,
}

async fn list_members(client: &Client, selector: &Selector) -> Result<BTreeMap<String, Member>> {
    let query = ListQuery {
        selector: match selector {
            Selector::All => None,
            Selector::One(id) => Some(id.to_string()),
            Selector::Subtree(prefix) => Some(format!("{prefix}.*")),
        },
        fields: Some("run,state,ended_at,started_at".into()),
        ..ListQuery::default()
    };
    let listed = client.list_agents(&query).await?;
    Ok(listed
        .into_iter()
        .map(|(id, s)| {
            let m = Member {
                run: s.run,
                started_at: s.started_at,
                live: s.state != corral_core::AgentState::Ended,
                ended_at: s.ended_at,
            };
            (id, m)
        })
        .collect())
}

fn sorted(members: &BTreeMap<String, Member>) -> Vec<(&String, &Member)> {
    let mut v: Vec<_> = members.iter().collect();
    v.sort_by(|a, b| corral_core::natural_cmp(a.0, b.0));
    v
}

/// True when a run was live at or after `since`.
/// True when a run that ended at `ended_at` (`None`: still going) was live
/// at or after `since` (an end that does not parse counts as live).
fn live_since(ended_at: Option<&str>, since: SystemTime) -> bool {
    ended_at.is_none_or(|at| humantime::parse_rfc3339_weak(at).map_or(true, |at| at >= since))
}

/// One read of one run's log (both streams, when asked, one request each).
struct Read {
    id: String,
    run: Option<u32>,
    tail: Option<usize>,
    follow: bool,
}

impl Read {
    fn new(id: &str, run: Option<u32>, tail: Option<usize>, follow: bool) -> Self {
        Self {
            id: id.to_owned(),
            run,
            tail,
            follow,
        }
    }

    /// Reads one stream, handing each whole line (without its newline; a last
    /// unterminated one too) to `on_line` until it returns false.
    async fn fetch(
        &self,
        client: &Client,
        err: bool,
        mut on_line: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), corral_api::ClientError> {
        let query = LogsQuery {
            stream: Some(if err { "stderr" } else { "stdout" }.into()),
            tail: self.tail,
            follow: Some(self.follow),
            run: self.run,
        };
        let mut log = client.logs(&self.id, &query).await?;
        while let Some(line) = log.next_line().await {
            if !on_line(line?.into_bytes()) {
                break;
            }
        }
        Ok(())
    }
}

/// Follows `read` on each stream in tasks of its own, writing lines as they come.
fn follow(
    tasks: &mut tokio::task::JoinSet<Result<(), corral_api::ClientError>>,
    client: &Client,
    printer: &Arc<Mutex<Printer>>,
    streams: &[bool],
    read: Read,
) {
    let read = Arc::new(read);
    for &err in streams {
        let (client, printer, read) = (client.clone(), printer.clone(), read.clone());
        tasks.spawn(async move {
            // A run's number is known once a line comes with it; for the
            // current run read without one, from the listing's answer.
            let run = read.run;
            read.fetch(&client, err, |line| {
                let mut p = lock(&printer);
                p.line(&read.id, run, err, &line);
                !p.gone
            })
            .await
        });
    }
}

/// Writes lines with their prefixes; notes when the reader went away.
struct Printer {
    out: Box<dyn Write + Send>,
    json: bool,
    colour: bool,
    timestamps: bool,
    /// Prefix each line with its agent's id (a team).
    ids: bool,
    /// Label each line `out` or `err` (`--both`).
    labels: bool,
    /// The longest id, to pad to.
    width: usize,
    /// stdout was closed: stop reading.
    gone: bool,
}

impl Printer {
    fn line(&mut self, id: &str, run: Option<u32>, err: bool, line: &[u8]) {
        if self.gone {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let stream = if err { "stderr" } else { "stdout" };
        let at = self
            .timestamps
            .then(|| humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        let rendered = if self.json {
            let mut doc = serde_json::json!({
                "agent_id": id, "run": run, "stream": stream, "line": text,
            });
            if let Some(at) = at {
                doc["read_at"] = at.into();
            }
            format!("{doc}\n")
        } else {
            let mut s = String::new();
            if let Some(at) = at {
                s.push_str(&at);
                s.push(' ');
            }
            if self.ids {
                let padded = format!("{id:<w$}", w = self.width);
                if self.colour {
                    let c = PALETTE
                        [(corral_core::fnv1a(id.as_bytes()) % PALETTE.len() as u64) as usize];
                    s.push_str(&format!("\x1b[{c}m{padded}\x1b[0m "));
                } else {
                    s.push_str(&padded);
                    s.push(' ');
                }
            }
            if self.labels {
                match (err, self.colour) {
                    (true, true) => s.push_str("\x1b[31merr\x1b[0m "),
                    (true, false) => s.push_str("err "),
                    (false, _) => s.push_str("out "),
                }
            }
            if self.ids || self.labels {
                s.push_str("| ");
            }
            // An agent's own escape codes stay its own: they reach a
            // terminal as the agent wrote them, as with one agent's log.
            s.push_str(text);
            s.push('\n');
            s
        };
        let out = &mut self.out;
        if out
            .write_all(rendered.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            self.gone = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_core::RunInfo;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn printer(buf: &Buf, ids: bool, labels: bool, colour: bool) -> Printer {
        Printer {
            out: Box::new(buf.clone()),
            json: false,
            colour,
            timestamps: false,
            ids,
            labels,
            width: 8,
            gone: false,
        }
    }

    fn text(buf: &Buf) -> String {
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_carry_their_id_and_stream() {
        let buf = Buf::default();
        let mut p = printer(&buf, true, true, false);
        p.line("job.1", Some(1), false, b"hello");
        p.line("job.10", Some(2), true, b"oops\r");
        assert_eq!(text(&buf), "job.1    out | hello\njob.10   err | oops\n");

        let buf = Buf::default();
        let mut p = printer(&buf, false, true, false);
        p.line("x", Some(1), true, b"e");
        assert_eq!(text(&buf), "err | e\n", "one agent: the stream only");

        let buf = Buf::default();
        let mut p = printer(&buf, true, false, true);
        p.line("job.1", Some(1), false, b"c");
        let out = text(&buf);
        assert!(
            out.starts_with("\x1b[") && out.ends_with("job.1   \x1b[0m | c\n"),
            "{out:?}"
        );

        let buf = Buf::default();
        let mut p = printer(&buf, true, false, false);
        p.json = true;
        p.timestamps = true;
        p.line("job.1", Some(3), true, b"j");
        let doc: serde_json::Value = serde_json::from_str(text(&buf).trim()).unwrap();
        assert_eq!(doc["agent_id"], "job.1");
        assert_eq!(doc["run"], 3);
        assert_eq!(doc["stream"], "stderr");
        assert_eq!(doc["line"], "j");
        assert!(humantime::parse_rfc3339_weak(doc["read_at"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn runs_live_since_a_time_are_picked() {
        let run = |ended: Option<&str>| RunInfo {
            run: 1,
            pid: None,
            started_at: "2026-12-07T08:00:00Z".into(),
            ended_at: ended.map(Into::into),
            persistent_status: corral_core::PersistentStatus::Completed,
            exit_code: None,
            exit_signal: None,
            end_reason: None,
            stdout_log: "/x".into(),
            stderr_log: "/y".into(),
        };
        let since = humantime::parse_rfc3339_weak("2026-12-07T09:00:00Z").unwrap();
        let live = |r: RunInfo| live_since(r.ended_at.as_deref(), since);
        assert!(live(run(None)), "still running");
        assert!(live(run(Some("2026-12-07T09:30:00.000Z"))));
        assert!(!live(run(Some("2026-12-07T08:30:00.000Z"))));
    }
}
