//! Rules on the address count IPv6 by its /64 (what one subscriber holds)
//! and IPv4 by a configured prefix, through the real server on both
//! stores; admins see the prefix, and find it from any address inside.

use authgate::grpc::proto::{self, Decision, admin_unlock_request::Scope};
use rstest::rstest;
use tokio::task::JoinSet;

use crate::helpers::*;

/// Addresses of the /64 the attack comes from, all of them judged, and
/// how many of them (spread across it) fail once each first: failures on
/// one key serialise on its row, each written and audited in turn (the
/// full 65,536 made this test minutes long in the debug build), so the test
/// fails a sample and checks every address.
const ATTACKERS: u32 = 1 << 16;
const FAILING: u32 = 1 << 10;
const PREFIX: &str = "2001:db8:1:2::/64";

fn attacker(i: u32) -> String {
    format!("2001:db8:1:2:{:x}:{:x}::1", i >> 8, i & 0xff)
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64s_addresses_failing_once_each_are_one_key_under_the_shipped_login(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let channel = server.channel().await;
    let senders = |check_all: bool| {
        let mut tasks = JoinSet::new();
        const SENDERS: u32 = 16;
        for sender in 0..SENDERS {
            let mut c = proto::access_service_client::AccessServiceClient::new(channel.clone());
            tasks.spawn(async move {
                let mut blocked = 0u32;
                for i in (sender..ATTACKERS).step_by(SENDERS as usize) {
                    let who = subject("", &attacker(i));
                    if check_all {
                        blocked += u32::from(
                            decision(&check(&mut c, "login", who).await) == Decision::Blocked,
                        );
                    } else if i % (ATTACKERS / FAILING) == 0 {
                        fail(&mut c, "login", who).await;
                    }
                }
                blocked
            });
        }
        tasks
    };
    let mut failing = senders(false);
    while let Some(done) = failing.join_next().await {
        done.expect("a sender");
    }
    let mut checking = senders(true);
    let mut blocked = 0;
    while let Some(done) = checking.join_next().await {
        blocked += done.expect("a checker");
    }
    assert_eq!(blocked, ATTACKERS, "every address of the /64 is blocked");

    let mut access = server.access().await;
    let next = check(&mut access, "login", subject("", "2001:db8:1:2:ffff::9")).await;
    assert_eq!(decision(&next), Decision::Blocked, "{next:?}");
    assert_eq!(next.rule, "ip");
    assert_eq!(
        next.key.as_ref().unwrap().ip,
        PREFIX,
        "the verdict names the prefix"
    );
    let neighbour = check(&mut access, "login", subject("", "2001:db8:1:3::1")).await;
    assert_eq!(decision(&neighbour), Decision::Allow, "{neighbour:?}");
    assert_eq!(
        server
            .db
            .count("SELECT COUNT(*) FROM key_state WHERE kind = 'ip'")
            .await,
        1,
        "one row for the whole /64"
    );

    let mut admin = server.admin().await;
    let locked = locked(&mut admin).await;
    let shown: Vec<_> = locked
        .iter()
        .filter_map(|l| l.key.as_ref().map(|k| k.ip.clone()))
        .collect();
    assert_eq!(shown, [PREFIX], "{locked:?}");
    let inside = report(&mut admin, subject("", "2001:db8:1:2::abcd")).await;
    assert!(
        inside
            .states
            .iter()
            .any(|s| s.key.as_ref().is_some_and(|k| k.ip == PREFIX)),
        "GetSubject of an address inside finds the prefix's state: {inside:?}"
    );
    let events = audit_events(&mut admin, "lockout").await;
    assert!(
        events
            .iter()
            .any(|e| e.key.as_ref().is_some_and(|k| k.ip == PREFIX)),
        "the lockout's event names the prefix: {events:?}"
    );

    // An unlock of one address inside the /64 lifts the /64's lock.
    let lifted = admin
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(Scope::Key(proto::KeyRef {
                context: "login".into(),
                key: Some(proto::Key {
                    kind: proto::KeyKind::Ip.into(),
                    ip: "2001:db8:1:2::abcd".into(),
                    ..Default::default()
                }),
            })),
        })
        .await
        .expect("AdminUnlock")
        .into_inner();
    assert_eq!(lifted.unlocked, 1);
    let after = check(&mut access, "login", subject("", "2001:db8:1:2:ffff::9")).await;
    assert_eq!(decision(&after), Decision::Allow, "{after:?}");
    server.stop().await;
}

/// A subnet rule: IPv4 counted by /24.
const SUBNET: &str = r#"
[[contexts.api.rules]]
name = "subnet"
key = "ip"
ipv4_prefix = 24
window = "1h"
lock_after = 3
lockout = ["1h"]
"#;

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv4_prefix_makes_a_subnet_rule(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, SUBNET).await;
    let mut access = server.access().await;
    for host in 1..=3 {
        fail(&mut access, "api", subject("", &format!("192.0.2.{host}"))).await;
    }
    let mapped = check(&mut access, "api", subject("", "::ffff:192.0.2.200")).await;
    assert_eq!(decision(&mapped), Decision::Blocked, "{mapped:?}");
    assert_eq!(mapped.key.as_ref().unwrap().ip, "192.0.2.0/24");
    let other = check(&mut access, "api", subject("", "192.0.3.1")).await;
    assert_eq!(decision(&other), Decision::Allow, "{other:?}");
    server.stop().await;
}
