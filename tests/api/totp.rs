//! Two-factor sign-in through the real RPCs: RFC 6238 vectors, an
//! independent code generator, replay across replicas, blocks, sessions.

use rstest::rstest;
use std::process::Command;

use authgate::domain::UnixMillis;
use authgate::grpc::proto::{self, Decision, SessionState, TotpResult};
use base64::Engine;
use tonic::Code;
use tonic::transport::Channel;
use totp_rs::{Algorithm, Builder};

use crate::helpers::*;
use authgate::store::Upkeep;

type Access = proto::access_service_client::AccessServiceClient<Channel>;
type Admin = proto::admin_service_client::AdminServiceClient<Channel>;

fn user(id: &str) -> Option<proto::Subject> {
    subject(id, "")
}

async fn verify(c: &mut Access, who: &str, code: &str) -> proto::VerifyTotpResponse {
    c.verify_totp(proto::VerifyTotpRequest {
        context: "admin".into(),
        subject: user(who),
        code: code.into(),
        recovery_code: String::new(),
    })
    .await
    .expect("VerifyTotp")
    .into_inner()
}

async fn enroll(c: &mut Access, who: &str, account: &str) -> proto::EnrollTotpResponse {
    c.enroll_totp(proto::EnrollTotpRequest {
        context: "admin".into(),
        subject: user(who),
        account_name: account.into(),
    })
    .await
    .expect("EnrollTotp")
    .into_inner()
}

async fn stats(a: &mut Admin) -> proto::GetStatsResponse {
    a.get_stats(proto::GetStatsRequest {
        actor_user_id: "admin".into(),
    })
    .await
    .expect("GetStats")
    .into_inner()
}

fn result(r: &proto::VerifyTotpResponse) -> TotpResult {
    TotpResult::try_from(r.result).expect("known result")
}

async fn import(a: &mut Admin, who: &str, secret: &[u8], algorithm: &str, digits: u32) {
    a.import_totp(proto::ImportTotpRequest {
        actor_user_id: "admin".into(),
        user_id: who.into(),
        secret_base32: base32(secret),
        algorithm: algorithm.into(),
        digits,
        period_seconds: 30,
    })
    .await
    .expect("ImportTotp");
}

fn base32(secret: &[u8]) -> String {
    totp_rs::Secret::new(secret.to_vec().into_boxed_slice()).to_base32()
}

/// The code an authenticator app shows at `at`.
fn code(secret: &[u8], at: UnixMillis, shift_steps: i64) -> String {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_secret(secret.to_vec())
        .build_noncompliant()
        .generate(u64::try_from(at.0 / 1000 + shift_steps * 30).unwrap())
        .to_string()
}

