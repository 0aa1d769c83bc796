use super::{Key, RuleName, UnixMillis};

/// What the caller should do, in order of increasing severity: when several
/// rules judge one request the most severe verdict wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Allow,
    ChallengeCaptcha,
    /// Ranked above a captcha: a second factor proves more than a human.
    ChallengeTotp,
    /// A second factor is needed and the user has none to give yet.
    EnrollTotp,
    /// Ranked below Blocked so that a user who is not on the allow list and
    /// keeps trying learns that they are now blocked, and until when.
    Deny,
    Blocked,
}

/// Why, in a form callers can branch on. The strings are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    Ok,
    NotOnAllowList,
    CaptchaRequired,
    Locked,
    LockedPermanently,
    TotpRequired,
    SessionExpired,
    TotpEnrollmentRequired,
    InvalidCode,
    ClockSkew,
    /// Allowed unchecked: the store is unreachable and the context is
    /// configured to fail open.
    StoreUnavailable,
    /// Admit: this update is one too many for its kind's limit; it is
    /// refused with a warning. A rate rule: this request is one too many
    /// for the rule's limit; it is refused and not counted.
    RateLimited,
    /// Admit: the user is blocked for spam.
    SpamBlocked,
    /// Allowed, from an address in the context's trusted networks, which
    /// no rule on the address judged.
    TrustedNetwork,
    /// The address is outside the context's allowed networks.
    NetworkNotAllowed,
    /// An admin banned the key, or a range holding the address.
    Banned,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::NotOnAllowList => "not_on_allow_list",
            Reason::CaptchaRequired => "captcha_required",
            Reason::Locked => "locked",
            Reason::LockedPermanently => "locked_permanently",
            Reason::TotpRequired => "totp_required",
            Reason::SessionExpired => "session_expired",
            Reason::TotpEnrollmentRequired => "totp_enrollment_required",
            Reason::InvalidCode => "invalid_code",
            Reason::ClockSkew => "clock_skew",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::SpamBlocked => "spam_blocked",
            Reason::TrustedNetwork => "trusted_network",
            Reason::NetworkNotAllowed => "network_not_allowed",
            Reason::Banned => "banned",
        }
    }
}

/// One rule's judgement of one key, or the combination of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub reason: Reason,
    /// The rule that produced it; `None` when no rule applied.
    pub rule: Option<RuleName>,
    pub key: Option<Key>,
    /// Failures left before the rule's next step (a rate rule: requests
    /// left in its window); `None` when none is ahead.
    pub remaining_attempts: Option<u32>,
    /// End of a temporary lock; for a rate rule's refusal, when the request
    /// would fit.
    pub unblock_at: Option<UnixMillis>,
    /// A rate rule's: when the oldest request it counts leaves the window,
    /// making room for one more. `None` for other rules, or when nothing is
    /// counted.
    pub frees_at: Option<UnixMillis>,
    pub permanent: bool,
    /// From a rule in shadow mode: counted and reported, never the answer.
    pub shadow: bool,
    /// On a combined verdict, what the shadow rules decided.
    pub shadowed: Vec<Verdict>,
    /// A ban's: the reason the admin gave.
    pub ban_reason: Option<String>,
}

impl Verdict {
    /// The verdict when no rule has anything against the request.
    pub fn allow() -> Verdict {
        Verdict {
            decision: Decision::Allow,
            reason: Reason::Ok,
            rule: None,
            key: None,
            remaining_attempts: None,
            unblock_at: None,
            frees_at: None,
            permanent: false,
            shadow: false,
            shadowed: Vec::new(),
            ban_reason: None,
        }
    }

    /// Whole seconds until the lock ends, rounded up so a caller that waits
    /// that long is never refused again for the same lock.
    pub fn retry_after_seconds(&self, now: UnixMillis) -> u64 {
        self.unblock_at.map(|at| now.seconds_until(at)).unwrap_or(0)
    }

