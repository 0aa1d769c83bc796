//! A user's two-factor sign-in state (unauthenticated, processing,
//! authenticated, expired), shared by every replica through the store.

use std::time::Duration;

use super::{Decision, Key, Reason, RuleName, TOTP_CONTEXT, UnixMillis, UserId, Verdict};

/// The stored states. BLOCKED is not stored: it is the user's TOTP counter
/// being locked, which the rule engine already keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Unauthenticated,
    /// Challenged for a second factor, not yet proven.
    Processing,
    Authenticated,
    /// Was authenticated and timed out; the next check challenges again.
    Expired,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Unauthenticated => "unauthenticated",
            SessionStatus::Processing => "processing",
            SessionStatus::Authenticated => "authenticated",
            SessionStatus::Expired => "expired",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Unauthenticated,
            Self::Processing,
            Self::Authenticated,
            Self::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub status: SessionStatus,
    /// When the status was entered: the login time when authenticated.
    pub since: UnixMillis,
    /// The last request an authenticated session allowed.
    pub last_seen: Option<UnixMillis>,
    /// When an authenticated session ends unless renewed.
    pub expires_at: Option<UnixMillis>,
}

/// Whether a session's clock runs from the login or from the last request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutMode {
    /// The session ends `timeout` after the login, however busy.
    Absolute,
    /// Ends after `timeout` without a request; every allowed request renews.
    Idle,
}

/// A context's session rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    pub timeout: Duration,
    pub mode: TimeoutMode,
}

/// What a check in a TOTP context does to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStep {
    pub verdict: Verdict,
    /// The session to store, when it changes.
    pub write: Option<Session>,
    /// This check found an authenticated session timed out.
    pub expired: bool,
}

impl SessionPolicy {
    /// When `s` ends under this context's rules (the earlier of its own end
    /// and this context's timeout, which may be shorter than the one it was
    /// started under).
    pub fn ends_at(&self, s: &Session) -> Option<UnixMillis> {
        if s.status != SessionStatus::Authenticated {
            return None;
        }
        let anchor = match self.mode {
            TimeoutMode::Absolute => s.since,
            TimeoutMode::Idle => s.last_seen.unwrap_or(s.since),
        };
        let ours = anchor.plus(self.timeout);
        Some(s.expires_at.map_or(ours, |e| e.min(ours)))
    }

    pub fn is_live(&self, s: &Session, now: UnixMillis) -> bool {
        self.ends_at(s).is_some_and(|end| now < end)
    }

    /// A session just proven with a valid code.
    pub fn start(&self, now: UnixMillis) -> Session {
        Session {
            status: SessionStatus::Authenticated,
            since: now,
            last_seen: Some(now),
            expires_at: Some(now.plus(self.timeout)),
        }
    }

