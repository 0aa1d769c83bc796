//! The password key: one password sprayed across many accounts and
//! addresses is caught, and authgate never keeps what the caller sent.

use authgate::crypto::PasswordKeys;
use authgate::domain::UnixMillis;
use authgate::grpc::proto::{self, Decision};
use base64::Engine;
use rstest::rstest;
use sha2::{Digest, Sha256};
use tonic::Code;
use zeroize::Zeroizing;

use crate::helpers::*;
use authgate::store::Upkeep;

fn fingerprint(password: &str) -> Vec<u8> {
    Sha256::digest(password.as_bytes()).to_vec()
}

/// `user` at `ip` trying the password with this fingerprint.
fn attempt(user: &str, ip: &str, fingerprint: &[u8]) -> Option<proto::Subject> {
    Some(proto::Subject {
        password_fingerprint: fingerprint.to_vec(),
        ..subject(user, ip).unwrap()
    })
}

/// The login flow of a service under spraying: check, and on a wrong
/// password record the failure. Returns the checks' decisions.
async fn spray(server: &TestServer, sprayed: &[u8], attempts: usize) -> Vec<Decision> {
    let mut access = server.access().await;
    let mut decisions = Vec::new();
    for i in 0..attempts {
        let who = attempt(&format!("victim{i}"), &format!("198.51.100.{i}"), sprayed);
        let verdict = check(&mut access, "login", who.clone()).await;
        decisions.push(decision(&verdict));
        if decision(&verdict) != Decision::Blocked {
            fail(&mut access, "login", who).await;
        }
    }
    decisions
}

