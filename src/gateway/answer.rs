//! A verdict as HTTP: the status a proxy answers (or none, to let the
//! request through), the headers it adds and a small JSON body. Every
//! front door renders the same verdict the same way.

use std::time::Duration;

use serde::Serialize;

use crate::config::CaptchaAnswer;
use crate::domain::{Decision, FieldError, Policy, Reason, UnixMillis, Verdict};

/// Headers authgate adds; a client's own headers of these names are
/// removed before the request reaches the upstream, so the upstream can
/// trust them.
pub const DECISION: &str = "x-authgate-decision";
pub const REASON: &str = "x-authgate-reason";
pub const RULE: &str = "x-authgate-rule";
pub const REMAINING: &str = "x-authgate-remaining";
pub const CHALLENGE: &str = "x-authgate-challenge";
pub const FAIL_OPEN: &str = "x-authgate-fail-open";
pub const HEADERS: [&str; 6] = [DECISION, REASON, RULE, REMAINING, CHALLENGE, FAIL_OPEN];

/// How many requests (or failures) a rule allows in its window, for the
/// draft IETF `RateLimit-Policy` and `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub window: Duration,
    /// A rate rule's requests, which every answer reports (what is left of
    /// them); otherwise the failures that lock, which only a refusal does.
    pub requests: bool,
}

impl Quota {
    /// The quota of the rule behind `verdict` in `context`, if it has one:
    /// a rate rule's limit, or a failure rule's lock_after.
    pub fn of(policy: &Policy, context: &str, verdict: &Verdict) -> Option<Quota> {
        let rule = policy.rule(context, verdict.rule.as_deref()?)?;
        let (limit, requests) = match rule.rate_limit() {
            Some(limit) => (limit, true),
            None => (rule.lock_after()?, false),
        };
        Some(Quota {
            limit,
            window: rule.window,
            requests,
        })
    }
}

#[derive(Debug, Default, Serialize)]
struct Body<'a> {
    decision: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<&'a str>,
}

/// What the proxy should do with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `None`: let the request through, adding `headers` to it; otherwise
    /// answer the client with this status, `headers` and `body`.
    pub status: Option<u16>,
    pub headers: Vec<(&'static str, String)>,
    /// JSON, for refusals only.
    pub body: String,
}

pub fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
        Decision::ChallengeCaptcha => "challenge_captcha",
        Decision::Blocked => "blocked",
        Decision::ChallengeTotp => "challenge_totp",
        Decision::EnrollTotp => "enroll_totp",
    }
}

