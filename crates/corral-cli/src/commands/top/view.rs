//! Drawing: one function turns a [`Model`] into a frame, and nothing else.
//!
//! Rendering reads the model and never changes what it means (the one thing
//! it writes back is where the table scrolled to, so the selection stays in
//! view). That keeps it testable on ratatui's `TestBackend`: a model in, a
//! buffer out, compared as text and colours.
//!
//! Only the rows that fit are turned into widgets: with a thousand agents the
//! frame costs the same as with thirty. Everything an agent wrote itself (log
//! lines, progress messages, reasons, labels) passes through [`clean`] first,
//! so an escape sequence in an agent's output cannot reach the terminal.
//!
//! While any team has budgets (`corral team set`), a third header line shows
//! each: its budgets as `used/budget`, in red when it is over one.
//!
//! A NODE column (where an agent's job runs: its placement's node) is there
//! only while some agent is placed on an engine such as Slurm, as wide as the
//! longest node name (at most [`MAX_NODE`] cells).
//!
//! On a narrow terminal the table leaves columns out before it squeezes the
//! two that matter most, the id and the progress: [`DROP_ORDER`] goes
//! THR, READY, RST, PID, STATE, NODE, RUNTIME, MEM, CPU%, each left out only while
//! the id would get fewer than [`ID_FLOOR`] cells or the progress fewer than
//! [`MIN_PROGRESS`] (so at 80 columns PROGRESS stays, with ID, HEALTH, CPU%,
//! MEM and RUNTIME). Ids are cut in the middle and kept apart the way `ps`
//! cuts them ([`crate::output::cut_distinct`]); the footer leaves out the
//! key hints that do not fit, but never `? help`.

use std::borrow::Cow;

use corral_core::{AgentState, AgentStatus, ProbeState};
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, Cell, Clear, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap,
};

use super::model::{Action, Detail, LogTail, Mode, Model, SortKey, Tone, tone};
use crate::output::{cut_distinct, cut_middle, distinct_width};

/// Cells of the progress bar; half that when the progress column is narrow.
const BAR: usize = 10;
/// Below this width the progress column gets the short bar, leaving room for the message.
const WIDE_PROGRESS: u16 = 36;
/// The id column never grows wider than this; longer ids are cut in the middle.
const MAX_ID: u16 = 32;
/// The progress column keeps at least this many cells while the id column
/// can shrink or another column can be left out.
const MIN_PROGRESS: u16 = 24;
/// The id column keeps at least this many cells (or the longest id's) while
/// another column can be left out.
const ID_FLOOR: u16 = 12;
/// How narrow the id column gets when nothing is left to leave out (wider
/// if the ids would not stay apart).
const ID_LEAST: u16 = 6;
/// The NODE column is never wider than this; longer names are cut in the middle.
const MAX_NODE: u16 = 16;
/// Width of the field list in the detail pane.
const FIELDS_WIDTH: u16 = 52;

/// Draws the whole dashboard. Call [`Model::prepare`] first.
pub fn render(frame: &mut Frame<'_>, m: &Model) {
    let header_height = if m.teams().is_empty() { 2 } else { 3 };
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_header(frame, header, m);
    match m.detail() {
        Some(d) => {
            let table_height = (body.height / 3).max(6).min(body.height);
            let [top, bottom] =
                Layout::vertical([Constraint::Length(table_height), Constraint::Fill(1)])
                    .areas(body);
            render_table(frame, top, m);
            render_detail(frame, bottom, m, d);
        }
        None => render_table(frame, body, m),
    }
    render_footer(frame, footer, m);
    match m.mode() {
        Mode::Confirm(action, id) => render_confirm(frame, *action, id),
        Mode::Help => render_help(frame),
        Mode::Normal | Mode::Filter { .. } => {}
    }
}

/// The colour of a tone.
pub fn tone_color(t: Tone) -> Color {
    match t {
        Tone::Good => Color::Green,
        Tone::Bad => Color::Red,
        Tone::Warn => Color::Yellow,
        Tone::Done => Color::DarkGray,
    }
}

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}

fn render_header(frame: &mut Frame<'_>, area: Rect, m: &Model) {
    let c = m.counts();
    let mut first = vec![
        Span::styled(" corral top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            " {} agent{}: ",
            c.total,
            if c.total == 1 { "" } else { "s" }
        )),
    ];
    let parts = [
        (c.running, "running", Color::Green, true),
        (c.spawning, "spawning", Color::Cyan, false),
        (c.stopping, "stopping", Color::Yellow, false),
        (c.failed, "failed", Color::Red, true),
        (c.completed, "completed", Color::DarkGray, true),
        (c.cancelled, "cancelled", Color::DarkGray, true),
        (c.zombie, "zombie", Color::Yellow, false),
        (c.unknown, "unknown", Color::Yellow, false),
    ];
    let mut sep = false;
    for (n, word, color, always) in parts {
        if n == 0 && !always {
            continue;
        }
        if sep {
            first.push(Span::styled(" · ", dim()));
        }
        sep = true;
        let style = if n == 0 {
            dim()
        } else {
            Style::new().fg(color)
        };
        first.push(Span::styled(format!("{n} {word}"), style));
    }
    first.push(Span::raw(format!(
        "   CPU {:.1}%  MEM {}  THR {}",
        c.cpu,
        memory(c.memory_mb),
        c.threads
    )));

    let (key, reverse) = m.sort();
    let arrow = if key.descending() != reverse {
        "▼"
    } else {
        "▲"
    };
    let mut second = vec![Span::raw(format!(" sort: {} {arrow}", key.label()))];
    match m.mode() {
        Mode::Filter { input, .. } => {
            second.push(Span::raw("   filter: "));
            second.push(Span::styled(
                clean(input).into_owned(),
                Style::new().add_modifier(Modifier::BOLD),
            ));
            let x = area.x + Line::from(second.clone()).width() as u16;
            frame.set_cursor_position((x.min(area.right().saturating_sub(1)), area.y + 1));
            second.push(Span::styled(
                format!("   ({} of {} shown)", c.shown, c.total),
                dim(),
            ));
        }
        _ if !m.filter().is_empty() => {
            second.push(Span::raw(format!(
                "   filter: {} ({} of {} shown)",
                clean(m.filter().text()),
                c.shown,
                c.total
            )));
        }
        _ => {}
    }
    let link = m.link();
    if let Some(e) = &link.refresh_error {
        second.push(Span::styled(
            format!("   daemon: {}", clean(e)),
            Style::new().fg(Color::Red),
        ));
    } else if let Some(e) = &link.events_error {
        second.push(Span::styled(
            format!("   events: {} (reconnecting)", clean(e)),
            Style::new().fg(Color::Yellow),
        ));
    }
    let mut lines = vec![Line::from(first), Line::from(second)];
    if !m.teams().is_empty() {
        lines.push(teams_line(m.teams()));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

/// The teams with budgets, in one line: ` teams  L2 mem 212.0M/200.0M cpu 3%
/// pids 9 agents 3/5 · L3 …`, a team over a budget in red.
fn teams_line(teams: &[corral_core::TeamStatus]) -> Line<'static> {
    let mut spans = vec![Span::styled(
        " teams ",
        Style::new().add_modifier(Modifier::BOLD),
    )];
    for (i, t) in teams.iter().enumerate() {
        if i > 0 {
            spans.push(Span::styled(" ·", dim()));
        }
        let [mem, cpu, pids, agents] = crate::commands::team::cells(t);
        let style = if t.over.is_empty() {
            Style::new()
        } else {
            Style::new().fg(Color::Red)
        };
        let over = if t.over.is_empty() {
            String::new()
        } else {
            format!(" over {}", t.over.join(","))
        };
        spans.push(Span::styled(
            format!(
                " {} mem {mem} cpu {cpu} pids {pids} agents {agents}{over}",
                clean(&t.team)
            ),
            style,
        ));
    }
    Line::from(spans)
}

