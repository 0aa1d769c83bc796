use super::*;
use crate::domain::UserId;
use proptest::prelude::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn two_tier_login() -> Rule {
    Rule {
        name: "login".into(),
        key: KeyKind::UserIp,
        prefixes: Prefixes::DEFAULT,
        shadow: false,
        kind: RuleKind::Failures {
            captcha_after: None,
            lock_after: Some(5),
        },
        activities: vec![],
        window: Duration::from_secs(30 * 60),
        ladder: Ladder::Tiers(vec![
            LockDuration::For(Duration::from_secs(30 * 60)),
            LockDuration::Permanent,
        ]),
        recurrence_window: Duration::from_secs(24 * 3600),
        extend_while_locked: false,
    }
}

fn key() -> Key {
    Key::User(UserId::parse("u", "alice").unwrap())
}

fn fail_n(rule: &Rule, mut state: KeyState, n: usize, at: i64) -> (KeyState, bool) {
    let mut applied = false;
    for _ in 0..n {
        let t = rule.record_failure(&state, UnixMillis(at));
        applied |= t.lockout_applied;
        state = t.state;
    }
    (state, applied)
}

#[test]
fn five_failures_in_thirty_minutes_lock_for_thirty_minutes() {
    let rule = two_tier_login();
    let (state, applied) = fail_n(&rule, KeyState::default(), 4, 0);
    assert!(!applied);
    let v = rule.assess(&key(), &state, UnixMillis(0));
    assert_eq!(
        (v.decision, v.remaining_attempts),
        (Decision::Allow, Some(1))
    );

    let t = rule.record_failure(&state, UnixMillis(29 * MIN));
    assert!(t.lockout_applied);
    let v = rule.assess(&key(), &t.state, UnixMillis(29 * MIN));
    assert_eq!(v.decision, Decision::Blocked);
    assert_eq!(v.reason, Reason::Locked);
    assert_eq!(v.unblock_at, Some(UnixMillis(59 * MIN)));
    assert_eq!(v.retry_after_seconds(UnixMillis(29 * MIN)), 30 * 60);
    assert_eq!(
        rule.assess(&key(), &t.state, UnixMillis(59 * MIN)).decision,
        Decision::Allow
    );
}

#[test]
fn failures_older_than_the_window_do_not_count() {
    let rule = two_tier_login();
    let (state, _) = fail_n(&rule, KeyState::default(), 4, 0);
    let (state, applied) = fail_n(&rule, state, 1, 30 * MIN);
    assert!(!applied);
    assert_eq!(rule.in_window(&state, UnixMillis(30 * MIN)), 1);
}

#[test]
fn a_second_lockout_within_a_day_is_permanent() {
    let rule = two_tier_login();
    let (state, _) = fail_n(&rule, KeyState::default(), 5, 0);
    let (state, applied) = fail_n(&rule, state, 5, 23 * HOUR);
    assert!(applied);
    let v = rule.assess(&key(), &state, UnixMillis(1000 * HOUR));
    assert_eq!(v.decision, Decision::Blocked);
    assert!(v.permanent);
    assert_eq!(v.reason, Reason::LockedPermanently);
    assert_eq!(v.unblock_at, None);
    assert_eq!(rule.expires_at(&state), None);
}

#[test]
fn a_second_lockout_after_a_day_starts_the_ladder_again() {
    let rule = two_tier_login();
    let (state, _) = fail_n(&rule, KeyState::default(), 5, 0);
    let (state, _) = fail_n(&rule, state, 5, 25 * HOUR);
    let lock = state.lock.clone().unwrap();
    assert_eq!(
        (lock.tier, lock.until),
        (1, Some(UnixMillis(25 * HOUR + 30 * MIN)))
    );
}

