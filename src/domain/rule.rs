use std::time::Duration;

use super::{Decision, Key, KeyKind, Reason, UnixMillis, Verdict};

/// How long one lockout lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockDuration {
    For(Duration),
    /// Until an admin unlocks.
    Permanent,
}

/// Maps the n-th lockout of a key's current run (n = 1 for the first) to its
/// duration.
#[derive(Debug, Clone, PartialEq)]
pub enum Ladder {
    /// A fixed list, the last entry repeating: [30m, permanent] locks for
    /// half an hour, then for good.
    Tiers(Vec<LockDuration>),
    /// Each lockout of a run longer than the last: `base × factor^(n−1)`,
    /// capped at `max`; permanent from the
    /// `permanent_after`-th lockout on when set.
    Progressive {
        base: Duration,
        factor: f64,
        max: Duration,
        permanent_after: Option<u32>,
    },
}

impl Ladder {
    pub fn duration(&self, n: u32) -> LockDuration {
        let n = n.max(1);
        match self {
            Ladder::Tiers(tiers) => {
                let i = usize::try_from(n - 1).unwrap_or(usize::MAX);
                *tiers
                    .get(i)
                    .or(tiers.last())
                    .unwrap_or(&LockDuration::Permanent)
            }
            Ladder::Progressive {
                base,
                factor,
                max,
                permanent_after,
            } => {
                if permanent_after.is_some_and(|p| n >= p) {
                    return LockDuration::Permanent;
                }
                // Float maths saturates to infinity rather than overflowing,
                // and the cap applies before converting back.
                let secs =
                    base.as_secs_f64() * factor.powi(i32::try_from(n - 1).unwrap_or(i32::MAX));
                let capped = if secs.is_finite() && secs < max.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    *max
                };
                LockDuration::For(capped)
            }
        }
    }
}

/// A rule counts failures on one kind of key within a sliding window and
/// steps up: first to a captcha challenge, then to a lockout whose length
/// follows the ladder.
///
/// Later rule kinds (per-activity rate rules for anti-spam) add their own
/// fields beside these; `activities` is already the hook that lets one
/// context hold rules for different kinds of events.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub key: KeyKind,
    /// Activities this rule counts; empty counts every failure.
    pub activities: Vec<String>,
    /// Failures older than this no longer count.
    pub window: Duration,
    /// Failures in the window from which callers are told to show a captcha.
    pub captcha_after: Option<u32>,
    /// Failures in the window that lock the key.
    pub lock_after: Option<u32>,
    pub ladder: Ladder,
    /// A lockout within this long of the previous one continues the run (and
    /// climbs the ladder); a later one starts again at the first tier.
    pub recurrence_window: Duration,
    /// Failures while locked restart the lock's clock. Off by default:
    /// otherwise an attacker can keep a victim locked forever.
    pub extend_while_locked: bool,
}

/// A lock in force on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub locked_at: UnixMillis,
    /// `None` when permanent.
    pub until: Option<UnixMillis>,
    /// Which lockout of the run this is (1 for the first).
    pub tier: u32,
}

impl Lock {
    pub fn is_active(&self, now: UnixMillis) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// Everything stored about one key of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyState {
    /// Times of the failures that may still count, oldest first. Holding the
    /// times rather than a counter makes the window truly sliding; only as
    /// many as the highest threshold are kept.
    pub recent_failures: Vec<UnixMillis>,
    pub failures_total: u64,
    pub last_failure_at: Option<UnixMillis>,
    /// The last lock applied, kept after it ends until the state expires.
    pub lock: Option<Lock>,
    /// Lockouts in the current run (the n of the ladder).
    pub recent_lockouts: u32,
    pub last_lockout_at: Option<UnixMillis>,
    pub lockouts_total: u64,
}

impl KeyState {
    pub fn active_lock(&self, now: UnixMillis) -> Option<&Lock> {
        self.lock.as_ref().filter(|l| l.is_active(now))
    }
}

/// The outcome of recording one failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: KeyState,
    /// This failure started a lockout.
    pub lockout_applied: bool,
}

impl Rule {
    /// Whether a failure of `activity` (empty: unspecified) counts here.
    pub fn counts(&self, activity: &str) -> bool {
        self.activities.is_empty() || self.activities.iter().any(|a| a == activity)
    }

    fn keep(&self) -> usize {
        self.captcha_after.max(self.lock_after).unwrap_or(0) as usize
    }

