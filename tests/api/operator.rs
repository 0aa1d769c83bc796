//! The operator's tools: `authgate keygen` for credentials, the refusal to
//! expose an unauthenticated service, and `authgate admin` at 3 a.m.

use std::path::Path;
use std::process::{Command, Output};

use authgate::grpc::proto;

use crate::helpers::*;

fn authgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.args(args).env_remove("AUTHGATE_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("authgate runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `authgate keygen` and appends its entry to the keys file; returns
/// the key.
fn keygen(keys_file: &Path, name: &str, roles: &str) -> String {
    let out = authgate(&["keygen", "--name", name, "--roles", roles], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# key: "))
        .expect("the key line")
        .to_owned();
    let mut all = std::fs::read_to_string(keys_file).unwrap_or_default();
    all.push_str(&stdout);
    std::fs::write(keys_file, all).unwrap();
    key
}

#[test]
fn an_exposed_address_needs_keys_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/a.db", dir.path().display());
    let exposed = [
        ("AUTHGATE_SERVER__LISTEN", "0.0.0.0:50051"),
        ("AUTHGATE_DATABASE__URL", db.as_str()),
    ];
    let refused = authgate(&["check-config"], &exposed);
    assert!(!refused.status.success());
    let why = text(&refused.stderr);
    assert!(
        why.contains("auth.keys") && why.contains("allow_anonymous"),
        "{why}"
    );

    let mut opted_out = exposed.to_vec();
    opted_out.push(("AUTHGATE_AUTH__ALLOW_ANONYMOUS", "true"));
    let out = authgate(&["check-config"], &opted_out);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let keys = dir.path().join("keys.toml");
    keygen(&keys, "bot", "check");
    let mut keyed = exposed.to_vec();
    let keys_path = keys.display().to_string();
    keyed.push(("AUTHGATE_AUTH__KEYS_FILE", keys_path.as_str()));
    let out = authgate(&["check-config"], &keyed);
    assert!(out.status.success(), "{}", text(&out.stderr));

    std::fs::write(
        &keys,
        "[[keys]]\nname = \"x\"\nhash = \"sha256:beef\"\nroles = [\"check\"]\n",
    )
    .unwrap();
    let bad = authgate(&["check-config"], &keyed);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("keys[0].hash"),
        "{}",
        text(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_lists_unlocks_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let admin_key = keygen(&keys, "ops-laptop", "admin");
    let bot_key = keygen(&keys, "chat-bot", "check");
    let keys_path = keys.display().to_string();
    let server = ChildServer::spawn(
        dir.path(),
        &[],
        &[
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_AUTH__KEYS_FILE", &keys_path),
            ("AUTHGATE_ACCESS__ADMIN_USER_IDS", "[\"admin\"]"),
        ],
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bot = keyed_access(channel, &bot_key);
    for _ in 0..5 {
        bot.record_failure(proto::RecordFailureRequest {
            context: "login".into(),
            subject: subject("frank", "192.0.2.50"),
            activity: String::new(),
        })
        .await
        .unwrap();
    }

    let addr = format!("http://{}", server.addr);
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--addr", &addr, "--actor", "admin"];
        all.extend_from_slice(args);
        authgate(&all, &[("AUTHGATE_API_KEY", &admin_key)])
    };
    let json = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("--json prints JSON")
    };

    let locked = json(admin(&["list-locked", "--json"]));
    assert_eq!(locked.as_array().map(Vec::len), Some(1), "{locked}");
    assert_eq!(locked[0]["rule"], "user_ip");
    assert_eq!(locked[0]["key"], "user=frank ip=192.0.2.50");

    let table = admin(&["subject", "--user", "frank"]);
    let table = text(&table.stdout);
    assert!(table.starts_with("CONTEXT"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("login") && l.contains("user_ip")),
        "{table}"
    );

    let unlocked = admin(&["unlock", "--user", "frank"]);
    assert_eq!(text(&unlocked.stdout), "UNLOCKED\n1\n");
    let stats = json(admin(&["stats", "--json"]));
    assert_eq!(stats[0]["locks_temporary"], 0);

    let events = json(admin(&["events", "--kind", "unlocked", "--json"]));
    assert_eq!(events[0]["caller"], "ops-laptop");
    assert_eq!(events[0]["actor"], "admin");

    // Wrong credentials say so, plainly, and exit non-zero.
    let mut all = vec!["admin", "--addr", &addr, "--actor", "admin", "stats"];
    let denied = authgate(&all, &[("AUTHGATE_API_KEY", &bot_key)]);
    assert!(!denied.status.success());
    assert!(
        text(&denied.stderr).contains("PermissionDenied"),
        "{}",
        text(&denied.stderr)
    );
    all.truncate(5);
    all.extend(["--key", "ag_nope", "stats"]);
    let unknown = authgate(&all, &[]);
    assert!(
        text(&unknown.stderr).contains("Unauthenticated"),
        "{}",
        text(&unknown.stderr)
    );
    assert!(
        !text(&unknown.stderr).contains("ag_nope"),
        "keys never echo"
    );

    let (status, logs) = server.terminate();
    assert!(status.success());
    let logs = logs.join("\n");
    assert!(
        !logs.contains(&admin_key) && !logs.contains(&bot_key),
        "{logs}"
    );
}