const SECRET: &[u8] = b"authgate-test-secret";

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc6238_vectors(#[values(Backend::Sqlite, Backend::Postgres)] backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    // RFC 6238 Appendix B: the seeds are 20, 32 and 64 ASCII bytes.
    let seeds: [(&str, &[u8]); 3] = [
        ("SHA1", b"12345678901234567890"),
        ("SHA256", b"12345678901234567890123456789012"),
        (
            "SHA512",
            b"1234567890123456789012345678901234567890123456789012345678901234",
        ),
    ];
    let vectors: [(i64, [&str; 3]); 6] = [
        (59, ["94287082", "46119246", "90693936"]),
        (1111111109, ["07081804", "68084774", "25091201"]),
        (1111111111, ["14050471", "67062674", "99943326"]),
        (1234567890, ["89005924", "91819424", "93441116"]),
        (2000000000, ["69279037", "90698825", "38618901"]),
        (20000000000, ["65353130", "77737706", "47863826"]),
    ];
    for (i, (algorithm, seed)) in seeds.iter().enumerate() {
        for (time, codes) in vectors {
            let who = format!("rfc-{algorithm}-{time}");
            import(&mut a, &who, seed, algorithm, 8).await;
            server.clock.set(UnixMillis(time * 1000));
            let r = verify(&mut c, &who, codes[i]).await;
            assert_eq!(result(&r), TotpResult::Ok, "{algorithm} at {time}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oathtool_code_is_accepted_once_across_two_processes() {
    let keys = format!("[{{id=\"k1\", key=\"{TEST_KEY}\"}}]");
    let (_db, _dir, replicas) = two_replicas(&[("AUTHGATE_TOTP__KEYS", keys.as_str())]).await;
    let mut first = replicas[0].access().await;
    let mut second = replicas[1].access().await;

    let enrolled = enroll(&mut first, "olive", "").await;
    assert_eq!(
        (
            enrolled.algorithm.as_str(),
            enrolled.digits,
            enrolled.period_seconds
        ),
        ("SHA1", 6, 30)
    );
    assert!(
        enrolled
            .otpauth_uri
            .starts_with("otpauth://totp/authgate:olive?")
    );
    assert_eq!(&enrolled.qr_png[..4], b"\x89PNG");
    assert!(enrolled.secret_base32.len() >= 32, "at least 160 bits");

    let out = Command::new("oathtool")
        .args(["--totp", "-b", &enrolled.secret_base32])
        .output()
        .expect("oathtool must be installed (Debian: apt-get install oathtool)");
    assert!(out.status.success());
    let code = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let ok = verify(&mut first, "olive", &code).await;
    assert_eq!(result(&ok), TotpResult::Ok, "{ok:?}");
    let replay = verify(&mut second, "olive", &code).await;
    assert_eq!(
        result(&replay),
        TotpResult::Invalid,
        "a replay on another replica is refused"
    );
    let verdict = replay.verdict.unwrap();
    assert_eq!(
        verdict.reason, "invalid_code",
        "answered exactly as a wrong code"
    );
    assert_eq!(verdict.remaining_attempts, Some(4), "and counted as one");

    // The logs of both replicas name neither the user nor the code.
    let logs: Vec<String> = replicas.into_iter().flat_map(|r| r.terminate().1).collect();
    let text = logs.join("\n");
    assert!(text.contains("second factor accepted"), "{text}");
    assert!(!text.contains("olive") && !text.contains(&code), "{text}");
    assert!(!text.contains(&enrolled.secret_base32));
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_wrong_codes_block_until_the_block_ends(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    import(&mut a, "pat", SECRET, "", 0).await;
    let now = EPOCH;
    let wrong = if code(SECRET, now, 0) == "000000" {
        "111111"
    } else {
        "000000"
    };
    for remaining in (1..=4).rev() {
        let r = verify(&mut c, "pat", wrong).await;
        assert_eq!(result(&r), TotpResult::Invalid);
        assert_eq!(r.verdict.unwrap().remaining_attempts, Some(remaining));
    }
    let r = verify(&mut c, "pat", wrong).await;
    assert_eq!(result(&r), TotpResult::Blocked);
    let events = server
        .db
        .count(
            "SELECT COUNT(*) FROM security_event WHERE kind = 'totp_blocked' AND user_id = 'pat'",
        )
        .await;
    assert_eq!(events, 1, "the block is recorded for alerting");
    let v = check(&mut c, "admin", user("pat")).await;
    assert_eq!(decision(&v), Decision::Blocked);
    assert_eq!(v.retry_after_seconds, 600);
    // Even the right code is refused while blocked.
    let r = verify(&mut c, "pat", &code(SECRET, now, 0)).await;
    assert_eq!(result(&r), TotpResult::Blocked);
    let report = report(&mut a, user("pat")).await;
    assert_eq!(
        report.session.map(|s| s.state),
        Some(SessionState::Blocked as i32)
    );

    // The login form's counter is another one: the block does not touch it.
    assert_eq!(
        decision(&check(&mut c, "login", subject("pat", "192.0.2.8")).await),
        Decision::Allow
    );

    server.clock.advance(10 * MINUTE);
    let later = UnixMillis(EPOCH.0 + 600_000);
    let r = verify(&mut c, "pat", &code(SECRET, later, 0)).await;
    assert_eq!(result(&r), TotpResult::Ok);
    assert_eq!(
        decision(&check(&mut c, "admin", user("pat")).await),
        Decision::Allow
    );
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lifecycle(#[values(Backend::Sqlite, Backend::Postgres)] backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    let state =
        |r: proto::GetSubjectResponse| r.session.map(|s| SessionState::try_from(s.state).unwrap());

    // No secret yet: enroll.
    let v = check(&mut c, "admin", user("quinn")).await;
    assert_eq!(
        (decision(&v), v.reason.as_str()),
        (Decision::EnrollTotp, "totp_enrollment_required")
    );
    assert_eq!(
        state(report(&mut a, user("quinn")).await),
        Some(SessionState::Processing)
    );
    let enrolled = enroll(&mut c, "quinn", "quinn@example.org").await;
    let secret = totp_rs::Secret::try_from_base32(&enrolled.secret_base32).unwrap();
    let secret = secret.as_bytes().to_vec();
    // Pending until a code confirms it.
    assert_eq!(
        decision(&check(&mut c, "admin", user("quinn")).await),
        Decision::EnrollTotp
    );
    let found = report(&mut a, user("quinn")).await;
    assert!(!found.totp.unwrap().confirmed);

    let r = verify(&mut c, "quinn", &code(&secret, EPOCH, 0)).await;
    assert_eq!(result(&r), TotpResult::Ok);
    assert_eq!(
        r.session_expires_at.unwrap().seconds * 1000,
        EPOCH.0 + 600_000
    );
    let found = report(&mut a, user("quinn")).await;
    assert!(found.totp.clone().unwrap().confirmed);
    assert_eq!(state(found), Some(SessionState::Authenticated));
    assert_eq!(
        decision(&check(&mut c, "admin", user("quinn")).await),
        Decision::Allow
    );
    // Contexts without TOTP keep their own behaviour.
    assert_eq!(
        decision(&check(&mut c, "bot", user("quinn")).await),
        Decision::Allow
    );

    // Replacing a confirmed secret is fine from the authenticated session.
    let replace = proto::EnrollTotpRequest {
        context: "admin".into(),
        subject: user("quinn"),
        account_name: String::new(),
    };
    let again = c.enroll_totp(replace.clone()).await.unwrap().into_inner();
    let old = secret;
    let new = totp_rs::Secret::try_from_base32(&again.secret_base32)
        .unwrap()
        .as_bytes()
        .to_vec();

    let stats = stats(&mut a).await;
    assert_eq!(
        (stats.total, stats.authenticated, stats.processing),
        (1, 1, 0)
    );

    // Ten minutes after the login: expired, challenged again.
    server.clock.advance(10 * MINUTE);
    let v = check(&mut c, "admin", user("quinn")).await;
    assert_eq!(
        (decision(&v), v.reason.as_str()),
        (Decision::ChallengeTotp, "session_expired")
    );
    assert_eq!(
        state(report(&mut a, user("quinn")).await),
        Some(SessionState::Processing)
    );
    // Without a session, the confirmed secret cannot be replaced.
    let refused = c.enroll_totp(replace.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // The replacement was never confirmed, so the old secret still works:
    // an abandoned enrollment locks nobody out.
    let later = UnixMillis(EPOCH.0 + 600_000);
    assert_eq!(
        result(&verify(&mut c, "quinn", &code(&old, later, 0)).await),
        TotpResult::Ok
    );
    // The new secret's first code confirms it and retires the old one.
    assert_eq!(
        result(&verify(&mut c, "quinn", &code(&new, later, 1)).await),
        TotpResult::Ok
    );
    server.clock.advance(MINUTE);
    let minute_on = UnixMillis(later.0 + 60_000);
    assert_eq!(
        result(&verify(&mut c, "quinn", &code(&old, minute_on, 0)).await),
        TotpResult::Invalid
    );
    let revoked = a
        .revoke_session(proto::RevokeSessionRequest {
            actor_user_id: "admin".into(),
            scope: Some(proto::revoke_session_request::Scope::UserId("quinn".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    assert_eq!(
        decision(&check(&mut c, "admin", user("quinn")).await),
        Decision::ChallengeTotp
    );

    // A lost phone: the admin resets, the user enrolls from scratch.
    let reset = a
        .reset_totp(proto::ResetTotpRequest {
            actor_user_id: "admin".into(),
            user_id: "quinn".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reset.removed);
    assert_eq!(
        decision(&check(&mut c, "admin", user("quinn")).await),
        Decision::EnrollTotp
    );
    assert!(c.enroll_totp(replace).await.is_ok());
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_are_checked_strictly(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    import(&mut a, "rita", SECRET, "", 0).await;
    let right = code(SECRET, EPOCH, 0);
    for bad in [
        format!(" {right}"),
        format!("{right} "),
        right[..5].to_owned(),
        format!("{right}0"),
        "12a456".into(),
    ] {
        let err = c
            .verify_totp(proto::VerifyTotpRequest {
                context: "admin".into(),
                subject: user("rita"),
                code: bad.clone(),
                recovery_code: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("code"));
        assert!(
            !err.message().contains(&right),
            "the code never appears in errors"
        );
    }
    // Four steps ahead: the phone's clock is two minutes fast. Not counted.
    let skewed = verify(&mut c, "rita", &code(SECRET, EPOCH, 4)).await;
    assert_eq!(result(&skewed), TotpResult::ClockSkew);
    assert_eq!(skewed.clock_drift_seconds, Some(120));
    assert_eq!(skewed.verdict.unwrap().reason, "clock_skew");
    let found = report(&mut a, user("rita")).await;
    assert!(
        found.states.iter().all(|s| s.failures_total == 0),
        "nothing counted: {:?}",
        found.states
    );
    // One step behind is within the accepted window.
    assert_eq!(
        result(&verify(&mut c, "rita", &code(SECRET, EPOCH, -1)).await),
        TotpResult::Ok
    );
    // Unknown users are told to enroll, and nothing is counted.
    let none = verify(&mut c, "nobody", "123456").await;
    assert_eq!(result(&none), TotpResult::NotEnrolled);
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_secrets_are_not_readable(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    use sqlx::Connection;
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let enrolled = enroll(&mut c, "sam", "").await;
    let secret_b32 = enrolled.secret_base32.clone();
    let raw = totp_rs::Secret::try_from_base32(&secret_b32)
        .unwrap()
        .as_bytes()
        .to_vec();
    let url = server.db.url().to_owned();
    // Every column of the row, as text and as bytes.
    let (texts, blobs): (Vec<String>, Vec<Vec<u8>>) = if url.starts_with("postgres") {
        let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
        let row: (String, Vec<u8>, Vec<u8>) =
            sqlx::query_as("SELECT row_to_json(t)::text, nonce, ciphertext FROM totp_secret t WHERE user_id = 'sam'")
                .fetch_one(&mut db)
                .await
                .unwrap();
        (vec![row.0], vec![row.1, row.2])
    } else {
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let row: (String, String, Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT key_id, algorithm, nonce, ciphertext FROM totp_secret WHERE user_id = 'sam'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        (vec![row.0, row.1], vec![row.2, row.3])
    };
    assert!(!blobs[1].is_empty());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    for text in &texts {
        assert!(
            !text.contains(&secret_b32) && !text.contains(&b64),
            "{text}"
        );
    }
    for blob in &blobs {
        assert!(!blob.windows(raw.len()).any(|w| w == raw.as_slice()));
        assert!(
            !blob
                .windows(secret_b32.len())
                .any(|w| w == secret_b32.as_bytes())
        );
    }
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_expires_sessions(#[values(Backend::Sqlite, Backend::Postgres)] backend: Backend) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    import(&mut a, "tess", SECRET, "", 0).await;
    assert_eq!(
        result(&verify(&mut c, "tess", &code(SECRET, EPOCH, 0)).await),
        TotpResult::Ok
    );
    let (config, _) = config("", &server.db);
    let store = authgate::app::open_store(&config).await.unwrap();
    let purged = store
        .upkeep()
        .purge_expired(UnixMillis(EPOCH.0 + 11 * 60_000), RETENTION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(purged.sessions_expired, 1);
    let found = report(&mut a, user("tess")).await;
    assert_eq!(
        found.session.map(|s| s.state),
        Some(SessionState::Expired as i32)
    );
    let stats = stats(&mut a).await;
    assert_eq!((stats.total, stats.authenticated, stats.expired), (1, 0, 1));
    // The answer does not depend on whether the cleanup ran first, and the
    // expiry is recorded once.
    server.clock.advance(11 * MINUTE);
    let v = check(&mut c, "admin", user("tess")).await;
    assert_eq!(
        (decision(&v), v.reason.as_str()),
        (Decision::ChallengeTotp, "session_expired")
    );
    let recorded = server
        .db
        .count("SELECT COUNT(*) FROM security_event WHERE kind = 'session_expired'")
        .await;
    assert_eq!(recorded, 1);
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn some_users_need_a_second_factor_everywhere(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn_with(backend, "[totp]\nrequired_user_ids = [\"vip\"]").await;
    let mut c = server.access().await;
    assert_eq!(
        decision(&check(&mut c, "bot", user("vip")).await),
        Decision::EnrollTotp
    );
    assert_eq!(
        decision(&check(&mut c, "bot", user("someone")).await),
        Decision::Allow
    );
    let anonymous = c
        .check_access(proto::CheckAccessRequest {
            context: "admin".into(),
            subject: subject("", "192.0.2.1"),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::InvalidArgument);
    assert!(anonymous.message().contains("subject.user_id"));
    server.stop().await;
}
