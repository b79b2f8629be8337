//! The lifecycle's table, move by move.
use super::*;
use AgentState as W;

fn t0() -> (Instant, SystemTime) {
    (Instant::now(), SystemTime::now())
}

fn req(cause: StopCause, force: bool) -> StopRequest {
    let (now, wall) = t0();
    StopRequest {
        cause,
        reason: None,
        timeouts: [10.0, 5.0, 5.0],
        force,
        now,
        wall,
        no_restart: false,
    }
}

fn exited(leftovers: bool) -> Happening {
    Happening::MainExited {
        leftovers: leftovers.then(|| req(StopCause::Leftovers, false)),
    }
}

fn due() -> Happening {
    let (now, wall) = t0();
    Happening::StageDue {
        now,
        wall,
        settle_until: None,
    }
}

/// One state of each kind (a stopping one whose main has exited, and one
/// whose main still runs).
fn samples() -> Vec<Lifecycle> {
    let (now, _) = t0();
    let mut stopping = Lifecycle {
        state: State::Running,
    };
    stopping
        .apply(Happening::Stop(req(StopCause::User, false)))
        .unwrap();
    let mut leftovers = Lifecycle {
        state: State::Running,
    };
    leftovers.apply(exited(true)).unwrap();
    vec![
        Lifecycle::starting(),
        Lifecycle {
            state: State::Starting {
                verify_until: Some(now),
            },
        },
        Lifecycle {
            state: State::Running,
        },
        Lifecycle {
            state: State::Paused,
        },
        stopping,
        leftovers,
        Lifecycle {
            state: State::Backoff { until: now },
        },
        Lifecycle::ended(),
    ]
}

fn happenings() -> Vec<Happening> {
    let (now, _) = t0();
    vec![
        Happening::Started { verify_until: None },
        Happening::Started {
            verify_until: Some(now),
        },
        Happening::Verified,
        Happening::StartFailed,
        exited(false),
        exited(true),
        Happening::Stop(req(StopCause::User, false)),
        Happening::Stop(req(StopCause::Limit, false)),
        due(),
        Happening::TreeGone,
        Happening::RestartPlanned { until: now },
        Happening::BackoffElapsed,
        Happening::NewRun,
        Happening::Pause,
        Happening::Resume,
        Happening::Requeued,
    ]
}

/// The contract's moves (plus paused → ended, and running → starting for a
/// requeued cluster job), and staying put.
fn allowed(from: W, to: W) -> bool {
    from == to
        || matches!(
            (from, to),
            (W::Starting, W::Running | W::Stopping | W::Ended)
                | (W::Running, W::Stopping | W::Paused | W::Ended | W::Starting)
                | (W::Paused, W::Running | W::Stopping | W::Ended)
                | (W::Stopping, W::Ended)
                | (W::Ended, W::Backoff | W::Starting)
                | (W::Backoff, W::Starting | W::Ended)
        )
}

#[test]
fn every_move_is_one_the_contract_allows() {
    let mut legal = 0;
    for life in samples() {
        for what in happenings() {
            let mut l = life.clone();
            match l.apply(what.clone()) {
                Ok(change) => {
                    legal += 1;
                    assert!(
                        allowed(change.from, change.to),
                        "{:?} + {what:?} → {:?}",
                        life.state,
                        change.to
                    );
                    assert_eq!(change.to, l.wire());
                }
                Err(e) => {
                    assert_eq!(l, life, "a refused move changes nothing");
                    assert_eq!(e.from, life.wire());
                }
            }
        }
    }
    assert!(legal >= 20, "only {legal} legal moves");
}

#[test]
fn the_table() {
    use Happening as H;
    let (now, _) = t0();
    let cases: Vec<(Lifecycle, Happening, Option<W>)> = vec![
        (
            Lifecycle::starting(),
            H::Started { verify_until: None },
            Some(W::Running),
        ),
        (
            Lifecycle::starting(),
            H::Started {
                verify_until: Some(now),
            },
            Some(W::Starting),
        ),
        (Lifecycle::starting(), H::Verified, None),
        (Lifecycle::starting(), H::StartFailed, Some(W::Ended)),
        (Lifecycle::starting(), exited(false), Some(W::Ended)),
        (Lifecycle::starting(), exited(true), Some(W::Stopping)),
        (
            Lifecycle::ended(),
            H::Stop(req(StopCause::User, false)),
            None,
        ),
        (Lifecycle::ended(), H::TreeGone, None),
        (Lifecycle::ended(), H::BackoffElapsed, None),
        (Lifecycle::ended(), H::NewRun, Some(W::Starting)),
        (
            Lifecycle {
                state: State::Backoff { until: now },
            },
            H::Stop(req(StopCause::User, false)),
            Some(W::Ended),
        ),
        (
            Lifecycle {
                state: State::Running,
            },
            H::TreeGone,
            None,
        ),
        (
            Lifecycle {
                state: State::Running,
            },
            H::Resume,
            None,
        ),
        (
            Lifecycle {
                state: State::Running,
            },
            H::Requeued,
            Some(W::Starting),
        ),
        (
            Lifecycle {
                state: State::Paused,
            },
            H::Requeued,
            None,
        ),
        (
            Lifecycle {
                state: State::Backoff { until: now },
            },
            H::Requeued,
            None,
        ),
    ];
    for (mut life, what, want) in cases {
        let before = life.state.clone();
        let got = life.apply(what.clone()).ok().map(|c| c.to);
        assert_eq!(got, want, "{before:?} + {what:?}");
    }
}