    /// CheckAccess in a context that requires TOTP.
    pub fn check(
        &self,
        user: &UserId,
        current: Option<&Session>,
        enrolled: bool,
        now: UnixMillis,
    ) -> SessionStep {
        let verdict = |decision, reason| Verdict {
            decision,
            reason,
            rule: Some(RuleName::builtin(TOTP_CONTEXT)),
            key: Some(Key::User(user.clone())),
            ..Verdict::allow()
        };
        if let Some(s) = current.filter(|s| self.is_live(s, now)) {
            let renewed = (self.mode == TimeoutMode::Idle).then(|| Session {
                last_seen: Some(now),
                expires_at: Some(now.plus(self.timeout)),
                ..s.clone()
            });
            return SessionStep {
                verdict: verdict(Decision::Allow, Reason::Ok),
                write: renewed,
                expired: false,
            };
        }
        // A timed-out session is still marked authenticated until the
        // cleanup pass marks it expired (and records that); the answer is
        // the same either way, only the event is this check's to record.
        let expired = current.is_some_and(|s| s.status == SessionStatus::Authenticated);
        let timed_out = expired || current.is_some_and(|s| s.status == SessionStatus::Expired);
        let (decision, reason) = match (enrolled, timed_out) {
            (false, _) => (Decision::EnrollTotp, Reason::TotpEnrollmentRequired),
            (true, true) => (Decision::ChallengeTotp, Reason::SessionExpired),
            (true, false) => (Decision::ChallengeTotp, Reason::TotpRequired),
        };
        let already_processing = current.is_some_and(|s| s.status == SessionStatus::Processing);
        SessionStep {
            verdict: verdict(decision, reason),
            write: (!already_processing).then_some(Session {
                status: SessionStatus::Processing,
                since: now,
                last_seen: None,
                expires_at: None,
            }),
            expired,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn user() -> UserId {
        UserId::parse("u", "alice").unwrap()
    }

    fn absolute() -> SessionPolicy {
        SessionPolicy {
            timeout: 10 * MIN,
            mode: TimeoutMode::Absolute,
        }
    }

    #[test]
    fn the_sign_in_lifecycle() {
        let p = absolute();
        let t0 = UnixMillis(0);
        let step = p.check(&user(), None, true, t0);
        assert_eq!(step.verdict.decision, Decision::ChallengeTotp);
        assert_eq!(step.verdict.reason, Reason::TotpRequired);
        let processing = step.write.unwrap();
        assert_eq!(processing.status, SessionStatus::Processing);
        let again = p.check(&user(), Some(&processing), true, t0.plus(MIN));
        assert_eq!(
            (again.verdict.decision, again.write),
            (Decision::ChallengeTotp, None)
        );

        let session = p.start(t0.plus(MIN));
        let ok = p.check(&user(), Some(&session), true, t0.plus(10 * MIN));
        assert_eq!((ok.verdict.decision, ok.write), (Decision::Allow, None));

        let late = p.check(&user(), Some(&session), true, t0.plus(11 * MIN));
        assert!(late.expired);
        assert_eq!(late.verdict.reason, Reason::SessionExpired);
        assert_eq!(late.write.unwrap().status, SessionStatus::Processing);
    }

    #[test]
    fn a_session_the_cleanup_marked_expired_answers_session_expired() {
        let p = absolute();
        let swept = Session {
            status: SessionStatus::Expired,
            since: UnixMillis(0).plus(11 * MIN),
            last_seen: None,
            expires_at: None,
        };
        let step = p.check(&user(), Some(&swept), true, UnixMillis(0).plus(12 * MIN));
        assert_eq!(step.verdict.reason, Reason::SessionExpired);
        assert!(!step.expired, "the cleanup pass recorded the expiry");
        assert_eq!(step.write.unwrap().status, SessionStatus::Processing);
    }

    #[test]
    fn no_confirmed_secret_means_enroll() {
        let step = absolute().check(&user(), None, false, UnixMillis(0));
        assert_eq!(step.verdict.decision, Decision::EnrollTotp);
        assert_eq!(step.verdict.reason, Reason::TotpEnrollmentRequired);
    }

    #[test]
    fn idle_sessions_are_renewed_by_use() {
        let p = SessionPolicy {
            timeout: 10 * MIN,
            mode: TimeoutMode::Idle,
        };
        let mut s = p.start(UnixMillis(0));
        for minute in [9, 18, 27] {
            let step = p.check(&user(), Some(&s), true, UnixMillis(0).plus(minute * MIN));
            assert_eq!(step.verdict.decision, Decision::Allow);
            s = step.write.unwrap();
        }
        assert!(!p.is_live(&s, UnixMillis(0).plus(37 * MIN)));
    }

    #[test]
    fn a_shorter_context_timeout_wins() {
        let short = SessionPolicy {
            timeout: MIN,
            mode: TimeoutMode::Absolute,
        };
        let s = absolute().start(UnixMillis(0));
        assert!(absolute().is_live(&s, UnixMillis(0).plus(2 * MIN)));
        assert!(!short.is_live(&s, UnixMillis(0).plus(2 * MIN)));
    }
}
