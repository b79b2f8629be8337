//! Human output: aligned tables and short durations. `--json` bypasses all of it.

/// Prints rows as columns aligned to their widest cell; the first row is the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Prints `key  value` lines, aligned.
pub fn key_values(pairs: Vec<(&str, String)>) -> String {
    let rows: Vec<Vec<String>> = pairs
        .into_iter()
        .map(|(k, v)| vec![k.to_owned(), v])
        .collect();
    table(&rows)
}

/// `83s` → `1m23s`, `7300s` → `2h01m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{:.1}s", seconds.max(0.0)),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = table(&[
            vec!["ID".into(), "PID".into(), "X".into()],
            vec!["long-name".into(), "1".into(), "y".into()],
        ]);
        assert_eq!(t, "ID         PID  X\nlong-name  1    y\n");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(duration(5.25), "5.2s");
        assert_eq!(duration(83.0), "1m23s");
        assert_eq!(duration(7300.0), "2h01m");
        assert_eq!(duration(90000.0), "1d01h");
    }
}
