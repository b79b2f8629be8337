//! The dashboard's state and every decision about it, with no terminal and no
//! network: what is known about each agent, which rows are shown in which
//! order, what is selected, which prompt is open, and what a key press asks the
//! outside world to do ([`Effect`]).
//!
//! It is kept pure so that sorting, filtering, selection and the key bindings
//! are tested as plain functions, and so that the renderer ([`super::view`])
//! can draw any state it is handed. The loop in [`super`] feeds it snapshots,
//! single statuses, events and answers, and carries out its effects.
//!
//! Cost: with a thousand agents a full snapshot arrives every interval, and a
//! burst of events can arrive between two frames. Rows are therefore re-sorted
//! and re-filtered lazily: every change only marks them stale, and
//! [`Model::prepare`] rebuilds them once, right before a frame is drawn.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use corral_core::{AgentState, AgentStatus, Event, EventBody, Health, PersistentStatus};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// How long a note (an action's outcome, an error) stays in the footer.
pub const NOTE_FOR: Duration = Duration::from_secs(6);

/// The column rows are sorted by. `s` cycles through them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Agent id, A to Z.
    Id,
    /// CPU percent, busiest first.
    Cpu,
    /// Resident memory, largest first.
    Memory,
    /// Runtime, longest first.
    Runtime,
    /// Restarts, most first.
    Restarts,
    /// Health, problems first: failed, then zombie and unknown, then healthy,
    /// then completed and cancelled.
    Health,
}

impl SortKey {
    /// The next key in the cycle.
    pub fn next(self) -> Self {
        match self {
            Self::Id => Self::Cpu,
            Self::Cpu => Self::Memory,
            Self::Memory => Self::Runtime,
            Self::Runtime => Self::Restarts,
            Self::Restarts => Self::Health,
            Self::Health => Self::Id,
        }
    }

    /// The name shown in the header.
    pub fn label(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Runtime => "runtime",
            Self::Restarts => "restarts",
            Self::Health => "health",
        }
    }

    /// Whether the key's natural order is descending (the biggest first, as in top).
    pub fn descending(self) -> bool {
        matches!(
            self,
            Self::Cpu | Self::Memory | Self::Runtime | Self::Restarts
        )
    }
}

/// How an agent's health reads at a glance; it decides the colour and the
/// health sort order. A user's stop leaves `health: failed` on the wire (the
/// run did not complete), but to the person who stopped it that is not a
/// problem, so `cancelled` runs read as done, like completed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tone {
    /// Failed on its own (red).
    Bad,
    /// Zombie, unknown or paused (yellow).
    Warn,
    /// Alive and well (green).
    Good,
    /// Completed or cancelled (grey).
    Done,
}

/// The tone of one agent.
pub fn tone(s: &AgentStatus) -> Tone {
    match s.health {
        Health::Healthy => Tone::Good,
        Health::Zombie | Health::Unknown | Health::Paused => Tone::Warn,
        Health::Completed | Health::Cancelled => Tone::Done,
        Health::Failed => Tone::Bad,
    }
}

/// One word of a filter.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    /// `KEY=VALUE`: the label KEY is exactly VALUE.
    Label(String, String),
    /// A lifecycle word: `spawning`, `running`, `completed`, `failed`, `cancelled`.
    Status(PersistentStatus),
    /// A health word that is not also a lifecycle word: `healthy`, `zombie`, `unknown`.
    Health(Health),
    /// Anything else: a piece of the id (case-insensitive), kept lower-cased.
    Id(String),
}

/// What `/` typed: words separated by spaces, all of which must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    text: String,
    terms: Vec<Term>,
}

impl Filter {
    /// Parses a filter. Each word is `KEY=VALUE` (a label), a state word, or
    /// else a piece of the id. State words win over ids: `failed` means the
    /// runs that failed, not ids containing "failed".
    pub fn parse(text: &str) -> Self {
        let terms = text
            .split_whitespace()
            .map(|w| {
                if let Some((k, v)) = w.split_once('=') {
                    return Term::Label(k.to_owned(), v.to_owned());
                }
                let lower = w.to_lowercase();
                if let Ok(st) = lower.parse::<PersistentStatus>() {
                    return Term::Status(st);
                }
                match lower.as_str() {
                    "healthy" => Term::Health(Health::Healthy),
                    "zombie" => Term::Health(Health::Zombie),
                    "unknown" => Term::Health(Health::Unknown),
                    _ => Term::Id(lower),
                }
            })
            .collect();
        Self {
            text: text.trim().to_owned(),
            terms,
        }
    }

    /// The filter as typed (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True when it lets everything through.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether `s` passes every word.
    pub fn matches(&self, s: &AgentStatus) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Label(k, v) => s.labels.get(k) == Some(v),
            Term::Status(st) => s.persistent_status == *st,
            Term::Health(h) => s.health == *h,
            Term::Id(piece) => s.agent_id.to_lowercase().contains(piece.as_str()),
        })
    }
}

/// Stop (staged), kill (SIGKILL at once), restart, pause or resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The agent's staged stop: SIGTERM, then SIGKILL after its timeouts.
    Stop,
    /// SIGKILL to the whole tree at once.
    Kill,
    /// The staged stop (when it runs), then a new run with the same request.
    Restart,
    /// Freeze the whole tree (no question asked: a resume undoes it).
    Pause,
    /// Thaw a paused tree.
    Resume,
}

/// What a key press asks the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Restore the terminal and leave.
    Quit,
    /// Fetch this agent's whole status and the tail of its stdout and stderr.
    FetchDetail(String),
    /// Stop or kill this agent (after the user said yes).
    Act(Action, String),
}

