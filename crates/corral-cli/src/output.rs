//! Human output: tables that fit the terminal, colour only on a terminal,
//! durations and sizes people read at a glance. `--json` bypasses all of it.
//!
//! Widths are counted in characters of the visible text; colour codes are
//! added after the padding, so a coloured table lines up like a plain one.
//!
//! A [`Table`] wider than the terminal is fitted in three steps (`--wide`,
//! or a pipe, skips them: nothing is ever cut there):
//!
//! 1. its shrinkable columns are cut, but no shorter than a comfortable
//!    width: [`TEXT_FLOOR`] characters of a message, [`ID_FLOOR`] of an id;
//! 2. if that is not enough, its droppable columns are left out, one by one
//!    in the order the table gives, each time handing the room back to the
//!    shrinkable columns;
//! 3. only when every droppable column is gone are the shrinkable columns
//!    cut further, down to [`HARD_FLOOR`] characters.
//!
//! A table lists as droppable what people look at least, least first, so
//! a narrow terminal loses those before a message turns into `50% i…`.
//! `corral ps` leaves out READY, then ↺ (restarts), STATUS (what HEALTH
//! mostly repeats), CPU%, MEM, PID, RUNTIME and STATE; ID, HEALTH, EXIT
//! and INFO stay. (`corral top` draws its own table with the same rule:
//! THR and READY go first there.)
//!
//! Ids are cut in the middle ([`cut_middle`]: `research.c….17`), keeping
//! their start and their last dotted segment, and never so that two
//! different ids of one table read the same ([`cut_distinct`]).

use std::io::IsTerminal;

/// A colour for a cell (ANSI, on a terminal only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Green,
    Red,
    Yellow,
    Dim,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Self::Green => "\x1b[32m",
            Self::Red => "\x1b[31m",
            Self::Yellow => "\x1b[33m",
            Self::Dim => "\x1b[2m",
        }
    }
}

/// One cell: its text and, optionally, its colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub colour: Option<Colour>,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self { text, colour: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        text.to_owned().into()
    }
}

impl Cell {
    pub fn coloured(text: impl Into<String>, colour: Option<Colour>) -> Self {
        Self {
            text: text.into(),
            colour,
        }
    }
}

/// How a table is printed.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// The terminal's width, when known and cutting is wanted.
    pub width: Option<usize>,
    /// ANSI colours.
    pub colour: bool,
}

impl Style {
    /// For stdout: its width and colour when it is a terminal (and `NO_COLOR`
    /// is not set), no cutting with `wide`.
    pub fn stdout(wide: bool) -> Self {
        let tty = std::io::stdout().is_terminal();
        Self {
            width: if wide || !tty { None } else { terminal_width() },
            colour: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// Plain text, never cut.
    pub fn plain() -> Self {
        Self {
            width: None,
            colour: false,
        }
    }
}

/// The terminal's width in columns (`$COLUMNS` wins, for scripts and tests).
pub fn terminal_width() -> Option<usize> {
    if let Some(c) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(c);
    }
    rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|w| *w > 0)
}

/// `text` cut to `width` characters, with `…` where it was cut.
pub fn cut(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

/// `id` in at most `width` characters, cut in the middle: its start, `…`,
/// and its last dotted segment (`research.crawler.worker.17` →
/// `research.c….17`), so `w.1` and `w.10` stay apart however short the
/// start gets. A last segment too long to leave the start a third of the
/// room keeps only as much of its end as the start keeps; an id without a
/// dot counts its last `-` or `_` piece as its segment.
pub fn cut_middle(id: &str, width: usize) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= width {
        return id.to_owned();
    }
    cut_keeping(&chars, width, middle_head(&chars, width))
}

