use std::time::Duration;

use super::{Decision, Key, KeyKind, Prefixes, Reason, RuleName, UnixMillis, Verdict};

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
    pub name: RuleName,
    pub key: KeyKind,
    /// How a rule on the address counts addresses: by these prefixes.
    pub prefixes: Prefixes,
    /// Counts and decides as usual, but its verdict never changes the
    /// answer: reported beside it, for rolling a rule out.
    pub shadow: bool,
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
/// counts nothing. Shadow rules count on their own: one without room
/// refuses nothing else, and is counted whenever it has room.
pub fn hit_all(
    entries: &[(&Rule, &Key, &KeyState, u32)],
    admitted: bool,
    now: UnixMillis,
) -> Vec<Hit> {
    let fits = |&(rule, _, state, hits): &(&Rule, &Key, &KeyState, u32)| {
        state.active_lock(now).is_none() && rule.room(state, now) >= hits
    };
    let all_fit = admitted && entries.iter().filter(|e| !e.0.shadow).all(fits);
    entries
        .iter()
        .map(|entry @ &(rule, key, state, hits)| {
            let counted = if rule.shadow {
                admitted && fits(entry)
            } else {
                all_fit
            };
            if counted {
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
            shadow: self.shadow,
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
            shadow: self.shadow,
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
            shadow: self.shadow,
            remaining_attempts: Some(self.room(state, now)),
            unblock_at: self.fits_at(state, hits, now),
            frees_at: self.frees_at(state, now),
            permanent: false,
            shadowed: Vec::new(),
            ban_reason: None,
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
mod tests;
