//! Shadow mode: a rule (or a whole context) counts and decides as usual,
//! but its verdict never changes the answer; responses, metrics and the
//! audit trail say what it would have done. Through the real server on
//! both stores.

use authgate::grpc::proto::{self, Decision};
use rstest::rstest;

use crate::helpers::*;

/// `rollout` enforces a loose rule and shadows a tighter one, and a rate
/// limit beside a tighter shadow one; `trial` is shadow as a whole.
const SHADOW: &str = r#"
[[contexts.rollout.rules]]
name = "current"
key = "user"
window = "1h"
lock_after = 5
lockout = ["1h"]

[[contexts.rollout.rules]]
name = "tighter"
key = "user"
window = "1h"
lock_after = 2
lockout = ["1h"]
mode = "shadow"

[[contexts.rollout.rules]]
name = "burst"
kind = "rate"
key = "ip"
limit = 5
window = "1m"

[[contexts.rollout.rules]]
name = "tighter_burst"
kind = "rate"
key = "ip"
limit = 1
window = "1m"
mode = "shadow"

[contexts.trial]
mode = "shadow"

[[contexts.trial.rules]]
name = "per_ip"
key = "ip"
window = "1h"
lock_after = 2
lockout = ["1h"]
"#;

fn shadow_of<'a>(shadow: &'a [proto::Verdict], rule: &str) -> &'a proto::Verdict {
    shadow
        .iter()
        .find(|v| v.rule == rule)
        .unwrap_or_else(|| panic!("a shadow verdict of {rule}: {shadow:?}"))
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_rule_that_would_block_is_reported_while_the_request_passes(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, SHADOW).await;
    let mut access = server.access().await;
    let alice = || subject("alice", "198.51.100.1");
    let mut locked_by_the_call = Vec::new();
    for _ in 0..3 {
        let r = fail(&mut access, "rollout", alice()).await;
        locked_by_the_call.push(r.lockout_applied);
        let v = r.verdict.unwrap();
        assert_eq!(decision(&v), Decision::Allow, "{v:?}");
        assert_eq!(v.rule, "current");
    }
    assert_eq!(
        locked_by_the_call, [false; 3],
        "a shadow lockout is not the caller's lockout"
    );

    let checked = access
        .check_access(proto::CheckAccessRequest {
            context: "rollout".into(),
            subject: alice(),
        })
        .await
        .expect("CheckAccess")
        .into_inner();
    let verdict = checked.verdict.unwrap();
    assert_eq!(decision(&verdict), Decision::Allow, "{verdict:?}");
    assert_eq!(
        verdict.remaining_attempts,
        Some(2),
        "the enforced rule decides"
    );
    let tighter = shadow_of(&checked.shadow, "tighter");
    assert_eq!(decision(tighter), Decision::Blocked, "{tighter:?}");
    assert_eq!(tighter.key.as_ref().unwrap().user_id, "alice");

    // The shadow rate rule counts on its own: over its limit it refuses
    // nothing, and the enforced limit keeps counting.
    let mut enforced = Vec::new();
    let mut shadow_rate = Vec::new();
    for _ in 0..6 {
        let r = access
            .check_access(proto::CheckAccessRequest {
                context: "rollout".into(),
                subject: subject("bob", "203.0.113.9"),
            })
            .await
            .expect("CheckAccess")
            .into_inner();
        enforced.push(decision(&r.verdict.unwrap()));
        shadow_rate.push(decision(shadow_of(&r.shadow, "tighter_burst")));
    }
    assert_eq!(
        enforced,
        [[Decision::Allow; 5].as_slice(), &[Decision::Blocked]].concat(),
        "the enforced limit counted every request, the shadow one refused none"
    );
    assert_eq!(shadow_rate[0], Decision::Allow);
    assert!(
        shadow_rate[1..].iter().all(|d| *d == Decision::Blocked),
        "{shadow_rate:?}"
    );

    let scrape = authgate::telemetry::metrics::handle().render();
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("authgate_shadow_decisions_total{")
                && l.contains("context=\"rollout\"")
                && l.contains("rule=\"tighter\"")
                && l.contains("decision=\"blocked\"")),
        "shadow decisions are counted by context, rule and decision"
    );
    let events = audit_events(&mut server.admin().await, "").await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.kind.contains("lockout"))
        .map(|e| (e.kind.as_str(), e.rule.as_str()))
        .collect();
    assert_eq!(kinds, [("shadow_lockout", "tighter")], "{events:?}");
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_in_shadow_mode_never_refuses(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, SHADOW).await;
    let mut access = server.access().await;
    for _ in 0..3 {
        fail(&mut access, "trial", subject("", "192.0.2.50")).await;
    }
    let checked = access
        .check_access(proto::CheckAccessRequest {
            context: "trial".into(),
            subject: subject("", "192.0.2.50"),
        })
        .await
        .expect("CheckAccess")
        .into_inner();
    assert_eq!(decision(&checked.verdict.unwrap()), Decision::Allow);
    assert_eq!(
        decision(shadow_of(&checked.shadow, "per_ip")),
        Decision::Blocked
    );
    server.stop().await;
}
