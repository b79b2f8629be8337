//! `corral top`: a live dashboard of every agent, in the terminal (what
//! `pm2 monit` or process-compose show): a table with health, CPU, memory,
//! runtime, restarts and progress; sorting, filtering, a detail pane with the
//! agent's logs; staged stop and kill behind a y/n question. Nothing is ever
//! started from it.
//!
//! The work is split three ways:
//! - [`model`] holds the state and makes every decision (sort, filter,
//!   selection, what a key does), as pure code;
//! - [`view`] draws a model into a frame, as pure code;
//! - this file is the plumbing: it owns the terminal, the threads, and the
//!   daemon's routes.
//!
//! Where things run, and why:
//! - one **UI thread** owns the terminal and the model. It waits on a channel
//!   for messages (keys, answers, events) or the next tick, applies all that
//!   have arrived, and then draws once — only when something changed. Drawing
//!   writes to the terminal, which may block, so it is kept off the async
//!   runtime.
//! - one **key thread** blocks in crossterm's `read` and forwards what it reads;
//!   idle, it costs nothing.
//! - the **async side** (the command's runtime) talks to the daemon: a full
//!   `GET /v1/agents` of the table's fields only every `--interval` (the
//!   metrics come from the daemon's sampler, so asking more often shows
//!   nothing new; the other fields are never built for ten thousand rows);
//!   the event stream (`GET /v1/events?since=N`), whose state changes are
//!   applied at once and followed by a fetch of just the agents concerned (a
//!   burst of them becomes one full refresh); the whole status and the log
//!   tails of the agent the detail pane shows; and the stop and kill requests. Answers travel to the UI thread as raw bytes and are
//!   decoded there, so the runtime's thread only moves bytes.
//!
//! The terminal is restored on every way out: a key, SIGTERM/SIGHUP/SIGINT,
//! an error, and a panic (ratatui's hook restores it before the message).

mod model;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use corral_api::Client;
use corral_core::{
    AgentStatus, CleanupOptions, Event, EventBody, EventsQuery, KillRequest, ListQuery, LogsQuery,
    StopReport, StopStage,
};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self as term_event, Event as TermEvent};
use tokio::sync::{Notify, mpsc as async_mpsc};

use self::model::{Action, Effect, LogTail, Model};
use super::Ctx;
use crate::cli::TopArgs;

/// The shortest `--interval` accepted.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Events are gathered this long before the agents they name are fetched.
const DEBOUNCE: Duration = Duration::from_millis(30);
/// More agents than this in one burst of events: one full refresh instead.
const FEW: usize = 16;
/// Lines of each log asked for.
const LOG_LINES: usize = 200;
/// Bytes of each log kept (the end).
const LOG_BYTES: usize = 64 * 1024;
/// Messages applied before the next frame is drawn, at most.
const BATCH: usize = 4096;
/// An event stream that stays open this long after a reconnect counts as up.
const STREAM_UP_AFTER: Duration = Duration::from_secs(1);

/// What reaches the UI thread.
enum Msg {
    /// A key, a resize, or the keyboard failing.
    Input(std::io::Result<TermEvent>),
    /// A full `GET /v1/agents` answer, or why there is none.
    Snapshot(Result<BTreeMap<String, AgentStatus>, String>),
    /// `GET /v1/teams`: the teams with budgets.
    Teams(Vec<corral_core::TeamStatus>),
    /// One agent's `GET /v1/agents/{id}` answer.
    One(Box<AgentStatus>),
    /// The daemon does not know this agent (any more).
    Gone(String),
    /// An event from the stream.
    Event(Box<Event>),
    /// The event stream is up again (`None`) or down (why).
    EventsLink(Option<String>),
    /// Log tails for the detail pane.
    Logs {
        id: String,
        stdout: LogTail,
        stderr: LogTail,
    },
    /// A stop or kill ended: what happened, or why it failed.
    Acted(Result<String, String>),
    /// A signal asked us to leave.
    Quit,
}