#[test]
fn success_clears_failures_but_not_history() {
    let rule = two_tier_login();
    let (state, _) = fail_n(&rule, KeyState::default(), 5, 0);
    let (state, _) = fail_n(&rule, state, 4, 31 * MIN);
    let state = rule.record_success(&state);
    assert_eq!(rule.in_window(&state, UnixMillis(31 * MIN)), 0);
    let (state, _) = fail_n(&rule, state, 5, 40 * MIN);
    assert!(
        state.lock.unwrap().until.is_none(),
        "the run survived the success"
    );
}

#[test]
fn captcha_threshold_below_the_lock() {
    let rule = Rule {
        kind: RuleKind::Failures {
            captcha_after: Some(3),
            lock_after: Some(5),
        },
        ..two_tier_login()
    };
    let (state, _) = fail_n(&rule, KeyState::default(), 2, 0);
    let v = rule.assess(&key(), &state, UnixMillis(0));
    assert_eq!(
        (v.decision, v.remaining_attempts),
        (Decision::Allow, Some(1))
    );
    let (state, _) = fail_n(&rule, state, 1, 0);
    let v = rule.assess(&key(), &state, UnixMillis(0));
    assert_eq!(v.decision, Decision::ChallengeCaptcha);
    assert_eq!(v.reason, Reason::CaptchaRequired);
    assert_eq!(v.remaining_attempts, Some(2));
}

#[test]
fn progressive_ladder_doubles_up_to_the_cap() {
    let ladder = Ladder::Progressive {
        base: Duration::from_secs(60),
        factor: 2.0,
        max: Duration::from_secs(600),
        permanent_after: None,
    };
    let secs: Vec<_> = (1..=6)
        .map(|n| match ladder.duration(n) {
            LockDuration::For(d) => d.as_secs(),
            LockDuration::Permanent => u64::MAX,
        })
        .collect();
    assert_eq!(secs, [60, 120, 240, 480, 600, 600]);
    assert_eq!(
        ladder.duration(u32::MAX),
        LockDuration::For(Duration::from_secs(600))
    );
    let with_perm = Ladder::Progressive {
        base: Duration::from_secs(60),
        factor: 2.0,
        max: Duration::from_secs(600),
        permanent_after: Some(3),
    };
    assert_eq!(with_perm.duration(3), LockDuration::Permanent);
}

#[test]
fn progressive_rule_climbs_within_the_recurrence_window() {
    let rule = Rule {
        kind: RuleKind::Failures {
            captcha_after: None,
            lock_after: Some(2),
        },
        ladder: Ladder::Progressive {
            base: Duration::from_secs(60),
            factor: 2.0,
            max: Duration::from_secs(3600),
            permanent_after: None,
        },
        ..two_tier_login()
    };
    let (s, _) = fail_n(&rule, KeyState::default(), 2, 0);
    assert_eq!(s.lock.as_ref().unwrap().until, Some(UnixMillis(MIN)));
    let (s, _) = fail_n(&rule, s, 2, 2 * MIN);
    assert_eq!(s.lock.as_ref().unwrap().until, Some(UnixMillis(4 * MIN)));
    let (s, _) = fail_n(&rule, s, 2, 5 * MIN);
    assert_eq!(s.lock.as_ref().unwrap().tier, 3);
    assert_eq!(s.lock.as_ref().unwrap().until, Some(UnixMillis(9 * MIN)));
}

#[test]
fn failures_while_locked_count_but_do_not_extend() {
    let rule = two_tier_login();
    let (state, _) = fail_n(&rule, KeyState::default(), 5, 0);
    let (state, applied) = fail_n(&rule, state, 10, 10 * MIN);
    assert!(!applied);
    assert_eq!(state.failures_total, 15);
    assert_eq!(state.lockouts_total, 1);
    assert_eq!(state.lock.unwrap().until, Some(UnixMillis(30 * MIN)));

    let extending = Rule {
        extend_while_locked: true,
        ..two_tier_login()
    };
    let (state, _) = fail_n(&extending, KeyState::default(), 5, 0);
    let (state, _) = fail_n(&extending, state, 1, 10 * MIN);
    assert_eq!(state.lock.unwrap().until, Some(UnixMillis(40 * MIN)));
}