/// The columns between the id and the progress: title, width, right-aligned.
/// NODE's width is the longest node name's (see [`fit_columns`]).
const MIDDLE: [(&str, u16, bool); 10] = [
    ("PID", 7, true),
    ("NODE", 4, false),
    ("HEALTH", 9, false),
    ("STATE", 9, false),
    ("READY", 5, false),
    ("CPU%", 6, true),
    ("MEM", 8, true),
    ("THR", 4, true),
    ("RUNTIME", 7, true),
    ("RST", 3, true),
];

/// The columns a narrow terminal loses, in this order (HEALTH, the id and
/// the progress always stay).
const DROP_ORDER: [&str; 9] = [
    "THR", "READY", "RST", "PID", "STATE", "NODE", "RUNTIME", "MEM", "CPU%",
];

/// NODE's place in [`MIDDLE`].
const NODE: usize = 1;

/// The highlight symbol and the borders.
const FRAME_WIDTH: u16 = 2 + 2;

/// How the table fits a width: which of [`MIDDLE`] it shows, and how wide
/// the id and the progress columns are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fit {
    shown: [bool; MIDDLE.len()],
    /// Width of each of [`MIDDLE`].
    widths: [u16; MIDDLE.len()],
    id: u16,
    progress: u16,
}

/// The table's columns for a frame `width` cells wide, ids up to `longest`
/// characters that stay apart from `apart` cells on, and node names up to
/// `node` characters (`None`: no agent is placed on a node, no NODE column):
/// columns of [`DROP_ORDER`] are left out while the id column would get
/// fewer than [`ID_FLOOR`] cells or the progress fewer than
/// [`MIN_PROGRESS`]; then the id column takes what it wants up to
/// [`MAX_ID`], and the progress the rest.
fn fit_columns(width: u16, longest: u16, apart: u16, node: Option<u16>) -> Fit {
    let mut shown = [true; MIDDLE.len()];
    let mut widths = MIDDLE.map(|(_, w, _)| w);
    match node {
        Some(n) => widths[NODE] = n.clamp(MIDDLE[NODE].1, MAX_NODE),
        None => shown[NODE] = false,
    }
    // One cell between columns; the id and progress columns are always there.
    let room = |shown: &[bool; MIDDLE.len()]| {
        let middle: u16 = widths
            .iter()
            .zip(shown)
            .filter(|(_, on)| **on)
            .map(|(w, _)| w + 1)
            .sum();
        width.saturating_sub(FRAME_WIDTH + middle + 1)
    };
    let id_floor = longest.min(ID_FLOOR).max(apart);
    for title in DROP_ORDER {
        if room(&shown) >= id_floor + MIN_PROGRESS {
            break;
        }
        if let Some(i) = MIDDLE.iter().position(|(t, _, _)| *t == title) {
            shown[i] = false;
        }
    }
    let room = room(&shown);
    let id = room
        .saturating_sub(MIN_PROGRESS)
        .min(longest.min(MAX_ID))
        .max(longest.min(ID_LEAST))
        .max(apart);
    Fit {
        shown,
        widths,
        id,
        progress: room.saturating_sub(id),
    }
}

fn sort_column(key: SortKey) -> &'static str {
    match key {
        SortKey::Id => "ID",
        SortKey::Cpu => "CPU%",
        SortKey::Memory => "MEM",
        SortKey::Runtime => "RUNTIME",
        SortKey::Restarts => "RST",
        SortKey::Health => "HEALTH",
    }
}

fn render_table(frame: &mut Frame<'_>, area: Rect, m: &Model) {
    let block = Block::bordered().title(" agents ").border_style(dim());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if !m.loaded() || m.row_count() == 0 {
        let what = if !m.loaded() {
            "connecting to the daemon…"
        } else if m.counts().total == 0 {
            "no agents"
        } else {
            "no agent matches the filter"
        };
        frame.render_widget(Paragraph::new(Span::styled(what, dim())), inner);
        return;
    }
    // Scroll so the selection is visible; build only the rows that fit.
    let visible = usize::from(inner.height.saturating_sub(1)).max(1);
    let selected = m.selected();
    let mut offset = m.offset.get();
    if selected < offset {
        offset = selected;
    } else if selected >= offset + visible {
        offset = selected + 1 - visible;
    }
    offset = offset.min(m.row_count().saturating_sub(visible));
    m.offset.set(offset);
    m.page.set(visible);
    let agents: Vec<&AgentStatus> = (offset..(offset + visible).min(m.row_count()))
        .filter_map(|n| m.row(n))
        .collect();

    // The ids on screen stay apart however narrow their column gets.
    let ids: Vec<&str> = agents.iter().map(|s| s.agent_id.as_str()).collect();
    let cells = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    let apart = cells(distinct_width(&ids, usize::from(ID_LEAST)));
    let fit = fit_columns(
        area.width,
        cells(m.longest_id().max(2)),
        apart,
        m.longest_node().map(cells),
    );
    let id_width = usize::from(fit.id);
    let shown_ids = cut_distinct(&ids, id_width)
        .unwrap_or_else(|| ids.iter().map(|id| cut_middle(id, id_width)).collect());
    let bar = if fit.progress >= WIDE_PROGRESS {
        BAR
    } else {
        BAR / 2
    };

    let (key, _) = m.sort();
    let title = |text: &'static str, right: bool| {
        let style = if text == sort_column(key) {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        align(Line::styled(text, style), right)
    };
    let middle = || {
        MIDDLE
            .iter()
            .zip(fit.widths)
            .zip(fit.shown)
            .filter(|(_, on)| *on)
            .map(|(column, _)| column)
    };
    let header = Row::new(
        std::iter::once(title("ID", false))
            .chain(middle().map(|((text, _, right), _)| title(text, *right)))
            .chain([title("PROGRESS", false)]),
    );
    let widths = std::iter::once(Constraint::Length(fit.id))
        .chain(middle().map(|(_, w)| Constraint::Length(w)))
        .chain([Constraint::Fill(1)]);
    let node_width = usize::from(fit.widths[NODE]);
    let rows = agents
        .into_iter()
        .zip(shown_ids)
        .map(|(s, id)| agent_row(s, id, fit.shown, bar, node_width));
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶ ")
        .highlight_spacing(HighlightSpacing::Always);
    let mut state = TableState::new().with_selected(Some(selected - offset));
    frame.render_stateful_widget(table, inner, &mut state);
}