/// Which prompt, if any, takes the keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The table (and the detail pane, when open) take the keys.
    Normal,
    /// `/` is open: keys edit the filter, which applies as it is typed.
    Filter {
        /// The text so far.
        input: String,
        /// The filter to go back to on Esc.
        before: Filter,
    },
    /// A y/n question before an action.
    Confirm(Action, String),
    /// The key bindings, until any key.
    Help,
}

/// A log tail in the detail pane.
#[derive(Debug, Clone, PartialEq)]
pub enum LogTail {
    /// Asked for, not yet answered.
    Loading,
    /// The text.
    Text(String),
    /// Why it could not be read.
    Error(String),
}

/// The detail pane of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Detail {
    /// The agent shown (the selection; the pane follows it).
    pub id: String,
    /// Tail of stdout.
    pub stdout: LogTail,
    /// Tail of stderr.
    pub stderr: LogTail,
    /// Lines the field list is scrolled down by.
    pub scroll: u16,
    /// The agent's whole status, once fetched: the table's refreshes carry
    /// only the fields the table shows.
    pub full: Option<AgentStatus>,
}

/// Counts and totals for the header, over every agent (not only those shown).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Agents known.
    pub total: usize,
    /// Rows shown after the filter.
    pub shown: usize,
    /// Per lifecycle state.
    pub spawning: usize,
    /// Running.
    pub running: usize,
    /// Completed.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// Cancelled.
    pub cancelled: usize,
    /// Being stopped.
    pub stopping: usize,
    /// Health zombie.
    pub zombie: usize,
    /// Health unknown.
    pub unknown: usize,
    /// Summed CPU percent of live agents.
    pub cpu: f64,
    /// Summed RSS of live agents, MiB.
    pub memory_mb: f64,
    /// Summed threads of live agents.
    pub threads: u64,
}

/// A line in the footer for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// What to say.
    pub text: String,
    /// Shown in red.
    pub error: bool,
    /// When it goes away.
    pub until: Instant,
}

/// Whether the daemon and its event stream answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    /// The last full refresh failed with this.
    pub refresh_error: Option<String>,
    /// The event stream is down, with this reason (it reconnects by itself).
    pub events_error: Option<String>,
}

/// Everything the dashboard knows and shows.
#[derive(Debug)]
pub struct Model {
    agents: Vec<AgentStatus>,
    by_id: HashMap<String, usize>,
    rows: Vec<usize>,
    stale: bool,
    counts: Counts,
    longest_id: usize,
    /// Length of the longest node name of an agent placed on an engine (0
    /// for a job not placed yet); `None` when no agent is.
    longest_node: Option<usize>,
    sort: SortKey,
    reverse: bool,
    filter: Filter,
    selected: usize,
    selected_id: Option<String>,
    /// First row drawn; the view scrolls it so the selection stays visible.
    pub offset: Cell<usize>,
    /// Rows the table showed last frame (for paging).
    pub page: Cell<usize>,
    mode: Mode,
    detail: Option<Detail>,
    logs_in_flight: Option<String>,
    note: Option<Note>,
    link: Link,
    loaded: bool,
    /// Every team with budgets, as the last refresh had them.
    teams: Vec<corral_core::TeamStatus>,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty dashboard, sorted by id.
    pub fn new() -> Self {
        Self {
            agents: Vec::new(),
            by_id: HashMap::new(),
            rows: Vec::new(),
            stale: false,
            counts: Counts::default(),
            longest_id: 0,
            longest_node: None,
            sort: SortKey::Id,
            reverse: false,
            filter: Filter::default(),
            selected: 0,
            selected_id: None,
            offset: Cell::new(0),
            page: Cell::new(10),
            mode: Mode::Normal,
            detail: None,
            logs_in_flight: None,
            note: None,
            link: Link::default(),
            loaded: false,
            teams: Vec::new(),
        }
    }

    /// The teams with budgets (shown as a row under the header when there are any).
    pub fn teams(&self) -> &[corral_core::TeamStatus] {
        &self.teams
    }

    /// The teams with budgets, from a refresh.
    pub fn set_teams(&mut self, teams: Vec<corral_core::TeamStatus>) {
        self.teams = teams;
    }

    // -- what the view reads -------------------------------------------------

