//! Admins' bans of keys and ranges, through the real server on both
//! stores, and across two replicas of one Postgres.

use std::time::{Duration, Instant};

use authgate::grpc::proto::admin_unlock_request::Scope;
use authgate::grpc::proto::ban_spec::{Lifetime, Target};
use authgate::grpc::proto::{self, Decision};
use authgate::store::Upkeep;
use rstest::rstest;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;

type Admin = authgate::grpc::proto::admin_service_client::AdminServiceClient<Channel>;

/// `login` counts on the address and the user; `chat` on the user alone;
/// the office's network is trusted everywhere.
const BANS: &str = r#"
[access]
admin_user_ids = ["admin"]
trusted_networks = ["10.0.0.0/8"]

[[contexts.login.rules]]
name = "per_ip"
key = "ip"
window = "1h"
lock_after = 5
lockout = ["1h"]

[[contexts.login.rules]]
name = "per_user"
key = "user"
window = "1h"
lock_after = 5
lockout = ["1h"]

[[contexts.chat.rules]]
name = "per_user"
key = "user"
window = "1h"
lock_after = 5
lockout = ["1h"]
"#;

const HOUR: Duration = Duration::from_secs(3600);

fn user(id: &str) -> Target {
    Target::Key(proto::Key {
        kind: proto::KeyKind::User.into(),
        user_id: id.into(),
        ..Default::default()
    })
}

fn range(cidr: &str) -> Target {
    Target::Range(cidr.into())
}

fn spec(context: &str, target: Target, lifetime: Lifetime) -> proto::BanSpec {
    proto::BanSpec {
        context: context.into(),
        target: Some(target),
        lifetime: Some(lifetime),
        reason: "abuse report #7".into(),
        force: false,
    }
}

fn lasting(d: Duration) -> Lifetime {
    Lifetime::Duration(prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap(),
        nanos: 0,
    })
}

