//! Log rotation with a real agent writing steadily: what the sampler does is
//! checked on the files themselves.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cleanup, request, wait_gone};
use corral_core::{AgentId, Config, LogRotation, SpawnRequest, Supervisor};

const INTERVAL: Duration = Duration::from_millis(100);
/// `max_mb` of the test: 0.01 MiB.
const LIMIT: u64 = 10_485;
/// What the writer below may add while the sampler has not looked yet: one
/// interval is about 1 KiB of its output; this allows several, for a loaded
/// machine.
const SLACK: u64 = 8 * 1024;

async fn setup() -> (Cleanup, tempfile::TempDir, Supervisor) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("state"));
    config.subreaper = true;
    config.sample_interval = INTERVAL;
    let sup = Supervisor::open(config).await.unwrap();
    let cleanup = Cleanup {
        cgroup: sup.cgroup_subtree().map(Into::into),
    };
    (cleanup, dir, sup)
}

/// Numbered lines, two per 10 ms (about 9 KB/s), each with one write.
const WRITER: &str = "\
import sys, time
i = 0
while True:
    for _ in range(2):
        i += 1
        sys.stdout.write(f'line {i} 0123456789abcdef0123456789abcdef\\n')
        sys.stdout.flush()
    time.sleep(0.01)
";

/// The numbers of the complete lines of a log, checking that it holds no NUL
/// byte (a hole left by a write at the old offset) and that its lines are
/// consecutive: a rotated copy is the log as it was, not a mix.
fn numbers(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        !bytes.contains(&0),
        "{} holds NUL bytes (first byte {:?})",
        path.display(),
        bytes.first()
    );
    let text = String::from_utf8(bytes).unwrap();
    // The last line may be cut by the copy; only whole lines count.
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let nums: Vec<u64> = whole
        .lines()
        .map(|l| {
            let n = l.strip_prefix("line ").and_then(|r| r.split(' ').next());
            n.and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}: not a whole line: {l:?}", path.display()))
        })
        .collect();
    for pair in nums.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{}: lines out of order",
            path.display()
        );
    }
    nums
}

#[tokio::test]
async fn a_growing_log_is_copied_and_truncated_keeping_two_copies() {
    let (_cleanup, _dir, sup) = setup().await;
    let r = sup
        .spawn_agent(SpawnRequest {
            logs: Some(LogRotation {
                max_mb: 0.01,
                keep: 2,
            }),
            ..request("chatty", &["python3", "-c", WRITER], 0)
        })
        .await
        .unwrap();
    let log = r.stdout_log.clone();
    let dir = log.parent().unwrap().to_owned();
    let copy = |n: u32| dir.join(format!("stdout.log.{n}"));

    // Until two rotations have happened and the current log has fresh lines
    // again, well below the limit (so that no rotation is about to happen).
    let end = Instant::now() + Duration::from_secs(30);
    let mut biggest = 0;
    loop {
        let size = std::fs::metadata(&log).unwrap().len();
        biggest = biggest.max(size);
        assert!(
            size <= LIMIT + SLACK,
            "the log reached {size} bytes; the limit is {LIMIT}"
        );
        assert!(!copy(3).exists(), "keep = 2, yet there is a third copy");
        if copy(2).exists() && (200..LIMIT / 2).contains(&size) {
            break;
        }
        assert!(
            Instant::now() < end,
            "no second rotation: .1 {}, .2 {}, log {size} bytes",
            copy(1).exists(),
            copy(2).exists()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = r.pid.unwrap();
    sup.kill_agent(&AgentId::new("chatty").unwrap(), true)
        .await
        .unwrap();
    wait_gone(pid).await;

    // At rest: the oldest copy, the newer one, then the current log, in order.
    let (two, one, now) = (numbers(&copy(2)), numbers(&copy(1)), numbers(&log));
    assert!(!copy(3).exists());
    assert!(!dir.join("stderr.log.1").exists(), "stderr stayed small");
    for n in [1, 2] {
        let size = std::fs::metadata(copy(n)).unwrap().len();
        assert!(size > LIMIT, ".{n} holds a whole log: {size} bytes");
    }
    assert!(
        two.last() < one.first(),
        ".2 {two:?} is older than .1 {one:?}"
    );
    // Lines kept arriving after the truncation, from the start of the file.
    let first = std::fs::read(&log).unwrap()[0];
    assert_eq!(first, b'l', "the current log starts with a line");
    assert!(!now.is_empty());
    assert!(
        one.last() < now.first(),
        ".1 ends before the current log begins"
    );
    assert!(biggest > LIMIT / 2, "the log did grow: {biggest} bytes");
}

#[tokio::test]
async fn a_bad_rotation_is_refused_naming_the_field() {
    let (_cleanup, _dir, sup) = setup().await;
    for (logs, needle) in [
        (
            LogRotation {
                max_mb: 0.0,
                keep: 3,
            },
            "logs.max_mb",
        ),
        (
            LogRotation {
                max_mb: f64::NAN,
                keep: 3,
            },
            "logs.max_mb",
        ),
        (
            LogRotation {
                max_mb: 1.0,
                keep: 0,
            },
            "logs.keep",
        ),
        (
            LogRotation {
                max_mb: 1.0,
                keep: 1000,
            },
            "logs.keep",
        ),
    ] {
        let err = sup
            .spawn_agent(SpawnRequest {
                logs: Some(logs),
                ..request("refused", &["sleep", "30"], 0)
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), corral_core::ErrorCode::Invalid, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    // Nothing was started or recorded.
    let missing = sup.get_agent_status(&AgentId::new("refused").unwrap());
    assert!(missing.is_err(), "{missing:?}");
}