#[test]
fn activities_filter_what_counts() {
    let rule = Rule {
        activities: vec!["spam".into()],
        ..two_tier_login()
    };
    assert!(rule.counts("spam"));
    assert!(!rule.counts(""));
    assert!(two_tier_login().counts("anything"));
}

fn per_minute(limit: u32, penalty_box: bool) -> Rule {
    Rule {
        name: "burst".into(),
        key: KeyKind::Ip,
        kind: RuleKind::Rate { limit, penalty_box },
        window: Duration::from_secs(60),
        ladder: Ladder::Tiers(vec![
            LockDuration::For(Duration::from_secs(600)),
            LockDuration::Permanent,
        ]),
        ..two_tier_login()
    }
}

/// Sends one request of `hits` to `rule` alone at `at`.
fn request(rule: &Rule, state: &KeyState, hits: u32, at: i64) -> Hit {
    hit_all(&[(rule, &key(), state, hits)], true, UnixMillis(at))
        .pop()
        .unwrap()
}

#[test]
fn a_rate_rule_lets_the_limit_through_and_says_when_the_next_fits() {
    let rule = per_minute(3, false);
    let mut state = KeyState::default();
    for (i, at) in [0, 10_000, 20_000].into_iter().enumerate() {
        let hit = request(&rule, &state, 1, at);
        assert!(hit.counted);
        assert_eq!(hit.verdict.decision, Decision::Allow);
        assert_eq!(hit.verdict.remaining_attempts, Some(2 - i as u32));
        assert_eq!(hit.verdict.frees_at, Some(UnixMillis(MIN)));
        state = hit.state;
    }
    let refused = request(&rule, &state, 1, 30_000);
    assert!(!refused.counted && !refused.lockout_applied);
    assert_eq!(refused.state, state, "a refused request is not counted");
    assert_eq!(
        (refused.verdict.decision, refused.verdict.reason),
        (Decision::Blocked, Reason::RateLimited)
    );
    assert_eq!(refused.verdict.unblock_at, Some(UnixMillis(MIN)));
    assert_eq!(refused.verdict.remaining_attempts, Some(0));
    assert_eq!(state.failures_total, 3);
}

#[test]
fn the_window_slides_one_request_at_a_time() {
    let rule = per_minute(3, false);
    let mut state = KeyState::default();
    for at in [0, 10_000, 20_000] {
        state = request(&rule, &state, 1, at).state;
    }
    // A fixed window would refill all three at once; here the first
    // leaves at 60 s, the second at 70 s.
    assert!(!request(&rule, &state, 1, MIN - 1).counted);
    let hit = request(&rule, &state, 1, MIN);
    assert!(hit.counted);
    assert_eq!(hit.verdict.remaining_attempts, Some(0));
    let state = hit.state;
    let refused = request(&rule, &state, 1, MIN + 5_000);
    assert_eq!(refused.verdict.unblock_at, Some(UnixMillis(70_000)));
    assert!(request(&rule, &state, 1, 70_000).counted);
}

#[test]
fn hits_addend_takes_that_many_and_waits_for_room_for_all() {
    let rule = per_minute(10, false);
    let state = request(&rule, &KeyState::default(), 4, 0).state;
    let state = request(&rule, &state, 4, 30_000).state;
    assert_eq!(rule.in_window(&state, UnixMillis(30_000)), 8);
    let refused = request(&rule, &state, 3, 40_000);
    assert!(!refused.counted);
    assert_eq!(refused.verdict.remaining_attempts, Some(2));
    // One of the first four leaving makes room for three.
    assert_eq!(refused.verdict.unblock_at, Some(UnixMillis(MIN)));
    assert!(request(&rule, &state, 2, 40_000).counted);
    let never = request(&rule, &KeyState::default(), 11, 0);
    assert_eq!(
        (never.verdict.decision, never.verdict.unblock_at),
        (Decision::Blocked, None)
    );
}

