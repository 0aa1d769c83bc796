//! Trusted networks (an office NAT is never judged by its address) and
//! allowed networks (a webhook context admits only its sender's ranges),
//! through the real server on both stores.

use authgate::grpc::proto::{self, Decision};
use rstest::rstest;
use tonic::Code;

use crate::helpers::*;

/// `office` trusts the global 10.0.0.0/8 and counts on the address and on
/// the user; `strict` trusts nothing (its own list replaces the global
/// one); `hooks` admits only Telegram's published ranges.
const NETWORKS: &str = r#"
[access]
trusted_networks = ["10.0.0.0/8", "fd00::/8"]

[[contexts.office.rules]]
name = "per_ip"
key = "ip"
window = "1h"
lock_after = 3
lockout = ["1h"]

[[contexts.office.rules]]
name = "per_user"
key = "user"
window = "1h"
lock_after = 5
lockout = ["1h"]

[contexts.strict]
trusted_networks = []

[[contexts.strict.rules]]
name = "per_ip"
key = "ip"
window = "1h"
lock_after = 3
lockout = ["1h"]

[contexts.hooks]
allowed_networks = ["149.154.160.0/20", "91.108.4.0/22"]

[[contexts.hooks.rules]]
name = "per_ip"
key = "ip"
window = "1h"
lock_after = 3
lockout = ["1h"]
"#;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_network_is_never_judged_by_its_address_but_its_users_are(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, NETWORKS).await;
    let mut access = server.access().await;

    // Ten colleagues behind the office NAT mistype their passwords.
    for i in 0..10 {
        fail(
            &mut access,
            "office",
            subject(&format!("colleague{i}"), "10.1.2.3"),
        )
        .await;
    }
    let verdict = check(&mut access, "office", subject("newcomer", "10.1.2.3")).await;
    assert_eq!(decision(&verdict), Decision::Allow, "{verdict:?}");
    assert_eq!(verdict.reason, "trusted_network");
    // IPv4-mapped notation is the same address, and IPv6 lists work too.
    let mapped = check(
        &mut access,
        "office",
        subject("newcomer", "::ffff:10.1.2.3"),
    )
    .await;
    assert_eq!(mapped.reason, "trusted_network", "{mapped:?}");
    let v6 = check(&mut access, "office", subject("newcomer", "fd00::7")).await;
    assert_eq!(v6.reason, "trusted_network", "{v6:?}");
    assert_eq!(
        server
            .db
            .count("SELECT COUNT(*) FROM key_state WHERE kind = 'ip'")
            .await,
        0,
        "nothing is counted on a trusted address"
    );

    // A brute force on one account from the office still counts.
    for _ in 0..5 {
        fail(&mut access, "office", subject("alice", "10.1.2.3")).await;
    }
    let alice = check(&mut access, "office", subject("alice", "10.1.2.3")).await;
    assert_eq!(decision(&alice), Decision::Blocked, "{alice:?}");
    assert_eq!(alice.rule, "per_user");

    // The same failures from an address outside lock the address.
    for i in 0..3 {
        fail(
            &mut access,
            "office",
            subject(&format!("stranger{i}"), "203.0.113.5"),
        )
        .await;
    }
    let outside = check(&mut access, "office", subject("newcomer", "203.0.113.5")).await;
    assert_eq!(decision(&outside), Decision::Blocked, "{outside:?}");
    assert_eq!(outside.rule, "per_ip");

    // A context's own list replaces the global one.
    for i in 0..3 {
        fail(
            &mut access,
            "strict",
            subject(&format!("colleague{i}"), "10.1.2.3"),
        )
        .await;
    }
    let strict = check(&mut access, "strict", subject("newcomer", "10.1.2.3")).await;
    assert_eq!(decision(&strict), Decision::Blocked, "{strict:?}");
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_of_allowed_networks_refuses_and_counts_every_other_address(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, NETWORKS).await;
    let mut access = server.access().await;

    let telegram = check(&mut access, "hooks", subject("", "149.154.167.99")).await;
    assert_eq!(decision(&telegram), Decision::Allow, "{telegram:?}");
    assert_eq!(telegram.reason, "ok");

    let mut decisions = Vec::new();
    for _ in 0..4 {
        let v = check(&mut access, "hooks", subject("", "198.51.100.7")).await;
        decisions.push((decision(&v), v.reason));
    }
    assert_eq!(
        decisions[0],
        (Decision::Deny, "network_not_allowed".to_owned())
    );
    assert_eq!(
        decisions[3].0,
        Decision::Blocked,
        "access.not_allowed's attempts block the address: {decisions:?}"
    );
    // Another outsider is refused but not blocked by the first one's count.
    let other = check(&mut access, "hooks", subject("", "198.51.100.8")).await;
    assert_eq!(decision(&other), Decision::Deny, "{other:?}");

    let events = audit_events(&mut server.admin().await, "not_allowed").await;
    let keys: Vec<_> = events.iter().filter_map(|e| e.key.clone()).collect();
    assert_eq!(
        keys.len(),
        5,
        "every refusal is in the audit trail: {events:?}"
    );
    assert!(
        keys.iter().all(|k| k.kind() == proto::KeyKind::Ip),
        "{keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| k.ip == "198.51.100.7").count(),
        4,
        "{keys:?}"
    );

    let unaddressed = access
        .check_access(proto::CheckAccessRequest {
            context: "hooks".into(),
            subject: subject("bob", ""),
        })
        .await
        .expect_err("no address, nothing to admit");
    assert_eq!(unaddressed.code(), Code::InvalidArgument);
    assert!(
        unaddressed.message().contains("subject.ip"),
        "{}",
        unaddressed.message()
    );
    server.stop().await;
}