/// Every form the caller's fingerprint could be kept in.
fn forms(fingerprint: &[u8]) -> Vec<Vec<u8>> {
    vec![
        fingerprint.to_vec(),
        hex::encode(fingerprint).into_bytes(),
        hex::encode_upper(fingerprint).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(fingerprint)
            .into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_password_sprayed_across_accounts_is_challenged_then_blocked(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let sprayed = fingerprint("Summer2024!");
    let decisions = spray(&server, &sprayed, 40).await;
    for (i, d) in decisions.iter().enumerate() {
        let expected = match i {
            0..10 => Decision::Allow,
            10..30 => Decision::ChallengeCaptcha,
            _ => Decision::Blocked,
        };
        assert_eq!(*d, expected, "attempt {} of the spray", i + 1);
    }

    let mut access = server.access().await;
    let fresh = attempt("newcomer", "203.0.113.9", &fingerprint("correct horse"));
    assert_eq!(
        decision(&check(&mut access, "login", fresh).await),
        Decision::Allow
    );
    let verdict = check(
        &mut access,
        "login",
        attempt("victim0", "198.51.100.0", &sprayed),
    )
    .await;
    assert_eq!(decision(&verdict), Decision::Blocked);
    assert_eq!(verdict.rule, "password");
    // The account is not locked: its owner, with their own password, is in.
    let owner = attempt("victim0", "198.51.100.0", &fingerprint("my own secret"));
    assert_eq!(
        decision(&check(&mut access, "login", owner).await),
        Decision::Allow
    );
    // A request without a fingerprint is not judged by the password rule,
    // nor counted on it.
    assert_eq!(
        decision(&check(&mut access, "login", subject("victim1", "198.51.100.1")).await),
        Decision::Allow
    );
    for i in 0..30 {
        fail(
            &mut access,
            "login",
            subject(&format!("plain{i}"), "203.0.113.7"),
        )
        .await;
    }
    assert_eq!(
        server
            .db
            .count("SELECT COUNT(*) FROM key_state WHERE kind = 'password'")
            .await,
        1,
        "the sprayed password's row alone"
    );
    server.stop().await;
}

/// Spraying works because some accounts do use the common password: a
/// success with it proves nothing about the others and keeps its count.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_with_the_sprayed_password_keeps_its_count(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let sprayed = fingerprint("Spring2026!");
    spray(&server, &sprayed, 10).await;
    let mut access = server.access().await;
    let verdict = success(
        &mut access,
        "login",
        attempt("uses-it", "203.0.113.50", &sprayed),
    )
    .await;
    assert_eq!(decision(&verdict), Decision::ChallengeCaptcha);
    let next = attempt("victim10", "198.51.100.10", &sprayed);
    assert_eq!(
        decision(&check(&mut access, "login", next).await),
        Decision::ChallengeCaptcha
    );
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_a_prefix_and_unlock_by_fingerprint(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let sprayed = fingerprint("Winter2025?");
    spray(&server, &sprayed, 31).await;
    let mut admin = server.admin().await;

    let locked = admin
        .list_locked(proto::ListLockedRequest {
            actor_user_id: "admin".into(),
            context: "login".into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("ListLocked")
        .into_inner()
        .locks;
    let lock = locked
        .iter()
        .find(|l| l.rule == "password")
        .expect("the password is locked");
    let key = lock.key.as_ref().unwrap();
    assert_eq!(key.kind(), proto::KeyKind::Password);
    let stored = PasswordKeys::new(vec![("test".into(), test_key())]).rekey(
        sprayed
            .as_slice()
            .try_into()
            .expect("a fingerprint is 32 bytes"),
    );
    assert_eq!(key.password, stored[0].shown());
    assert_eq!(key.password.len(), "test:".len() + 4, "{}", key.password);

    let who = attempt("someone", "192.0.2.1", &sprayed);
    let states = report(&mut admin, who.clone()).await.states;
    let state = states
        .iter()
        .find(|s| s.rule == "password")
        .expect("GetSubject shows the password key");
    assert_eq!(state.failures_total, 30);
    assert_eq!(state.key.as_ref().unwrap().password, key.password);

    let unlocked = admin
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(proto::admin_unlock_request::Scope::Subject(
                who.clone().unwrap(),
            )),
        })
        .await
        .expect("AdminUnlock")
        .into_inner()
        .unlocked;
    assert_eq!(unlocked, 1);
    let mut access = server.access().await;
    assert_eq!(
        decision(&check(&mut access, "login", who).await),
        Decision::Allow
    );

    let by_key = admin
        .admin_unlock(proto::AdminUnlockRequest {
            actor_user_id: "admin".into(),
            scope: Some(proto::admin_unlock_request::Scope::Key(proto::KeyRef {
                context: "login".into(),
                key: Some(key.clone()),
            })),
        })
        .await
        .expect_err("a shown prefix names no key");
    assert_eq!(by_key.code(), Code::InvalidArgument);
    assert!(by_key.message().starts_with("key.key.kind"), "{by_key:?}");
    server.stop().await;
}

fn test_key() -> Zeroizing<[u8; 32]> {
    authgate::crypto::parse_key("test", TEST_KEY.as_bytes()).expect("the test key")
}

/// What is stored is the HMAC: the caller's fingerprint is in none of the
/// database's files (its WAL included), no pg_dump, no log line and no
/// metric.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fingerprint_is_kept_nowhere(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let child = ChildServer::spawn(
        dir.path(),
        &[],
        &[
            ("AUTHGATE_DATABASE__URL", db.url()),
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_LOG__LEVEL", "debug"),
            ("AUTHGATE_PASSWORDS__KEYS", PASSWORD_KEYS_ENV),
        ],
    );
    let sprayed = fingerprint(&format!("kept-nowhere-{}", std::process::id()));
    let mut access = child.access().await;
    for i in 0..31 {
        let who = attempt(&format!("v{i}"), &format!("192.0.2.{i}"), &sprayed);
        check(&mut access, "login", who.clone()).await;
        fail(&mut access, "login", who).await;
    }
    let metrics = http_get(&child.metrics_url);
    let (_, logs) = child.terminate();
    let stored = PasswordKeys::new(vec![("test".into(), test_key())]).rekey(
        sprayed
            .as_slice()
            .try_into()
            .expect("a fingerprint is 32 bytes"),
    );

    let disk = db.everything_on_disk();
    assert!(
        disk.iter()
            .any(|f| contains(f, stored[0].as_str().as_bytes())),
        "the HMAC is what is stored"
    );
    for form in forms(&sprayed) {
        for (i, file) in disk.iter().enumerate() {
            assert!(!contains(file, &form), "file {i} holds the fingerprint");
        }
        assert!(!contains(metrics.as_bytes(), &form), "/metrics");
        for line in &logs {
            assert!(!contains(line.as_bytes(), &form), "log line {line}");
        }
    }
    let hmac_hex = stored[0].as_str().split_once(':').unwrap().1;
    for part in [&hmac_hex[..16], stored[0].shown().as_str()] {
        assert!(!metrics.contains(part), "no password key in /metrics");
        assert!(
            logs.iter().all(|l| !l.contains(part)),
            "no password key in the logs"
        );
    }
    assert!(
        logs.iter().any(|l| l.contains("lockout")),
        "the spray's lock was logged (without its key)"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("authgate_lockouts_total{") && l.contains("key=\"password\"")),
        "the lock is counted by its key kind: {metrics}"
    );
}

