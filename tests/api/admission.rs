//! Admit: the anti-spam admission of bot updates, through the real server,
//! on both stores; admins' view and hands on it; two replicas sharing one
//! user's burst.

use std::time::Duration;

use authgate::grpc::proto::admin_unlock_request::Scope;
use authgate::grpc::proto::{self, Decision, SpamCause};
use rstest::rstest;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;
use authgate::store::Upkeep;

type Access = proto::access_service_client::AccessServiceClient<Channel>;
type AdminClient = proto::admin_service_client::AdminServiceClient<Channel>;

fn update(user: &str, kind: &str, fingerprint: &[u8]) -> proto::AdmitRequest {
    proto::AdmitRequest {
        context: "bot".into(),
        subject: subject(user, ""),
        kind: kind.into(),
        fingerprint: fingerprint.to_vec(),
    }
}

async fn admit(c: &mut Access, user: &str, kind: &str, fingerprint: &[u8]) -> proto::AdmitResponse {
    c.admit(update(user, kind, fingerprint))
        .await
        .expect("Admit")
        .into_inner()
}

/// `n` updates of `kind`, each with its own fingerprint; the last answer.
async fn burst(c: &mut Access, user: &str, kind: &str, n: usize) -> proto::AdmitResponse {
    let mut last = None;
    for i in 0..n {
        last = Some(admit(c, user, kind, format!("{kind}-{i}").as_bytes()).await);
    }
    last.expect("at least one update")
}

fn reason(r: &proto::AdmitResponse) -> (Decision, &str) {
    let v = r.verdict.as_ref().expect("verdict");
    (decision(v), v.reason.as_str())
}

async fn admission_of(a: &mut AdminClient, user: &str) -> Vec<proto::AdmissionState> {
    report(a, subject(user, "")).await.admission
}

async fn unlock(a: &mut AdminClient, scope: Scope) -> u64 {
    a.admin_unlock(proto::AdminUnlockRequest {
        actor_user_id: "admin".into(),
        scope: Some(scope),
    })
    .await
    .expect("AdminUnlock")
    .into_inner()
    .unlocked
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_warned_then_blocked_and_the_block_ends(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let eighth = burst(&mut c, "flood", "text", 8).await;
    assert!(eighth.admitted);
    assert_eq!(
        (eighth.limit, eighth.used, eighth.window_seconds),
        (Some(8), 8, 10)
    );
    assert_eq!(reason(&eighth), (Decision::Allow, "ok"));

    let ninth = admit(&mut c, "flood", "text", b"ninth").await;
    assert!(!ninth.admitted);
    assert!(ninth.warning);
    assert_eq!(ninth.warning_cause(), SpamCause::RateLimit);
    assert_eq!((ninth.warnings, ninth.warning_limit), (1, 3));
    assert_eq!(reason(&ninth), (Decision::Blocked, "rate_limited"));
    assert!((ninth.reputation - 0.9).abs() < 1e-9);
    // Room again when the first text leaves the 10 s window.
    assert_eq!(ninth.verdict.as_ref().unwrap().retry_after_seconds, 10);

    admit(&mut c, "flood", "text", b"tenth").await;
    let third = admit(&mut c, "flood", "text", b"eleventh").await;
    assert!(third.block_started);
    assert_eq!(third.block_number, 1);
    assert_eq!(third.block_cause(), SpamCause::RateLimit);
    assert_eq!(reason(&third), (Decision::Blocked, "spam_blocked"));
    // 120 s × 2^(3 ÷ 3).
    assert_eq!(third.verdict.as_ref().unwrap().retry_after_seconds, 240);

    let during = admit(&mut c, "flood", "command", b"/start").await;
    assert!(!during.admitted && !during.block_started);
    assert_eq!(during.block_number, 1);

    server.clock.advance(Duration::from_secs(240));
    let after = admit(&mut c, "flood", "text", b"back").await;
    assert!(after.admitted);
    assert_eq!(after.warnings, 2, "a block's end takes one warning away");

    let mut a = server.admin().await;
    let state = &admission_of(&mut a, "flood").await[0];
    assert_eq!(
        (
            state.updates_total,
            state.blocks_total,
            state.warnings_total,
            state.refused_total
        ),
        (9, 1, 3, 3 + 1)
    );
    let blocks = server
        .db
        .count("SELECT COUNT(*) FROM security_event WHERE kind = 'admission_blocked'")
        .await;
    assert_eq!(blocks, 1);
    server.stop().await;
}

/// The bot context's failure rules judge Admit too: the most severe verdict
/// wins, and a lockout refuses updates admission alone would let in.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_rules_judge_beside_admission(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let strike = || proto::RecordFailureRequest {
        context: "bot".into(),
        subject: subject("striker", ""),
        activity: String::new(),
    };
    for _ in 0..3 {
        c.record_failure(strike()).await.expect("RecordFailure");
    }
    let challenged = admit(&mut c, "striker", "text", b"one").await;
    assert!(challenged.admitted, "a captcha is not a refusal");
    assert_eq!(
        reason(&challenged),
        (Decision::ChallengeCaptcha, "captcha_required")
    );

    for _ in 0..2 {
        c.record_failure(strike()).await.expect("RecordFailure");
    }
    let locked = admit(&mut c, "striker", "text", b"two").await;
    assert!(!locked.admitted);
    assert_eq!(reason(&locked), (Decision::Blocked, "locked"));
    assert_eq!(locked.verdict.as_ref().unwrap().rule, "user");
    assert_eq!(locked.block_number, 0, "no admission block");

    server.clock.advance(Duration::from_secs(61));
    let back = admit(&mut c, "striker", "text", b"three").await;
    assert!(back.admitted);
    assert_ne!(back.verdict.as_ref().unwrap().decision(), Decision::Blocked);
    server.stop().await;
}