async fn ban(a: &mut Admin, ban: proto::BanSpec) -> Result<proto::BanResponse, tonic::Status> {
    a.ban(proto::BanRequest {
        actor_user_id: "admin".into(),
        ban: Some(ban),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn unlock(a: &mut Admin, scope: Scope) -> u64 {
    a.admin_unlock(proto::AdminUnlockRequest {
        actor_user_id: "admin".into(),
        scope: Some(scope),
    })
    .await
    .expect("AdminUnlock")
    .into_inner()
    .unlocked
}

/// The next alert of `kind` on `alerts`, skipping others.
async fn next_alert(
    alerts: &mut tonic::Streaming<proto::SecurityAlert>,
    kind: &str,
) -> proto::SecurityAlert {
    loop {
        let alert = tokio::time::timeout(Duration::from_secs(10), alerts.message())
            .await
            .expect("an alert in time")
            .expect("stream open")
            .expect("an alert");
        if alert.kind == kind {
            return alert;
        }
    }
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_refuses_its_key_where_it_applies_until_lifted_or_over(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, BANS).await;
    let mut access = server.access().await;
    let mut admin = server.admin().await;
    let mut alerts = watch(&mut admin).await;

    let placed = ban(&mut admin, spec("login", user("mallory"), lasting(HOUR)))
        .await
        .expect("Ban");
    assert!(placed.changed);
    let stored = placed.ban.expect("the ban as stored");
    assert_eq!(
        (stored.rule.as_str(), stored.actor.as_str()),
        ("ban", "admin")
    );
    let alert = next_alert(&mut alerts, "banned").await;
    assert_eq!(alert.context, "login");
    assert_eq!(alert.key.unwrap().user_id, "mallory");

    let refused = check(&mut access, "login", subject("mallory", "198.51.100.1")).await;
    assert_eq!(decision(&refused), Decision::Blocked, "{refused:?}");
    assert_eq!(
        (refused.reason.as_str(), refused.rule.as_str()),
        ("banned", "ban")
    );
    assert_eq!(refused.ban_reason, "abuse report #7");
    assert_eq!(refused.retry_after_seconds, 3600);
    // Even from the trusted office: a ban on the user is not on its address.
    let office = check(&mut access, "login", subject("mallory", "10.0.0.5")).await;
    assert_eq!(decision(&office), Decision::Blocked, "{office:?}");
    // Other contexts, and other users, are not refused.
    let chat = check(&mut access, "chat", subject("mallory", "198.51.100.1")).await;
    assert_eq!(decision(&chat), Decision::Allow, "{chat:?}");
    let alice = check(&mut access, "login", subject("alice", "198.51.100.1")).await;
    assert_eq!(decision(&alice), Decision::Allow, "{alice:?}");
    // A failure report answers with the ban too.
    let failed = access
        .record_failure(proto::RecordFailureRequest {
            context: "login".into(),
            subject: subject("mallory", "198.51.100.1"),
            activity: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.verdict.unwrap().reason, "banned");

    // The same ban again changes nothing and records nothing.
    let again = ban(
        &mut admin,
        spec(
            "login",
            user("mallory"),
            Lifetime::Until(stored.unblock_at.unwrap()),
        ),
    )
    .await
    .unwrap();
    assert!(!again.changed, "{again:?}");
    assert_eq!(audit_events(&mut admin, "banned").await.len(), 1);

    let listed = locked(&mut admin).await;
    let bans: Vec<_> = listed.iter().filter(|l| l.rule == "ban").collect();
    assert_eq!(bans.len(), 1, "{listed:?}");
    assert_eq!(bans[0].reason, "abuse report #7");
    let seen = report(&mut admin, subject("mallory", "")).await;
    assert_eq!(seen.bans.len(), 1, "{seen:?}");

    assert_eq!(
        unlock(&mut admin, Scope::Subject(subject("mallory", "").unwrap())).await,
        1
    );
    let lifted = next_alert(&mut alerts, "ban_lifted").await;
    assert_eq!(lifted.key.unwrap().user_id, "mallory");
    let back = check(&mut access, "login", subject("mallory", "198.51.100.1")).await;
    assert_eq!(decision(&back), Decision::Allow, "{back:?}");
    let lifts = audit_events(&mut admin, "ban_lifted").await;
    assert_eq!(lifts.len(), 1);
    assert_eq!(lifts[0].actor, "admin");

    // A ban in every context, for an hour, ends by itself.
    ban(&mut admin, spec("", user("mallory"), lasting(HOUR)))
        .await
        .unwrap();
    let chat = check(&mut access, "chat", subject("mallory", "")).await;
    assert_eq!(chat.reason, "banned", "{chat:?}");
    server.clock.advance(HOUR);
    let over = check(&mut access, "chat", subject("mallory", "")).await;
    assert_eq!(decision(&over), Decision::Allow, "{over:?}");
    let (config, _) = config(BANS, &server.db);
    let store = authgate::app::open_store(&config).await.unwrap();
    let purged = store
        .upkeep()
        .purge_expired(
            authgate::domain::UnixMillis(EPOCH.0 + 3_600_000),
            Duration::from_secs(90 * 86_400),
        )
        .await
        .unwrap()
        .expect("no other replica purging");
    assert_eq!(purged.bans, 1);
    assert_eq!(server.db.count("SELECT COUNT(*) FROM ban").await, 0);
    let expired = audit_events(&mut admin, "ban_expired").await;
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].detail, "abuse report #7");
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_ban_refuses_every_address_in_it_with_one_row(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, BANS).await;
    let mut access = server.access().await;
    let mut admin = server.admin().await;

    for cidr in ["203.0.113.0/24", "2001:db8::/32", "10.1.0.0/16"] {
        ban(&mut admin, spec("", range(cidr), Lifetime::Permanent(true)))
            .await
            .unwrap_or_else(|e| panic!("{cidr}: {e:?}"));
    }
    for ip in [
        "203.0.113.0",
        "203.0.113.77",
        "203.0.113.255",
        "::ffff:203.0.113.9",
    ] {
        let v = check(&mut access, "login", subject("", ip)).await;
        assert_eq!(decision(&v), Decision::Blocked, "{ip}: {v:?}");
        assert_eq!(v.reason, "banned");
        assert!(v.permanent);
        assert_eq!(v.key.unwrap().ip, "203.0.113.0/24");
    }
    let v6 = check(&mut access, "chat", subject("bob", "2001:db8:ffff:1::9")).await;
    assert_eq!(
        (decision(&v6), v6.key.unwrap().ip.as_str()),
        (Decision::Blocked, "2001:db8::/32")
    );
    for ip in ["203.0.114.1", "2001:db9::1"] {
        let v = check(&mut access, "login", subject("bob", ip)).await;
        assert_eq!(decision(&v), Decision::Allow, "{ip}: {v:?}");
    }
    // The trusted office is never refused by a range, even one inside it.
    let office = check(&mut access, "login", subject("bob", "10.1.2.3")).await;
    assert_eq!(
        (decision(&office), office.reason.as_str()),
        (Decision::Allow, "trusted_network")
    );
    assert_eq!(server.db.count("SELECT COUNT(*) FROM ban").await, 3);
    assert_eq!(
        server
            .db
            .count("SELECT COUNT(*) FROM key_state WHERE kind = 'ip'")
            .await,
        0,
        "no row per address"
    );
    // GetSubject shows the range that holds the address.
    let seen = report(&mut admin, subject("", "203.0.113.77")).await;
    assert_eq!(seen.bans.len(), 1, "{seen:?}");
    assert_eq!(seen.bans[0].key.as_ref().unwrap().ip, "203.0.113.0/24");

    // Unlocking one address inside does not lift the range: naming it does.
    assert_eq!(
        unlock(
            &mut admin,
            Scope::Subject(subject("", "203.0.113.77").unwrap())
        )
        .await,
        0
    );
    let still = check(&mut access, "login", subject("", "203.0.113.77")).await;
    assert_eq!(still.reason, "banned");
    let named = Scope::Key(proto::KeyRef {
        context: "login".into(),
        key: Some(proto::Key {
            kind: proto::KeyKind::Ip.into(),
            ip: "203.0.113.0/24".into(),
            ..Default::default()
        }),
    });
    assert_eq!(unlock(&mut admin, named).await, 1);
    let free = check(&mut access, "login", subject("", "203.0.113.77")).await;
    assert_eq!(decision(&free), Decision::Allow, "{free:?}");
    assert_eq!(unlock(&mut admin, Scope::All(true)).await, 2);
    assert_eq!(server.db.count("SELECT COUNT(*) FROM ban").await, 0);
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ban_is_refused_naming_its_field_and_writes_nothing(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, BANS).await;
    let mut admin = server.admin().await;
    let zero = Lifetime::Duration(prost_types::Duration::default());
    let cases = [
        (
            spec("", range("203.0.113.0/33"), lasting(HOUR)),
            "ban.range",
        ),
        (
            spec("", range("banned.example"), lasting(HOUR)),
            "ban.range",
        ),
        (spec("", range("0.0.0.0/0"), lasting(HOUR)), "ban.range"),
        (spec("", range("2001:db8::/16"), lasting(HOUR)), "ban.range"),
        (
            spec("nowhere", user("mallory"), lasting(HOUR)),
            "ban.context",
        ),
        (spec("", user("mallory"), zero), "ban.duration"),
        (
            proto::BanSpec {
                reason: " ".into(),
                ..spec("", user("mallory"), lasting(HOUR))
            },
            "ban.reason",
        ),
        (
            proto::BanSpec {
                lifetime: None,
                ..spec("", user("mallory"), lasting(HOUR))
            },
            "ban",
        ),
    ];
    for (bad, field) in cases {
        let err = ban(&mut admin, bad.clone()).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "{bad:?}: {}",
            err.message()
        );
    }
    // A range wider than the minimum is taken when forced.
    let forced = proto::BanSpec {
        force: true,
        ..spec("", range("0.0.0.0/0"), lasting(HOUR))
    };
    let err = ban(&mut admin, spec("", range("0.0.0.0/0"), lasting(HOUR)))
        .await
        .unwrap_err();
    assert!(err.message().contains("force"), "{}", err.message());
    assert_eq!(server.db.count("SELECT COUNT(*) FROM ban").await, 0);

    // An import with one bad ban writes none of them.
    let batch = vec![
        spec("", range("198.51.100.0/24"), lasting(HOUR)),
        spec("login", user("mallory"), Lifetime::Permanent(true)),
        spec("", range("198.51.100.0/99"), lasting(HOUR)),
    ];
    let err = admin
        .import_bans(proto::ImportBansRequest {
            actor_user_id: "admin".into(),
            bans: batch.clone(),
            validate_only: false,
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("bans[2].range"),
        "{}",
        err.message()
    );
    assert_eq!(server.db.count("SELECT COUNT(*) FROM ban").await, 0);
    let imported = admin
        .import_bans(proto::ImportBansRequest {
            actor_user_id: "admin".into(),
            bans: batch[..2].to_vec(),
            validate_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((imported.written, imported.unchanged), (2, 0));
    ban(&mut admin, forced).await.expect("forced");
    assert_eq!(server.db.count("SELECT COUNT(*) FROM ban").await, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_one_replica_refuses_on_the_other_within_a_second() {
    let (_db, _dir, [a, b]) =
        two_replicas(&[("AUTHGATE_METRICS__REFRESH_INTERVAL", "200ms")]).await;
    let mut on_b = b.access().await;
    // B reads the bans (none) before A bans: what it holds must change.
    let before = check(&mut on_b, "login", subject("", "192.0.2.10")).await;
    assert_eq!(decision(&before), Decision::Allow, "{before:?}");
    ban(
        &mut a.admin().await,
        spec("", range("192.0.2.0/24"), lasting(HOUR)),
    )
    .await
    .unwrap();
    let banned_at = Instant::now();
    loop {
        let v = check(&mut on_b, "login", subject("", "192.0.2.10")).await;
        if v.reason == "banned" {
            break;
        }
        assert!(
            banned_at.elapsed() < Duration::from_millis(1500),
            "replica B still allows a banned range: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both replicas count it among the active bans.
    for replica in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let scrape = http_get(&replica.metrics_url);
            let n = metric(&scrape, r#"authgate_bans_active{scope="all",kind="range"}"#);
            if n == 1.0 {
                break;
            }
            assert!(Instant::now() < deadline, "gauge reads {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn imported(out: std::process::Output) -> (u64, u64) {
    let rows: serde_json::Value = serde_json::from_str(&succeeded(out)).expect("--json");
    let n = |k: &str| rows[0][k].as_u64().expect("a count");
    (n("written"), n("unchanged"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_and_locks_export_and_import_again_idempotently_or_not_at_all() {
    let from = TestServer::spawn_with(Backend::Sqlite, BANS).await;
    let mut access = from.access().await;
    for _ in 0..5 {
        fail(&mut access, "login", subject("frank", "192.0.2.50")).await;
    }
    succeeded(admin_cli(
        &from,
        &[
            "ban",
            "--range",
            "203.0.113.0/24",
            "--permanent",
            "--reason",
            "scanner",
        ],
    ));
    succeeded(admin_cli(
        &from,
        &[
            "ban",
            "--user",
            "mallory",
            "--context",
            "login",
            "--duration",
            "2h",
            "--reason",
            "spam, again",
        ],
    ));
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("bans.jsonl");
    let csv = dir.path().join("bans.csv");
    std::fs::write(&jsonl, succeeded(admin_cli(&from, &["bans", "export"]))).unwrap();
    std::fs::write(
        &csv,
        succeeded(admin_cli(&from, &["bans", "export", "--format", "csv"])),
    )
    .unwrap();
    let exported = std::fs::read_to_string(&jsonl).unwrap();
    // Two bans, and frank's locks on the user and on the address.
    assert_eq!(exported.lines().count(), 4, "{exported}");

    for (file, backend) in [(&jsonl, Backend::Postgres), (&csv, Backend::Sqlite)] {
        let to = TestServer::spawn_with(backend, BANS).await;
        let path = file.to_str().unwrap();
        assert_eq!(
            imported(admin_cli(&to, &["--json", "bans", "import", path])),
            (4, 0),
            "{path}"
        );
        assert_eq!(
            imported(admin_cli(&to, &["--json", "bans", "import", path])),
            (0, 4),
            "importing again changes nothing"
        );
        assert_eq!(audit_events(&mut to.admin().await, "banned").await.len(), 4);
        let mut access = to.access().await;
        for (user, ip) in [
            ("mallory", "198.51.100.1"),
            ("frank", "198.51.100.1"),
            ("", "192.0.2.50"),
            ("", "203.0.113.9"),
        ] {
            let v = check(&mut access, "login", subject(user, ip)).await;
            assert_eq!(
                (decision(&v), v.reason.as_str()),
                (Decision::Blocked, "banned"),
                "{user} {ip} from {path}"
            );
        }
        let chat = check(&mut access, "chat", subject("mallory", "")).await;
        assert_eq!(
            decision(&chat),
            Decision::Allow,
            "mallory's ban is login's alone"
        );
        to.stop().await;
    }

    // A plain list, and a file with one bad line, which imports nothing.
    let to = TestServer::spawn_with(Backend::Sqlite, BANS).await;
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        "# from a blocklist\n198.51.100.0/24\n2001:db8:bad::/48\n",
    )
    .unwrap();
    let list = list.to_str().unwrap();
    let plain = [
        "--json",
        "bans",
        "import",
        list,
        "--duration",
        "1d",
        "--reason",
        "blocklist",
    ];
    assert_eq!(imported(admin_cli(&to, &plain)), (2, 0));
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "192.0.2.0/24\n192.0.3.0/24\n192.0.4.0/33\n").unwrap();
    let bad = bad.to_str().unwrap();
    let out = admin_cli(
        &to,
        &["bans", "import", bad, "--permanent", "--reason", "x"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("line 3:") && stderr.contains("range"),
        "{stderr}"
    );
    let garbled = dir.path().join("garbled.jsonl");
    std::fs::write(
        &garbled,
        format!(
            "{}\n{{\"kind\": \"user\"\n",
            exported.lines().next().unwrap()
        ),
    )
    .unwrap();
    let out = admin_cli(&to, &["bans", "import", garbled.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2:"),
        "{out:?}"
    );
    assert_eq!(
        to.db.count("SELECT COUNT(*) FROM ban").await,
        2,
        "nothing more imported"
    );
    from.stop().await;
    to.stop().await;
}