/// A secret being rotated out keeps its counts judging: with both keys
/// configured, the password counted under the old one is still challenged;
/// once the old key is gone, its counts are unreachable and expire.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_key_keeps_counts_until_they_expire(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    const NEW_KEY: &str = "bmV3LXBhc3N3b3JkLWtleS0zMi1ieXRlcy1sb25nISE=";
    let old = format!("[passwords]\nkeys = [{{ id = \"old\", key = \"{TEST_KEY}\" }}]");
    let both = format!(
        "[passwords]\nkeys = [{{ id = \"old\", key = \"{TEST_KEY}\" }}, {{ id = \"new\", key = \"{NEW_KEY}\" }}]"
    );
    let new = format!("[passwords]\nkeys = [{{ id = \"new\", key = \"{NEW_KEY}\" }}]");
    let sprayed = fingerprint("Autumn2026");
    let probe = || attempt("probe", "203.0.113.1", &sprayed);

    let server = TestServer::spawn_on(TestDb::new(backend).await, &old).await;
    spray(&server, &sprayed, 10).await;
    let mut access = server.access().await;
    assert_eq!(
        decision(&check(&mut access, "login", probe()).await),
        Decision::ChallengeCaptcha
    );
    let db = server.stop_keeping_db().await;

    let server = TestServer::spawn_on(db, &both).await;
    let mut access = server.access().await;
    assert_eq!(
        decision(&check(&mut access, "login", probe()).await),
        Decision::ChallengeCaptcha,
        "counts under the old key still judge"
    );
    fail(&mut access, "login", probe()).await;
    let db = server.stop_keeping_db().await;

    let server = TestServer::spawn_on(db, &new).await;
    let mut access = server.access().await;
    assert_eq!(
        decision(&check(&mut access, "login", probe()).await),
        Decision::Allow,
        "the new key counted one failure"
    );
    let mut admin = server.admin().await;
    let states = report(&mut admin, probe()).await.states;
    let password: Vec<_> = states.iter().filter(|s| s.rule == "password").collect();
    assert_eq!(password.len(), 1);
    assert_eq!(password[0].failures_total, 1);
    assert!(
        password[0]
            .key
            .as_ref()
            .unwrap()
            .password
            .starts_with("new:")
    );
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_fingerprint_is_refused_and_nothing_written(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut access = server.access().await;
    for bytes in [1, 31, 33, 64, 4096] {
        let who = attempt("mallory", "192.0.2.66", &vec![7u8; bytes]);
        for status in [
            access
                .check_access(proto::CheckAccessRequest {
                    context: "login".into(),
                    subject: who.clone(),
                })
                .await
                .expect_err("CheckAccess refuses it"),
            access
                .record_failure(proto::RecordFailureRequest {
                    context: "login".into(),
                    subject: who.clone(),
                    activity: String::new(),
                })
                .await
                .expect_err("RecordFailure refuses it"),
        ] {
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status
                    .message()
                    .starts_with("subject.password_fingerprint: must be the 32 bytes"),
                "{}",
                status.message()
            );
            assert!(status.message().contains(&format!("got {bytes} bytes")));
        }
    }
    assert_eq!(server.db.count("SELECT COUNT(*) FROM key_state").await, 0);
    assert_eq!(
        server.db.count("SELECT COUNT(*) FROM security_event").await,
        0
    );
    server.stop().await;
}

/// The configuration is refused (check-config says so too, before anything
/// starts) where a password rule runs on Postgres without a key, or a key
/// id could not be told from the HMAC after it.
#[test]
fn postgres_with_a_password_rule_needs_a_key() {
    use figment::providers::{Format, Toml};
    let refused = |toml: &str| {
        let figment = figment::Figment::new().merge(Toml::string(toml));
        match authgate::config::Config::from_figment(figment) {
            Ok(_) => panic!("accepted: {toml}"),
            Err(e) => e.to_string(),
        }
    };
    let err = refused("[database]\nurl = \"postgres://db/authgate\"\n");
    assert!(err.contains("\"login\""), "{err}");
    assert!(err.contains("passwords.keys"), "{err}");
    let err = refused(&format!(
        "[passwords]\nkeys = [{{ id = \"p:1\", key = \"{TEST_KEY}\" }}]\n"
    ));
    assert!(err.contains("passwords.keys[0].id"), "{err}");
}

