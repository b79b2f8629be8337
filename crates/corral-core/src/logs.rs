//! Reading agents' log files: the last lines of `stdout.log` / `stderr.log`.
//!
//! Agents write their logs themselves (corral hands them files, never pipes), so
//! reading a tail is a plain file read from the end; it never touches the agent.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes read from the end of a file when looking for its last lines.
const TAIL_WINDOW: u64 = 64 * 1024;

/// The last `lines` lines of the log at `path` (fewer if it is shorter), as
/// text. Lines longer than the 64 KiB window are cut; invalid UTF-8 is
/// replaced. The file is opened as every agent file is: no symlink on its
/// path, never blocking, regular files only.
pub fn tail(path: &Path, lines: usize) -> io::Result<String> {
    let mut file = crate::platform::agent_dir::open_for_reading(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut buf)?;
    let cut = tail_start(&buf, lines);
    Ok(String::from_utf8_lossy(&buf[cut..]).into_owned())
}

/// Where the last `n` lines of `bytes` begin (a trailing newline does not
/// start an empty line). Measured on the bytes themselves: output that is not
/// UTF-8 cannot shift the cut into the middle of an earlier line.
pub fn tail_start(bytes: &[u8], n: usize) -> usize {
    if n == 0 {
        return bytes.len();
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        let last = |t: &'static str, n| &t[tail_start(t.as_bytes(), n)..];
        assert_eq!(last("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last("a\nb\nc", 2), "b\nc");
        assert_eq!(last("a\nb\n", 5), "a\nb\n");
        assert_eq!(last("", 3), "");
        assert_eq!(last("x\n", 0), "");
    }

    #[test]
    fn the_cut_is_measured_in_bytes_whatever_the_encoding() {
        let bytes = b"first \xff\xfe line\nsecond \xc3 line\nlast\n";
        assert_eq!(&bytes[tail_start(bytes, 1)..], b"last\n");
        assert_eq!(&bytes[tail_start(bytes, 2)..], b"second \xc3 line\nlast\n");
        assert_eq!(tail_start(bytes, 9), 0);
        assert_eq!(tail_start(b"x\n", 0), 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(tail(&p, 1).unwrap(), "last\n");
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
