//! Human output: tables that fit the terminal, colour only on a terminal,
//! durations and sizes people read at a glance. `--json` bypasses all of it.
//!
//! Widths are counted in characters of the visible text; colour codes are
//! added after the padding, so a coloured table lines up like a plain one.
//! When the terminal is narrower than the table, the columns marked as
//! shrinkable (ids, messages) are cut with `…` — `--wide` never cuts.

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

/// A table: a header row and rows; `shrink` marks the columns that may be cut
/// (the last one first, then the others, widest first) to fit the width.
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
    pub shrink: Vec<usize>,
    /// Columns left out, in this order, before the first shrinkable column
    /// (the id) would be cut below [`ID_FLOOR`] characters.
    pub drop: Vec<usize>,
}

/// How short an id may be cut before less important columns are left out.
const ID_FLOOR: usize = 16;

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
            shrink: Vec::new(),
            drop: Vec::new(),
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

    pub fn push(&mut self, row: Vec<Cell>) {
        self.rows.push(row);
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
    /// cutting shrinkable columns and leaving out droppable ones.
    fn fitted(&self, limit: Option<usize>) -> Vec<Option<usize>> {
        let natural = self.widths();
        let Some(limit) = limit else {
            return natural.into_iter().map(Some).collect();
        };
        let mut dropped = 0;
        loop {
            let mut widths: Vec<Option<usize>> = natural.iter().copied().map(Some).collect();
            for c in &self.drop[..dropped] {
                widths[*c] = None;
            }
            self.cut_to(&mut widths, limit);
            let id_cut = self
                .shrink
                .first()
                .is_some_and(|&id| widths[id].is_some_and(|w| w < natural[id].min(ID_FLOOR)));
            if !id_cut || dropped == self.drop.len() {
                return widths;
            }
            dropped += 1;
        }
    }

    fn cut_to(&self, widths: &mut [Option<usize>], limit: usize) {
        let total = |w: &[Option<usize>]| {
            let shown: Vec<usize> = w.iter().flatten().copied().collect();
            shown.iter().sum::<usize>() + 2 * shown.len().saturating_sub(1)
        };
        // The last column is cut first (a message), then the widest others.
        let floor = |c: usize| self.header[c].chars().count().max(6);
        let last = widths.len() - 1;
        while total(widths) > limit {
            let candidate = self
                .shrink
                .iter()
                .copied()
                .filter_map(|c| widths[c].map(|w| (c, w)))
                .filter(|(c, w)| *w > floor(*c))
                .max_by_key(|(c, w)| (*c == last, *w));
            let Some((c, w)) = candidate else { break };
            let excess = total(widths) - limit;
            widths[c] = Some(w.saturating_sub(excess).max(floor(c)));
        }
    }

    pub fn render(&self, style: Style) -> String {
        let widths = self.fitted(style.width);
        let mut out = String::new();
        let header: Vec<Cell> = self.header.iter().map(|h| Cell::from(*h)).collect();
        let shown = widths.iter().rposition(Option::is_some).unwrap_or(0);
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let Some(w) = widths.get(c).copied().flatten() else {
                    continue;
                };
                let text = cut(&cell.text, w);
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
    fn fits_a_narrow_terminal_by_cutting_messages_then_ids() {
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