/// The audit trail names a password key as admins see it, in every event
/// about its lock, the one the cleanup pass records when it ends included;
/// and a failure whose activity reads like one is still about its user.
/// A caller's activity text that reads like a password key as admins are
/// shown it: it stays the failure's detail, and names no key.
const FORGED: &str = "password test:abcd";

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_show_password_keys_by_their_prefix_only(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let sprayed = fingerprint("Audited2026");
    spray(&server, &sprayed, 31).await;
    let mut access = server.access().await;
    access
        .record_failure(proto::RecordFailureRequest {
            context: "login".into(),
            subject: subject("writer", "192.0.2.99"),
            activity: FORGED.into(),
        })
        .await
        .unwrap();
    let (config, _) = config("", &server.db);
    let store = authgate::app::open_store(&config).await.unwrap();
    let after_the_lock = UnixMillis(EPOCH.0 + 31 * 60_000);
    store
        .upkeep()
        .purge_expired(after_the_lock, RETENTION)
        .await
        .unwrap()
        .expect("the cleanup pass ran");

    let stored = PasswordKeys::new(vec![("test".into(), test_key())]).rekey(
        sprayed
            .as_slice()
            .try_into()
            .expect("a fingerprint is 32 bytes"),
    );
    let mut admin = server.admin().await;
    let events = admin
        .list_audit_events(proto::ListAuditEventsRequest {
            actor_user_id: "admin".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    for kind in ["lockout", "lockout_expired"] {
        let event = events
            .iter()
            .find(|e| e.kind == kind && e.rule == "password")
            .unwrap_or_else(|| panic!("a {kind} event of the password rule"));
        let key = event.key.as_ref().unwrap();
        assert_eq!(key.kind(), proto::KeyKind::Password, "{kind}");
        assert_eq!(key.password, stored[0].shown(), "{kind}");
    }
    let hmac = stored[0].as_str();
    assert!(
        !format!("{events:?}").contains(&hmac[hmac.len() - 20..]),
        "no event holds more of the key than its prefix"
    );
    let forged = events
        .iter()
        .find(|e| e.kind == "failure_recorded" && e.detail == FORGED)
        .expect("the failure with that activity");
    let key = forged.key.as_ref().unwrap();
    assert_eq!(key.kind(), proto::KeyKind::UserIp);
    assert_eq!(key.user_id, "writer");
    server.stop().await;
}

/// Two passwords locked one after the other are two alerts: suppression
/// holds back repeats about one key, not about every password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_locked_password_is_alerted() {
    use tokio_stream::StreamExt;
    let server = TestServer::spawn(Backend::Sqlite).await;
    let mut alerts = watch(&mut server.admin().await).await;
    for password in ["FirstSprayed1", "SecondSprayed2"] {
        spray(&server, &fingerprint(password), 30).await;
    }
    let mut locked = Vec::new();
    while locked.len() < 2 {
        let alert = tokio::time::timeout(std::time::Duration::from_secs(10), alerts.next())
            .await
            .expect("an alert within 10 s")
            .expect("the stream is open")
            .expect("an alert");
        if alert.kind == "lockout" && alert.rule == "password" {
            locked.push(alert.key.unwrap().password);
        }
    }
    assert_ne!(locked[0], locked[1]);
    server.stop().await;
}

/// The first sprayed password an alert can see: its lockout series is on
/// /metrics at 0 from the start, so the first lock is an increase.
#[test]
fn lockout_series_start_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(
        dir.path(),
        &[],
        &[("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0")],
    );
    let metrics = http_get(&server.metrics_url);
    for series in [
        "authgate_lockouts_total{context=\"login\",key=\"password\",tier=\"1\"} 0",
        "authgate_lockouts_total{context=\"login\",key=\"user+ip\",tier=\"1\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in {metrics}"
        );
    }
    assert!(
        !metrics.contains("context=\"login\",key=\"user\","),
        "login's user rule never locks"
    );
    server.terminate();
}

/// Postgres with no password rule needs no key and starts; a fingerprint is
/// then checked and ignored, and names nobody on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_rule_fingerprints_are_checked_and_ignored() {
    let server = TestServer::spawn_with(
        Backend::Postgres,
        "[passwords]\nkeys = []\n\
         [[contexts.login.rules]]\nname = \"user_ip\"\nkey = \"user+ip\"\nwindow = \"30m\"\n\
         lock_after = 5\nlockout = [\"30m\"]\n",
    )
    .await;
    let mut access = server.access().await;
    let record = |subject| proto::RecordFailureRequest {
        context: "login".into(),
        subject,
        activity: String::new(),
    };
    let alone = access
        .record_failure(record(Some(proto::Subject {
            password_fingerprint: fingerprint("nobody's"),
            ..proto::Subject::default()
        })))
        .await
        .expect_err("a fingerprint alone names nobody here");
    assert_eq!(alone.code(), Code::InvalidArgument);
    assert!(alone.message().starts_with("subject: needs at least one"));
    let short = access
        .record_failure(record(attempt("ivy", "192.0.2.8", &[1; 5])))
        .await
        .expect_err("a wrong length is still refused");
    assert!(short.message().starts_with("subject.password_fingerprint"));
    access
        .record_failure(record(attempt("ivy", "192.0.2.8", &fingerprint("pw"))))
        .await
        .expect("a well-formed fingerprint is ignored");
    assert_eq!(
        server
            .db
            .count("SELECT COUNT(*) FROM key_state WHERE kind = 'password'")
            .await,
        0
    );
    server.stop().await;
}
