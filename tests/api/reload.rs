//! Live reload on a real process: SIGHUP swaps a new configuration's rules
//! in whole (calls in flight all answered, state kept), or refuses an
//! invalid one whole and keeps serving the old.

use std::time::Duration;

use authgate::grpc::proto::{self, Decision};
use tokio::task::JoinSet;

use crate::helpers::*;

fn rules(mode: &str) -> String {
    format!(
        r#"
[[contexts.api.rules]]
name = "per_user"
key = "user"
window = "1h"
lock_after = 3
lockout = ["1h"]
mode = "{mode}"
"#
    )
}

/// Waits (boundedly) until the server has counted `n` reloads of `result`:
/// the signal is handled asynchronously.
async fn reloads_reach(server: &ChildServer, result: &str, n: u32) -> String {
    let series = format!("authgate_config_reloads_total{{result=\"{result}\"}} {n}");
    for _ in 0..100 {
        let scrape = http_get(&server.metrics_url);
        if scrape.lines().any(|l| l == series) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never saw {series}");
}

fn in_force(scrape: &str) -> Vec<String> {
    scrape
        .lines()
        .filter(|l| l.starts_with("authgate_config_info{") && l.ends_with(" 1"))
        .map(str::to_owned)
        .collect()
}

#[rstest::rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_rules_in_whole_or_keeps_the_old(
    #[values(Backend::Sqlite, Backend::Postgres)] backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("authgate.toml");
    std::fs::write(&file, rules("shadow")).unwrap();
    let path = file.display().to_string();
    let server = ChildServer::spawn(
        dir.path(),
        &["serve"],
        &[
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_CONFIG", &path),
            ("AUTHGATE_DATABASE__URL", db.url()),
        ],
    );
    let mut access = server.access().await;
    for _ in 0..3 {
        fail(&mut access, "api", subject("alice", "")).await;
    }
    let shadowed = check(&mut access, "api", subject("alice", "")).await;
    assert_eq!(
        decision(&shadowed),
        Decision::Allow,
        "in shadow: {shadowed:?}"
    );
    let first = in_force(&http_get(&server.metrics_url));
    assert_eq!(first.len(), 1, "{first:?}");

    // Calls keep flowing while the configuration is swapped under them.
    let mut flowing = JoinSet::new();
    for _ in 0..4 {
        let mut c = server.access().await;
        flowing.spawn(async move {
            for _ in 0..50 {
                c.check_access(proto::CheckAccessRequest {
                    context: "api".into(),
                    subject: subject("bob", ""),
                })
                .await
                .expect("a call during the reload");
            }
        });
    }
    std::fs::write(&file, rules("enforce")).unwrap();
    server.hangup();
    let scrape = reloads_reach(&server, "ok", 1).await;
    while let Some(done) = flowing.join_next().await {
        done.expect("calls in flight all answered");
    }
    let enforced = check(&mut access, "api", subject("alice", "")).await;
    assert_eq!(
        decision(&enforced),
        Decision::Blocked,
        "enforcing from the counts gathered in shadow: {enforced:?}"
    );
    let second = in_force(&scrape);
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(first, second, "authgate_config_info names the new one");

    // An invalid edit is refused whole: the rules in force stay.
    std::fs::write(
        &file,
        rules("enforce").replace("lock_after = 3", "lock_after = \"x\""),
    )
    .unwrap();
    server.hangup();
    let scrape = reloads_reach(&server, "invalid", 1).await;
    assert_eq!(in_force(&scrape), second, "the old one is still in force");
    let kept = check(&mut access, "api", subject("alice", "")).await;
    assert_eq!(decision(&kept), Decision::Blocked, "{kept:?}");
    let (_, log) = server.terminate();
    assert!(
        log.iter()
            .any(|l| l.contains("reload refused") && l.contains("lock_after")),
        "the refusal names the key: {log:?}"
    );
}

/// A keys file entry for a new key of the check role, and the key.
fn check_key(name: &str) -> (String, String) {
    let (key, hash) = authgate::grpc::auth::generate_key();
    let entry = format!("[[keys]]\nname = \"{name}\"\nhash = \"{hash}\"\nroles = [\"check\"]\n");
    (entry, key.as_str().to_owned())
}