    /// The agents shown, in order. Call [`Model::prepare`] first.
    #[cfg(test)]
    pub fn rows(&self) -> impl Iterator<Item = &AgentStatus> + '_ {
        self.rows.iter().filter_map(|&i| self.agents.get(i))
    }

    /// The `n`th row shown.
    pub fn row(&self, n: usize) -> Option<&AgentStatus> {
        self.rows.get(n).and_then(|&i| self.agents.get(i))
    }

    /// Number of rows shown.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Index of the selected row.
    pub fn selected(&self) -> usize {
        self.selected
    }

    /// The selected agent.
    pub fn selected_agent(&self) -> Option<&AgentStatus> {
        self.row(self.selected)
    }

    /// An agent by id.
    pub fn agent(&self, id: &str) -> Option<&AgentStatus> {
        self.by_id.get(id).map(|&i| &self.agents[i])
    }

    /// Counts and totals.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Length of the longest id known (for the id column's width).
    pub fn longest_id(&self) -> usize {
        self.longest_id
    }

    /// Length of the longest node name agents are placed on, `None` when no
    /// agent is placed on an engine (then the table has no NODE column).
    pub fn longest_node(&self) -> Option<usize> {
        self.longest_node
    }

    /// The sort column and whether it is reversed.
    pub fn sort(&self) -> (SortKey, bool) {
        (self.sort, self.reverse)
    }

    /// The filter in force.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The prompt, if any.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// The detail pane, when open.
    pub fn detail(&self) -> Option<&Detail> {
        self.detail.as_ref()
    }

    /// The footer note, if any.
    pub fn note(&self) -> Option<&Note> {
        self.note.as_ref()
    }

    /// The daemon link's state.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Whether a first snapshot has arrived.
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    // -- what the loop feeds in ----------------------------------------------

    /// Replaces everything with a full snapshot (`GET /v1/agents`).
    pub fn set_snapshot(&mut self, all: BTreeMap<String, AgentStatus>) {
        self.agents = all.into_values().collect();
        self.by_id = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, s)| (s.agent_id.clone(), i))
            .collect();
        self.link.refresh_error = None;
        self.loaded = true;
        self.stale = true;
    }

    /// A full refresh failed.
    pub fn set_refresh_error(&mut self, error: String) {
        self.link.refresh_error = Some(error);
    }

    /// The event stream is up (`None`) or down, with the reason.
    pub fn set_events_error(&mut self, error: Option<String>) {
        self.link.events_error = error;
    }

    /// One agent's fresh, whole status (`GET /v1/agents/{id}`).
    pub fn upsert(&mut self, s: AgentStatus) {
        if let Some(d) = self.detail.as_mut()
            && d.id == s.agent_id
        {
            d.full = Some(s.clone());
        }
        match self.by_id.get(&s.agent_id) {
            Some(&i) => self.agents[i] = s,
            None => {
                self.by_id.insert(s.agent_id.clone(), self.agents.len());
                self.agents.push(s);
            }
        }
        self.stale = true;
    }

    /// An agent the daemon no longer knows (removed or pruned).
    pub fn remove(&mut self, id: &str) {
        let Some(i) = self.by_id.remove(id) else {
            return;
        };
        self.agents.swap_remove(i);
        if let Some(moved) = self.agents.get(i) {
            self.by_id.insert(moved.agent_id.clone(), i);
        }
        self.stale = true;
    }

    /// Applies what an event says at once, before the agent's fresh status
    /// (which the loop fetches after any event but a progress report)
    /// arrives: a progress report, and the committed state and stop of a
    /// transition (its health comes with the fresh status). Returns whether
    /// the event was about an agent not known yet.
    pub fn apply_event(&mut self, ev: &Event) -> bool {
        let Some(&i) = self.by_id.get(&ev.agent_id) else {
            return true;
        };
        if !apply_to(&mut self.agents[i], ev) {
            return false;
        }
        // The detail pane's whole status says the same as the row.
        if let Some(full) = self
            .detail
            .as_mut()
            .filter(|d| d.id == ev.agent_id)
            .and_then(|d| d.full.as_mut())
        {
            apply_to(full, ev);
        }
        self.stale = true;
        false
    }

    /// The answer to [`Effect::FetchDetail`].
    pub fn set_logs(&mut self, id: &str, stdout: LogTail, stderr: LogTail) {
        if self.logs_in_flight.as_deref() == Some(id) {
            self.logs_in_flight = None;
        }
        if let Some(d) = &mut self.detail
            && d.id == id
        {
            d.stdout = stdout;
            d.stderr = stderr;
        }
    }

    /// Shows a note in the footer until `now + NOTE_FOR`.
    pub fn set_note(&mut self, text: impl Into<String>, error: bool, now: Instant) {
        self.note = Some(Note {
            text: text.into(),
            error,
            until: now + NOTE_FOR,
        });
    }

    /// The periodic tick: expires the note and, while the detail pane is open,
    /// asks for its logs again (unless a fetch is still out).
    pub fn tick(&mut self, now: Instant) -> Option<Effect> {
        if self.note.as_ref().is_some_and(|n| now >= n.until) {
            self.note = None;
        }
        let id = self.detail.as_ref()?.id.clone();
        if self.logs_in_flight.is_some() {
            return None;
        }
        self.logs_in_flight = Some(id.clone());
        Some(Effect::FetchDetail(id))
    }

    /// Rebuilds the shown rows if anything they depend on changed: filters,
    /// sorts, recounts and finds the selection again. Cheap when nothing did.
    pub fn prepare(&mut self) -> Option<Effect> {
        self.refresh_rows();
        self.follow_selection()
    }

    fn refresh_rows(&mut self) {
        if self.stale {
            self.stale = false;
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let mut rows: Vec<usize> = (0..self.agents.len())
            .filter(|&i| self.filter.matches(&self.agents[i]))
            .collect();
        let (agents, key, reverse) = (&self.agents, self.sort, self.reverse);
        rows.sort_by(|&a, &b| compare(&agents[a], &agents[b], key, reverse));
        self.rows = rows;

        let mut c = Counts {
            total: self.agents.len(),
            shown: self.rows.len(),
            ..Counts::default()
        };
        let mut longest = 0;
        let mut longest_node = None;
        for s in &self.agents {
            longest = longest.max(s.agent_id.chars().count());
            if let Some(p) = &s.placement {
                let n = p.node.as_deref().map_or(0, |n| n.chars().count());
                longest_node = Some(longest_node.unwrap_or(0).max(n));
            }
            match s.persistent_status {
                PersistentStatus::Spawning => c.spawning += 1,
                PersistentStatus::Running => c.running += 1,
                PersistentStatus::Completed => c.completed += 1,
                PersistentStatus::Failed => c.failed += 1,
                PersistentStatus::Cancelled => c.cancelled += 1,
            }
            if s.state == AgentState::Stopping {
                c.stopping += 1;
            }
            match s.health {
                Health::Zombie => c.zombie += 1,
                Health::Unknown => c.unknown += 1,
                _ => {}
            }
            if s.process_alive {
                c.cpu += s.cpu_percent;
                c.memory_mb += s.memory_mb;
                c.threads += u64::from(s.num_threads);
            }
        }
        self.counts = c;
        self.longest_id = longest;
        self.longest_node = longest_node;

        // Keep the selected agent selected wherever it moved; if it is gone,
        // keep the position.
        if let Some(id) = &self.selected_id
            && let Some(pos) = self
                .rows
                .iter()
                .position(|&i| &self.agents[i].agent_id == id)
        {
            self.selected = pos;
        }
        self.clamp_selection();
    }

    fn clamp_selection(&mut self) {
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        self.selected_id = self.row(self.selected).map(|s| s.agent_id.clone());
    }

    /// With the detail pane open, it shows the selection: when the selection
    /// moved to another agent, the pane follows and its logs are fetched.
    fn follow_selection(&mut self) -> Option<Effect> {
        let id = self.selected_id.clone()?;
        let d = self.detail.as_mut()?;
        if d.id == id {
            return None;
        }
        *d = Detail {
            id: id.clone(),
            stdout: LogTail::Loading,
            stderr: LogTail::Loading,
            scroll: 0,
            full: None,
        };
        self.logs_in_flight = Some(id.clone());
        Some(Effect::FetchDetail(id))
    }

    fn select(&mut self, n: usize) -> Option<Effect> {
        self.selected = n;
        self.clamp_selection();
        self.follow_selection()
    }

    // -- keys -----------------------------------------------------------------

    /// Handles one key press; returns what the loop must do, if anything.
    pub fn on_key(&mut self, key: KeyEvent, now: Instant) -> Option<Effect> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('c') {
            return Some(Effect::Quit);
        }
        // Keys act on the rows as shown, so bring them up to date first.
        self.refresh_rows();
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key, now),
            Mode::Help => None,
            Mode::Confirm(action, id) => {
                if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                    let what = match action {
                        Action::Stop => "stopping",
                        Action::Kill => "killing",
                        Action::Restart => "restarting",
                        Action::Pause => "pausing",
                        Action::Resume => "resuming",
                    };
                    self.set_note(format!("{what} {id}…"), false, now);
                    Some(Effect::Act(action, id))
                } else {
                    self.set_note(format!("{id} left alone"), false, now);
                    None
                }
            }
            Mode::Filter { mut input, before } => {
                match key.code {
                    KeyCode::Enter => return None,
                    KeyCode::Esc => {
                        self.set_filter(before);
                        return None;
                    }
                    KeyCode::Backspace => {
                        input.pop();
                    }
                    KeyCode::Char('u') if ctrl => input.clear(),
                    KeyCode::Char(c) if !ctrl => input.push(c),
                    _ => {}
                }
                self.set_filter(Filter::parse(&input));
                self.mode = Mode::Filter { input, before };
                None
            }
        }
    }

    fn set_filter(&mut self, filter: Filter) {
        if filter != self.filter {
            self.filter = filter;
            self.stale = true;
        }
    }

    fn normal_key(&mut self, key: KeyEvent, now: Instant) -> Option<Effect> {
        let last = self.rows.len().saturating_sub(1);
        let page = self.page.get().max(1);
        match key.code {
            KeyCode::Char('q') => Some(Effect::Quit),
            KeyCode::Esc if self.detail.is_some() => {
                self.detail = None;
                None
            }
            KeyCode::Esc => Some(Effect::Quit),
            KeyCode::Up | KeyCode::Char('k') => self.select(self.selected.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.select((self.selected + 1).min(last)),
            KeyCode::Home | KeyCode::Char('g') => self.select(0),
            KeyCode::End | KeyCode::Char('G') => self.select(last),
            KeyCode::PageUp if self.detail.is_some() => {
                self.scroll_detail(-10);
                None
            }
            KeyCode::PageDown if self.detail.is_some() => {
                self.scroll_detail(10);
                None
            }
            KeyCode::PageUp => self.select(self.selected.saturating_sub(page)),
            KeyCode::PageDown => self.select((self.selected + page).min(last)),
            KeyCode::Enter => {
                if self.detail.take().is_some() {
                    return None;
                }
                let id = self.selected_id.clone()?;
                self.detail = Some(Detail {
                    id: id.clone(),
                    stdout: LogTail::Loading,
                    stderr: LogTail::Loading,
                    scroll: 0,
                    full: None,
                });
                self.logs_in_flight = Some(id.clone());
                Some(Effect::FetchDetail(id))
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.reverse = false;
                self.stale = true;
                None
            }
            KeyCode::Char('r') => {
                self.reverse = !self.reverse;
                self.stale = true;
                None
            }
            KeyCode::Char('/') => {
                self.mode = Mode::Filter {
                    input: self.filter.text().to_owned(),
                    before: self.filter.clone(),
                };
                None
            }
            KeyCode::Char('?') | KeyCode::F(1) => {
                self.mode = Mode::Help;
                None
            }
            KeyCode::Char('x') => self.confirm(Action::Stop, now),
            KeyCode::Char('K') => self.confirm(Action::Kill, now),
            KeyCode::Char('R') => self.confirm(Action::Restart, now),
            KeyCode::Char('p') => self.toggle_pause(now),
            _ => None,
        }
    }

    /// `p`: pauses the selected agent when it runs, resumes it when it is
    /// paused (at once: nothing is lost either way).
    fn toggle_pause(&mut self, now: Instant) -> Option<Effect> {
        let s = self.selected_agent()?;
        let id = s.agent_id.clone();
        let (action, what) = match s.state {
            AgentState::Running => (Action::Pause, "pausing"),
            AgentState::Paused => (Action::Resume, "resuming"),
            other => {
                self.set_note(
                    format!("{id} is {other}: only a running agent can be paused"),
                    false,
                    now,
                );
                return None;
            }
        };
        self.set_note(format!("{what} {id}…"), false, now);
        Some(Effect::Act(action, id))
    }

    fn scroll_detail(&mut self, by: i32) {
        if let Some(d) = &mut self.detail {
            // The view stops at the last field; this only bounds the number.
            d.scroll = u16::try_from((i32::from(d.scroll) + by).clamp(0, 200)).unwrap_or(0);
        }
    }

    /// Opens the y/n question for an action on the selected agent, if it can
    /// still be stopped (it runs, or a restart is planned).
    fn confirm(&mut self, action: Action, now: Instant) -> Option<Effect> {
        let s = self.selected_agent()?;
        let id = s.agent_id.clone();
        // An ended agent can be restarted; it cannot be stopped.
        if action != Action::Restart
            && !s.persistent_status.is_live()
            && s.next_restart_at.is_none()
        {
            self.set_note(
                format!("{id} has already ended ({})", s.persistent_status),
                false,
                now,
            );
            return None;
        }
        self.mode = Mode::Confirm(action, id);
        None
    }
}