/// How many characters of its start [`cut_middle`] keeps of an id too long
/// for `width`.
fn middle_head(chars: &[char], width: usize) -> usize {
    let room = width.saturating_sub(1);
    let segment = chars
        .iter()
        .rposition(|&c| c == '.')
        .or_else(|| chars.iter().rposition(|&c| c == '-' || c == '_'))
        .map_or(0, |at| chars.len() - at);
    let least_head = (room / 3).max(1).min(room);
    let tail = if segment <= room - least_head {
        segment
    } else {
        room / 2
    };
    room - tail
}

/// `chars` in `width` characters: the first `head`, `…`, then the last ones.
fn cut_keeping(chars: &[char], width: usize, head: usize) -> String {
    if width == 0 {
        return String::new();
    }
    let room = width - 1;
    let head = head.min(room);
    let tail = room - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// `ids` cut to `width` characters each so that different ids read
/// differently: each in the middle ([`cut_middle`]), and where that makes
/// two read the same, those keep more of their end instead (failing that,
/// more of their start). `None` when `width` is too narrow for that — the
/// ids differ only deep inside; [`distinct_width`] finds a width that works.
/// The same id twice reads the same, of course.
pub fn cut_distinct(ids: &[&str], width: usize) -> Option<Vec<String>> {
    use std::collections::{HashMap, HashSet};

    let chars: Vec<Vec<char>> = ids.iter().map(|id| id.chars().collect()).collect();
    let mut shown: Vec<String> = ids.iter().map(|id| cut_middle(id, width)).collect();
    // Groups of rows that read the same though their ids differ.
    let clashes = |shown: &[String]| -> Vec<Vec<usize>> {
        let mut by_text: HashMap<&str, Vec<usize>> = HashMap::new();
        for (row, text) in shown.iter().enumerate() {
            by_text.entry(text.as_str()).or_default().push(row);
        }
        let mut groups: Vec<Vec<usize>> = by_text
            .into_values()
            .filter(|rows| rows.iter().any(|&r| ids[r] != ids[rows[0]]))
            .collect();
        groups.sort();
        groups
    };
    for group in clashes(&shown) {
        let cut: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&r| chars[r].len() > width)
            .collect();
        // Whole ids that read alike (an id with a `…` in it): nothing to move.
        let &first = cut.first()?;
        let others: HashSet<String> = shown
            .iter()
            .enumerate()
            .filter(|(r, _)| !group.contains(r))
            .map(|(_, text)| text.clone())
            .collect();
        let room = width.saturating_sub(1);
        let head = middle_head(&chars[first], width);
        // More of the end first, then more of the start.
        let heads = (0..head).rev().chain(head + 1..=room);
        let fixed = heads.into_iter().find_map(|h| {
            let mut texts: Vec<String> = group.iter().map(|&r| shown[r].clone()).collect();
            for (text, &r) in texts.iter_mut().zip(&group) {
                if cut.contains(&r) {
                    *text = cut_keeping(&chars[r], width, h);
                }
            }
            let mut seen: HashMap<&str, &str> = HashMap::new();
            let apart = group.iter().zip(&texts).all(|(&r, text)| {
                !others.contains(text) && *seen.entry(text.as_str()).or_insert(ids[r]) == ids[r]
            });
            apart.then_some(texts)
        })?;
        for (&r, text) in group.iter().zip(fixed) {
            shown[r] = text;
        }
    }
    clashes(&shown).is_empty().then_some(shown)
}

/// The narrowest width, `least` or more, at which [`cut_distinct`] keeps
/// `ids` apart (at the longest id's width nothing is cut at all).
pub fn distinct_width(ids: &[&str], least: usize) -> usize {
    let longest = ids.iter().map(|id| id.chars().count()).max().unwrap_or(0);
    (least..longest)
        .find(|&w| cut_distinct(ids, w).is_some())
        .unwrap_or(longest.max(least))
}

/// A table: a header row and rows, fitted to the terminal's width as the
/// module says: `shrink` marks the columns that may be cut (the widest
/// first), `drop` those that may be left out (in that order), `ids` the
/// column of agent ids (cut in the middle, and never so that two read the
/// same).
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
    pub shrink: Vec<usize>,
    /// Columns left out, in this order, before a shrinkable column is cut
    /// below its comfortable width.
    pub drop: Vec<usize>,
    pub ids: Option<usize>,
}