/// A photo's caption is its text: the reference middleware compares `text
/// or caption`, and the clients fingerprint a media update's caption.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_identical_texts_or_captions_pass_and_the_sixth_blocks(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
    #[values("text", "media")] kind: &str,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut alerts = watch(&mut server.admin().await).await;
    for _ in 0..5 {
        assert!(admit(&mut c, "copypaste", kind, b"buy now").await.admitted);
    }
    let sixth = admit(&mut c, "copypaste", kind, b"buy now").await;
    assert!(!sixth.admitted && sixth.block_started);
    assert_eq!(sixth.block_cause(), SpamCause::IdenticalMessages);
    assert_eq!(sixth.warning_cause(), SpamCause::IdenticalMessages);
    assert_eq!(reason(&sixth), (Decision::Blocked, "spam_blocked"));
    let alert = tokio::time::timeout(Duration::from_secs(10), alerts.next())
        .await
        .expect("an alert")
        .unwrap()
        .unwrap();
    assert_eq!(alert.kind, "admission_blocked");
    assert_eq!(alert.key.unwrap().user_id, "copypaste");
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_updates_name_the_field_and_record_nothing(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let cases = [
        (update("u", "sticker_pack", b""), "kind"),
        (update("u", "text", &[7; 65]), "fingerprint"),
        (update("", "text", b""), "subject"),
        (
            proto::AdmitRequest {
                subject: subject("", "192.0.2.1"),
                ..update("u", "text", b"")
            },
            "subject.user_id",
        ),
        (
            proto::AdmitRequest {
                context: "login".into(),
                ..update("u", "text", b"")
            },
            "context",
        ),
    ];
    for (request, field) in cases {
        let status = c.admit(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "{field}: {status:?}"
        );
    }
    let stored = server.db.count("SELECT COUNT(*) FROM admission").await;
    assert_eq!(stored, 0);
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_unblock_reset_and_rank_offenders(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    // The admin is exempt: admitted, not counted.
    let exempt = burst(&mut c, "admin", "text", 20).await;
    assert!(exempt.admitted && exempt.exempt);
    assert!(admission_of(&mut a, "admin").await.is_empty());

    for user in ["spammer", "pest"] {
        burst(&mut c, user, "callback", 13).await;
    }
    server.clock.advance(Duration::from_secs(600));
    burst(&mut c, "spammer", "callback", 14).await;
    let spammer = &admission_of(&mut a, "spammer").await[0];
    assert_eq!(spammer.blocks_total, 2);
    assert!(spammer.blocked_until.is_some());
    assert_eq!(spammer.block_cause(), SpamCause::RateLimit);

    let offenders = a
        .list_offenders(proto::ListOffendersRequest {
            actor_user_id: "admin".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offenders.offenders[0].user_id, "spammer");
    let rest = a
        .list_offenders(proto::ListOffendersRequest {
            actor_user_id: "admin".into(),
            page_size: 1,
            page_token: offenders.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.offenders[0].user_id, "pest");
    assert!(rest.next_page_token.is_empty());

    let stats = a
        .get_stats(proto::GetStatsRequest {
            actor_user_id: "admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.admission_users, 2);
    assert_eq!(stats.admission_blocks_active, 1);
    assert!(stats.admission_warnings >= 6 && stats.admission_refused >= 6);

    // Resetting warnings keeps the block; unlocking lifts it.
    let reset = a
        .reset_warnings(proto::ResetWarningsRequest {
            actor_user_id: "admin".into(),
            context: "bot".into(),
            user_id: "spammer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.reset, 1);
    let spammer = &admission_of(&mut a, "spammer").await[0];
    assert_eq!(spammer.warnings, 0);
    assert!(spammer.blocked_until.is_some());
    let still = admit(&mut c, "spammer", "text", b"hello?").await;
    assert!(!still.admitted);

    let lifted = unlock(
        &mut a,
        Scope::Subject(proto::Subject {
            user_id: "spammer".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(lifted, 1);
    assert!(admit(&mut c, "spammer", "text", b"hello!").await.admitted);
    server.stop().await;
}

/// The first text over the user's limit (reputation applied).
async fn first_refused_text(c: &mut Access, user: &str) -> proto::AdmitResponse {
    let mut i = 0;
    loop {
        let r = admit(c, user, "text", format!("again-{i}").as_bytes()).await;
        if !r.admitted {
            return r;
        }
        i += 1;
    }
}

/// An admin's unlock forgets a user's admission warnings whether or not a
/// block is in force, and counts only the blocks it lifted.
#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_forgets_warnings_when_no_block_is_in_force(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    let mut a = server.admin().await;
    // Three warnings and a 240 s block that runs out; one warning, no block.
    assert!(burst(&mut c, "served", "text", 11).await.block_started);
    assert!(!burst(&mut c, "warned", "text", 9).await.admitted);
    server.clock.advance(Duration::from_secs(240));
    assert_eq!(admission_of(&mut a, "served").await[0].warnings, 2);
    assert_eq!(admission_of(&mut a, "warned").await[0].warnings, 1);

    let served = proto::Subject {
        user_id: "served".into(),
        ..Default::default()
    };
    let warned = proto::KeyRef {
        context: "bot".into(),
        key: Some(proto::Key {
            kind: proto::KeyKind::User.into(),
            user_id: "warned".into(),
            ..Default::default()
        }),
    };
    assert_eq!(
        unlock(&mut a, Scope::Subject(served)).await,
        0,
        "no block in force"
    );
    assert_eq!(
        unlock(&mut a, Scope::Key(warned)).await,
        0,
        "no block in force"
    );
    for user in ["served", "warned"] {
        assert_eq!(admission_of(&mut a, user).await[0].warnings, 0, "{user}");
        // Forgotten, so the next update over the limit is a first warning
        // again, not the third that blocks.
        let refused = first_refused_text(&mut c, user).await;
        assert_eq!(
            (refused.warnings, refused.block_started),
            (1, false),
            "{user}"
        );
    }
    server.stop().await;
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_users_are_forgotten_after_a_day(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let server = TestServer::spawn(backend).await;
    let mut c = server.access().await;
    burst(&mut c, "quiet", "text", 2).await;
    server.clock.advance(Duration::from_secs(23 * 3600));
    burst(&mut c, "recent", "text", 2).await;
    let (config, _) = config("", &server.db);
    let store = authgate::app::open_store(&config).await.unwrap();
    let day = authgate::domain::UnixMillis(EPOCH.0 + 24 * 3600 * 1000);
    let purged = store
        .upkeep()
        .purge_expired(day, RETENTION)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(purged.admissions, 1);
    let mut a = server.admin().await;
    assert!(admission_of(&mut a, "quiet").await.is_empty());
    assert_eq!(admission_of(&mut a, "recent").await.len(), 1);
    server.stop().await;
}

/// One user's burst split across two processes on one Postgres: counted,
/// warned and blocked exactly as one process would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_two_replicas_counts_every_update_once() {
    let (_db, _dir, replicas) = two_replicas(&[]).await;
    let clients = [replicas[0].access().await, replicas[1].access().await];
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let mut c = clients[i % 2].clone();
            tokio::spawn(async move {
                admit(&mut c, "burster", "text", format!("t{i}").as_bytes()).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    assert_eq!(answers.iter().filter(|a| a.admitted).count(), 8);
    assert_eq!(answers.iter().filter(|a| a.warning).count(), 3);
    assert_eq!(answers.iter().filter(|a| a.block_started).count(), 1);
    let state = &admission_of(&mut replicas[0].admin().await, "burster").await[0];
    assert_eq!(
        (
            state.updates_total,
            state.warnings_total,
            state.blocks_total,
            state.refused_total
        ),
        (8, 3, 1, 22)
    );
}