/// `corral top`.
pub async fn run(ctx: &Ctx, args: TopArgs) -> Result<ExitCode> {
    if ctx.json {
        bail!("corral top is interactive; `corral ps --json` prints every agent as JSON");
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("corral top needs a terminal; `corral ps` prints the same table once");
    }
    if args.interval < MIN_INTERVAL {
        bail!(
            "--interval must be at least {} ms",
            MIN_INTERVAL.as_millis()
        );
    }
    let client = ctx.client().await?;
    // Where the event log ends now, then everything as it is: the stream then
    // starts with whatever happens after this snapshot.
    let since = newest_event(&client)
        .await
        .context("cannot read the daemon's event log")?;
    let first = snapshot(&client).await;
    let first_teams = teams(&client).await;

    let (tx, rx) = mpsc::channel::<Msg>();
    let _ = tx.send(first);
    if let Some(t) = first_teams {
        let _ = tx.send(t);
    }
    let (fx_tx, fx_rx) = async_mpsc::unbounded_channel::<Effect>();
    let (ids_tx, ids_rx) = async_mpsc::unbounded_channel::<String>();
    let refresh = Arc::new(Notify::new());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let interval = args.interval;
    let keys_tx = tx.clone();
    std::thread::Builder::new()
        .name("corral-top-ui".into())
        .spawn(move || {
            let _ = done_tx.send(ui_thread(rx, keys_tx, fx_tx, interval));
        })
        .context("cannot start the dashboard's thread")?;

    let tasks = [
        tokio::spawn(refresher(
            client.clone(),
            tx.clone(),
            ids_rx,
            refresh.clone(),
            interval,
        )),
        tokio::spawn(follow_events(client.clone(), tx.clone(), ids_tx, since)),
        tokio::spawn(carry_out(client, tx.clone(), fx_rx, refresh)),
        tokio::spawn(quit_on_signals(tx)),
    ];
    let outcome = done_rx.await;
    for t in tasks {
        t.abort();
    }
    match outcome {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("the dashboard stopped unexpectedly"),
    }
}

// ---------------------------------------------------------------------------
// The UI thread
// ---------------------------------------------------------------------------

/// Takes the terminal, runs the loop, and gives the terminal back whatever
/// happened.
fn ui_thread(
    rx: mpsc::Receiver<Msg>,
    keys: mpsc::Sender<Msg>,
    effects: async_mpsc::UnboundedSender<Effect>,
    interval: Duration,
) -> Result<()> {
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            bail!("cannot take over the terminal: {e}");
        }
    };
    let result = std::thread::Builder::new()
        .name("corral-top-keys".into())
        .spawn(move || {
            loop {
                let ev = term_event::read();
                let failed = ev.is_err();
                if keys.send(Msg::Input(ev)).is_err() || failed {
                    return;
                }
            }
        })
        .context("cannot start the keyboard's thread")
        .and_then(|_| ui_loop(&mut terminal, &rx, &effects, interval));
    ratatui::restore();
    result
}

fn ui_loop(
    terminal: &mut DefaultTerminal,
    rx: &mpsc::Receiver<Msg>,
    effects: &async_mpsc::UnboundedSender<Effect>,
    interval: Duration,
) -> Result<()> {
    let mut m = Model::new();
    let mut next_tick = Instant::now() + interval;
    let mut redraw = true;
    loop {
        if redraw {
            if let Some(fx) = m.prepare() {
                let _ = effects.send(fx);
            }
            terminal
                .draw(|f| view::render(f, &m))
                .context("cannot draw on the terminal")?;
            redraw = false;
        }
        let first = match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(msg) => Some(msg),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let now = Instant::now();
        let pending = std::iter::from_fn(|| rx.try_recv().ok()).take(BATCH);
        for msg in first.into_iter().chain(pending) {
            match apply(&mut m, msg, now)? {
                Some(Effect::Quit) => return Ok(()),
                Some(fx) => {
                    let _ = effects.send(fx);
                }
                None => {}
            }
            redraw = true;
        }
        if now >= next_tick {
            next_tick = now + interval;
            let had_note = m.note().is_some();
            if let Some(fx) = m.tick(now) {
                let _ = effects.send(fx);
            }
            // The figures come with the refreshes; the tick itself only
            // changes the screen when a note runs out.
            redraw |= had_note && m.note().is_none();
        }
    }
}