impl Answer {
    /// `verdict` as a proxy answers it on a route whose captchas are
    /// answered `captcha`.
    pub fn of(
        verdict: &Verdict,
        captcha: CaptchaAnswer,
        quota: Option<Quota>,
        now: UnixMillis,
    ) -> Answer {
        let decision = decision_name(verdict.decision);
        let mut headers = vec![
            (DECISION, decision.to_owned()),
            (REASON, verdict.reason.as_str().to_owned()),
        ];
        if let Some(rule) = &verdict.rule {
            headers.push((RULE, rule.to_string()));
        }
        if let Some(n) = verdict.remaining_attempts {
            headers.push((REMAINING, n.to_string()));
        }
        if verdict.reason == Reason::StoreUnavailable {
            headers.push((FAIL_OPEN, "true".into()));
        }
        let challenge = match verdict.decision {
            Decision::ChallengeCaptcha => Some("captcha"),
            Decision::ChallengeTotp | Decision::EnrollTotp => Some("totp"),
            _ => None,
        };
        if let Some(c) = challenge {
            headers.push((CHALLENGE, c.into()));
        }
        let retry_after = retry_after(verdict, now);
        let status = match verdict.decision {
            Decision::Allow => None,
            Decision::ChallengeCaptcha if captcha == CaptchaAnswer::Pass => None,
            Decision::ChallengeCaptcha | Decision::Deny => Some(403),
            Decision::ChallengeTotp | Decision::EnrollTotp => Some(401),
            Decision::Blocked => Some(429),
        };
        headers.extend(quota_headers(verdict, quota, now));
        let body = if status.is_some() {
            serde_json::to_string(&Body {
                decision,
                reason: verdict.reason.as_str(),
                rule: verdict.rule.as_deref(),
                challenge,
                retry_after,
                ..Body::default()
            })
            .unwrap_or_default()
        } else {
            String::new()
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A request the proxy sent without what authgate needs: 400, naming
    /// what is missing. Nothing was recorded.
    pub fn invalid(error: &FieldError) -> Answer {
        Answer::refusal(
            400,
            Body {
                decision: "deny",
                reason: "invalid_request",
                field: Some(&error.field),
                problem: Some(&error.problem),
                ..Body::default()
            },
        )
    }

    /// A request that matches no route where no default context is set.
    pub fn no_route() -> Answer {
        Answer::refusal(
            403,
            Body {
                decision: "deny",
                reason: "no_route",
                ..Body::default()
            },
        )
    }

    /// The store cannot be reached and the context fails closed.
    pub fn unavailable() -> Answer {
        Answer::refusal(
            503,
            Body {
                decision: "deny",
                reason: "store_unavailable",
                ..Body::default()
            },
        )
    }

    /// A caller of the forward-auth endpoint without a valid API key: 401,
    /// refused before its request is looked at.
    pub fn unauthenticated(problem: &str) -> Answer {
        let mut answer = Answer::refusal(
            401,
            Body {
                decision: "deny",
                reason: "unauthenticated",
                problem: Some(problem),
                ..Body::default()
            },
        );
        answer
            .headers
            .push(("www-authenticate", "Bearer realm=\"authgate\"".into()));
        answer
    }

    /// A caller whose API key lacks the `check` role: 403.
    pub fn forbidden(problem: &str) -> Answer {
        Answer::refusal(
            403,
            Body {
                decision: "deny",
                reason: "missing_role",
                problem: Some(problem),
                ..Body::default()
            },
        )
    }

    /// Not judged within server.request_timeout: 503.
    pub fn timed_out() -> Answer {
        Answer::refusal(
            503,
            Body {
                decision: "deny",
                reason: "timeout",
                ..Body::default()
            },
        )
    }

    /// authgate failed (the cause is logged, never told): 500.
    pub fn internal() -> Answer {
        Answer::refusal(
            500,
            Body {
                decision: "deny",
                reason: "internal",
                ..Body::default()
            },
        )
    }

    fn refusal(status: u16, body: Body<'_>) -> Answer {
        Answer {
            status: Some(status),
            headers: vec![
                (DECISION, body.decision.to_owned()),
                (REASON, body.reason.to_owned()),
            ],
            body: serde_json::to_string(&body).unwrap_or_default(),
        }
    }
}

/// Seconds a refused client should wait: `None` unless blocked with an
/// end in sight. A request that can never fit (more hits than a rate
/// rule's whole limit) is refused with no time to come back, as a
/// permanent lock is.
fn retry_after(verdict: &Verdict, now: UnixMillis) -> Option<u64> {
    (verdict.decision == Decision::Blocked && verdict.unblock_at.is_some())
        .then(|| verdict.retry_after_seconds(now))
}

/// The headers that tell a client about its quota: on a refusal
/// `Retry-After` and, when the rule has a quota, the RateLimit headers with
/// what is left; on any other answer by a rate rule, the RateLimit headers
/// with what is left and when more is.
pub fn quota_headers(
    verdict: &Verdict,
    quota: Option<Quota>,
    now: UnixMillis,
) -> Vec<(&'static str, String)> {
    let name = verdict.rule.as_deref().unwrap_or("authgate");
    let left = |q: Quota| {
        if q.requests {
            verdict.remaining_attempts.unwrap_or(0)
        } else {
            0
        }
    };
    let mut headers = Vec::new();
    if verdict.decision == Decision::Blocked {
        let retry_after = retry_after(verdict, now);
        if let Some(secs) = retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        if let Some(q) = quota {
            headers.extend(rate_limit_headers(name, q, left(q), retry_after));
        }
    } else if let Some(q) = quota.filter(|q| q.requests) {
        let frees = verdict.frees_at.map(|at| now.seconds_until(at));
        headers.extend(rate_limit_headers(name, q, left(q), frees));
    }
    headers
}

/// `RateLimit-Policy` and `RateLimit` as draft-ietf-httpapi-ratelimit-headers
/// writes them: a named policy with its quota and window, and what is
/// left of it with the seconds until more is.
pub fn rate_limit_headers(
    name: &str,
    quota: Quota,
    remaining: u32,
    reset: Option<u64>,
) -> [(&'static str, String); 2] {
    let policy = format!(
        "\"{name}\";q={};w={}",
        quota.limit,
        quota.window.as_secs().max(1)
    );
    let mut now = format!("\"{name}\";r={remaining}");
    if let Some(t) = reset {
        now.push_str(&format!(";t={t}"));
    }
    [("ratelimit-policy", policy), ("ratelimit", now)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(decision: Decision, reason: Reason) -> Verdict {
        Verdict {
            decision,
            reason,
            rule: Some("user_ip".into()),
            ..Verdict::allow()
        }
    }

    fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
        a.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn each_decision_has_its_status() {
        let now = UnixMillis(1_000_000);
        let allow = Answer::of(
            &Verdict {
                remaining_attempts: Some(3),
                ..verdict(Decision::Allow, Reason::Ok)
            },
            CaptchaAnswer::Deny,
            None,
            now,
        );
        assert_eq!(allow.status, None);
        assert_eq!(header(&allow, REMAINING), Some("3"));
        assert!(allow.body.is_empty());

        let captcha = verdict(Decision::ChallengeCaptcha, Reason::CaptchaRequired);
        let denied = Answer::of(&captcha, CaptchaAnswer::Deny, None, now);
        assert_eq!(denied.status, Some(403));
        assert_eq!(header(&denied, CHALLENGE), Some("captcha"));
        assert!(
            denied.body.contains(r#""challenge":"captcha""#),
            "{}",
            denied.body
        );
        let passed = Answer::of(&captcha, CaptchaAnswer::Pass, None, now);
        assert_eq!(passed.status, None);
        assert_eq!(header(&passed, CHALLENGE), Some("captcha"));

        let deny = Answer::of(
            &verdict(Decision::Deny, Reason::NotOnAllowList),
            CaptchaAnswer::Deny,
            None,
            now,
        );
        assert_eq!(deny.status, Some(403));
        assert!(deny.body.contains(r#""reason":"not_on_allow_list""#));

        let totp = Answer::of(
            &verdict(Decision::ChallengeTotp, Reason::TotpRequired),
            CaptchaAnswer::Deny,
            None,
            now,
        );
        assert_eq!(totp.status, Some(401));
    }

    #[test]
    fn a_block_says_when_to_come_back() {
        let now = UnixMillis(1_000_000);
        let blocked = Verdict {
            unblock_at: Some(UnixMillis(1_000_000 + 1_799_001)),
            ..verdict(Decision::Blocked, Reason::Locked)
        };
        let quota = Quota {
            limit: 5,
            window: Duration::from_secs(1800),
            requests: false,
        };
        let a = Answer::of(&blocked, CaptchaAnswer::Deny, Some(quota), now);
        assert_eq!(a.status, Some(429));
        assert_eq!(header(&a, "retry-after"), Some("1800"));
        assert_eq!(
            header(&a, "ratelimit-policy"),
            Some("\"user_ip\";q=5;w=1800")
        );
        assert_eq!(header(&a, "ratelimit"), Some("\"user_ip\";r=0;t=1800"));
        assert!(a.body.contains(r#""retry_after":1800"#), "{}", a.body);

        let permanent = Verdict {
            permanent: true,
            ..verdict(Decision::Blocked, Reason::LockedPermanently)
        };
        let a = Answer::of(&permanent, CaptchaAnswer::Deny, None, now);
        assert_eq!(a.status, Some(429));
        assert_eq!(header(&a, "retry-after"), None);
    }

    #[test]
    fn a_rate_rules_answers_say_what_is_left() {
        let now = UnixMillis(1_000_000);
        let quota = Quota {
            limit: 100,
            window: Duration::from_secs(60),
            requests: true,
        };
        let allowed = Verdict {
            remaining_attempts: Some(7),
            frees_at: Some(UnixMillis(1_000_000 + 41_500)),
            ..verdict(Decision::Allow, Reason::Ok)
        };
        let a = Answer::of(&allowed, CaptchaAnswer::Deny, Some(quota), now);
        assert_eq!(a.status, None);
        assert_eq!(
            header(&a, "ratelimit-policy"),
            Some("\"user_ip\";q=100;w=60")
        );
        assert_eq!(header(&a, "ratelimit"), Some("\"user_ip\";r=7;t=42"));
        assert_eq!(header(&a, "retry-after"), None);

        let over = Verdict {
            remaining_attempts: Some(0),
            unblock_at: Some(UnixMillis(1_000_000 + 9_000)),
            ..verdict(Decision::Blocked, Reason::RateLimited)
        };
        let a = Answer::of(&over, CaptchaAnswer::Deny, Some(quota), now);
        assert_eq!(a.status, Some(429));
        assert_eq!(header(&a, "retry-after"), Some("9"));
        assert_eq!(header(&a, "ratelimit"), Some("\"user_ip\";r=0;t=9"));
        assert!(a.body.contains(r#""reason":"rate_limited""#), "{}", a.body);

        // More than the whole limit never fits: no time to come back.
        let never = Verdict {
            unblock_at: None,
            ..over
        };
        let a = Answer::of(&never, CaptchaAnswer::Deny, Some(quota), now);
        assert_eq!(header(&a, "retry-after"), None);
        assert_eq!(header(&a, "ratelimit"), Some("\"user_ip\";r=0"));
    }

    #[test]
    fn failing_open_is_said() {
        let v = Verdict {
            reason: Reason::StoreUnavailable,
            ..Verdict::allow()
        };
        let a = Answer::of(&v, CaptchaAnswer::Deny, None, UnixMillis(0));
        assert_eq!(a.status, None);
        assert_eq!(header(&a, FAIL_OPEN), Some("true"));
    }
}