#[test]
fn the_penalty_box_locks_on_the_ladder() {
    let rule = per_minute(2, true);
    let state = request(&rule, &KeyState::default(), 2, 0).state;
    let over = request(&rule, &state, 1, 1_000);
    assert!(over.lockout_applied && !over.counted);
    assert_eq!(over.verdict.reason, Reason::Locked);
    assert_eq!(over.verdict.unblock_at, Some(UnixMillis(601_000)));
    let while_locked = request(&rule, &over.state, 1, 2_000);
    assert!(!while_locked.lockout_applied && !while_locked.counted);
    assert_eq!(while_locked.state, over.state);
    // The lock used the count up; the next excess within the
    // recurrence window climbs to the permanent tier.
    let state = request(&rule, &over.state, 2, 601_000).state;
    let again = request(&rule, &state, 1, 601_000);
    assert!(again.lockout_applied);
    assert!(again.verdict.permanent);
    assert_eq!(again.state.lockouts_total, 2);
}

#[test]
fn a_request_counts_on_every_rate_rule_or_on_none() {
    let small = per_minute(1, false);
    let large = Rule {
        name: "large".into(),
        ..per_minute(100, false)
    };
    let (a, b) = (KeyState::default(), KeyState::default());
    let first = hit_all(
        &[(&small, &key(), &a, 1), (&large, &key(), &b, 1)],
        true,
        UnixMillis(0),
    );
    assert!(first.iter().all(|h| h.counted));
    let second = hit_all(
        &[
            (&small, &key(), &first[0].state, 1),
            (&large, &key(), &first[1].state, 1),
        ],
        true,
        UnixMillis(1),
    );
    assert!(second.iter().all(|h| !h.counted));
    assert_eq!(second[1].state, first[1].state, "the large rule let it be");
    assert_eq!(second[1].verdict.remaining_attempts, Some(99));
    let refused_elsewhere = hit_all(&[(&large, &key(), &b, 1)], false, UnixMillis(0));
    assert!(!refused_elsewhere[0].counted);
    assert_eq!(refused_elsewhere[0].state, b);
}

#[test]
fn rate_rules_count_no_failure_and_forgive_nothing() {
    let rule = per_minute(5, true);
    assert!(!rule.counts(""));
    let state = request(&rule, &KeyState::default(), 3, 0).state;
    assert_eq!(rule.record_success(&state), state);
    let v = rule.assess(&key(), &state, UnixMillis(0));
    assert_eq!(
        (v.decision, v.remaining_attempts),
        (Decision::Allow, Some(2))
    );
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (1u32..8, 1u64..120, any::<bool>(), 1u64..600, any::<bool>()).prop_map(
        |(lock_after, window_min, perm, base_s, extend)| Rule {
            kind: RuleKind::Failures {
                lock_after: Some(lock_after),
                captcha_after: Some(lock_after.div_ceil(2)),
            },
            window: Duration::from_secs(window_min * 60),
            ladder: if perm {
                Ladder::Tiers(vec![
                    LockDuration::For(Duration::from_secs(base_s)),
                    LockDuration::Permanent,
                ])
            } else {
                Ladder::Progressive {
                    base: Duration::from_secs(base_s),
                    factor: 3.0,
                    max: Duration::from_secs(base_s * 10),
                    permanent_after: None,
                }
            },
            extend_while_locked: extend,
            ..two_tier_login()
        },
    )
}

/// Events: a failure or a success after a forward clock step (ms).
fn arb_events() -> impl Strategy<Value = Vec<(bool, i64)>> {
    prop::collection::vec((any::<bool>(), 0i64..20 * MIN), 1..60)
}