    /// Orders verdicts by severity: decision first, then a permanent lock over
    /// a temporary one, a later end over an earlier one, and fewer remaining
    /// attempts over more (the rule closest to its next step is the one to
    /// report).
    fn severity(&self) -> (Decision, bool, Option<UnixMillis>, std::cmp::Reverse<u32>) {
        (
            self.decision,
            self.permanent,
            self.unblock_at,
            std::cmp::Reverse(self.remaining_attempts.unwrap_or(u32::MAX)),
        )
    }

    /// The most severe of the enforcing `verdicts`, or ALLOW when there
    /// are none; the shadow ones (and those already gathered in any of
    /// them) ride along in `shadowed`, never deciding.
    pub fn most_severe(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut shadowed = Vec::new();
        let mut best: Option<Verdict> = None;
        for mut v in verdicts {
            shadowed.append(&mut v.shadowed);
            if v.shadow {
                shadowed.push(v);
            } else if best.as_ref().is_none_or(|b| v.severity() >= b.severity()) {
                best = Some(v);
            }
        }
        Verdict {
            shadowed,
            ..best.unwrap_or_else(Verdict::allow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadow_verdict_is_reported_and_never_the_answer() {
        let blocked = Verdict {
            decision: Decision::Blocked,
            shadow: true,
            ..Verdict::allow()
        };
        let deny = Verdict {
            decision: Decision::Deny,
            ..Verdict::allow()
        };
        let combined = Verdict::most_severe([blocked.clone(), deny.clone()]);
        assert_eq!(combined.decision, Decision::Deny);
        assert_eq!(combined.shadowed, std::slice::from_ref(&blocked));
        let again = Verdict::most_severe([combined, Verdict::allow()]);
        assert_eq!((again.decision, again.shadowed.len()), (Decision::Deny, 1));
        let only = Verdict::most_severe([blocked]);
        assert_eq!(only.decision, Decision::Allow);
    }

    fn v(
        decision: Decision,
        remaining: Option<u32>,
        until: Option<i64>,
        permanent: bool,
    ) -> Verdict {
        Verdict {
            decision,
            remaining_attempts: remaining,
            unblock_at: until.map(UnixMillis),
            permanent,
            ..Verdict::allow()
        }
    }

    #[test]
    fn most_severe_wins() {
        let pick = Verdict::most_severe([
            v(Decision::Allow, Some(1), None, false),
            v(Decision::Blocked, None, Some(10), false),
            v(Decision::ChallengeCaptcha, Some(2), None, false),
            v(Decision::Deny, None, None, false),
        ]);
        assert_eq!(pick.decision, Decision::Blocked);
        let pick = Verdict::most_severe([
            v(Decision::Blocked, None, Some(10), false),
            v(Decision::Blocked, None, None, true),
            v(Decision::Blocked, None, Some(99), false),
        ]);
        assert!(pick.permanent);
        let pick = Verdict::most_severe([
            v(Decision::Blocked, None, Some(10), false),
            v(Decision::Blocked, None, Some(99), false),
        ]);
        assert_eq!(pick.unblock_at, Some(UnixMillis(99)));
    }

    #[test]
    fn among_allows_the_closest_to_its_next_step_is_reported() {
        let pick = Verdict::most_severe([
            v(Decision::Allow, None, None, false),
            v(Decision::Allow, Some(4), None, false),
            v(Decision::Allow, Some(2), None, false),
        ]);
        assert_eq!(pick.remaining_attempts, Some(2));
        assert_eq!(Verdict::most_severe([]).decision, Decision::Allow);
    }

    #[test]
    fn retry_after_rounds_up() {
        let verdict = v(Decision::Blocked, None, Some(1_001), false);
        assert_eq!(verdict.retry_after_seconds(UnixMillis(0)), 2);
        assert_eq!(verdict.retry_after_seconds(UnixMillis(1_001)), 0);
        assert_eq!(verdict.retry_after_seconds(UnixMillis(5_000)), 0);
    }
}
