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

/// Most requests a rate rule may allow in its window. Every counted
/// request's time is kept (that is what makes the window truly sliding), so
/// this caps what one key's state costs to store and to read.
pub const MAX_RATE_LIMIT: u32 = 1000;

/// What a rule counts, and what the count leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Failures that RecordFailure reports step up: first to a captcha
    /// challenge, then to a lockout whose length follows the ladder.
    Failures {
        /// Failures in the window from which callers are told to show a
        /// captcha.
        captcha_after: Option<u32>,
        /// Failures in the window that lock the key.
        lock_after: Option<u32>,
    },
    /// Requests CheckAccess and Envoy's ShouldRateLimit let through: at most
    /// `limit` in the window. Only requests let through are counted, so a
    /// client that keeps retrying while refused still gets `limit` a window
    /// rather than being shut out for good.
    Rate {
        limit: u32,
        /// A request over the limit also locks the key, following the ladder
        /// as a failure rule's lockout does (a penalty box).
        penalty_box: bool,
    },
}

/// A rule counts failures or requests on one kind of key within a sliding
/// window; see `RuleKind` for what each kind does with its count.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub key: KeyKind,
    pub kind: RuleKind,
    /// Activities this rule counts; empty counts every failure. Rate rules
    /// count requests, which name no activity, and have none.
    pub activities: Vec<String>,
    /// Failures (or requests) older than this no longer count.
    pub window: Duration,
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
    /// Times of the failures (a rate rule: the requests counted) that may
    /// still count, oldest first. Holding the times rather than a counter
    /// makes the window truly sliding; only as many as the highest
    /// threshold (the limit) are kept.
    pub recent_failures: Vec<UnixMillis>,
    /// Every failure (a rate rule: every request counted) since the state
    /// was created.
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

/// One request's hits on one rate rule, as judged with the others of its
/// call (see `hit_all`).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub state: KeyState,
    pub verdict: Verdict,
    /// The request exceeded the limit and the penalty box locked the key.
    pub lockout_applied: bool,
    /// The request was counted here.
    pub counted: bool,
}

/// One request of `hits` (each entry: a rate rule, its key, the key's state
/// and the request's hits there) judged by every rate rule of its call.
/// It is counted on all of them when every one has room for it and nothing
/// else refused it (`admitted`), and on none otherwise: a refused request
/// uses up no rule's quota. A rule it does not fit refuses it (and, with a
/// penalty box, locks the key); a key already locked refuses it and
/// counts nothing.
pub fn hit_all(
    entries: &[(&Rule, &Key, &KeyState, u32)],
    admitted: bool,
    now: UnixMillis,
) -> Vec<Hit> {
    let fits = |&(rule, _, state, hits): &(&Rule, &Key, &KeyState, u32)| {
        state.active_lock(now).is_none() && rule.room(state, now) >= hits
    };
    let all_fit = admitted && entries.iter().all(fits);
    entries
        .iter()
        .map(|entry @ &(rule, key, state, hits)| {
            if all_fit {
                let next = rule.count_hits(state, hits, now);
                return Hit {
                    verdict: rule.counted(key, &next, now),
                    state: next,
                    lockout_applied: false,
                    counted: true,
                };
            }
            let refused_here = admitted && state.active_lock(now).is_none() && !fits(entry);
            if !refused_here {
                return Hit {
                    verdict: rule.assess(key, state, now),
                    state: state.clone(),
                    lockout_applied: false,
                    counted: false,
                };
            }
            let mut next = state.clone();
            let penalty = matches!(
                rule.kind,
                RuleKind::Rate {
                    penalty_box: true,
                    ..
                }
            );
            if penalty {
                rule.lock(&mut next, now);
            }
            let verdict = if penalty {
                rule.assess(key, &next, now)
            } else {
                rule.over_limit(key, &next, hits, now)
            };
            Hit {
                state: next,
                verdict,
                lockout_applied: penalty,
                counted: false,
            }
        })
        .collect()
}

impl Rule {
    /// Whether a failure of `activity` (empty: unspecified) counts here.
    /// Rate rules count requests, never failures.
    pub fn counts(&self, activity: &str) -> bool {
        matches!(self.kind, RuleKind::Failures { .. })
            && (self.activities.is_empty() || self.activities.iter().any(|a| a == activity))
    }

    /// A rate rule's limit; `None` for a failure rule.
    pub fn rate_limit(&self) -> Option<u32> {
        match self.kind {
            RuleKind::Rate { limit, .. } => Some(limit),
            RuleKind::Failures { .. } => None,
        }
    }

    /// The failures that lock the key; `None` for a rule that never locks
    /// on failures (a captcha-only or a rate rule).
    pub fn lock_after(&self) -> Option<u32> {
        match self.kind {
            RuleKind::Failures { lock_after, .. } => lock_after,
            RuleKind::Rate { .. } => None,
        }
    }

    /// Whether the rule can lock a key at all.
    pub fn locks(&self) -> bool {
        match self.kind {
            RuleKind::Failures { lock_after, .. } => lock_after.is_some(),
            RuleKind::Rate { penalty_box, .. } => penalty_box,
        }
    }

    fn keep(&self) -> usize {
        match self.kind {
            RuleKind::Failures {
                captcha_after,
                lock_after,
            } => captcha_after.max(lock_after).unwrap_or(0) as usize,
            RuleKind::Rate { limit, .. } => limit as usize,
        }
    }