/// Points `link` at `target` in one rename, as the kubelet swaps `..data`.
fn swap_symlink(link: &std::path::Path, target: &str) {
    let staged = link.with_file_name("..data_tmp");
    std::os::unix::fs::symlink(target, &staged).unwrap();
    std::fs::rename(&staged, link).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mounted_configmap_and_keys_file_swapped_on_disk_are_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (alice_entry, alice) = check_key("alice-bot");
    let (bob_entry, bob) = check_key("bob-bot");
    // The kubelet's layout: the mounted names are symlinks through ..data
    // into a timestamped folder, replaced whole on an update.
    for (version, keys) in [
        ("v1", format!("{alice_entry}{bob_entry}")),
        ("v2", alice_entry),
    ] {
        let folder = dir.path().join(version);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("keys.toml"), keys).unwrap();
        std::fs::write(
            folder.join("authgate.toml"),
            rules(if version == "v1" { "shadow" } else { "enforce" }),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("v1", dir.path().join("..data")).unwrap();
    for name in ["authgate.toml", "keys.toml"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    let config = dir.path().join("authgate.toml").display().to_string();
    let keys = dir.path().join("keys.toml").display().to_string();
    let server = ChildServer::spawn(
        dir.path(),
        &["serve"],
        &[
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_CONFIG", &config),
            ("AUTHGATE_AUTH__KEYS_FILE", &keys),
        ],
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut as_bob = keyed_access(channel.clone(), &bob);
    let ask = |user: &str| proto::CheckAccessRequest {
        context: "api".into(),
        subject: subject(user, ""),
    };
    as_bob
        .check_access(ask("carol"))
        .await
        .expect("bob's key works");

    swap_symlink(&dir.path().join("..data"), "v2");
    reloads_reach(&server, "ok", 1).await;
    let refused = as_bob
        .check_access(ask("carol"))
        .await
        .expect_err("a key removed stops authenticating at once");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut as_alice = keyed_access(channel, &alice);
    for _ in 0..3 {
        as_alice
            .record_failure(proto::RecordFailureRequest {
                context: "api".into(),
                subject: subject("carol", ""),
                activity: String::new(),
            })
            .await
            .expect("alice's key still works");
    }
    let verdict = as_alice
        .check_access(ask("carol"))
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(
        decision(&verdict),
        Decision::Blocked,
        "the new rules are in force"
    );
}

/// The first TOTP code of `secret_base32` valid now.
fn current_code(secret_base32: &str) -> String {
    let secret = totp_rs::Secret::try_from_base32(secret_base32).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_secret(secret.as_bytes().to_vec())
        .build_noncompliant()
        .generate(now)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_totp_keys_and_secrets_sealed_before_still_open() {
    let dir = tempfile::tempdir().unwrap();
    for (name, byte) in [("a.key", b'a'), ("b.key", b'b')] {
        std::fs::write(dir.path().join(name), [byte; 32]).unwrap();
    }
    let file = dir.path().join("authgate.toml");
    let keys = |ids: &[&str], active: &str| {
        let list: Vec<String> = ids
            .iter()
            .map(|id| format!("{{ id = \"{id}\", file = \"{id}.key\" }}"))
            .collect();
        format!(
            "[totp]\nkeys = [{}]\nactive_key = \"{active}\"\n",
            list.join(", ")
        )
    };
    std::fs::write(&file, keys(&["a"], "a")).unwrap();
    let path = file.display().to_string();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let server = ChildServer::spawn(
        dir.path(),
        &["serve"],
        &[
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_CONFIG", &path),
            ("AUTHGATE_DATABASE__URL", &db),
        ],
    );
    let mut access = server.access().await;
    let enroll = |who: &'static str| proto::EnrollTotpRequest {
        context: "admin".into(),
        subject: subject(who, ""),
        account_name: who.into(),
    };
    let first = access
        .enroll_totp(enroll("ann"))
        .await
        .unwrap()
        .into_inner();

    std::fs::write(&file, keys(&["a", "b"], "b")).unwrap();
    server.hangup();
    reloads_reach(&server, "ok", 1).await;
    let second = access
        .enroll_totp(enroll("ben"))
        .await
        .unwrap()
        .into_inner();

    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let sealed: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, key_id FROM totp_secret ORDER BY user_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        sealed,
        [("ann".into(), "a".into()), ("ben".into(), "b".into())],
        "the new active key seals from the reload on"
    );
    for (who, enrolled) in [("ann", &first), ("ben", &second)] {
        let verified = access
            .verify_totp(proto::VerifyTotpRequest {
                context: "admin".into(),
                subject: subject(who, ""),
                code: current_code(&enrolled.secret_base32),
                recovery_code: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            verified.verdict.as_ref().map(decision),
            Some(Decision::Allow),
            "{who}: {verified:?}"
        );
    }
    let (_, log) = server.terminate();
    assert!(
        log.iter()
            .any(|l| l.contains("reload changes") && l.contains("totp.keys")),
        "the reload says what it changed: {log:?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("after a restart")),
        "keys need no restart: {log:?}"
    );
}
