//! The binary as an operator meets it: defaults, check-config, migrate,
//! SIGTERM.

use std::process::Command;

use authgate::grpc::proto::Decision;

use crate::helpers::*;

fn authgate(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.current_dir(cwd).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("authgate runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_arguments_serves_the_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(dir.path(), &[], &[]);
    assert_eq!(server.addr.to_string(), "127.0.0.1:50051");
    use std::os::unix::fs::PermissionsExt;
    for file in [
        "authgate.db",
        "authgate.db-wal",
        "authgate.db.totp-key",
        "authgate.db.password-key",
    ] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap_or_else(|e| panic!("{file} is created: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is for its owner only");
    }
    let mut c = server.access().await;
    let v = check(&mut c, "login", subject("erin", "192.0.2.7")).await;
    assert_eq!(decision(&v), Decision::Allow);
    let (status, log) = server.terminate();
    assert!(status.success(), "{status:?}\n{}", log.join("\n"));
    let log = log.join("\n");
    for setting in ["totp.keys", "passwords.keys"] {
        assert!(
            log.lines()
                .any(|l| l.contains("generated a key beside the database") && l.contains(setting)),
            "{log}"
        );
    }
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("authgate.toml"),
        format!(
            "[database]\nurl = \"postgres://app:hunter2@db.internal/authgate\"\n\
             [passwords]\nkeys = [{{ id = \"p1\", key = \"{TEST_KEY}\" }}]\n"
        ),
    )
    .unwrap();
    let out = authgate(
        dir.path(),
        &["check-config"],
        &[("AUTHGATE_CLEANUP__INTERVAL", "5m")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("postgres://app:REDACTED@db.internal/authgate"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    assert!(!text.contains(TEST_KEY), "the password key is redacted");
    assert!(text.contains("interval = \"5m\""), "{text}");
}

#[test]
fn check_config_since_tells_what_a_reload_would_change() {
    let dir = tempfile::tempdir().unwrap();
    let rules = |lock_after: u32, extra: &str| {
        format!(
            "[[contexts.api.rules]]\nname = \"per_user\"\nkey = \"user\"\nwindow = \"1h\"\n\
             lock_after = {lock_after}\nlockout = [\"1h\"]\n{extra}"
        )
    };
    std::fs::write(dir.path().join("running.toml"), rules(5, "")).unwrap();
    std::fs::write(
        dir.path().join("next.toml"),
        rules(3, "[metrics]\nlisten = \"127.0.0.1:9999\"\n[[contexts.hooks.rules]]\nname = \"r\"\nkey = \"ip\"\nwindow = \"1m\"\nlock_after = 1\nlockout = [\"1m\"]\n"),
    )
    .unwrap();
    let out = authgate(
        dir.path(),
        &[
            "--config",
            "next.toml",
            "check-config",
            "--since",
            "running.toml",
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "contexts.api.rules.per_user: lock_after changed; its counts are kept",
            "contexts.hooks: added",
            "metrics: changed, but read only at start: kept as running until a restart",
        ],
        "{text}"
    );
    let same = authgate(
        dir.path(),
        &[
            "--config",
            "running.toml",
            "check-config",
            "--since",
            "running.toml",
        ],
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&same.stdout),
        "a reload changes nothing\n"
    );
}

#[test]
fn one_version_everywhere_a_user_sees_one() {
    let version = env!("CARGO_PKG_VERSION");
    let dir = tempfile::tempdir().unwrap();
    let out = authgate(dir.path(), &["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("authgate {version}\n")
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |file: &str| std::fs::read_to_string(root.join(file)).unwrap();
    for (file, stated) in [
        (
            "Dockerfile",
            format!("org.opencontainers.image.version=\"{version}\""),
        ),
        (
            "clients/python/pyproject.toml",
            format!("version = \"{version}\""),
        ),
        (
            "clients/python/authgate_client/_version.py",
            format!("__version__ = \"{version}\""),
        ),
        (
            "clients/node/package.json",
            format!("\"version\": \"{version}\""),
        ),
    ] {
        assert!(read(file).contains(&stated), "{file} does not say {stated}");
    }
    assert!(
        read("CHANGELOG.md").contains("## [Unreleased]"),
        "CHANGELOG.md records what comes next"
    );
}

#[test]
fn invalid_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = authgate(
        dir.path(),
        &["serve"],
        &[("AUTHGATE_SERVER__LISTEN", "not-an-address")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("server.listen"), "{stderr}");
    let out = authgate(dir.path(), &["--config", "missing.toml", "serve"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[tokio::test]
async fn migrate_creates_the_schema_and_exits() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let out = authgate(
        dir.path(),
        &["migrate"],
        &[("AUTHGATE_DATABASE__URL", &url)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert!(tables.iter().any(|t| t == "key_state"), "{tables:?}");
}