/// Applies one message to the model; returns what it asks for.
fn apply(m: &mut Model, msg: Msg, now: Instant) -> Result<Option<Effect>> {
    match msg {
        Msg::Input(Ok(TermEvent::Key(key))) => return Ok(m.on_key(key, now)),
        Msg::Input(Ok(_)) => {}
        Msg::Input(Err(e)) => bail!("cannot read the keyboard: {e}"),
        // The table's fields only: the rest keep blank values nobody reads.
        Msg::Snapshot(Ok(all)) => m.set_snapshot(all),
        Msg::Snapshot(Err(e)) => m.set_refresh_error(e),
        Msg::Teams(teams) => m.set_teams(teams),
        Msg::One(s) => m.upsert(*s),
        Msg::Gone(id) => m.remove(&id),
        Msg::Event(ev) => {
            m.apply_event(&ev);
        }
        Msg::EventsLink(e) => m.set_events_error(e),
        Msg::Logs { id, stdout, stderr } => m.set_logs(&id, stdout, stderr),
        Msg::Acted(Ok(what)) => m.set_note(what, false, now),
        Msg::Acted(Err(why)) => m.set_note(why, true, now),
        Msg::Quit => return Ok(Some(Effect::Quit)),
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// The async side
// ---------------------------------------------------------------------------

/// The fields the table, its header, its filter and its sort read (and the
/// events it applies update); the detail pane fetches the whole status of
/// the one agent it shows.
const TABLE_FIELDS: &str = "pid,state,persistent_status,health,ready,process_alive,\
    process_status,cpu_percent,memory_mb,num_threads,runtime_seconds,restarts,progress,\
    progress_message,progress_at,labels,run,stop,next_restart_at,exit_code,exit_signal,end_reason,\
    placement";

/// `GET /v1/agents` with the table's fields, as a message.
async fn snapshot(client: &Client) -> Msg {
    let query = ListQuery {
        fields: Some(TABLE_FIELDS.into()),
        ..ListQuery::default()
    };
    Msg::Snapshot(client.list(&query).await.map_err(|e| e.to_string()))
}

/// `GET /v1/teams`, once per full refresh; `None` when it fails (a daemon
/// without teams: the dashboard shows none, the agents' refresh says what
/// is wrong with the daemon).
async fn teams(client: &Client) -> Option<Msg> {
    client.teams().await.ok().map(Msg::Teams)
}

/// The sequence number of the newest stored event (0 when there is none).
/// The API has no direct answer to this, so the stored log is read through
/// once, without following.
async fn newest_event(client: &Client) -> Result<i64> {
    let backlog = EventsQuery {
        since: Some(0),
        follow: Some(false),
    };
    let mut events = client.events(&backlog).await?;
    let mut newest = 0;
    while let Some(ev) = events.next().await {
        // One event this build cannot read does not hide the ones after it.
        if let Ok(ev) = ev {
            newest = newest.max(ev.seq);
        } else if let Err(e @ corral_api::ClientError::Decode(_)) = ev {
            tracing::debug!(error = %e, "an event top cannot read");
        } else {
            ev?;
        }
    }
    Ok(newest)
}

/// Full refreshes every `interval` (or when asked), and fetches of the agents
/// that events named. One task does both, so a full answer never overtakes
/// a fresher single one.
async fn refresher(
    client: Client,
    tx: mpsc::Sender<Msg>,
    mut ids: async_mpsc::UnboundedReceiver<String>,
    refresh: Arc<Notify>,
    interval: Duration,
) {
    let start = tokio::time::Instant::now() + interval;
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let full = tokio::select! {
            _ = tick.tick() => true,
            () = refresh.notified() => true,
            id = ids.recv() => {
                let Some(id) = id else { return };
                let mut burst = BTreeSet::from([id]);
                let until = tokio::time::Instant::now() + DEBOUNCE;
                loop {
                    tokio::select! {
                        id = ids.recv() => match id {
                            Some(id) => { burst.insert(id); }
                            None => return,
                        },
                        () = tokio::time::sleep_until(until) => break,
                    }
                }
                if burst.len() > FEW {
                    true
                } else {
                    for id in burst {
                        if !fetch_one(&client, &tx, id).await {
                            return;
                        }
                    }
                    false
                }
            }
        };
        if full {
            if tx.send(snapshot(&client).await).is_err() {
                return;
            }
            if let Some(teams) = teams(&client).await
                && tx.send(teams).is_err()
            {
                return;
            }
            tick.reset();
        }
    }
}

/// `GET /v1/agents/{id}`; false once the UI is gone.
async fn fetch_one(client: &Client, tx: &mpsc::Sender<Msg>, id: String) -> bool {
    let msg = match client.status(&id).await {
        Ok(s) => Msg::One(Box::new(s)),
        Err(e) if e.code() == Some("not_found") => Msg::Gone(id),
        // The next full refresh says what is wrong.
        _ => return true,
    };
    tx.send(msg).is_ok()
}

/// Follows the event stream from `since`, reconnecting (from the last event
/// seen) whenever it ends; says so while it is down.
async fn follow_events(
    client: Client,
    tx: mpsc::Sender<Msg>,
    ids: async_mpsc::UnboundedSender<String>,
    mut since: i64,
) {
    const FIRST_DELAY: Duration = Duration::from_millis(250);
    let mut delay = FIRST_DELAY;
    // Flags shared by the stream's callback and this loop (atomics only
    // because the task must be Send).
    let down = AtomicBool::new(false);
    let ui_gone = AtomicBool::new(false);
    let up_again = || {
        if down.swap(false, Relaxed) {
            ui_gone.store(tx.send(Msg::EventsLink(None)).is_err(), Relaxed);
        }
    };
    loop {
        let ended = {
            let stream = async {
                let query = EventsQuery {
                    since: Some(since),
                    follow: Some(true),
                };
                let mut events = client.events(&query).await?;
                while let Some(ev) = events.next().await {
                    let ev = match ev {
                        Ok(ev) => ev,
                        // One event this build cannot read: the rest still count.
                        Err(corral_api::ClientError::Decode(_)) => continue,
                        Err(e) => return Err(e),
                    };
                    up_again();
                    since = ev.seq;
                    // Progress is all in the event; anything else: fetch the agent.
                    if !matches!(ev.body, EventBody::Progress(_)) {
                        let _ = ids.send(ev.agent_id.clone());
                    }
                    if tx.send(Msg::Event(Box::new(ev))).is_err() {
                        ui_gone.store(true, Relaxed);
                        break;
                    }
                }
                Ok(())
            };
            tokio::pin!(stream);
            if down.load(Relaxed) {
                tokio::select! {
                    r = &mut stream => r,
                    () = tokio::time::sleep(STREAM_UP_AFTER) => {
                        up_again();
                        stream.await
                    }
                }
            } else {
                stream.await
            }
        };
        if ui_gone.load(Relaxed) {
            return;
        }
        if !down.load(Relaxed) {
            // It had been up: start over with short waits.
            delay = FIRST_DELAY;
        }
        let why = match ended {
            Ok(()) => "the daemon closed the stream".to_owned(),
            Err(e) => e.to_string(),
        };
        down.store(true, Relaxed);
        if tx.send(Msg::EventsLink(Some(why))).is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Carries out what the model asked for; each request runs on its own, so a
/// stop that takes its full grace period holds nothing else up.
async fn carry_out(
    client: Client,
    tx: mpsc::Sender<Msg>,
    mut effects: async_mpsc::UnboundedReceiver<Effect>,
    refresh: Arc<Notify>,
) {
    while let Some(fx) = effects.recv().await {
        let client = client.clone();
        let tx = tx.clone();
        match fx {
            Effect::Quit => {}
            Effect::FetchDetail(id) => {
                tokio::spawn(async move {
                    let (stdout, stderr, _) = tokio::join!(
                        tail(&client, &id, "stdout"),
                        tail(&client, &id, "stderr"),
                        fetch_one(&client, &tx, id.clone())
                    );
                    let _ = tx.send(Msg::Logs { id, stdout, stderr });
                });
            }
            Effect::Act(action, id) => {
                let refresh = refresh.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Msg::Acted(act(&client, action, &id).await));
                    refresh.notify_one();
                });
            }
        }
    }
}

