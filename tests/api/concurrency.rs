//! Several replicas, one Postgres: no failure is lost and each lockout the
//! rule implies is applied exactly once.

use std::collections::BTreeMap;

use authgate::grpc::proto::Decision;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_count_every_failure_exactly_once() {
    let (db, _dir, replicas) = two_replicas(&[]).await;
    let clients = [replicas[0].access().await, replicas[1].access().await];

    let calls = (0..200).map(|i| {
        let mut c = clients[i % 2].clone();
        tokio::spawn(async move { fail(&mut c, "login", subject("racer", "198.51.100.1")).await })
    });
    let responses = futures_join_all(calls).await;

    let applied = responses.iter().filter(|r| r.lockout_applied).count();
    let mut by_decision: BTreeMap<i32, Vec<Option<u32>>> = BTreeMap::new();
    for r in &responses {
        let v = r.verdict.clone().unwrap();
        by_decision
            .entry(v.decision)
            .or_default()
            .push(v.remaining_attempts);
    }
    let mut allowed = by_decision
        .remove(&(Decision::Allow as i32))
        .unwrap_or_default();
    allowed.sort();
    assert_eq!(
        allowed,
        [Some(1), Some(2), Some(3), Some(4)],
        "each count seen exactly once"
    );
    assert_eq!(
        by_decision
            .remove(&(Decision::Blocked as i32))
            .map(|v| v.len()),
        Some(196)
    );
    // user_ip locks at the 5th failure, ip at the 20th.
    assert_eq!(applied, 2);

    let mut admin = replicas[0].admin().await;
    let racer = report(&mut admin, subject("racer", "")).await;
    let totals: BTreeMap<String, (u64, u64)> = racer
        .states
        .iter()
        .map(|s| (s.rule.clone(), (s.failures_total, s.lockouts_total)))
        .collect();
    assert_eq!(totals["user_ip"], (200, 1));
    assert_eq!(totals["user"], (200, 0));
    let ip = report(&mut admin, subject("", "198.51.100.1")).await;
    let ip_rule = ip.states.iter().find(|s| s.rule == "ip").unwrap();
    assert_eq!((ip_rule.failures_total, ip_rule.lockouts_total), (200, 1));
    // The audit trail took each failure exactly once, retries and all.
    let audited = db
        .count("SELECT COUNT(*) FROM security_event WHERE kind = 'failure_recorded'")
        .await;
    assert_eq!(audited, 200);

    // The lockouts were logged, with the user and address masked.
    let logs: Vec<String> = replicas.into_iter().flat_map(|r| r.terminate().1).collect();
    let text = logs.join("\n");
    assert_eq!(text.matches("lockout applied").count(), 2, "{text}");
    assert!(
        !text.contains("racer") && !text.contains("198.51.100.1"),
        "{text}"
    );
}

/// Many users behind a few shared addresses: concurrent failures on
/// overlapping keys share read and write batches, and none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_keys_in_concurrent_batches_lose_nothing() {
    let (db, _dir, replicas) = two_replicas(&[]).await;
    let clients = [replicas[0].access().await, replicas[1].access().await];
    let (users, ips, per_user) = (40, 4, 10);

    let calls = (0..users * per_user).map(|i| {
        let mut c = clients[i % 2].clone();
        let user = i % users;
        let ip = format!("203.0.113.{}", user % ips);
        tokio::spawn(async move { fail(&mut c, "login", subject(&format!("u{user}"), &ip)).await })
    });
    let responses = futures_join_all(calls).await;
    assert_eq!(responses.len(), users * per_user);

    let mut admin = replicas[0].admin().await;
    for user in 0..users {
        let states = report(&mut admin, subject(&format!("u{user}"), ""))
            .await
            .states;
        let totals: BTreeMap<String, (u64, u64)> = states
            .iter()
            .map(|s| (s.rule.clone(), (s.failures_total, s.lockouts_total)))
            .collect();
        assert_eq!(totals["user_ip"], (per_user as u64, 1), "u{user}");
        assert_eq!(totals["user"].0, per_user as u64, "u{user}");
    }
    for ip in 0..ips {
        let states = report(&mut admin, subject("", &format!("203.0.113.{ip}")))
            .await
            .states;
        let rule = states.iter().find(|s| s.rule == "ip").unwrap();
        let expected = (users / ips * per_user) as u64;
        assert_eq!(
            (rule.failures_total, rule.lockouts_total),
            (expected, 1),
            "ip {ip}"
        );
    }
    let audited = db
        .count("SELECT COUNT(*) FROM security_event WHERE kind = 'failure_recorded'")
        .await;
    assert_eq!(audited, (users * per_user) as i64);
}

/// An unlock that lands between a failure's read and its write is not
/// overwritten by that write: at most three failures follow it, too few to
/// lock again, so every round must end unlocked, in Postgres and as the
/// replica that unlocked answers. (The other replica may answer from its
/// cache until the unlock's notification reaches it, within the bound
/// tests/api/cache.rs measures.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlock_racing_failures_is_never_lost() {
    let (db, _dir, replicas) = two_replicas(&[]).await;
    let clients = [replicas[0].access().await, replicas[1].access().await];
    let mut admin = replicas[1].admin().await;
    let mut relocked = Vec::new();
    for round in 0..60 {
        let who = subject(&format!("unlocked{round}"), &format!("198.51.100.{round}"));
        for _ in 0..5 {
            fail(&mut clients[0].clone(), "login", who.clone()).await;
        }
        let failures = (0..3).map(|i| {
            let mut c = clients[i % 2].clone();
            let who = who.clone();
            tokio::spawn(async move { fail(&mut c, "login", who).await })
        });
        let unlock = admin.admin_unlock(authgate::grpc::proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: who
                .clone()
                .map(authgate::grpc::proto::admin_unlock_request::Scope::Subject),
        });
        let (unlocked, _) = tokio::join!(unlock, futures_join_all(failures));
        assert_eq!(unlocked.expect("AdminUnlock").into_inner().unlocked, 1);
        let v = check(&mut clients[1].clone(), "login", who).await;
        if decision(&v) == Decision::Blocked {
            relocked.push(round);
        }
    }
    assert!(
        relocked.is_empty(),
        "locked again after the unlock in rounds {relocked:?}"
    );
    let stored = db
        .count("SELECT count(*) FROM key_state WHERE user_id LIKE 'unlocked%' AND locked_at IS NOT NULL")
        .await;
    assert_eq!(stored, 0, "locks stored after their unlock");
}
