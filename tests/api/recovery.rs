//! Recovery codes beside TOTP, through the real server on both stores,
//! across two replicas racing with one code, and kept nowhere in the clear.

use std::time::Duration;

use authgate::domain::UnixMillis;
use authgate::grpc::proto::{self, Decision, TotpResult};
use rstest::rstest;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;

type Access = proto::access_service_client::AccessServiceClient<Channel>;
type Admin = proto::admin_service_client::AdminServiceClient<Channel>;

/// The shipped context that requires a second factor.
const CONTEXT: &str = "admin";

/// The code an authenticator app shows at `at` (Unix seconds).
fn code_at(secret_base32: &str, at_secs: u64) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_base32).unwrap();
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_secret(secret.as_bytes().to_vec())
        .build_noncompliant()
        .generate(at_secs)
        .to_string()
}

async fn enroll(c: &mut Access, who: &str) -> String {
    c.enroll_totp(proto::EnrollTotpRequest {
        context: CONTEXT.into(),
        subject: subject(who, ""),
        account_name: String::new(),
    })
    .await
    .expect("EnrollTotp")
    .into_inner()
    .secret_base32
}

async fn verify(
    c: &mut Access,
    who: &str,
    code: &str,
    recovery_code: &str,
) -> Result<proto::VerifyTotpResponse, tonic::Status> {
    c.verify_totp(proto::VerifyTotpRequest {
        context: CONTEXT.into(),
        subject: subject(who, ""),
        code: code.into(),
        recovery_code: recovery_code.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn recover(c: &mut Access, who: &str, code: &str) -> proto::VerifyTotpResponse {
    verify(c, who, "", code).await.expect("VerifyTotp")
}

fn result(r: &proto::VerifyTotpResponse) -> TotpResult {
    TotpResult::try_from(r.result).unwrap()
}

async fn revoke(a: &mut Admin, who: &str) {
    a.revoke_session(proto::RevokeSessionRequest {
        actor_user_id: "admin".into(),
        scope: Some(proto::revoke_session_request::Scope::UserId(who.into())),
    })
    .await
    .expect("RevokeSession");
}

async fn left(a: &mut Admin, who: &str) -> u32 {
    report(a, subject(who, ""))
        .await
        .totp
        .map_or(0, |t| t.recovery_codes_remaining)
}

async fn regenerate_by_admin(a: &mut Admin, who: &str) -> Vec<String> {
    a.regenerate_recovery_codes(proto::AdminServiceRegenerateRecoveryCodesRequest {
        actor_user_id: "admin".into(),
        user_id: who.into(),
    })
    .await
    .expect("RegenerateRecoveryCodes")
    .into_inner()
    .recovery_codes
}

async fn next_alert(alerts: &mut tonic::Streaming<proto::SecurityAlert>) -> proto::SecurityAlert {
    tokio::time::timeout(Duration::from_secs(10), alerts.message())
        .await
        .expect("an alert in time")
        .expect("stream open")
        .expect("an alert")
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_codes_come_with_the_enrollment_and_each_signs_in_once(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    let secs = |at: UnixMillis| u64::try_from(at.0 / 1000).unwrap();

    let secret = enroll(&mut c, "rita").await;
    let confirmed = verify(&mut c, "rita", &code_at(&secret, secs(EPOCH)), "")
        .await
        .unwrap();
    assert_eq!(result(&confirmed), TotpResult::Ok);
    let codes = confirmed.recovery_codes.clone();
    assert_eq!(codes.len(), 10, "{confirmed:?}");
    let distinct: std::collections::BTreeSet<_> = codes.iter().collect();
    assert_eq!(distinct.len(), 10);
    for code in &codes {
        let groups: Vec<&str> = code.split('-').collect();
        assert_eq!(groups.len(), 3, "{code}");
        assert!(groups.iter().all(|g| g.len() == 4), "{code}");
    }
    assert_eq!(left(&mut a, "rita").await, 10);
    let shown = succeeded(admin_cli(&server, &["subject", "--user", "rita"]));
    assert!(
        shown.contains("confirmed, 10 recovery codes left"),
        "{shown}"
    );
    assert!(
        codes.iter().all(|c| !shown.contains(c.as_str())),
        "never the codes"
    );
    // Only the confirming code issues them.
    server.clock.advance(Duration::from_secs(30));
    let again = verify(&mut c, "rita", &code_at(&secret, secs(EPOCH) + 30), "")
        .await
        .unwrap();
    assert_eq!(result(&again), TotpResult::Ok);
    assert!(again.recovery_codes.is_empty());

    // The phone is lost: a recovery code signs rita in, however typed.
    revoke(&mut a, "rita").await;
    assert_eq!(
        decision(&check(&mut c, CONTEXT, subject("rita", "")).await),
        Decision::ChallengeTotp
    );
    let mut alerts = watch(&mut a).await;
    let typed = format!("  {}  ", codes[0].replace('-', "").to_lowercase());
    let used = recover(&mut c, "rita", &typed).await;
    assert_eq!(result(&used), TotpResult::Ok, "{used:?}");
    assert_eq!(used.recovery_codes_remaining, Some(9));
    assert_eq!(
        decision(&check(&mut c, CONTEXT, subject("rita", "")).await),
        Decision::Allow
    );
    let alert = next_alert(&mut alerts).await;
    assert_eq!(
        (alert.kind.as_str(), alert.detail.as_str()),
        ("recovery_code_used", "remaining=9")
    );

    // Used up: refused, and counted like a wrong code.
    let reused = recover(&mut c, "rita", &codes[0]).await;
    assert_eq!(result(&reused), TotpResult::Invalid, "{reused:?}");
    let verdict = reused.verdict.unwrap();
    assert_eq!(decision(&verdict), Decision::ChallengeTotp);
    assert_eq!(verdict.remaining_attempts, Some(4));

    // Malformed is bad input and counts nothing.
    for bad in [
        "hello",
        "7KQ2-M9XD-4HT",
        "0000-0000-0000",
        "7KQ2-M9XD-4HTP-2",
    ] {
        let err = verify(&mut c, "rita", "", bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(
            err.message().starts_with("recovery_code"),
            "{}",
            err.message()
        );
    }
    let both = verify(&mut c, "rita", "123456", &codes[1])
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    assert!(
        both.message().starts_with("recovery_code"),
        "{}",
        both.message()
    );

    // Wrong codes reach the TOTP block: then even a good one is refused,
    // and not used up.
    for _ in 0..4 {
        recover(&mut c, "rita", "2222-3333-4444").await;
    }
    let blocked = recover(&mut c, "rita", &codes[1]).await;
    assert_eq!(result(&blocked), TotpResult::Blocked, "{blocked:?}");
    assert_eq!(left(&mut a, "rita").await, 9);
    server.clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(
        result(&recover(&mut c, "rita", &codes[1]).await),
        TotpResult::Ok
    );
    assert_eq!(left(&mut a, "rita").await, 8);

    // Regenerating from the session invalidates every earlier code.
    let fresh = c
        .regenerate_recovery_codes(proto::RegenerateRecoveryCodesRequest {
            context: CONTEXT.into(),
            subject: subject("rita", ""),
        })
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(fresh.len(), 10);
    revoke(&mut a, "rita").await;
    assert_eq!(
        result(&recover(&mut c, "rita", &codes[2]).await),
        TotpResult::Invalid
    );
    let denied = c
        .regenerate_recovery_codes(proto::RegenerateRecoveryCodesRequest {
            context: CONTEXT.into(),
            subject: subject("rita", ""),
        })
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::FailedPrecondition,
        "no session, no new codes"
    );
    // An admin's regeneration needs no session; the last code draws its own alert.
    let by_admin = regenerate_by_admin(&mut a, "rita").await;
    assert_eq!(
        result(&recover(&mut c, "rita", &fresh[0]).await),
        TotpResult::Invalid
    );
    let mut alerts = watch(&mut a).await;
    for (i, code) in by_admin.iter().enumerate() {
        let r = recover(&mut c, "rita", code).await;
        assert_eq!(r.recovery_codes_remaining, Some(9 - i as u32), "{r:?}");
    }
    // One recovery_code_used alert (the rest of an hour's are suppressed,
    // as every kind's are), then the last code's own.
    let first = next_alert(&mut alerts).await;
    assert_eq!(
        (first.kind.as_str(), first.detail.as_str()),
        ("recovery_code_used", "remaining=9")
    );
    let last = next_alert(&mut alerts).await;
    assert_eq!(
        (last.kind.as_str(), last.detail.as_str()),
        ("recovery_codes_exhausted", "remaining=0")
    );
    let issued = audit_events(&mut a, "recovery_codes_issued").await;
    assert_eq!(
        issued.len(),
        3,
        "confirmation, the user's and the admin's: {issued:?}"
    );
    assert_eq!(issued[0].actor, "admin");

    // ResetTotp removes them with the secret.
    regenerate_by_admin(&mut a, "rita").await;
    assert_eq!(left(&mut a, "rita").await, 10);
    a.reset_totp(proto::ResetTotpRequest {
        actor_user_id: "admin".into(),
        user_id: "rita".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        server.db.count("SELECT COUNT(*) FROM recovery_code").await,
        0
    );
    server.stop().await;
}

/// The code an authenticator app shows now, by the wall clock a child
/// process reads.
fn code_now(secret_base32: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    code_at(secret_base32, now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_with_one_recovery_code_sign_in_once() {
    let (_db, _dir, [a, b]) = two_replicas(&[("AUTHGATE_TOTP__KEYS", PASSWORD_KEYS_ENV)]).await;
    let mut on_a = a.access().await;
    let secret = enroll(&mut on_a, "sam").await;
    let codes = verify(&mut on_a, "sam", &code_now(&secret), "")
        .await
        .unwrap()
        .recovery_codes;
    assert_eq!(codes.len(), 10);
    for code in &codes[..5] {
        let (mut first, mut second) = (a.access().await, b.access().await);
        let (x, y) = tokio::join!(
            recover(&mut first, "sam", code),
            recover(&mut second, "sam", code)
        );
        let won = [&x, &y]
            .iter()
            .filter(|r| result(r) == TotpResult::Ok)
            .count();
        assert_eq!(won, 1, "exactly one replica takes {code}: {x:?} {y:?}");
    }
    assert_eq!(left(&mut b.admin().await, "sam").await, 5);
}

/// Every form a code could be kept in.
fn forms(code: &str) -> [String; 3] {
    [
        code.to_owned(),
        code.replace('-', ""),
        code.replace('-', "").to_lowercase(),
    ]
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_codes_are_kept_nowhere_in_the_clear(
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
            ("AUTHGATE_TOTP__KEYS", PASSWORD_KEYS_ENV),
            ("AUTHGATE_ACCESS__ADMIN_USER_IDS", "[\"admin\"]"),
        ],
    );
    let mut access = child.access().await;
    let secret = enroll(&mut access, "tess").await;
    let codes = verify(&mut access, "tess", &code_now(&secret), "")
        .await
        .unwrap()
        .recovery_codes;
    recover(&mut access, "tess", &codes[0]).await;
    recover(&mut access, "tess", "2222-3333-4444").await;
    let metrics = http_get(&child.metrics_url);
    let (_, logs) = child.terminate();
    let disk = db.everything_on_disk();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let keys = authgate::crypto::SecretKeys::new(
        vec![(
            "test".into(),
            authgate::crypto::parse_key("test", TEST_KEY.as_bytes()).unwrap(),
        )],
        "test",
    )
    .unwrap();
    let stored = keys.hash_code(b"tess", &codes[1].replace('-', ""));
    assert!(
        disk.iter().any(|f| contains(f, &stored.hmac)),
        "the HMAC is what is stored"
    );
    for code in codes.iter().chain(["2222-3333-4444".to_owned()].iter()) {
        for form in forms(code) {
            for (i, file) in disk.iter().enumerate() {
                assert!(!contains(file, form.as_bytes()), "file {i} holds {form}");
            }
            assert!(!metrics.contains(&form), "/metrics holds {form}");
            for line in &logs {
                assert!(!line.contains(&form), "log line {line}");
            }
        }
    }
    assert!(
        logs.iter().any(|l| l.contains("recovery code used")),
        "its use is logged, without the code"
    );
}