    pub fn failures_in_window(&self, state: &KeyState, now: UnixMillis) -> u32 {
        let count = state
            .recent_failures
            .iter()
            .filter(|&&t| t.plus(self.window) > now)
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Judges `key` as it stands at `now`.
    pub fn assess(&self, key: &Key, state: &KeyState, now: UnixMillis) -> Verdict {
        let base = Verdict {
            rule: Some(self.name.clone()),
            key: Some(key.clone()),
            ..Verdict::allow()
        };
        if let Some(lock) = state.active_lock(now) {
            let permanent = lock.until.is_none();
            return Verdict {
                decision: Decision::Blocked,
                reason: if permanent {
                    Reason::LockedPermanently
                } else {
                    Reason::Locked
                },
                unblock_at: lock.until,
                permanent,
                ..base
            };
        }
        let count = self.failures_in_window(state, now);
        let captcha = self.captcha_after.filter(|&c| count >= c);
        let next_step = [self.captcha_after, self.lock_after]
            .into_iter()
            .flatten()
            .filter(|&t| t > count)
            .min();
        Verdict {
            decision: if captcha.is_some() {
                Decision::ChallengeCaptcha
            } else {
                Decision::Allow
            },
            reason: if captcha.is_some() {
                Reason::CaptchaRequired
            } else {
                Reason::Ok
            },
            remaining_attempts: next_step.map(|t| t - count),
            ..base
        }
    }

    /// Records one failure at `now`. Every failure is added to the total,
    /// including those that arrive while the key is locked; only failures
    /// outside a lock count toward the next one.
    pub fn record_failure(&self, state: &KeyState, now: UnixMillis) -> Transition {
        let mut next = state.clone();
        next.failures_total = next.failures_total.saturating_add(1);
        next.last_failure_at = next.last_failure_at.max(Some(now));

        if let Some(lock) = next.lock.as_mut().filter(|l| l.is_active(now)) {
            if self.extend_while_locked
                && let LockDuration::For(d) = self.ladder.duration(lock.tier)
            {
                lock.until = lock.until.max(Some(now.plus(d)));
            }
            return Transition {
                state: next,
                lockout_applied: false,
            };
        }

        // Replicas' clocks differ a little, so insert in order rather than
        // assume `now` is the latest.
        let at = next.recent_failures.partition_point(|&t| t <= now);
        next.recent_failures.insert(at, now);
        next.recent_failures.retain(|&t| t.plus(self.window) > now);
        let excess = next.recent_failures.len().saturating_sub(self.keep());
        next.recent_failures.drain(..excess);

        let count = self.failures_in_window(&next, now);
        if self.lock_after.is_none_or(|n| count < n) {
            return Transition {
                state: next,
                lockout_applied: false,
            };
        }
        let continues_run = next
            .last_lockout_at
            .is_some_and(|last| last.plus(self.recurrence_window) > now);
        let tier = if continues_run {
            next.recent_lockouts.saturating_add(1)
        } else {
            1
        };
        next.lock = Some(Lock {
            locked_at: now,
            until: match self.ladder.duration(tier) {
                LockDuration::For(d) => Some(now.plus(d)),
                LockDuration::Permanent => None,
            },
            tier,
        });
        // The lock used these failures up: when it ends the key starts afresh.
        next.recent_failures.clear();
        next.recent_lockouts = tier;
        next.last_lockout_at = Some(now);
        next.lockouts_total = next.lockouts_total.saturating_add(1);
        Transition {
            state: next,
            lockout_applied: true,
        }
    }

    /// Records a success: the failures in the window are forgiven, the lock
    /// and the run of lockouts are not.
    pub fn record_success(&self, state: &KeyState) -> KeyState {
        KeyState {
            recent_failures: Vec::new(),
            ..state.clone()
        }
    }

    /// When the state stops mattering and may be purged: `None` while a
    /// permanent lock holds.
    pub fn expires_at(&self, state: &KeyState) -> Option<UnixMillis> {
        if state.lock.as_ref().is_some_and(|l| l.until.is_none()) {
            return None;
        }
        let failures = state.recent_failures.last().map(|t| t.plus(self.window));
        let lock = state.lock.as_ref().and_then(|l| l.until);
        let run = state
            .last_lockout_at
            .map(|t| t.plus(self.recurrence_window));
        Some(
            [failures, lock, run]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(UnixMillis(0)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn two_tier_login() -> Rule {
        Rule {
            name: "login".into(),
            key: KeyKind::UserIp,
            activities: vec![],
            window: Duration::from_secs(30 * 60),
            captcha_after: None,
            lock_after: Some(5),
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
        assert_eq!(rule.failures_in_window(&state, UnixMillis(30 * MIN)), 1);
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
        assert_eq!(rule.failures_in_window(&state, UnixMillis(31 * MIN)), 0);
        let (state, _) = fail_n(&rule, state, 5, 40 * MIN);
        assert!(
            state.lock.unwrap().until.is_none(),
            "the run survived the success"
        );
    }

    #[test]
    fn captcha_threshold_below_the_lock() {
        let rule = Rule {
            captcha_after: Some(3),
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
            lock_after: Some(2),
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

    fn arb_rule() -> impl Strategy<Value = Rule> {
        (1u32..8, 1u64..120, any::<bool>(), 1u64..600, any::<bool>()).prop_map(
            |(lock_after, window_min, perm, base_s, extend)| Rule {
                lock_after: Some(lock_after),
                captcha_after: Some(lock_after.div_ceil(2)),
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
                            rule.failures_in_window(&state, UnixMillis(now)),
                            rule.failures_in_window(&before, UnixMillis(now)) + 1
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
}