fn align(line: Line<'_>, right: bool) -> Cell<'_> {
    Cell::from(if right {
        line.alignment(Alignment::Right)
    } else {
        line
    })
}

/// One agent's row: its id as shown, the cells of the [`MIDDLE`] columns
/// that are `shown` (its node cut to `node_width`), and its progress with a
/// bar of `bar` cells.
fn agent_row(
    s: &AgentStatus,
    id: String,
    shown: [bool; MIDDLE.len()],
    bar: usize,
    node_width: usize,
) -> Row<'_> {
    let t = tone(s);
    let alive = s.process_alive;
    let live = |text: String| if alive { text } else { "-".into() };
    let status = match s.state {
        AgentState::Stopping => Span::styled("stopping", Style::new().fg(Color::Yellow)),
        AgentState::Backoff => Span::styled("backoff", Style::new().fg(Color::Cyan)),
        state => Span::raw(state.as_str()),
    };
    let ready = match s.ready {
        _ if s.state == AgentState::Ended => Span::styled("-", dim()),
        Some(true) => Span::styled("yes", Style::new().fg(Color::Green)),
        Some(false) => Span::styled("no", Style::new().fg(Color::Yellow)),
        None => Span::styled("-", dim()),
    };
    // Where its job runs; `-` on this host or while the job is queued.
    let node = match s.placement.as_ref().and_then(|p| p.node.as_deref()) {
        Some(node) => Line::raw(cut_middle(&clean(node), node_width)),
        None => Line::styled("-", dim()),
    };
    // In the order of MIDDLE.
    let middle = [
        align(
            Line::raw(s.pid.map_or_else(|| "-".into(), |p| p.to_string())),
            true,
        ),
        align(node, false),
        align(
            Line::styled(s.health.as_str(), Style::new().fg(tone_color(t))),
            false,
        ),
        align(Line::from(status), false),
        align(Line::from(ready), false),
        align(Line::raw(live(format!("{:.1}", s.cpu_percent))), true),
        align(Line::raw(live(memory(s.memory_mb))), true),
        align(Line::raw(live(s.num_threads.to_string())), true),
        align(Line::raw(runtime(s.runtime_seconds)), true),
        align(Line::raw(s.restarts.to_string()), true),
    ];
    let middle = middle
        .into_iter()
        .zip(shown)
        .filter(|(_, on)| *on)
        .map(|(cell, _)| cell);
    Row::new(
        std::iter::once(align(Line::raw(id), false))
            .chain(middle)
            .chain([align(progress(s, bar), false)]),
    )
}

/// `████░░░░░░  40% message` (a bar of `bar` cells), or `-` without progress.
fn progress(s: &AgentStatus, bar: usize) -> Line<'static> {
    let Some(p) = s.progress else {
        return Line::styled("-", dim());
    };
    let filled = (usize::from(p.min(100)) * bar + 50) / 100;
    let mut spans = vec![
        Span::styled("█".repeat(filled), Style::new().fg(Color::Cyan)),
        Span::styled("░".repeat(bar - filled), dim()),
        Span::raw(format!(" {p:>3}%")),
    ];
    if let Some(msg) = &s.progress_message {
        spans.push(Span::raw(format!(" {}", clean(msg))));
    }
    Line::from(spans)
}