#[test]
fn a_stop_walks_its_stages_and_a_survivor_stays_stopping() {
    let mut life = Lifecycle {
        state: State::Running,
    };
    let c = life
        .apply(Happening::Stop(req(StopCause::Limit, false)))
        .unwrap();
    assert_eq!((c.to, c.stage), (W::Stopping, Some(StopStage::Term)));
    assert_eq!(
        life.apply(due()).unwrap().stage,
        Some(StopStage::SecondTerm)
    );
    assert_eq!(life.apply(due()).unwrap().stage, Some(StopStage::Kill));
    // Something signalled a moment ago may still be dying: wait for it.
    let (now, wall) = t0();
    let settle = now + Duration::from_secs(3600);
    let c = life
        .apply(Happening::StageDue {
            now,
            wall,
            settle_until: Some(settle),
        })
        .unwrap();
    assert!(!c.unkillable);
    assert_eq!(life.deadline(), Some(settle));
    let c = life.apply(due()).unwrap();
    assert!(c.unkillable, "{c:?}");
    assert_eq!(life.wire(), W::Stopping, "never back to running");
    assert_eq!(life.deadline(), None);
    assert!(life.apply(due()).is_err(), "no deadline after unkillable");
    // The main process has not exited: the tree cannot be gone.
    assert!(life.apply(Happening::TreeGone).is_err());
    life.apply(exited(false)).unwrap();
    assert_eq!(life.apply(Happening::TreeGone).unwrap().to, W::Ended);
}

#[test]
fn a_user_joining_takes_the_stop_over_unless_the_main_had_ended() {
    let mut life = Lifecycle {
        state: State::Running,
    };
    life.apply(Happening::Stop(req(StopCause::MaxRuntime, false)))
        .unwrap();
    let c = life
        .apply(Happening::Stop(req(StopCause::User, true)))
        .unwrap();
    assert_eq!(c.stage, Some(StopStage::Kill), "force escalates at once");
    let s = life.stop().unwrap();
    assert_eq!(
        (s.cause, s.asked, s.stage),
        (StopCause::User, true, StopStage::Kill)
    );
    let mut left = Lifecycle {
        state: State::Running,
    };
    left.apply(exited(true)).unwrap();
    left.apply(Happening::Stop(req(StopCause::User, false)))
        .unwrap();
    let s = left.stop().unwrap();
    assert_eq!((s.cause, s.asked), (StopCause::Leftovers, true));
}

#[test]
fn a_recovered_stop_continues_at_its_stage_and_a_passed_deadline_is_due() {
    let mut life = Lifecycle {
        state: State::Running,
    };
    life.apply(Happening::Stop(req(StopCause::User, false)))
        .unwrap();
    life.apply(due()).unwrap();
    let rec = life.stop().unwrap().record();
    let json = serde_json::to_string(&rec).unwrap();
    let back: StopRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, rec);
    let (now, wall) = t0();
    let resumed = Lifecycle::recover(Some(W::Stopping), Some(&back), now, wall);
    let s = resumed.stop().unwrap();
    assert_eq!(
        (s.stage, s.cause, s.asked),
        (StopStage::SecondTerm, StopCause::User, true)
    );
    assert!(s.deadline > now, "its wait is not over yet");
    // The daemon was down for an hour: the deadline is due at once.
    let later_wall = wall + Duration::from_secs(3600);
    let resumed = Lifecycle::recover(Some(W::Stopping), Some(&back), now, later_wall);
    assert!(resumed.deadline().unwrap() <= now);
    assert_eq!(Lifecycle::recover(None, None, now, wall).wire(), W::Running);
    assert_eq!(
        Lifecycle::recover(Some(W::Starting), None, now, wall).wire(),
        W::Starting
    );
}

#[test]
fn a_paused_run_stays_paused_across_a_daemon_restart() {
    let (now, wall) = t0();
    let mut life = Lifecycle::recover(Some(W::Paused), None, now, wall);
    assert_eq!(life.wire(), W::Paused);
    assert_eq!(life.deadline(), None, "no clock runs while paused");
    // Only a resume, a stop or an end moves it.
    assert!(life.clone().apply(Happening::Pause).is_err());
    assert!(life.clone().apply(Happening::Verified).is_err());
    assert_eq!(life.apply(Happening::Resume).unwrap().to, W::Running);
}

#[test]
fn huge_waits_saturate_instead_of_panicking() {
    assert_eq!(secs_saturating(1e300), Duration::MAX);
    assert_eq!(secs_saturating(f64::NAN), Duration::ZERO);
    let now = Instant::now();
    assert!(later(now, Duration::MAX) > now);
    let mut life = Lifecycle {
        state: State::Running,
    };
    let mut r = req(StopCause::User, false);
    r.timeouts = [1e300, f64::MAX, 1e19];
    life.apply(Happening::Stop(r)).unwrap();
    assert!(life.deadline().unwrap() > now);
}
