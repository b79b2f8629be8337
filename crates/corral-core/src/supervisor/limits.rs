//! Resource limits: who enforces each one, and the sampler's check of those
//! the kernel cannot enforce here.
//!
//! `nofile` is always `RLIMIT_NOFILE`, set in the agent before exec. Memory,
//! tasks and CPU go to the run's cgroup (`memory.max`, `pids.max`, `cpu.max`)
//! when the daemon's cgroup delegates those controllers; otherwise the sampler
//! checks the whole tree every interval and the owner stops the run, `failed`,
//! with the limit and the usage in `end_reason` — then the restart policy
//! applies. CPU is judged over three samples in a row (a moment's burst is not
//! an offence); memory and tasks at once.

use std::collections::BTreeMap;

use crate::model::{LimitEvent, LimitState, Limits};
use crate::platform::cgroup::Controllers;

/// Samples in a row over the CPU limit before the run is stopped.
pub(crate) const CPU_SAMPLES: u32 = 3;

/// How each set limit is enforced, given the controllers the run's cgroup got.
pub(crate) fn enforcement(limits: &Limits, kernel: Controllers) -> BTreeMap<String, LimitState> {
    let by = |kernel: bool| if kernel { "cgroup" } else { "sampler" }.to_owned();
    let mut out = BTreeMap::new();
    if let Some(v) = limits.memory_mb {
        out.insert(
            "memory_mb".into(),
            LimitState {
                value: v,
                enforced_by: by(kernel.memory),
            },
        );
    }
    if let Some(v) = limits.pids {
        out.insert(
            "pids".into(),
            LimitState {
                value: v as f64,
                enforced_by: by(kernel.pids),
            },
        );
    }
    if let Some(v) = limits.nofile {
        out.insert(
            "nofile".into(),
            LimitState {
                value: v as f64,
                enforced_by: "rlimit".into(),
            },
        );
    }
    if let Some(v) = limits.cpu_percent {
        out.insert(
            "cpu_percent".into(),
            LimitState {
                value: v,
                enforced_by: by(kernel.cpu),
            },
        );
    }
    out
}

/// One sample of a tree, as the limits see it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub memory_mb: f64,
    /// Tasks: every thread of every process.
    pub tasks: u64,
    pub cpu_percent: f64,
}

/// The limit a tree is over, in words and as an event's data — for limits the
/// sampler enforces. `cpu_over` counts samples in a row over the CPU limit.
pub(crate) fn check(
    enforced: &BTreeMap<String, LimitState>,
    usage: Usage,
    cpu_over: &mut u32,
) -> Option<(String, LimitEvent)> {
    let sampler = |name: &str| {
        enforced
            .get(name)
            .filter(|l| l.enforced_by == "sampler")
            .map(|l| l.value)
    };
    if let Some(limit) = sampler("memory_mb")
        && usage.memory_mb > limit
    {
        return Some((
            format!(
                "memory limit {limit} MB exceeded (tree RSS {:.0} MB)",
                usage.memory_mb
            ),
            LimitEvent {
                limit: "memory_mb".into(),
                value: limit,
                usage: Some(usage.memory_mb),
            },
        ));
    }
    if let Some(limit) = sampler("pids")
        && usage.tasks as f64 > limit
    {
        return Some((
            format!(
                "pids limit {limit} exceeded (tree has {} tasks)",
                usage.tasks
            ),
            LimitEvent {
                limit: "pids".into(),
                value: limit,
                usage: Some(usage.tasks as f64),
            },
        ));
    }
    match sampler("cpu_percent") {
        Some(limit) if usage.cpu_percent > limit => {
            *cpu_over += 1;
            if *cpu_over >= CPU_SAMPLES {
                return Some((
                    format!(
                        "cpu limit {limit}% exceeded (tree used {:.0}% for {CPU_SAMPLES} samples in a row)",
                        usage.cpu_percent
                    ),
                    LimitEvent {
                        limit: "cpu_percent".into(),
                        value: limit,
                        usage: Some(usage.cpu_percent),
                    },
                ));
            }
        }
        _ => *cpu_over = 0,
    }
    None
}