/// The last lines of one of an agent's logs.
async fn tail(client: &Client, id: &str, stream: &str) -> LogTail {
    let query = LogsQuery {
        stream: Some(stream.into()),
        tail: Some(LOG_LINES),
        ..LogsQuery::default()
    };
    let mut buf = Vec::new();
    let read = async {
        let mut log = client.logs(id, &query).await?;
        while let Some(chunk) = log.next_chunk().await {
            buf.extend_from_slice(&chunk?);
            if buf.len() > 2 * LOG_BYTES {
                buf.drain(..buf.len() - LOG_BYTES);
            }
        }
        Ok::<_, corral_api::ClientError>(())
    }
    .await;
    match read {
        Ok(()) => {
            let keep = buf.len().saturating_sub(LOG_BYTES);
            LogTail::Text(String::from_utf8_lossy(&buf[keep..]).into_owned())
        }
        Err(e) => LogTail::Error(e.to_string()),
    }
}

/// Stops (staged), kills (SIGKILL), restarts, pauses or resumes one agent;
/// says how it went.
async fn act(client: &Client, action: Action, id: &str) -> Result<String, String> {
    let report: StopReport = match action {
        Action::Pause | Action::Resume => {
            let body = corral_core::PauseRequest {
                agent_id: Some(id.to_owned()),
                ..Default::default()
            };
            let (verb, answer) = if action == Action::Pause {
                ("pause", client.pause(&body).await)
            } else {
                ("resume", client.resume(&body).await)
            };
            let reports = answer.map_err(|e| format!("cannot {verb} {id}: {e}"))?;
            return Ok(reports
                .first()
                .map_or_else(|| format!("{id}: nothing to {verb}"), super::pause::line));
        }
        Action::Restart => {
            let r: corral_core::SpawnResponse = client
                .restart(id, &CleanupOptions::default())
                .await
                .map_err(|e| format!("cannot restart {id}: {e}"))?;
            return match (r.status, r.error) {
                (_, Some(why)) => Err(format!("{id} did not restart: {why}")),
                (status, None) => Ok(format!(
                    "{id} restarted: run {}, {status}{}",
                    r.run,
                    r.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
                )),
            };
        }
        Action::Stop => client
            .stop(id, &CleanupOptions::default())
            .await
            .map_err(|e| format!("cannot stop {id}: {e}"))?,
        Action::Kill => {
            client
                .kill(id, &KillRequest { force: true })
                .await
                .map_err(|e| format!("cannot kill {id}: {e}"))?
                .report
        }
    };
    let took = report.duration_ms / 1000.0;
    let by = match report.stage {
        StopStage::AlreadyEnded => return Ok(format!("{id} had already ended")),
        StopStage::Unkillable => {
            return Err(format!(
                "{id} is still there after SIGKILL ({took:.1} s): see `corral status {id}`"
            ));
        }
        StopStage::Term => "the first SIGTERM",
        StopStage::SecondTerm => "the second SIGTERM",
        StopStage::Kill => "SIGKILL",
    };
    Ok(format!(
        "{id} {} after {by}, in {took:.1} s",
        report.persistent_status
    ))
}

/// Turns SIGTERM, SIGHUP (the terminal went away) and SIGINT into a clean
/// exit that restores the terminal.
async fn quit_on_signals(tx: mpsc::Sender<Msg>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = hup.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(Msg::Quit);
}
