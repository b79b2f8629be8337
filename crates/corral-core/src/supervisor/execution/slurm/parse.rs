//! Reading what Slurm's tools print: `squeue` lines and JSON, the
//! job-completion log, `sstat`. Pure functions, tested on captured output.

use std::collections::HashMap;

use crate::platform::ExitKind;

/// One line of `squeue -o '%i|%j|%T|%N|%r|%k'`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Row {
    pub name: String,
    pub state: String,
    pub node: String,
    pub reason: String,
    pub comment: String,
}

pub(super) fn parse_squeue(text: &str) -> HashMap<String, Row> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(6, '|').collect();
            let [id, name, state, node, reason, comment] = f.as_slice() else {
                return None;
            };
            Some((
                id.trim().to_owned(),
                Row {
                    name: (*name).to_owned(),
                    state: state.trim().to_owned(),
                    node: node.trim().to_owned(),
                    reason: reason.trim().to_owned(),
                    comment: comment.trim().to_owned(),
                },
            ))
        })
        .collect()
}

pub(super) enum Class {
    Pending,
    Running,
    Ended,
}

/// Slurm's job state words, as far as an agent's life goes.
pub(super) fn classify(state: &str) -> Class {
    match state {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" => Class::Pending,
        // Completing: ended, its processes being cleaned up: not over yet.
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT"
        | "RESIZING" => Class::Running,
        _ => Class::Ended,
    }
}

/// `exit_code` of `squeue --json`: a raw wait status (OpenAPI v0.0.38), or an
/// object with `return_code`/`signal` in later versions.
pub(super) fn exit_code_field(v: &serde_json::Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let code = v.get("return_code").and_then(|c| {
        c.as_i64()
            .or_else(|| c.get("number").and_then(serde_json::Value::as_i64))
    });
    let sig = v.get("signal").and_then(|s| {
        s.get("id")
            .and_then(|i| i.as_i64().or_else(|| i.get("number")?.as_i64()))
    });
    match (code, sig) {
        (_, Some(s)) if s > 0 => Some(s & 0x7f),
        (Some(c), _) => Some((c & 0xff) << 8),
        _ => None,
    }
}

/// A raw wait status as an exit. A launch failure puts a Slurm error number
/// there, not a status: no exit then.
pub(crate) fn decode_wait_status(raw: i64) -> Option<ExitKind> {
    let signal = (raw & 0x7f) as i32;
    let code = ((raw >> 8) & 0xff) as i32;
    match signal {
        0 => Some(ExitKind::Code(code)),
        1..=31 => Some(ExitKind::Signal(signal)),
        _ => None,
    }
}

/// `sacct`'s `CODE:SIGNAL`. A cancelled job is logged `0:0` whatever ended it:
/// no exit then.
pub(super) fn parse_exit_pair(text: &str, state: &str) -> Option<ExitKind> {
    let (code, signal) = text.trim().split_once(':')?;
    let (code, signal): (i32, i32) = (code.parse().ok()?, signal.parse().ok()?);
    match (code, signal) {
        (0, 0) if state == "CANCELLED" => None,
        (_, s) if s > 0 => Some(ExitKind::Signal(s)),
        (c, _) => Some(ExitKind::Code(c)),
    }
}

/// `sstat -P --noconvert --format=JobID,AveCPU,MaxRSS` lines: job id →
/// (CPU seconds, MiB).
pub(super) fn parse_sstat(text: &str) -> HashMap<String, (f64, f64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let [step, cpu, rss, ..] = f.as_slice() else {
                return None;
            };
            let id = step.strip_suffix(".batch")?;
            let bytes: f64 = rss.trim().trim_end_matches('K').parse().ok()?;
            let bytes = if rss.trim().ends_with('K') {
                bytes * 1024.0
            } else {
                bytes
            };
            Some((
                id.to_owned(),
                (parse_cpu_time(cpu)?, bytes / (1024.0 * 1024.0)),
            ))
        })
        .collect()
}

/// `[DD-][HH:]MM:SS[.sss]` as seconds.
pub(super) fn parse_cpu_time(text: &str) -> Option<f64> {
    let text = text.trim();
    let (days, rest) = match text.split_once('-') {
        Some((d, r)) => (d.parse::<f64>().ok()?, r),
        None => (0.0, text),
    };
    let mut secs = 0.0;
    for part in rest.split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some(days * 86_400.0 + secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_squeue_lines() {
        let rows = parse_squeue(
            "1|a.b|RUNNING|vm|None|corral:x\n2|c|PENDING||Priority|corral:y\nnot a row\n",
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows["1"].node, "vm");
        assert_eq!(rows["2"].reason, "Priority");
        assert_eq!(rows["2"].comment, "corral:y");
        assert!(matches!(classify("COMPLETING"), Class::Running));
        assert!(matches!(classify("CANCELLED"), Class::Ended));
        assert!(matches!(classify("PENDING"), Class::Pending));
    }

    #[test]
    fn decodes_raw_wait_statuses() {
        assert_eq!(decode_wait_status(768), Some(ExitKind::Code(3)));
        assert_eq!(decode_wait_status(32512), Some(ExitKind::Code(127)));
        assert_eq!(decode_wait_status(15), Some(ExitKind::Signal(15)));
        assert_eq!(decode_wait_status(9), Some(ExitKind::Signal(9)));
        assert_eq!(decode_wait_status(0), Some(ExitKind::Code(0)));
        // A bad output directory: Slurm's error 53 where a status should be.
        assert_eq!(decode_wait_status(4021), None);
        let newer = serde_json::json!({"return_code": 3, "signal": {"id": 0}});
        assert_eq!(exit_code_field(&newer), Some(768));
        let killed = serde_json::json!({"return_code": 0, "signal": {"id": 15}});
        assert_eq!(exit_code_field(&killed), Some(15));
    }

    #[test]
    fn reads_the_completion_log_and_sstat() {
        assert_eq!(parse_exit_pair("3:0", "FAILED"), Some(ExitKind::Code(3)));
        assert_eq!(
            parse_exit_pair("0:15", "FAILED"),
            Some(ExitKind::Signal(15))
        );
        assert_eq!(parse_exit_pair("0:0", "CANCELLED"), None);
        assert_eq!(parse_exit_pair("0:0", "COMPLETED"), Some(ExitKind::Code(0)));
        assert_eq!(parse_cpu_time("00:00:11"), Some(11.0));
        assert_eq!(parse_cpu_time("01:02.500"), Some(62.5));
        assert_eq!(parse_cpu_time("1-00:00:01"), Some(86_401.0));
        let s = parse_sstat("8.batch|00:00:11|223494144\n9.batch|00:00:00|3352K\nbad\n");
        assert_eq!(s["8"].0, 11.0);
        assert!((s["8"].1 - 213.14).abs() < 0.01, "{:?}", s["8"]);
        assert!((s["9"].1 - 3352.0 / 1024.0).abs() < 1e-9);
    }
}