proptest! {
    #[test]
    fn a_rate_rule_never_lets_more_than_its_limit_into_a_window(
        limit in 1u32..20,
        window_s in 1u64..120,
        penalty in any::<bool>(),
        requests in prop::collection::vec((1u32..5, 0i64..30_000), 1..80),
    ) {
        let rule = Rule {
            window: Duration::from_secs(window_s),
            ..per_minute(limit, penalty)
        };
        let mut state = KeyState::default();
        let mut now = 0;
        let mut admitted: Vec<(i64, u32)> = Vec::new();
        for (hits, step) in requests {
            now += step;
            let before = state.clone();
            let hit = request(&rule, &state, hits, now);
            let window_ms = window_s as i64 * 1000;
            let used: u32 = admitted
                .iter()
                .filter(|(t, _)| t + window_ms > now)
                .map(|(_, n)| n)
                .sum();
            let locked = before.active_lock(UnixMillis(now)).is_some();
            // Admitted exactly when it fits, unless a penalty lock holds.
            prop_assert_eq!(hit.counted, !locked && used + hits <= limit);
            if hit.counted {
                admitted.push((now, hits));
                prop_assert_eq!(hit.verdict.remaining_attempts, Some(limit - used - hits));
            } else if let Some(at) = hit.verdict.unblock_at.filter(|_| !hit.lockout_applied && !locked) {
                // Waiting as told is enough, and not a moment too much.
                let fits = |t: i64| admitted
                    .iter()
                    .filter(|(a, _)| a + window_ms > t)
                    .map(|(_, n)| n)
                    .sum::<u32>() + hits <= limit;
                prop_assert!(fits(at.0));
                prop_assert!(!fits(at.0 - 1));
            }
            if hit.lockout_applied {
                admitted.clear();
            }
            state = hit.state;
        }
    }

    #[test]
    fn every_acknowledged_failure_is_counted(rule in arb_rule(), events in arb_events()) {
        let mut state = KeyState::default();
        let mut now = 0;
        let mut failures = 0u64;
        for (is_failure, step) in events {
            now += step;
            let before = state.clone();
            if is_failure {
                failures += 1;
                let t = rule.record_failure(&state, UnixMillis(now));
                state = t.state;
                if !t.lockout_applied && before.active_lock(UnixMillis(now)).is_none() {
                    prop_assert_eq!(
                        rule.in_window(&state, UnixMillis(now)),
                        rule.in_window(&before, UnixMillis(now)) + 1
                    );
                }
            } else {
                state = rule.record_success(&state);
            }
            prop_assert_eq!(state.failures_total, failures);
        }
    }

    #[test]
    fn a_lock_never_ends_early(rule in arb_rule(), events in arb_events()) {
        let mut state = KeyState::default();
        let mut now = 0;
        for (is_failure, step) in events {
            now += step;
            let held = state.active_lock(UnixMillis(now)).cloned();
            state = if is_failure {
                rule.record_failure(&state, UnixMillis(now)).state
            } else {
                rule.record_success(&state)
            };
            if let Some(held) = held {
                let lock = state.active_lock(UnixMillis(now)).cloned();
                prop_assert!(lock.is_some(), "an active lock vanished");
                let lock = lock.unwrap();
                prop_assert_eq!(lock.locked_at, held.locked_at);
                match (held.until, lock.until) {
                    (None, until) => prop_assert_eq!(until, None),
                    (Some(a), Some(b)) => prop_assert!(b >= a),
                    (Some(_), None) => {}
                }
                prop_assert_eq!(
                    rule.assess(&key(), &state, UnixMillis(now)).decision,
                    Decision::Blocked
                );
            }
        }
    }

    #[test]
    fn a_permanent_lock_stays(rule in arb_rule(), events in arb_events(), far in 0i64..i64::MAX / 4) {
        let mut state = KeyState::default();
        let mut now = 0;
        let mut permanent = false;
        for (is_failure, step) in events {
            now += step;
            state = if is_failure {
                rule.record_failure(&state, UnixMillis(now)).state
            } else {
                rule.record_success(&state)
            };
            permanent |= state.lock.as_ref().is_some_and(|l| l.until.is_none());
            if permanent {
                let v = rule.assess(&key(), &state, UnixMillis(now.saturating_add(far)));
                prop_assert!(v.permanent && v.decision == Decision::Blocked);
                prop_assert_eq!(rule.expires_at(&state), None);
            }
        }
    }
}
