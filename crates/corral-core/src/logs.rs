//! Reading agents' log files: the last lines of `stdout.log` / `stderr.log`.
//!
//! Agents write their logs themselves (corral hands them files, never pipes), so
//! reading a tail is a plain file read from the end; it never touches the agent.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read from the end of a file when looking for its last lines.
const TAIL_WINDOW: u64 = 64 * 1024;

/// The last `lines` lines of the file at `path` (fewer if it is shorter), as text.
/// Lines longer than the 64 KiB window are cut; invalid UTF-8 is replaced.
pub fn tail(path: &Path, lines: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut buf)?;
    Ok(last_lines(&String::from_utf8_lossy(&buf), lines).to_owned())
}

/// The last `n` lines of `text` (a trailing newline does not start an empty line).
pub fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let cut = body
        .rmatch_indices('\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &text[cut..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(last_lines("", 3), "");
        assert_eq!(last_lines("x\n", 0), "");
    }

    #[test]
    fn tails_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(
            &p,
            (0..1000).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .unwrap();
        assert_eq!(tail(&p, 2).unwrap(), "line 998\nline 999\n");
    }
}