/// The order of two rows: the key's natural direction (flipped by `reverse`),
/// ties broken by id so the order never jitters between refreshes.
pub fn compare(
    a: &AgentStatus,
    b: &AgentStatus,
    key: SortKey,
    reverse: bool,
) -> std::cmp::Ordering {
    let primary = match key {
        SortKey::Id => corral_core::natural_cmp(&a.agent_id, &b.agent_id),
        SortKey::Cpu => a.cpu_percent.total_cmp(&b.cpu_percent),
        SortKey::Memory => a.memory_mb.total_cmp(&b.memory_mb),
        SortKey::Runtime => a.runtime_seconds.total_cmp(&b.runtime_seconds),
        SortKey::Restarts => a.restarts.cmp(&b.restarts),
        SortKey::Health => tone(a).cmp(&tone(b)),
    };
    let primary = if key.descending() != reverse {
        primary.reverse()
    } else {
        primary
    };
    primary.then_with(|| corral_core::natural_cmp(&a.agent_id, &b.agent_id))
}

/// What an event says of an agent, applied to its status; false when it
/// says nothing the status shows, or is of an older run.
fn apply_to(s: &mut AgentStatus, ev: &Event) -> bool {
    if ev.run < s.run {
        return false;
    }
    match &ev.body {
        EventBody::State(st) => {
            s.run = ev.run;
            if let Some(state) = st.state {
                s.state = state;
                s.stop = st.stop.clone();
            }
            if let Some(status) = st.status {
                s.persistent_status = status;
                if !status.is_live() {
                    s.process_alive = false;
                    s.exit_code = st.exit_code;
                    s.exit_signal = st.exit_signal;
                    s.end_reason = st.reason.clone();
                }
            }
            if let Some(pid) = st.pid {
                s.pid = Some(pid);
            }
        }
        EventBody::Progress(p) => {
            s.progress = Some(p.progress);
            s.progress_message = p.message.clone();
            s.progress_at = Some(ev.at.clone());
        }
        // Placed (or re-placed) on an engine: the node it runs on.
        EventBody::Job(j) => {
            s.run = ev.run;
            s.placement = Some(corral_core::PlacementInfo {
                engine: j.engine.clone(),
                job_id: j.job_id.clone(),
                node: j.node.clone(),
                pending_reason: None,
            });
            // (A status that came with it comes as a state event too.)
        }
        // Off its node and queued again (the state event says `starting`).
        EventBody::JobRequeued(j) => {
            s.run = ev.run;
            s.placement = Some(corral_core::PlacementInfo {
                engine: j.engine.clone(),
                job_id: j.job_id.clone(),
                node: None,
                pending_reason: Some(j.pending_reason.clone()),
            });
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plausible running agent; tests change what they look at.
    pub fn agent(id: &str) -> AgentStatus {
        AgentStatus {
            agent_id: id.to_owned(),
            pid: Some(1000),
            process_alive: true,
            process_status: "sleeping".into(),
            exit_code: None,
            is_zombie: false,
            cpu_percent: 0.0,
            memory_mb: 10.0,
            runtime_seconds: 60.0,
            num_threads: 1,
            cmdline: "sleep 3600".into(),
            health: Health::Healthy,
            persistent_status: PersistentStatus::Running,
            state: AgentState::Running,
            stop: None,
            started_at: "2026-11-26T10:30:00Z".into(),
            progress: None,
            progress_message: None,
            progress_at: None,
            exit_signal: None,
            ended_at: None,
            end_reason: None,
            run: 1,
            restarts: 0,
            next_restart_at: None,
            restart_policy: "never".into(),
            stop_timeouts: vec![10.0, 5.0, 5.0],
            ready: None,
            probe: None,
            limits: BTreeMap::new(),
            labels: BTreeMap::new(),
            stdout_log: format!("/state/agents/{id}/runs/1/stdout.log").into(),
            stderr_log: format!("/state/agents/{id}/runs/1/stderr.log").into(),
            containment: "cgroup".into(),
            user: None,
            placement: None,
            tree: None,
        }
    }

    /// Marks an agent ended with `status` and `health`.
    pub fn ended(mut s: AgentStatus, status: PersistentStatus, health: Health) -> AgentStatus {
        s.persistent_status = status;
        s.state = AgentState::Ended;
        s.health = health;
        s.process_alive = false;
        s.process_status = "dead".into();
        s.cpu_percent = 0.0;
        s.memory_mb = 0.0;
        s
    }

    fn model_of(agents: Vec<AgentStatus>) -> Model {
        let mut m = Model::new();
        m.set_snapshot(
            agents
                .into_iter()
                .map(|s| (s.agent_id.clone(), s))
                .collect(),
        );
        m.prepare();
        m
    }

    fn ids(m: &Model) -> Vec<&str> {
        m.rows().map(|s| s.agent_id.as_str()).collect()
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn press(m: &mut Model, code: KeyCode) -> Option<Effect> {
        let fx = m.on_key(key(code), Instant::now());
        let follow = m.prepare();
        fx.or(follow)
    }

    fn fleet() -> Vec<AgentStatus> {
        let mut a = agent("a");
        a.cpu_percent = 5.0;
        a.memory_mb = 300.0;
        a.runtime_seconds = 10.0;
        a.restarts = 2;
        let mut b = agent("b");
        b.cpu_percent = 50.0;
        b.memory_mb = 100.0;
        b.runtime_seconds = 500.0;
        let c = ended(agent("c"), PersistentStatus::Failed, Health::Failed);
        let mut d = ended(agent("d"), PersistentStatus::Cancelled, Health::Cancelled);
        d.restarts = 1;
        let mut e = agent("e");
        e.health = Health::Zombie;
        e.cpu_percent = 5.0;
        e.runtime_seconds = 10.0;
        vec![a, b, c, d, e]
    }

    #[test]
    fn sorts_by_each_key_both_ways() {
        use SortKey::*;
        let cases: &[(SortKey, bool, &[&str])] = &[
            (Id, false, &["a", "b", "c", "d", "e"]),
            (Id, true, &["e", "d", "c", "b", "a"]),
            // Busiest first; ties by id.
            (Cpu, false, &["b", "a", "e", "c", "d"]),
            (Cpu, true, &["c", "d", "a", "e", "b"]),
            (Memory, false, &["a", "b", "e", "c", "d"]),
            (Memory, true, &["c", "d", "e", "b", "a"]),
            (Runtime, false, &["b", "c", "d", "a", "e"]),
            (Runtime, true, &["a", "e", "c", "d", "b"]),
            (Restarts, false, &["a", "d", "b", "c", "e"]),
            (Restarts, true, &["b", "c", "e", "d", "a"]),
            // Problems first: failed, zombie, healthy, then cancelled (done).
            (Health, false, &["c", "e", "a", "b", "d"]),
            (Health, true, &["d", "a", "b", "e", "c"]),
        ];
        for (key, reverse, want) in cases {
            let mut rows = fleet();
            rows.sort_by(|x, y| compare(x, y, *key, *reverse));
            let got: Vec<&str> = rows.iter().map(|s| s.agent_id.as_str()).collect();
            assert_eq!(&got, want, "sort by {key:?}, reversed: {reverse}");
        }
    }

    #[test]
    fn s_cycles_the_sort_column_and_r_reverses_it() {
        let mut m = model_of(fleet());
        assert_eq!(m.sort(), (SortKey::Id, false));
        let mut seen = vec![];
        for _ in 0..6 {
            press(&mut m, KeyCode::Char('s'));
            seen.push(m.sort().0);
        }
        use SortKey::*;
        assert_eq!(seen, [Cpu, Memory, Runtime, Restarts, Health, Id]);
        press(&mut m, KeyCode::Char('r'));
        assert_eq!(ids(&m), ["e", "d", "c", "b", "a"]);
    }

    #[test]
    fn filters_by_id_label_and_state() {
        let mut agents = fleet();
        agents[0].labels.insert("team".into(), "red".into());
        agents[1].labels.insert("team".into(), "blue".into());
        agents.push(agent("Indexer.1"));
        let mut gone = ended(
            agent("idx-unknown"),
            PersistentStatus::Failed,
            Health::Unknown,
        );
        gone.labels.insert("team".into(), "red".into());
        agents.push(gone);
        let cases: &[(&str, &[&str])] = &[
            ("", &["Indexer.1", "a", "b", "c", "d", "e", "idx-unknown"]),
            ("index", &["Indexer.1"]),
            ("INDEX", &["Indexer.1"]),
            ("team=red", &["a", "idx-unknown"]),
            ("team=re", &[]),
            ("team=red failed", &["idx-unknown"]),
            ("running", &["Indexer.1", "a", "b", "e"]),
            ("failed", &["c", "idx-unknown"]),
            ("cancelled", &["d"]),
            ("zombie", &["e"]),
            ("unknown", &["idx-unknown"]),
            ("healthy", &["Indexer.1", "a", "b"]),
            ("nothing-like-this", &[]),
            ("  i  ", &["Indexer.1", "idx-unknown"]),
        ];
        for (text, want) in cases {
            let f = Filter::parse(text);
            let got: Vec<&str> = agents
                .iter()
                .filter(|s| f.matches(s))
                .map(|s| s.agent_id.as_str())
                .collect();
            let mut got = got;
            got.sort_unstable();
            assert_eq!(&got, want, "filter {text:?}");
        }
    }

    #[test]
    fn the_filter_prompt_applies_as_typed_and_esc_restores_the_old_one() {
        let mut m = model_of(fleet());
        press(&mut m, KeyCode::Char('/'));
        for c in "fail".chars() {
            press(&mut m, KeyCode::Char(c));
        }
        // "fail" is no state word: a piece of the id, matching nothing.
        assert_eq!(m.row_count(), 0);
        press(&mut m, KeyCode::Char('e'));
        press(&mut m, KeyCode::Char('d'));
        assert_eq!(ids(&m), ["c"]);
        press(&mut m, KeyCode::Enter);
        assert_eq!(m.mode(), &Mode::Normal);
        assert_eq!(m.filter().text(), "failed");
        // Edit again, then change our mind.
        press(&mut m, KeyCode::Char('/'));
        press(&mut m, KeyCode::Backspace);
        press(&mut m, KeyCode::Backspace);
        assert_eq!(m.row_count(), 0, "'fail' matches nothing");
        press(&mut m, KeyCode::Esc);
        assert_eq!(ids(&m), ["c"]);
        assert_eq!(m.counts().shown, 1);
        assert_eq!(m.counts().total, 5);
    }

    #[test]
    fn the_selection_follows_its_agent_across_sorts_and_refreshes() {
        let mut m = model_of(fleet());
        press(&mut m, KeyCode::Down);
        press(&mut m, KeyCode::Char('j'));
        assert_eq!(m.selected_agent().unwrap().agent_id, "c");
        press(&mut m, KeyCode::Char('r'));
        assert_eq!(m.selected(), 2, "c is in the middle either way");
        press(&mut m, KeyCode::Char('s')); // cpu, busiest first: b a e c d
        assert_eq!(m.selected_agent().unwrap().agent_id, "c");
        assert_eq!(m.selected(), 3);
        // A refresh without c keeps the position.
        let mut rest = fleet();
        rest.remove(2);
        m.set_snapshot(rest.into_iter().map(|s| (s.agent_id.clone(), s)).collect());
        m.prepare();
        assert_eq!(m.selected(), 3);
        assert_eq!(m.selected_agent().unwrap().agent_id, "d");
        press(&mut m, KeyCode::End);
        press(&mut m, KeyCode::Down);
        assert_eq!(m.selected(), 3, "stays on the last row");
        press(&mut m, KeyCode::Home);
        press(&mut m, KeyCode::Up);
        assert_eq!(m.selected(), 0);
    }

    #[test]
    fn p_pauses_a_running_agent_and_resumes_a_paused_one_at_once() {
        let mut fleet = fleet();
        fleet[1].state = AgentState::Paused;
        fleet[1].health = Health::Paused;
        let mut m = model_of(fleet);
        assert_eq!(
            press(&mut m, KeyCode::Char('p')),
            Some(Effect::Act(Action::Pause, "a".into()))
        );
        assert_eq!(m.mode(), &Mode::Normal, "no question asked");
        press(&mut m, KeyCode::Char('j'));
        assert_eq!(
            press(&mut m, KeyCode::Char('p')),
            Some(Effect::Act(Action::Resume, "b".into()))
        );
        // An ended agent gets a note.
        press(&mut m, KeyCode::Char('j'));
        assert_eq!(press(&mut m, KeyCode::Char('p')), None);
        assert!(
            m.note()
                .unwrap()
                .text
                .contains("only a running agent can be paused")
        );
    }

    #[test]
    fn stop_and_kill_happen_only_after_yes() {
        let mut m = model_of(fleet());
        assert_eq!(press(&mut m, KeyCode::Char('x')), None);
        assert_eq!(m.mode(), &Mode::Confirm(Action::Stop, "a".into()));
        assert_eq!(press(&mut m, KeyCode::Char('n')), None);
        assert_eq!(m.mode(), &Mode::Normal);
        press(&mut m, KeyCode::Char('x'));
        assert_eq!(press(&mut m, KeyCode::Enter), None, "only y says yes");
        press(&mut m, KeyCode::Char('K'));
        assert_eq!(
            press(&mut m, KeyCode::Char('y')),
            Some(Effect::Act(Action::Kill, "a".into()))
        );
        press(&mut m, KeyCode::Char('x'));
        assert_eq!(
            press(&mut m, KeyCode::Char('Y')),
            Some(Effect::Act(Action::Stop, "a".into()))
        );
        // An ended agent gets a note, not a question.
        press(&mut m, KeyCode::Char('j'));
        press(&mut m, KeyCode::Char('j'));
        assert_eq!(press(&mut m, KeyCode::Char('x')), None);
        assert_eq!(m.mode(), &Mode::Normal);
        assert!(m.note().unwrap().text.contains("already ended"));
        // ... but it can be restarted, after yes.
        let ended = m.selected_agent().unwrap().agent_id.clone();
        assert_eq!(press(&mut m, KeyCode::Char('R')), None);
        assert_eq!(m.mode(), &Mode::Confirm(Action::Restart, ended.clone()));
        assert_eq!(
            press(&mut m, KeyCode::Char('y')),
            Some(Effect::Act(Action::Restart, ended))
        );
    }

    #[test]
    fn quit_keys() {
        for code in [KeyCode::Char('q'), KeyCode::Esc] {
            let mut m = model_of(fleet());
            assert_eq!(press(&mut m, code), Some(Effect::Quit), "{code:?}");
        }
        let mut m = model_of(fleet());
        press(&mut m, KeyCode::Char('/'));
        assert_eq!(
            press(&mut m, KeyCode::Char('q')),
            None,
            "typed into the filter"
        );
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(m.on_key(ctrl_c, Instant::now()), Some(Effect::Quit));
    }

    #[test]
    fn the_detail_pane_follows_the_selection_and_refreshes_its_logs() {
        let mut m = model_of(fleet());
        assert_eq!(
            press(&mut m, KeyCode::Enter),
            Some(Effect::FetchDetail("a".into()))
        );
        // A fetch is out: the tick does not pile another on.
        assert_eq!(m.tick(Instant::now()), None);
        m.set_logs(
            "a",
            LogTail::Text("hi\n".into()),
            LogTail::Text(String::new()),
        );
        assert_eq!(
            m.tick(Instant::now()),
            Some(Effect::FetchDetail("a".into()))
        );
        assert_eq!(
            press(&mut m, KeyCode::Down),
            Some(Effect::FetchDetail("b".into()))
        );
        // The late answer for a is not shown as b's.
        m.set_logs("a", LogTail::Text("late\n".into()), LogTail::Loading);
        assert_eq!(m.detail().unwrap().id, "b");
        assert_eq!(m.detail().unwrap().stdout, LogTail::Loading);
        // Esc closes the pane first, then quits.
        assert_eq!(press(&mut m, KeyCode::Esc), None);
        assert!(m.detail().is_none());
        assert_eq!(m.tick(Instant::now()), None);
        assert_eq!(press(&mut m, KeyCode::Esc), Some(Effect::Quit));
    }

    #[test]
    fn events_apply_at_once_and_counts_follow() {
        let mut m = model_of(fleet());
        assert_eq!(m.counts().running, 3);
        let ev = |body: EventBody| Event {
            seq: 1,
            at: "2026-11-26T10:31:00Z".into(),
            agent_id: "b".into(),
            run: 1,
            body,
        };
        assert!(
            !m.apply_event(&ev(EventBody::Progress(corral_core::ProgressEvent {
                progress: 40,
                message: Some("indexing".into())
            })))
        );
        let stop = corral_core::StopInfo {
            stage: corral_core::StopStage::Term,
            cause: corral_core::StopCause::User,
            began_at: "2026-11-26T10:31:00Z".into(),
            stage_deadline_at: Some("2026-11-26T10:31:10Z".into()),
            unkillable: false,
        };
        assert!(
            !m.apply_event(&ev(EventBody::State(corral_core::StateEvent {
                state: Some(AgentState::Stopping),
                stop: Some(stop),
                ..Default::default()
            })))
        );
        m.prepare();
        assert_eq!(m.agent("b").unwrap().state, AgentState::Stopping);
        assert_eq!(m.counts().stopping, 1);
        assert!(
            !m.apply_event(&ev(EventBody::State(corral_core::StateEvent {
                state: Some(AgentState::Ended),
                status: Some(PersistentStatus::Cancelled),
                exit_signal: Some(15),
                reason: Some("stopped on request".into()),
                ..Default::default()
            })))
        );
        m.prepare();
        let b = m.agent("b").unwrap();
        assert_eq!(b.progress, Some(40));
        assert_eq!(b.progress_message.as_deref(), Some("indexing"));
        assert_eq!(b.persistent_status, PersistentStatus::Cancelled);
        assert_eq!(b.exit_signal, Some(15));
        assert_eq!(b.state, AgentState::Ended);
        assert_eq!(b.stop, None);
        assert_eq!(m.counts().stopping, 0);
        assert_eq!(m.counts().running, 2);
        assert_eq!(m.counts().cancelled, 2);
        let mut unknown = ev(EventBody::State(corral_core::StateEvent {
            status: Some(PersistentStatus::Spawning),
            ..Default::default()
        }));
        unknown.agent_id = "new".into();
        assert!(m.apply_event(&unknown), "an unknown agent is to be fetched");
        let mut new = agent("new");
        new.persistent_status = PersistentStatus::Spawning;
        m.upsert(new);
        m.remove("a");
        m.prepare();
        assert_eq!(ids(&m), ["b", "c", "d", "e", "new"]);
        assert_eq!(m.counts().spawning, 1);
    }

    #[test]
    fn a_job_event_places_the_agent_and_the_node_column_follows() {
        let mut m = model_of(fleet());
        assert_eq!(m.longest_node(), None, "no agent placed: no NODE column");
        let placed = |node: Option<&str>| Event {
            seq: 1,
            at: "2026-11-26T10:31:00Z".into(),
            agent_id: "b".into(),
            run: 1,
            body: EventBody::Job(corral_core::JobEvent {
                engine: "slurm".into(),
                job_id: "1000004".into(),
                node: node.map(str::to_owned),
                status: None,
            }),
        };
        // Queued: placed, on no node yet.
        assert!(!m.apply_event(&placed(None)));
        m.prepare();
        assert_eq!(m.longest_node(), Some(0));
        assert!(!m.apply_event(&placed(Some("gpu-node-7"))));
        m.prepare();
        let p = m.agent("b").unwrap().placement.clone().unwrap();
        assert_eq!(
            (p.job_id.as_str(), p.node.as_deref()),
            ("1000004", Some("gpu-node-7"))
        );
        assert_eq!(m.longest_node(), Some(10));
        // Requeued by the engine: off its node, queued again, the same job.
        let requeued = Event {
            body: EventBody::JobRequeued(corral_core::JobRequeuedEvent {
                engine: "slurm".into(),
                job_id: "1000004".into(),
                node: Some("gpu-node-7".into()),
                pending_reason: "BeginTime".into(),
            }),
            ..placed(None)
        };
        assert!(!m.apply_event(&requeued));
        m.prepare();
        let p = m.agent("b").unwrap().placement.clone().unwrap();
        assert_eq!(
            (p.job_id.as_str(), p.node, p.pending_reason.as_deref()),
            ("1000004", None, Some("BeginTime"))
        );
        m.remove("b");
        m.prepare();
        assert_eq!(m.longest_node(), None);
    }

    #[test]
    fn the_detail_pane_shows_the_whole_status_and_events_change_it_with_the_row() {
        let mut m = model_of(fleet());
        assert_eq!(
            press(&mut m, KeyCode::Enter),
            Some(Effect::FetchDetail("a".into()))
        );
        assert_eq!(m.detail().unwrap().full, None, "not fetched yet");
        let mut whole = agent("a");
        whole.cmdline = "sleep 300".into();
        m.upsert(whole);
        assert_eq!(
            m.detail()
                .unwrap()
                .full
                .as_ref()
                .map(|s| s.cmdline.as_str()),
            Some("sleep 300")
        );
        let stopping = Event {
            seq: 1,
            at: "2026-11-26T10:31:00Z".into(),
            agent_id: "a".into(),
            run: 1,
            body: EventBody::State(corral_core::StateEvent {
                state: Some(AgentState::Stopping),
                ..Default::default()
            }),
        };
        assert!(!m.apply_event(&stopping));
        let full = m.detail().unwrap().full.as_ref().unwrap();
        assert_eq!(
            full.state,
            AgentState::Stopping,
            "the pane agrees with the row"
        );
        assert_eq!(full.cmdline, "sleep 300", "and keeps what the row lacks");
        // Another agent's whole status does not land in this pane.
        m.upsert(agent("b"));
        assert_eq!(m.detail().unwrap().full.as_ref().unwrap().agent_id, "a");
    }
}