/// Checks the limits of a spawn request.
pub(crate) fn validate(limits: &Limits) -> Result<(), String> {
    if let Some(m) = limits.memory_mb
        && !(m.is_finite() && m > 0.0)
    {
        return Err(format!(
            "limits.memory_mb must be more than 0; got {}",
            crate::model::short_number(m)
        ));
    }
    if limits.pids == Some(0) {
        return Err("limits.pids must be at least 1".into());
    }
    if let Some(n) = limits.nofile
        && !(3..=1_048_576).contains(&n)
    {
        return Err(format!("limits.nofile must be 3–1048576; got {n}"));
    }
    if let Some(c) = limits.cpu_percent
        && !(c.is_finite() && c > 0.0)
    {
        return Err(format!(
            "limits.cpu_percent must be more than 0; got {}",
            crate::model::short_number(c)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            memory_mb: Some(64.0),
            pids: Some(10),
            nofile: Some(1024),
            cpu_percent: Some(50.0),
        }
    }

    #[test]
    fn the_kernel_enforces_what_it_can_and_the_sampler_the_rest() {
        let none = enforcement(&limits(), Controllers::default());
        let by: Vec<(&str, &str)> = none
            .iter()
            .map(|(k, v)| (k.as_str(), v.enforced_by.as_str()))
            .collect();
        assert_eq!(
            by,
            [
                ("cpu_percent", "sampler"),
                ("memory_mb", "sampler"),
                ("nofile", "rlimit"),
                ("pids", "sampler")
            ]
        );
        let mem = Controllers {
            memory: true,
            pids: false,
            cpu: false,
        };
        assert_eq!(
            enforcement(&limits(), mem)["memory_mb"].enforced_by,
            "cgroup"
        );
        assert!(enforcement(&Limits::default(), mem).is_empty());
    }

    #[test]
    fn each_limit_trips_as_it_should() {
        let enforced = enforcement(&limits(), Controllers::default());
        let under = Usage {
            memory_mb: 10.0,
            tasks: 3,
            cpu_percent: 10.0,
        };
        let table = [
            (
                Usage {
                    memory_mb: 70.0,
                    ..under
                },
                Some("memory limit 64 MB exceeded (tree RSS 70 MB)"),
            ),
            (
                Usage { tasks: 11, ..under },
                Some("pids limit 10 exceeded (tree has 11 tasks)"),
            ),
            (under, None),
        ];
        for (usage, want) in table {
            let mut over = 0;
            let got = check(&enforced, usage, &mut over).map(|(r, _)| r);
            assert_eq!(got.as_deref(), want, "{usage:?}");
        }
        // CPU: only three samples in a row.
        let busy = Usage {
            cpu_percent: 90.0,
            ..under
        };
        let mut over = 0;
        assert!(check(&enforced, busy, &mut over).is_none());
        assert!(check(&enforced, busy, &mut over).is_none());
        assert!(
            check(&enforced, under, &mut over).is_none(),
            "a quiet sample resets"
        );
        assert!(check(&enforced, busy, &mut over).is_none());
        assert!(check(&enforced, busy, &mut over).is_none());
        assert!(
            check(&enforced, busy, &mut over)
                .unwrap()
                .0
                .contains("cpu limit 50%")
        );
        // What the kernel enforces, the sampler leaves alone.
        let kernel = enforcement(
            &limits(),
            Controllers {
                memory: true,
                pids: true,
                cpu: true,
            },
        );
        assert!(
            check(
                &kernel,
                Usage {
                    memory_mb: 1e6,
                    tasks: 1000,
                    cpu_percent: 1e3
                },
                &mut 5
            )
            .is_none()
        );
    }

    #[test]
    fn nonsense_limits_are_refused_naming_the_field() {
        let bad = [
            Limits {
                memory_mb: Some(0.0),
                ..Limits::default()
            },
            Limits {
                pids: Some(0),
                ..Limits::default()
            },
            Limits {
                nofile: Some(1),
                ..Limits::default()
            },
            Limits {
                cpu_percent: Some(-5.0),
                ..Limits::default()
            },
        ];
        for l in bad {
            assert!(validate(&l).unwrap_err().starts_with("limits."), "{l:?}");
        }
        assert!(validate(&limits()).is_ok());
    }
}