    /// The failures (a rate rule: the requests counted) inside the window.
    pub fn in_window(&self, state: &KeyState, now: UnixMillis) -> u32 {
        let count = self.window_log(state, now).count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    fn window_log<'s>(
        &self,
        state: &'s KeyState,
        now: UnixMillis,
    ) -> impl Iterator<Item = UnixMillis> + 's {
        let window = self.window;
        state
            .recent_failures
            .iter()
            .copied()
            .filter(move |t| t.plus(window) > now)
    }

    /// Requests a rate rule has room for at `now` (0 for a failure rule).
    fn room(&self, state: &KeyState, now: UnixMillis) -> u32 {
        self.rate_limit()
            .unwrap_or(0)
            .saturating_sub(self.in_window(state, now))
    }

    /// When `hits` more requests fit: once enough of the counted ones have
    /// slid out of the window. `None` when they never can (more than the
    /// whole limit).
    fn fits_at(&self, state: &KeyState, hits: u32, now: UnixMillis) -> Option<UnixMillis> {
        let limit = self.rate_limit()?;
        if hits > limit {
            return None;
        }
        let log: Vec<UnixMillis> = self.window_log(state, now).collect();
        let must_leave = (log.len() + hits as usize).saturating_sub(limit as usize);
        match must_leave {
            0 => Some(now),
            n => log.get(n - 1).map(|t| t.plus(self.window)),
        }
    }

    /// When the oldest counted request leaves the window, making room for
    /// one more; `None` when nothing is counted.
    fn frees_at(&self, state: &KeyState, now: UnixMillis) -> Option<UnixMillis> {
        self.window_log(state, now)
            .next()
            .map(|t| t.plus(self.window))
    }

    /// Judges `key` as it stands at `now`: for a rate rule, whether one
    /// more request would fit.
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
        let count = self.in_window(state, now);
        match self.kind {
            RuleKind::Rate { limit, .. } if count >= limit => self.over_limit(key, state, 1, now),
            RuleKind::Rate { .. } => self.counted(key, state, now),
            RuleKind::Failures {
                captcha_after,
                lock_after,
            } => {
                let captcha = captcha_after.filter(|&c| count >= c);
                let next_step = [captcha_after, lock_after]
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
        }
    }

    /// A rate rule's ALLOW: what is left of the limit, and when more is.
    fn counted(&self, key: &Key, state: &KeyState, now: UnixMillis) -> Verdict {
        Verdict {
            rule: Some(self.name.clone()),
            key: Some(key.clone()),
            remaining_attempts: Some(self.room(state, now)),
            frees_at: self.frees_at(state, now),
            ..Verdict::allow()
        }
    }

    /// A rate rule's refusal of a request of `hits` that does not fit.
    fn over_limit(&self, key: &Key, state: &KeyState, hits: u32, now: UnixMillis) -> Verdict {
        Verdict {
            decision: Decision::Blocked,
            reason: Reason::RateLimited,
            rule: Some(self.name.clone()),
            key: Some(key.clone()),
            remaining_attempts: Some(self.room(state, now)),
            unblock_at: self.fits_at(state, hits, now),
            frees_at: self.frees_at(state, now),
            permanent: false,
        }
    }

    /// Counts `hits` requests at `now` (the caller checked they fit).
    fn count_hits(&self, state: &KeyState, hits: u32, now: UnixMillis) -> KeyState {
        let mut next = state.clone();
        next.failures_total = next.failures_total.saturating_add(u64::from(hits));
        next.last_failure_at = next.last_failure_at.max(Some(now));
        self.log(&mut next, hits, now);
        next
    }

    /// Adds `n` entries at `now` to the log, keeping it in order, within
    /// the window and no longer than the rule needs.
    fn log(&self, next: &mut KeyState, n: u32, now: UnixMillis) {
        // Replicas' clocks differ a little, so insert in order rather than
        // assume `now` is the latest.
        let at = next.recent_failures.partition_point(|&t| t <= now);
        next.recent_failures
            .splice(at..at, std::iter::repeat_n(now, n as usize));
        next.recent_failures.retain(|&t| t.plus(self.window) > now);
        let excess = next.recent_failures.len().saturating_sub(self.keep());
        next.recent_failures.drain(..excess);
    }

    /// Locks the key at `now` on the ladder's next tier.
    fn lock(&self, next: &mut KeyState, now: UnixMillis) {
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
        // The lock used the count up: when it ends the key starts afresh.
        next.recent_failures.clear();
        next.recent_lockouts = tier;
        next.last_lockout_at = Some(now);
        next.lockouts_total = next.lockouts_total.saturating_add(1);
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

        self.log(&mut next, 1, now);
        let count = self.in_window(&next, now);
        if self.lock_after().is_none_or(|n| count < n) {
            return Transition {
                state: next,
                lockout_applied: false,
            };
        }
        self.lock(&mut next, now);
        Transition {
            state: next,
            lockout_applied: true,
        }
    }

    /// Records a success: the failures in the window are forgiven, the lock
    /// and the run of lockouts are not. A rate rule's requests are not
    /// failures, so it forgets nothing.
    pub fn record_success(&self, state: &KeyState) -> KeyState {
        match self.kind {
            RuleKind::Failures { .. } => KeyState {
                recent_failures: Vec::new(),
                ..state.clone()
            },
            RuleKind::Rate { .. } => state.clone(),
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
}