/// How short a message is cut before droppable columns are left out.
const TEXT_FLOOR: usize = 20;
/// How short an id is cut before droppable columns are left out.
const ID_FLOOR: usize = 16;
/// How short a shrinkable column gets when nothing is left to leave out
/// (or its header's width, if that is more; ids also stay apart).
const HARD_FLOOR: usize = 6;

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
            shrink: Vec::new(),
            drop: Vec::new(),
            ids: None,
        }
    }

    /// Lets columns be left out, in this order, on a narrow terminal.
    pub fn droppable(mut self, columns: &[usize]) -> Self {
        self.drop = columns.to_vec();
        self
    }

    /// Lets column `i` be cut (down to a few characters) to fit the terminal.
    pub fn shrinkable(mut self, columns: &[usize]) -> Self {
        self.shrink = columns.to_vec();
        self
    }

    /// Marks column `i` as the agent ids: shrinkable, cut in the middle, and
    /// never cut so that two ids read the same.
    pub fn id_column(mut self, column: usize) -> Self {
        if !self.shrink.contains(&column) {
            self.shrink.push(column);
        }
        self.ids = Some(column);
        self
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
    }

    /// The texts of column `c`, a row's missing cell read as empty.
    fn column(&self, c: usize) -> Vec<&str> {
        self.rows
            .iter()
            .map(|r| r.get(c).map_or("", |cell| cell.text.as_str()))
            .collect()
    }

    fn widths(&self) -> Vec<usize> {
        (0..self.header.len())
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.text.chars().count())
                    .chain([self.header[c].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The column widths that fit `limit` (`None`: the column is left out),
    /// cutting shrinkable columns and leaving out droppable ones as the
    /// module says.
    fn fitted(&self, limit: Option<usize>) -> Vec<Option<usize>> {
        let natural = self.widths();
        let Some(limit) = limit else {
            return natural.into_iter().map(Some).collect();
        };
        let apart = self
            .ids
            .map_or(0, |c| distinct_width(&self.column(c), HARD_FLOOR));
        let floor = |c: usize, comfortable: bool| {
            let (soft, least) = if self.ids == Some(c) {
                (ID_FLOOR, apart)
            } else {
                (TEXT_FLOOR, 0)
            };
            let want = if comfortable { soft } else { HARD_FLOOR };
            want.max(self.header[c].chars().count())
                .max(least)
                .min(natural[c])
        };
        let without = |dropped: usize| {
            let mut widths: Vec<Option<usize>> = natural.iter().copied().map(Some).collect();
            for &c in &self.drop[..dropped] {
                if let Some(w) = widths.get_mut(c) {
                    *w = None;
                }
            }
            widths
        };
        for dropped in 0..=self.drop.len() {
            let mut widths = without(dropped);
            self.cut_to(&mut widths, limit, |c| floor(c, true));
            if total(&widths) <= limit {
                return widths;
            }
        }
        let mut widths = without(self.drop.len());
        self.cut_to(&mut widths, limit, |c| floor(c, false));
        widths
    }

    /// Cuts shrinkable columns, none below its `floor`, until the table fits
    /// `limit` or cannot get narrower: always the widest of them, so that
    /// an id and a message are cut to about the same width.
    fn cut_to(&self, widths: &mut [Option<usize>], limit: usize, floor: impl Fn(usize) -> usize) {
        while total(widths) > limit {
            let mut cuttable: Vec<(usize, usize)> = self
                .shrink
                .iter()
                .copied()
                .filter_map(|c| widths.get(c).copied().flatten().map(|w| (c, w)))
                .filter(|(c, w)| *w > floor(*c))
                .collect();
            // Widest first; of two as wide, the later column (a message).
            cuttable.sort_by_key(|(c, w)| std::cmp::Reverse((*w, *c)));
            let Some(&(c, w)) = cuttable.first() else {
                break;
            };
            let next = cuttable.get(1).map_or(0, |(_, w)| *w);
            let excess = total(widths) - limit;
            let to = w.saturating_sub(excess).max(floor(c)).max(next);
            widths[c] = Some(if to < w { to } else { w - 1 });
        }
    }

    pub fn render(&self, style: Style) -> String {
        let widths = self.fitted(style.width);
        // The ids as shown: cut in the middle, and apart.
        let ids: Option<(usize, Vec<String>)> = self.ids.and_then(|c| {
            let w = widths.get(c).copied().flatten()?;
            let column = self.column(c);
            let shown = cut_distinct(&column, w)
                .unwrap_or_else(|| column.iter().map(|id| cut_middle(id, w)).collect());
            Some((c, shown))
        });
        let mut out = String::new();
        let header: Vec<Cell> = self.header.iter().map(|h| Cell::from(*h)).collect();
        let shown = widths.iter().rposition(Option::is_some).unwrap_or(0);
        for (r, row) in std::iter::once(&header).chain(&self.rows).enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let Some(w) = widths.get(c).copied().flatten() else {
                    continue;
                };
                let text = match &ids {
                    Some((idc, texts)) if *idc == c && r > 0 => texts[r - 1].clone(),
                    _ => cut(&cell.text, w),
                };
                let pad = if c >= shown {
                    0
                } else {
                    w.saturating_sub(text.chars().count()) + 2
                };
                match cell.colour.filter(|_| style.colour) {
                    Some(colour) => line.push_str(&format!("{}{text}\x1b[0m", colour.code())),
                    None => line.push_str(&text),
                }
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A table's width with these columns (`None`: left out), two spaces apart.
fn total(widths: &[Option<usize>]) -> usize {
    let shown: Vec<usize> = widths.iter().flatten().copied().collect();
    shown.iter().sum::<usize>() + 2 * shown.len().saturating_sub(1)
}

/// Prints `key  value` lines, aligned.
pub fn key_values(pairs: Vec<(&str, String)>) -> String {
    let w = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .into_iter()
        .map(|(k, v)| format!("{}\n", format!("{k:<w$}  {v}").trim_end()))
        .collect()
}

/// `5.2s`, `1m23s`, `2h01m`, `1d01h`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{:.1}s", seconds.max(0.0)),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// MiB as people read them: `812K`, `45.3M`, `1.2G`.
pub fn size_mb(mb: f64) -> String {
    if mb <= 0.0 {
        "-".into()
    } else if mb < 1.0 {
        format!("{:.0}K", mb * 1024.0)
    } else if mb < 1024.0 {
        format!("{mb:.1}M")
    } else {
        format!("{:.1}G", mb / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(vec!["ID", "PID", "INFO"]).shrinkable(&[0, 2]);
        t.push(vec![
            "a-rather-long-agent-identifier".into(),
            "1".into(),
            "working on step 3 of 10".into(),
        ]);
        t.push(vec![
            "b".into(),
            "22".into(),
            Cell::coloured("done", Some(Colour::Green)),
        ]);
        t
    }

    #[test]
    fn aligns_columns() {
        let t = table().render(Style::plain());
        assert_eq!(
            t,
            "ID                              PID  INFO\n\
             a-rather-long-agent-identifier  1    working on step 3 of 10\n\
             b                               22   done\n"
        );
    }

    #[test]
    fn fits_a_narrow_terminal_by_cutting_the_widest_column_first() {
        let t = table().render(Style {
            width: Some(40),
            colour: false,
        });
        assert!(t.lines().all(|l| l.chars().count() <= 40), "{t}");
        assert!(t.contains('…'), "{t}");
        let narrower = table().render(Style {
            width: Some(24),
            colour: false,
        });
        assert!(narrower.lines().next().unwrap().starts_with("ID"));
        assert!(narrower.contains("a-rat"), "{narrower}");
    }

    #[test]
    fn leaves_out_droppable_columns_before_cutting_ids_short() {
        let mut t = Table::new(vec!["ID", "PID", "EXTRA", "INFO"])
            .shrinkable(&[0, 3])
            .droppable(&[2]);
        t.push(vec![
            "team.indexer-7".into(),
            "1".into(),
            "some-extra-detail".into(),
            "busy".into(),
        ]);
        let narrow = t.render(Style {
            width: Some(30),
            colour: false,
        });
        assert!(narrow.contains("team.indexer-7"), "{narrow}");
        assert!(!narrow.contains("EXTRA"), "{narrow}");
        assert!(narrow.lines().all(|l| l.chars().count() <= 30), "{narrow}");
        let wide = t.render(Style {
            width: Some(80),
            colour: false,
        });
        assert!(wide.contains("some-extra-detail"), "{wide}");
    }

    #[test]
    fn ids_are_cut_in_the_middle_keeping_the_last_segment() {
        let id = "research.crawler.worker.17";
        assert_eq!(cut_middle(id, 26), id);
        assert_eq!(cut_middle(id, 14), "research.c….17");
        assert_eq!(cut_middle(id, 8), "rese….17");
        assert_eq!(cut_middle(id, 6), "re….17");
        // A long last segment: as much of its end as of the start.
        assert_eq!(
            cut_middle("team.a-very-long-worker-name", 12),
            "team.a…-name"
        );
        // No dot: the last `-` piece is the segment.
        assert_eq!(cut_middle("crawler-worker-17", 10), "crawle…-17");
        assert_eq!(cut_middle("abcdef", 1), "…");
        assert_eq!(cut_middle("abcdef", 0), "");
        for width in 0..30 {
            assert!(cut_middle(id, width).chars().count() <= width, "{width}");
        }
    }

    /// Whether `shown` are as many different texts as `ids` are different ids.
    fn apart(ids: &[&str], shown: &[String]) -> bool {
        let mut seen = std::collections::HashMap::new();
        ids.iter()
            .zip(shown)
            .all(|(id, text)| seen.entry(text.clone()).or_insert(*id) == id)
    }

    #[test]
    fn cut_ids_stay_apart() {
        let ids = [
            "research.crawler.worker.1",
            "research.crawler.worker.10",
            "research.crawler.worker.11",
            "research.crawler.worker.2",
        ];
        let shown = cut_distinct(&ids, 10).unwrap();
        assert_eq!(
            shown,
            ["researc….1", "resear….10", "resear….11", "researc….2"]
        );
        // Two that differ only before the last segment keep more of their end.
        let ids = ["pipeline.shard-001.w.3", "pipeline.shard-002.w.3", "other"];
        assert_eq!(cut_middle(ids[0], 12), cut_middle(ids[1], 12));
        let shown = cut_distinct(&ids, 12).unwrap();
        assert_eq!(shown, ["pipeli…1.w.3", "pipeli…2.w.3", "other"]);
        // Too narrow to show where they differ: no cut is good enough…
        let ids = [
            "a-long-common-start-X-and-a-long-common-end",
            "a-long-common-start-Y-and-a-long-common-end",
        ];
        assert_eq!(cut_distinct(&ids, 12), None);
        // …until the width reaches the difference.
        let w = distinct_width(&ids, 6);
        let shown = cut_distinct(&ids, w).unwrap();
        assert!(apart(&ids, &shown), "{shown:?}");
        assert!(w < ids[0].len(), "{w}");
        // The same id twice is no clash.
        assert_eq!(
            cut_distinct(&["same.id.1", "same.id.1"], 6).unwrap(),
            ["sam….1", "sam….1"]
        );
    }

    #[test]
    fn many_similar_ids_stay_apart_at_every_width() {
        let ids: Vec<String> = (0..40)
            .map(|i| format!("team-{}.stage-{}.worker.{}", i % 3, i % 7, i))
            .chain(["team-0.stage-0.worker".into(), "w.1".into(), "w.10".into()])
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let least = distinct_width(&ids, 1);
        for width in least..30 {
            let shown = cut_distinct(&ids, width).unwrap();
            assert!(apart(&ids, &shown), "width {width}: {shown:?}");
            assert!(shown.iter().all(|t| t.chars().count() <= width));
        }
    }

    /// The header line of a table rendered `width` columns wide.
    fn headers(t: &Table, width: usize) -> Vec<String> {
        let out = t.render(Style {
            width: Some(width),
            colour: false,
        });
        assert!(
            out.lines().all(|l| l.chars().count() <= width),
            "{width}:\n{out}"
        );
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn low_value_columns_go_before_messages_are_cut() {
        let mut t = Table::new(vec!["ID", "THR", "READY", "CPU", "EXIT", "INFO"])
            .shrinkable(&[5])
            .id_column(0)
            .droppable(&[1, 2, 3]);
        for n in [1, 2, 10, 11] {
            t.push(vec![
                format!("research.crawler.worker.{n}").into(),
                "12".into(),
                "yes".into(),
                "99.5".into(),
                "code 1".into(),
                "indexing shard 4 of 10 of the big crawl".into(),
            ]);
        }
        let all = ["ID", "THR", "READY", "CPU", "EXIT", "INFO"];
        assert_eq!(headers(&t, 120), all);
        // The message and the ids are cut first, but only so far…
        assert_eq!(headers(&t, 80), all);
        let at = |width| {
            t.render(Style {
                width: Some(width),
                colour: false,
            })
        };
        assert!(at(80).contains("indexing shard 4 of 10 of…"), "{}", at(80));
        // …then THR leaves, then READY, then CPU, before the message is cut
        // below 20 characters or the ids below 16.
        assert_eq!(headers(&t, 62), ["ID", "READY", "CPU", "EXIT", "INFO"]);
        assert_eq!(headers(&t, 56), ["ID", "CPU", "EXIT", "INFO"]);
        assert_eq!(headers(&t, 48), ["ID", "EXIT", "INFO"]);
        assert!(at(48).contains("indexing shard 4 of…"), "{}", at(48));
        assert!(at(48).contains("research.crawl….10"), "{}", at(48));
        // EXIT stays, and the ids stay apart, however narrow.
        for width in [40, 30, 20] {
            let out = t.render(Style {
                width: Some(width),
                colour: false,
            });
            let ids: Vec<&str> = out
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            let unique: std::collections::HashSet<&&str> = ids.iter().collect();
            assert_eq!(unique.len(), 4, "{width}:\n{out}");
            assert!(ids.iter().all(|id| id.starts_with('r')), "{out}");
            assert!(out.lines().next().unwrap().contains("EXIT"), "{out}");
        }
        // --wide: nothing cut, nothing left out.
        let wide = t.render(Style::plain());
        assert!(wide.contains("research.crawler.worker.11  12"), "{wide}");
    }

    #[test]
    fn colour_does_not_move_columns() {
        let coloured = table().render(Style {
            width: None,
            colour: true,
        });
        assert!(coloured.contains("\x1b[32mdone\x1b[0m"));
        let stripped = coloured.replace("\x1b[32m", "").replace("\x1b[0m", "");
        assert_eq!(stripped, table().render(Style::plain()));
    }

    #[test]
    fn formats_durations_and_sizes() {
        assert_eq!(duration(5.25), "5.2s");
        assert_eq!(duration(83.0), "1m23s");
        assert_eq!(duration(7300.0), "2h01m");
        assert_eq!(duration(90000.0), "1d01h");
        assert_eq!(size_mb(0.5), "512K");
        assert_eq!(size_mb(45.26), "45.3M");
        assert_eq!(size_mb(2048.0), "2.0G");
        assert_eq!(size_mb(0.0), "-");
        assert_eq!(cut("abcdef", 4), "abc…");
    }
}