/// `5s`, `3m12s`, `2h01m`, `3d04h`.
pub fn runtime(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `45.3M`, `1.21G`.
pub fn memory(mb: f64) -> String {
    if mb >= 1024.0 {
        format!("{:.2}G", mb / 1024.0)
    } else {
        format!("{mb:.1}M")
    }
}

/// Text an agent wrote, made safe and flat for a cell: escape sequences
/// (CSI, OSC and two-byte ones) are dropped, tabs become spaces, other control
/// characters are dropped.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' => out.push_str("    "),
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            chars.next_if_eq(&'\\');
                            break;
                        }
                    }
                }
                _ => {}
            },
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn render_footer(frame: &mut Frame<'_>, area: Rect, m: &Model) {
    let line = if let Some(note) = m.note() {
        let style = if note.error {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        Line::styled(format!(" {}", clean(&note.text)), style)
    } else {
        let keys: &[(&str, &str)] = match m.mode() {
            Mode::Filter { .. } => &[
                ("enter", "keep"),
                ("esc", "cancel"),
                ("ctrl-u", "clear"),
                ("words", "id piece · key=value · running/failed/…"),
            ],
            _ if m.detail().is_some() => &[
                ("q", "quit"),
                ("esc/enter", "close"),
                ("↑↓", "select"),
                ("pgup/pgdn", "scroll"),
                ("x", "stop"),
                ("K", "kill"),
                ("?", "help"),
            ],
            _ => &[
                ("q", "quit"),
                ("↑↓", "select"),
                ("enter", "details"),
                ("s", "sort"),
                ("r", "reverse"),
                ("/", "filter"),
                ("x", "stop"),
                ("K", "kill"),
                ("?", "help"),
            ],
        };
        // The hints that fit, and always the last one (`? help`).
        let hint = |(k, what): &(&str, &str)| 1 + k.chars().count() + what.chars().count() + 2;
        let (last, rest) = keys
            .split_last()
            .map_or((None, &keys[..0]), |(l, r)| (Some(l), r));
        let mut room = usize::from(area.width)
            .saturating_sub(1)
            .saturating_sub(last.map_or(0, hint));
        let mut spans = vec![Span::raw(" ")];
        let taken = rest.iter().take_while(|h| {
            let fits = hint(h) <= room;
            room = room.saturating_sub(hint(h));
            fits
        });
        for (k, what) in taken.chain(last) {
            spans.push(Span::styled(
                *k,
                Style::new().add_modifier(Modifier::BOLD).fg(Color::Cyan),
            ));
            spans.push(Span::raw(format!(" {what}  ")));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn render_detail(frame: &mut Frame<'_>, area: Rect, m: &Model, d: &Detail) {
    // The whole status once fetched; until then, what the table has.
    let Some(s) = m
        .agent(&d.id)
        .map(|listed| d.full.as_ref().unwrap_or(listed))
    else {
        let block = Block::bordered().title(format!(" {} ", d.id));
        frame.render_widget(
            Paragraph::new(Span::styled("no longer known to the daemon", dim())).block(block),
            area,
        );
        return;
    };
    let fields_width = FIELDS_WIDTH.min(area.width / 2);
    let [left, right] =
        Layout::horizontal([Constraint::Length(fields_width), Constraint::Fill(1)]).areas(area);
    // The title keeps its run number: the id gives way, in the middle.
    let run = format!(" · run {} ", s.run);
    let id_room = usize::from(left.width)
        .saturating_sub(2 + 1 + run.chars().count())
        .clamp(8, 40);
    let title = format!(" {}{run}", cut_middle(&s.agent_id, id_room));
    let width = usize::from(left.width.saturating_sub(2));
    let lines = fields(s, width);
    // Scrolled at most so far that the last field stays in view.
    let most = lines
        .len()
        .saturating_sub(usize::from(left.height.saturating_sub(2)));
    let scroll = d.scroll.min(u16::try_from(most).unwrap_or(u16::MAX));
    let fields = Paragraph::new(Text::from(lines))
        .block(Block::bordered().title(title))
        .scroll((scroll, 0));
    frame.render_widget(fields, left);
    let [out, err] = Layout::vertical([Constraint::Fill(1), Constraint::Fill(1)]).areas(right);
    render_log(frame, out, " stdout ", &d.stdout);
    render_log(frame, err, " stderr ", &d.stderr);
}

/// Width of the names in the field list.
const NAME_WIDTH: usize = 14;

/// One field: its name, then its value word-wrapped to `width` cells with the
/// continuation lines indented under the value.
fn field(name: &str, value: impl Into<String>, style: Style, width: usize) -> Vec<Line<'static>> {
    let room = width.saturating_sub(NAME_WIDTH).max(8);
    let value: String = value.into();
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in value.split(' ') {
        let mut word = word;
        loop {
            let used = current.chars().count();
            let need = word.chars().count() + usize::from(used > 0);
            if used + need <= room {
                if used > 0 {
                    current.push(' ');
                }
                current.push_str(word);
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut current));
                continue;
            }
            // A word longer than the room: cut it.
            let cut = word.char_indices().nth(room).map_or(word.len(), |(i, _)| i);
            lines.push(word[..cut].to_owned());
            word = &word[cut..];
            if word.is_empty() {
                break;
            }
        }
    }
    lines.push(current);
    lines
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let label = if i == 0 { name } else { "" };
            Line::from(vec![
                Span::styled(format!("{label:<NAME_WIDTH$}"), dim()),
                Span::styled(text, style),
            ])
        })
        .collect()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn probe_line(p: Option<&ProbeState>) -> String {
    let Some(p) = p else {
        return "-".into();
    };
    let mut s = format!(
        "{}: {}",
        p.kind,
        p.last_result.as_deref().unwrap_or("not run yet")
    );
    if p.consecutive_failures > 0 {
        s.push_str(&format!(", {} failed in a row", p.consecutive_failures));
    }
    if let Some(out) = p.last_output.as_deref().filter(|o| !o.is_empty()) {
        s.push_str(&format!(" ({})", clean(out).trim()));
    }
    s
}

/// Every status field, wrapped to `width`.
fn fields(s: &AgentStatus, width: usize) -> Vec<Line<'static>> {
    let t = tone(s);
    let state = match &s.stop {
        Some(stop) if stop.unkillable => {
            format!("{} ({} stop; survived SIGKILL)", s.state, stop.cause)
        }
        Some(stop) => format!("{} ({} stop, stage {})", s.state, stop.cause, stop.stage),
        None => s.state.to_string(),
    };
    let process = format!(
        "{}{}{}",
        s.process_status,
        if s.process_alive { ", alive" } else { "" },
        if s.is_zombie { ", zombie" } else { "" }
    );
    let tree = s.tree.map_or_else(
        || "-".into(),
        |t| {
            format!(
                "{} process{}, {:.1}% CPU, {}",
                t.processes,
                if t.processes == 1 { "" } else { "es" },
                t.cpu_percent,
                memory(t.memory_mb)
            )
        },
    );
    let progress = match (s.progress, &s.progress_message) {
        (Some(p), Some(msg)) => format!("{p}% {}", clean(msg)),
        (Some(p), None) => format!("{p}%"),
        (None, _) => "-".into(),
    };
    let limits = if s.limits.is_empty() {
        "-".into()
    } else {
        s.limits
            .iter()
            .map(|(k, l)| format!("{k} {} ({})", l.value, l.enforced_by))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let labels = if s.labels.is_empty() {
        "-".into()
    } else {
        s.labels
            .iter()
            .map(|(k, v)| clean(&format!("{k}={v}")).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let placement = s.placement.as_ref().map_or_else(
        || "this host".into(),
        |p| {
            format!(
                "{} job {}{}",
                p.engine,
                p.job_id,
                p.node
                    .as_deref()
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default()
            )
        },
    );
    let probes = s.probe.clone().unwrap_or_default();
    let ready = match s.ready {
        Some(true) => "yes",
        Some(false) => "no",
        None => "- (no readiness probe)",
    };
    let plain = Style::new();
    let fields: Vec<(&str, String, Style)> = vec![
        (
            "health",
            s.health.to_string(),
            Style::new().fg(tone_color(t)),
        ),
        ("state", state, plain),
        ("status", s.persistent_status.to_string(), plain),
        ("process", process, plain),
        ("pid", opt(s.pid), plain),
        ("exit code", opt(s.exit_code), plain),
        ("exit signal", opt(s.exit_signal), plain),
        (
            "end reason",
            opt(s.end_reason.as_deref().map(|r| clean(r).into_owned())),
            plain,
        ),
        ("cpu", format!("{:.1}%", s.cpu_percent), plain),
        ("memory", memory(s.memory_mb), plain),
        ("threads", s.num_threads.to_string(), plain),
        ("tree", tree, plain),
        ("runtime", runtime(s.runtime_seconds), plain),
        ("started", s.started_at.clone(), plain),
        ("ended", opt(s.ended_at.as_deref()), plain),
        ("progress", progress, plain),
        ("progress at", opt(s.progress_at.as_deref()), plain),
        ("restarts", s.restarts.to_string(), plain),
        ("restart", s.restart_policy.clone(), plain),
        ("next restart", opt(s.next_restart_at.as_deref()), plain),
        ("ready", ready.to_owned(), plain),
        ("liveness", probe_line(probes.liveness.as_ref()), plain),
        ("readiness", probe_line(probes.readiness.as_ref()), plain),
        ("limits", limits, plain),
        ("labels", labels, plain),
        ("command", clean(&s.cmdline).into_owned(), plain),
        ("containment", s.containment.clone(), plain),
        ("user", opt(s.user.as_deref()), plain),
        ("placement", placement, plain),
        ("stdout log", s.stdout_log.display().to_string(), plain),
        ("stderr log", s.stderr_log.display().to_string(), plain),
    ];
    fields
        .into_iter()
        .flat_map(|(name, value, style)| field(name, value, style, width))
        .collect()
}

fn render_log(frame: &mut Frame<'_>, area: Rect, title: &str, tail: &LogTail) {
    let block = Block::bordered()
        .title(title.to_owned())
        .border_style(dim());
    let inner = block.inner(area);
    let height = usize::from(inner.height);
    let text: Text<'_> = match tail {
        LogTail::Loading => Text::styled("loading…", dim()),
        LogTail::Error(e) => Text::styled(clean(e).into_owned(), Style::new().fg(Color::Red)),
        LogTail::Text(t) if t.trim().is_empty() => Text::styled("(empty)", dim()),
        LogTail::Text(t) => {
            let lines: Vec<&str> = t.lines().collect();
            let skip = lines.len().saturating_sub(height);
            Text::from(
                lines[skip..]
                    .iter()
                    .map(|l| Line::raw(clean(l).into_owned()))
                    .collect::<Vec<_>>(),
            )
        }
    };
    frame.render_widget(Paragraph::new(text).block(block), area);
}

/// A box of `width` × `height` in the middle of the frame, cleared.
fn popup(frame: &mut Frame<'_>, width: u16, height: u16) -> Rect {
    let area = frame
        .area()
        .centered(Constraint::Length(width), Constraint::Length(height));
    frame.render_widget(Clear, area);
    area
}

fn render_confirm(frame: &mut Frame<'_>, action: Action, id: &str) {
    let id = cut_middle(id, 48);
    let (title, question, how, yes) = match action {
        Action::Stop => (
            " stop ",
            format!("Stop {id}?"),
            "SIGTERM to its whole process tree, then SIGKILL after its stop timeouts.",
            "y: stop",
        ),
        Action::Kill => (
            " kill ",
            format!("Kill {id} now?"),
            "SIGKILL to its whole process tree at once, no grace period.",
            "y: kill",
        ),
        Action::Restart => (
            " restart ",
            format!("Restart {id}?"),
            "Its staged stop if it runs, then a new run of the same command.",
            "y: restart",
        ),
        // Not asked (`p` acts at once); shown the same way if ever asked.
        Action::Pause => (
            " pause ",
            format!("Pause {id}?"),
            "Freezes its whole process tree until it is resumed.",
            "y: pause",
        ),
        Action::Resume => (
            " resume ",
            format!("Resume {id}?"),
            "Thaws its whole process tree.",
            "y: resume",
        ),
    };
    let area = popup(frame, 66, 7);
    let text = vec![
        Line::styled(question, Style::new().add_modifier(Modifier::BOLD)),
        Line::raw(how),
        Line::raw(""),
        Line::from(vec![
            Span::styled(
                yes,
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            ),
            Span::raw("    any other key: leave it running"),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: true }).block(
            Block::bordered()
                .title(title)
                .border_style(Style::new().fg(Color::Red)),
        ),
        area,
    );
}

fn render_help(frame: &mut Frame<'_>) {
    let keys: &[(&str, &str)] = &[
        ("↑ ↓  k j", "select an agent"),
        (
            "pgup pgdn",
            "a page up or down (scroll the details when open)",
        ),
        ("home end  g G", "first or last agent"),
        ("enter", "open or close the details and logs of the agent"),
        (
            "s",
            "next sort column: id, cpu, memory, runtime, restarts, health",
        ),
        ("r", "reverse the order"),
        ("/", "filter: a piece of the id, key=value (a label), or"),
        ("", "a state: running failed completed cancelled zombie …"),
        (
            "x",
            "stop the agent (staged: SIGTERM, then SIGKILL), after y",
        ),
        ("K", "kill the agent (SIGKILL at once), after y"),
        (
            "R",
            "restart the agent (staged stop, then a new run), after y",
        ),
        ("p", "pause the agent (freeze its whole tree), or resume it"),
        ("q  esc  ctrl-c", "quit (esc closes the details first)"),
    ];
    let area = popup(frame, 76, keys.len() as u16 + 4);
    let mut lines: Vec<Line<'_>> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:<16}"),
                    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "Nothing is ever started from here. Any key closes this.",
        dim(),
    ));
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        area,
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use corral_core::{Health, LimitState, PersistentStatus, ProbesState, TreeSummary};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use super::*;
    use crate::commands::top::model::tests::{agent, ended};

    /// The buffer's text, one line per row, trailing spaces trimmed.
    fn text(buf: &Buffer) -> String {
        let mut out = String::new();
        for y in 0..buf.area.height {
            let mut line = String::new();
            for x in 0..buf.area.width {
                line.push_str(buf[(x, y)].symbol());
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    fn draw(m: &mut Model, width: u16, height: u16) -> Buffer {
        m.prepare();
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| render(f, m)).unwrap();
        terminal.backend().buffer().clone()
    }

    fn find(buf: &Buffer, needle: &str) -> Vec<(u16, u16)> {
        let mut hits = vec![];
        for y in 0..buf.area.height {
            let row: Vec<&str> = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
            let line: String = row.concat();
            if let Some(byte) = line.find(needle) {
                // Cells, not bytes: count the symbols before the hit.
                let mut x = 0u16;
                let mut seen = 0;
                while seen < byte {
                    seen += row[usize::from(x)].len();
                    x += 1;
                }
                hits.push((x, y));
            }
        }
        hits
    }

    fn team() -> Model {
        let mut web = agent("web");
        web.pid = Some(4242);
        web.cpu_percent = 12.5;
        web.memory_mb = 45.3;
        web.num_threads = 4;
        web.runtime_seconds = 192.0;
        web.ready = Some(true);
        web.labels.insert("team".into(), "front".into());
        web.tree = Some(TreeSummary {
            processes: 3,
            cpu_percent: 14.0,
            memory_mb: 60.1,
        });
        web.limits.insert(
            "memory_mb".into(),
            LimitState {
                value: 512.0,
                enforced_by: "cgroup".into(),
            },
        );
        web.probe = Some(ProbesState {
            liveness: None,
            readiness: Some(ProbeState {
                kind: "http".into(),
                last_result: Some("passed".into()),
                last_output: Some("HTTP 200".into()),
                last_at: Some("2026-11-26T10:33:00Z".into()),
                consecutive_failures: 0,
            }),
        });
        let mut indexer = agent("indexer.1");
        indexer.pid = Some(4300);
        indexer.cpu_percent = 98.2;
        indexer.memory_mb = 1300.0;
        indexer.num_threads = 9;
        indexer.runtime_seconds = 7300.0;
        indexer.progress = Some(40);
        indexer.progress_message = Some("shard 4\x1b[31m of 10\t!".into());
        let mut crashed = ended(agent("crashed"), PersistentStatus::Failed, Health::Failed);
        crashed.pid = Some(4400);
        crashed.exit_code = Some(1);
        crashed.runtime_seconds = 5.4;
        crashed.restarts = 2;
        crashed.run = 3;
        crashed.end_reason = Some("exited with code 1".into());
        let mut zombie = agent("stuck");
        zombie.pid = Some(4500);
        zombie.health = Health::Zombie;
        zombie.is_zombie = true;
        zombie.process_status = "zombie".into();
        zombie.process_alive = false;
        zombie.runtime_seconds = 42.0;
        let mut long = agent("pipeline.stage-7.worker-with-a-very-long-name.42");
        long.pid = None;
        long.runtime_seconds = 3.0;
        long.process_alive = true;
        long.persistent_status = PersistentStatus::Spawning;
        long.state = AgentState::Starting;
        long.progress = Some(100);
        let mut done = ended(
            agent("report"),
            PersistentStatus::Completed,
            Health::Completed,
        );
        done.exit_code = Some(0);
        let mut stopped = ended(agent("old"), PersistentStatus::Cancelled, Health::Cancelled);
        stopped.exit_signal = Some(15);
        stopped.runtime_seconds = 86400.0 * 2.0 + 7200.0;
        let mut m = Model::new();
        m.set_snapshot(
            [web, indexer, crashed, zombie, long, done, stopped]
                .into_iter()
                .map(|s| (s.agent_id.clone(), s))
                .collect::<BTreeMap<_, _>>(),
        );
        m
    }

    #[test]
    fn table_snapshot() {
        let mut m = team();
        let buf = draw(&mut m, 120, 14);
        insta::assert_snapshot!("table", text(&buf));
    }

    #[test]
    fn a_team_row_while_teams_have_budgets() {
        let mut m = team();
        let team = |id: &str, memory: f64, over: &[&str]| corral_core::TeamStatus {
            team: id.into(),
            budget: corral_core::TeamBudget {
                memory_mb: Some(200.0),
                max_agents: Some(5),
                ..corral_core::TeamBudget::default()
            },
            enforcement: "sampler".into(),
            usage: corral_core::TeamUsage {
                memory_mb: memory,
                cpu_percent: 12.0,
                pids: 9,
                agents: 3,
            },
            over: over.iter().map(|s| (*s).to_owned()).collect(),
            members: None,
        };
        m.set_teams(vec![
            team("indexer", 212.0, &["memory_mb"]),
            team("web", 60.1, &[]),
        ]);
        let buf = draw(&mut m, 120, 14);
        insta::assert_snapshot!("table_teams", text(&buf));
        let (x, y) = find(&buf, "indexer mem")[0];
        assert_eq!(y, 2);
        assert_eq!(buf[(x, y)].fg, Color::Red, "a team over its budget is red");
        let (x, y) = find(&buf, "web mem")[0];
        assert_ne!(buf[(x, y)].fg, Color::Red);
        // Without budgets, no row: the table starts where it always did.
        m.set_teams(Vec::new());
        let plain = draw(&mut m, 120, 14);
        assert!(find(&plain, " teams ").is_empty());
    }

    #[test]
    fn health_words_have_their_colours() {
        let mut m = team();
        let buf = draw(&mut m, 120, 14);
        for (word, color) in [
            ("healthy", Color::Green),
            ("failed", Color::Red),
            ("zombie", Color::Yellow),
            ("completed", Color::DarkGray),
        ] {
            let hits = find(&buf, &format!(" {word} "));
            // The first hit below the two header lines is in the health column.
            let &(x, y) = hits
                .iter()
                .find(|(_, y)| *y > 3)
                .unwrap_or_else(|| panic!("{word} not drawn"));
            assert_eq!(buf[(x + 1, y)].fg, color, "{word} at ({x}, {y})");
        }
        // A user's stop reads as done (grey), not failed (red).
        let mut m = Model::new();
        let stopped = ended(
            agent("stopped"),
            PersistentStatus::Cancelled,
            Health::Cancelled,
        );
        m.set_snapshot([("stopped".to_owned(), stopped)].into());
        let buf = draw(&mut m, 120, 8);
        let &(x, y) = find(&buf, " cancelled ")
            .iter()
            .find(|(_, y)| *y > 3)
            .unwrap();
        assert_eq!(buf[(x + 1, y)].fg, Color::DarkGray);
        // A stop under way is yellow in the state column.
        let mut m = Model::new();
        let mut stopping = agent("s1");
        stopping.state = AgentState::Stopping;
        m.set_snapshot([("s1".to_owned(), stopping)].into());
        let buf = draw(&mut m, 120, 8);
        let &(x, y) = find(&buf, " stopping ")
            .iter()
            .find(|(_, y)| *y > 3)
            .unwrap();
        assert_eq!(buf[(x + 1, y)].fg, Color::Yellow);
    }

    #[test]
    fn long_ids_are_cut_with_an_ellipsis_and_agent_text_is_cleaned() {
        let mut m = team();
        let buf = draw(&mut m, 120, 14);
        let t = text(&buf);
        // Cut in the middle: the start and the last segment.
        assert!(t.contains("pipeline.stage-7.wor….42"), "{t}");
        assert!(!t.contains("very-long-name.42"));
        assert!(t.contains("██░░░  40% shard 4 of"), "a short bar: {t}");
        assert!(t.contains("█████ 100%"), "{t}");
        // No pid: a dash.
        let line = t.lines().find(|l| l.contains("pipeline")).unwrap();
        assert!(line.contains(" - "), "{line}");
        // Wider, the id column grows to its most and the whole (cleaned)
        // message fits.
        let t = text(&draw(&mut m, 170, 14));
        assert!(t.contains("pipeline.stage-7.worker-with….42"), "{t}");
        assert!(t.contains("████░░░░░░  40% shard 4 of 10    !"), "{t}");
    }

    /// The titles of the table's columns, and the ids in its rows.
    fn table_of(t: &str) -> (Vec<&str>, Vec<&str>) {
        let mut lines = t
            .lines()
            .skip(3)
            .take_while(|l| !l.starts_with('└'))
            .map(|l| l.trim_matches('│').trim_start_matches('▶').trim());
        let titles = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let ids = lines.filter_map(|l| l.split_whitespace().next()).collect();
        (titles, ids)
    }

    #[test]
    fn columns_are_left_out_in_order_before_the_progress_goes() {
        let titles = |fit: &Fit| -> Vec<&str> {
            MIDDLE
                .iter()
                .zip(fit.shown)
                .filter(|(_, on)| *on)
                .map(|((t, _, _), _)| *t)
                .collect()
        };
        let mut dropped_before = DROP_ORDER.len();
        for width in 30..=200 {
            let fit = fit_columns(width, 48, 6, Some(4));
            // What is missing is a first part of DROP_ORDER, never more at a
            // wider terminal.
            let mut missing: Vec<&str> = MIDDLE
                .iter()
                .map(|(t, _, _)| *t)
                .filter(|t| !titles(&fit).contains(t))
                .collect();
            let mut first = DROP_ORDER[..missing.len()].to_vec();
            missing.sort_unstable();
            first.sort_unstable();
            assert_eq!(missing, first, "{width}");
            assert!(missing.len() <= dropped_before, "{width}");
            dropped_before = missing.len();
            assert!(fit.id >= 6, "{width}: {fit:?}");
            if width >= 60 {
                assert!(fit.progress >= MIN_PROGRESS, "{width}: {fit:?}");
                assert!(fit.id >= ID_FLOOR, "{width}: {fit:?}");
            }
        }
        assert_eq!(
            titles(&fit_columns(120, 48, 6, Some(4))),
            MIDDLE.map(|(t, _, _)| t)
        );
        // Without agents on nodes, no NODE column; the rest as before.
        let no_node: Vec<&str> = MIDDLE
            .iter()
            .map(|(t, _, _)| *t)
            .filter(|t| *t != "NODE")
            .collect();
        assert_eq!(titles(&fit_columns(120, 48, 6, None)), no_node);
        assert_eq!(
            titles(&fit_columns(80, 48, 6, None)),
            ["HEALTH", "CPU%", "MEM", "RUNTIME"]
        );
        assert_eq!(
            titles(&fit_columns(80, 48, 6, Some(2))),
            ["NODE", "HEALTH", "CPU%", "MEM", "RUNTIME"]
        );
        assert_eq!(titles(&fit_columns(60, 48, 6, None)), ["HEALTH", "CPU%"]);
        assert_eq!(titles(&fit_columns(60, 48, 6, Some(4))), ["HEALTH", "CPU%"]);
        // Short ids leave more room: at 80 columns STATE stays.
        assert_eq!(
            titles(&fit_columns(80, 5, 5, None)),
            ["HEALTH", "STATE", "CPU%", "MEM", "RUNTIME"]
        );
        // Long node names are cut to MAX_NODE.
        assert_eq!(fit_columns(200, 48, 6, Some(40)).widths[NODE], MAX_NODE);
        // Ids that stay apart only wide get that width, whatever else.
        assert_eq!(fit_columns(40, 48, 30, None).id, 30);
    }

    #[test]
    fn top_at_80_by_24_keeps_the_progress() {
        let mut m = team();
        let t = text(&draw(&mut m, 80, 24));
        insta::assert_snapshot!("table_80x24", t);
        let (titles, ids) = table_of(&t);
        assert_eq!(
            titles,
            ["ID", "HEALTH", "CPU%", "MEM", "RUNTIME", "PROGRESS"],
            "{t}"
        );
        assert_eq!(ids.len(), 7, "{t}");
        assert!(t.contains("██░░░  40% shard 4 of 10"), "{t}");
        assert!(t.contains("█████ 100%"), "{t}");
        assert!(
            t.lines().last().unwrap_or_default().ends_with("? help"),
            "{t}"
        );
    }

    #[test]
    fn a_node_column_only_while_agents_are_placed_on_nodes() {
        let mut m = team();
        let t = text(&draw(&mut m, 120, 14));
        let (titles, _) = table_of(&t);
        assert!(!titles.contains(&"NODE"), "{t}");
        let placed = |id: &str, node: Option<&str>| {
            let mut a = agent(id);
            a.pid = None;
            a.placement = Some(corral_core::PlacementInfo {
                engine: "slurm".into(),
                job_id: "7".into(),
                node: node.map(str::to_owned),
                pending_reason: node.is_none().then(|| "Resources".to_owned()),
            });
            a
        };
        let mut m = Model::new();
        m.set_snapshot(
            [
                placed("train.1", Some("n1")),
                placed("train.2", Some("a-rather-long-node-name-17")),
                placed("train.3", None),
                agent("local"),
            ]
            .into_iter()
            .map(|s| (s.agent_id.clone(), s))
            .collect(),
        );
        let t = text(&draw(&mut m, 120, 10));
        insta::assert_snapshot!("table_nodes", t);
        let (titles, _) = table_of(&t);
        assert_eq!(
            titles,
            [
                "ID", "PID", "NODE", "HEALTH", "STATE", "READY", "CPU%", "MEM", "THR", "RUNTIME",
                "RST", "PROGRESS"
            ],
            "{t}"
        );
        let row = |id: &str| {
            t.lines()
                .find(|l| l.contains(id))
                .unwrap_or_else(|| panic!("{id}: {t}"))
                .split_whitespace()
                .skip_while(|w| !w.ends_with(id))
                .nth(2)
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(row("train.1"), "n1");
        assert_eq!(row("train.2"), "a-rather-lon…-17", "cut to MAX_NODE");
        assert_eq!(row("train.3"), "-", "queued: no node yet");
        assert_eq!(row("local"), "-", "on this host");
    }

    /// Agents whose ids differ only at their ends, or only deep inside.
    fn lookalikes() -> Model {
        let mut all = Vec::new();
        for n in [1, 2, 10, 11] {
            let mut a = agent(&format!("research.crawler.worker.{n}"));
            a.progress = Some(n * 9);
            a.progress_message = Some(format!("page {n}"));
            all.push(a);
        }
        for shard in ["pipeline.shard-001.w.3", "pipeline.shard-002.w.3"] {
            all.push(agent(shard));
        }
        let mut m = Model::new();
        m.set_snapshot(all.into_iter().map(|s| (s.agent_id.clone(), s)).collect());
        m
    }

    #[test]
    fn top_at_60_by_20_tells_the_ids_apart() {
        let mut m = lookalikes();
        let t = text(&draw(&mut m, 60, 20));
        insta::assert_snapshot!("table_60x20", t);
        let (titles, ids) = table_of(&t);
        assert_eq!(titles, ["ID", "HEALTH", "CPU%", "PROGRESS"], "{t}");
        let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), 6, "{t}");
        for n in [1, 2, 10, 11] {
            assert!(
                ids.iter()
                    .any(|id| id.starts_with("res") && id.ends_with(&format!(".{n}"))),
                "{n}: {t}"
            );
        }
        assert!(t.contains("page 11"), "{t}");
        // Narrower still, the ids stay apart: the column keeps the width that
        // takes.
        let t = text(&draw(&mut m, 40, 20));
        let (_, ids) = table_of(&t);
        let unique: std::collections::BTreeSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), 6, "{t}");
    }

    #[test]
    fn the_detail_pane_and_footer_fit_60_by_20() {
        let mut m = team();
        m.prepare();
        let now = std::time::Instant::now();
        // The fourth row: the long id.
        for _ in 0..3 {
            m.on_key(KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE), now);
        }
        m.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), now);
        m.set_logs(
            "pipeline.stage-7.worker-with-a-very-long-name.42",
            LogTail::Text("starting\n".into()),
            LogTail::Text(String::new()),
        );
        let t = text(&draw(&mut m, 60, 20));
        insta::assert_snapshot!("detail_60x20", t);
        // The pane's title keeps the run number; the footer keeps `? help`.
        assert!(t.contains("pipeline.stage….42 · run 1"), "{t}");
        assert!(
            t.lines().last().unwrap_or_default().ends_with("? help"),
            "{t}"
        );
    }

    #[test]
    fn detail_snapshot() {
        let mut m = team();
        m.prepare();
        let now = std::time::Instant::now();
        m.on_key(KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE), now);
        m.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE), now);
        m.set_logs(
            "indexer.1",
            LogTail::Text("starting\nshard 3 done\n\x1b[32mshard 4\x1b[0m started\n".into()),
            LogTail::Text(String::new()),
        );
        let buf = draw(&mut m, 120, 40);
        insta::assert_snapshot!("detail", text(&buf));
    }

    #[test]
    fn confirm_and_help_popups() {
        let mut m = team();
        m.prepare();
        let now = std::time::Instant::now();
        m.on_key(KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE), now);
        m.on_key(KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE), now);
        let t = text(&draw(&mut m, 120, 20));
        assert!(t.contains("Stop indexer.1?"), "{t}");
        assert!(t.contains("y: stop"), "{t}");
        m.on_key(KeyEvent::new(KeyCode::Char('n'), KeyModifiers::NONE), now);
        m.on_key(KeyEvent::new(KeyCode::Char('K'), KeyModifiers::NONE), now);
        let t = text(&draw(&mut m, 120, 20));
        assert!(t.contains("Kill indexer.1 now?"), "{t}");
        m.on_key(KeyEvent::new(KeyCode::Char('n'), KeyModifiers::NONE), now);
        m.on_key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE), now);
        let t = text(&draw(&mut m, 120, 20));
        assert!(t.contains("Nothing is ever started from here."), "{t}");
    }

    #[test]
    fn the_table_scrolls_to_keep_the_selection_in_view() {
        let mut m = Model::new();
        m.set_snapshot(
            (0..100)
                .map(|i| {
                    let id = format!("a{i:03}");
                    (id.clone(), agent(&id))
                })
                .collect(),
        );
        m.prepare();
        m.on_key(
            KeyEvent::new(KeyCode::End, KeyModifiers::NONE),
            std::time::Instant::now(),
        );
        let t = text(&draw(&mut m, 100, 12));
        assert!(t.contains("▶ a099"), "{t}");
        assert!(!t.contains("a000"), "{t}");
        assert!(t.contains("100 agents: 100 running"), "{t}");
    }

    #[test]
    fn long_field_values_wrap_under_the_value() {
        let lines = field(
            "end reason",
            "stopped on request; killed by SIGTERM (15)",
            Style::new(),
            34,
        );
        let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            text,
            [
                "end reason    stopped on request;",
                "              killed by SIGTERM",
                "              (15)"
            ]
        );
        let lines = field(
            "stdout log",
            "/a/very/long/path/without/spaces",
            Style::new(),
            30,
        );
        let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            text,
            [
                "stdout log    /a/very/long/pat",
                "              h/without/spaces"
            ]
        );
        let text: Vec<String> = field("pid", "-", Style::new(), 30)
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(text, ["pid           -"]);
    }

    #[test]
    fn formats() {
        let cases = [
            (0.0, "0s"),
            (5.9, "5s"),
            (192.0, "3m12s"),
            (7260.0, "2h01m"),
            (90000.0, "1d01h"),
            (-1.0, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(runtime(secs), want, "{secs}");
        }
        assert_eq!(memory(45.31), "45.3M");
        assert_eq!(memory(1300.0), "1.27G");
        assert_eq!(clean("plain"), "plain");
        assert_eq!(
            clean("a\x1b[1;31mred\x1b[0m\tb\x1b]0;title\x07c\rd\x1b(B"),
            "ared    bcdB"
        );
    }
}
