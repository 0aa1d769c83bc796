//! The operator's tools: `authgate keygen` for credentials, the refusal to
//! expose an unauthenticated service, and `authgate admin` at 3 a.m.

use std::path::Path;
use std::process::{Command, Output};

use authgate::grpc::proto;

use crate::helpers::*;

fn authgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    authgate_fed(args, env, "")
}

/// `authgate` with `stdin` as its standard input.
fn authgate_fed(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
    cmd.args(args)
        .env_remove("AUTHGATE_API_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("authgate runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("authgate runs")
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
    let key = text(&out.stderr)
        .lines()
        .find(|l| l.starts_with("ag_"))
        .expect("the key, on stderr")
        .to_owned();
    assert!(
        !stdout.contains(&key),
        "`keygen >> keys.toml` must not store the key itself"
    );
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

/// A server in `dir` with two keys, an admin's and a bot's, and the bot's
/// client.
async fn keyed_server(
    dir: &Path,
) -> (
    ChildServer,
    String,
    String,
    proto::access_service_client::AccessServiceClient<Keyed>,
) {
    let keys = dir.join("keys.toml");
    let admin_key = keygen(&keys, "ops-laptop", "admin");
    let bot_key = keygen(&keys, "chat-bot", "check");
    let keys_path = keys.display().to_string();
    let server = ChildServer::spawn(
        dir,
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
    let bot = keyed_access(channel, &bot_key);
    (server, admin_key, bot_key, bot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_lists_unlocks_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin_key, bot_key, mut bot) = keyed_server(dir.path()).await;
    lock_in_login(&mut bot, "frank", "192.0.2.50").await;

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

    // The alert runbooks' commands work as written, once the placeholders
    // are filled in.
    lock_in_login(&mut bot, "gina", "192.0.2.51").await;
    let runbook = runbook_commands();
    assert!(runbook.len() >= 4, "{runbook:?}");
    let host = server.addr.to_string();
    let mut gina_locked = true;
    for command in &runbook {
        let filled = command
            .replace("<host>:50051", &host)
            .replace("<admin-key>", &admin_key)
            .replace("<admin>", "admin")
            .replace("<user>", "gina");
        let args: Vec<&str> = filled.split_whitespace().skip(1).collect();
        // A password the runbook's reader types: none that is locked.
        let by_password = command.contains("--password-stdin");
        let out = authgate_fed(&args, &[], "not-a-sprayed-one\n");
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        let listed = text(&out.stdout).contains("192.0.2.51");
        if command.contains("list-locked") {
            assert_eq!(listed, gina_locked, "{command}");
        }
        if by_password {
            assert_eq!(text(&out.stdout), "UNLOCKED\n0\n", "{command}");
        } else if command.contains("unlock") {
            assert_eq!(
                text(&out.stdout),
                if gina_locked {
                    "UNLOCKED\n1\n"
                } else {
                    "UNLOCKED\n0\n"
                }
            );
            gina_locked = false;
        }
    }

    // A bot's flood, as operators see and handle it.
    for i in 0..11 {
        bot.admit(proto::AdmitRequest {
            context: "bot".into(),
            subject: subject("floody", ""),
            kind: "text".into(),
            fingerprint: format!("m{i}").into_bytes(),
        })
        .await
        .unwrap();
    }
    let offenders = json(admin(&["offenders", "--json"]));
    assert_eq!(offenders[0]["user"], "floody", "{offenders}");
    assert_eq!(offenders[0]["blocks"], 1);
    assert_eq!(offenders[0]["cause"], "rate_limit");
    let state = json(admin(&["admission", "--user", "floody", "--json"]));
    assert_eq!(state[0]["warnings"], 3, "{state}");
    let reset = admin(&["reset-warnings", "--user", "floody", "--context", "bot"]);
    assert_eq!(text(&reset.stdout), "RESET\n1\n");
    let stats = json(admin(&["stats", "--json"]));
    assert_eq!(stats[0]["admission_blocked"], 1, "{stats}");

    // host:port needs no scheme; a failure is told once.
    let bare = server.addr.to_string();
    let out = authgate(
        &[
            "admin", "--addr", &bare, "--actor", "admin", "stats", "--json",
        ],
        &[("AUTHGATE_API_KEY", &admin_key)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = authgate(
        &["admin", "--addr", "bad host:1", "--actor", "admin", "stats"],
        &[("AUTHGATE_API_KEY", &admin_key)],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--addr"), "{err}");
    // --config belongs to the server's commands, not the client's.
    let out = authgate(
        &[
            "--config",
            "authgate.toml",
            "admin",
            "--actor",
            "admin",
            "stats",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--config"),
        "{}",
        text(&out.stderr)
    );

    let (status, logs) = server.terminate();
    assert!(status.success());
    let logs = logs.join("\n");
    assert!(
        !logs.contains(&admin_key) && !logs.contains(&bot_key),
        "{logs}"
    );
}

/// The container's own environment (deploy/README's `docker run ...
/// check-config`), plus what Kubernetes adds to every pod beside a Service
/// named authgate: check-config passes and prints only the configuration,
/// and serve starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_environment_with_kubernetes_service_links_starts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    let key = keygen(&keys, "bot", "check");
    let keys_path = keys.display().to_string();
    let db = format!("sqlite://{}/authgate.db", dir.path().display());
    let env = [
        ("AUTHGATE_SERVER__LISTEN", "0.0.0.0:0"),
        ("AUTHGATE_METRICS__LISTEN", "127.0.0.1:0"),
        ("AUTHGATE_DATABASE__URL", db.as_str()),
        ("AUTHGATE_LOG__FORMAT", "json"),
        ("AUTHGATE_AUTH__KEYS_FILE", keys_path.as_str()),
        ("AUTHGATE_SERVICE_HOST", "10.96.0.12"),
        ("AUTHGATE_SERVICE_PORT", "50051"),
        ("AUTHGATE_SERVICE_PORT_GRPC", "50051"),
        ("AUTHGATE_PORT", "tcp://10.96.0.12:50051"),
        ("AUTHGATE_PORT_50051_TCP", "tcp://10.96.0.12:50051"),
        ("AUTHGATE_PORT_50051_TCP_PROTO", "tcp"),
        ("AUTHGATE_PORT_50051_TCP_PORT", "50051"),
        ("AUTHGATE_PORT_50051_TCP_ADDR", "10.96.0.12"),
        // What the admin CLI reads, set in the same shell.
        ("AUTHGATE_ADDR", "authgate:50051"),
        ("AUTHGATE_ACTOR", "ops"),
        ("AUTHGATE_CLEANUP__AUDIT_RETENTION", "90days"),
        // A near miss: ignored, and warned about.
        ("AUTHGATE_CLEANUP_INTERVAL", "5m"),
    ];
    let out = authgate(&["check-config"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let printed: toml::Table = toml::from_str(&stdout).expect("stdout is the TOML alone");
    assert_eq!(printed["cleanup"]["audit_retention"].as_str(), Some("90d"));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("AUTHGATE_CLEANUP__INTERVAL"),
        "the near miss is named: {stderr}"
    );

    let server = ChildServer::spawn(dir.path(), &["serve"], &env);
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", server.addr.port()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let v = keyed_access(channel, &key)
        .check_access(proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("kim", "192.0.2.9"),
        })
        .await
        .expect("serves");
    assert!(v.into_inner().verdict.is_some());
    let (status, _) = server.terminate();
    assert!(status.success());
}

/// The `authgate admin ...` commands the alert runbooks tell an operator to
/// run, whitespace collapsed as YAML folds it.
fn runbook_commands() -> Vec<String> {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/authgate-rules.yaml"
    ))
    .unwrap();
    let text = rules.split_whitespace().collect::<Vec<_>>().join(" ");
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.starts_with("authgate admin "))
        .map(str::to_owned)
        .collect()
}

/// A sprayed password locked at 3 a.m.: the operator sees it by a short
/// prefix and unlocks it by typing the password, which only the CLI hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_unlocks_a_sprayed_password_read_from_stdin() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let (server, admin_key, _, mut bot) = keyed_server(dir.path()).await;
    let password = "Hunter2-at-3am";
    let sprayed = sha2::Sha256::digest(password.as_bytes()).to_vec();
    let attempt = |i: u32| {
        Some(proto::Subject {
            password_fingerprint: sprayed.clone(),
            ..subject(&format!("u{i}"), &format!("192.0.2.{i}")).unwrap()
        })
    };
    for i in 0..30 {
        bot.record_failure(proto::RecordFailureRequest {
            context: "login".into(),
            subject: attempt(i),
            activity: String::new(),
        })
        .await
        .unwrap();
    }

    let addr = format!("http://{}", server.addr);
    let admin = |args: &[&str], stdin: &str| {
        let mut all = vec!["admin", "--addr", &addr, "--actor", "admin"];
        all.extend_from_slice(args);
        let out = authgate_fed(&all, &[("AUTHGATE_API_KEY", &admin_key)], stdin);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let locked: serde_json::Value =
        serde_json::from_str(&admin(&["list-locked", "--json"], "")).unwrap();
    assert_eq!(locked[0]["rule"], "password", "{locked}");
    let shown = locked[0]["key"].as_str().unwrap();
    assert!(shown.starts_with("password=local:"), "{shown}");
    assert_eq!(shown.len(), "password=local:".len() + 4, "{shown}");

    let table = admin(&["subject", "--password-stdin"], &format!("{password}\n"));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("login") && l.contains("password")),
        "{table}"
    );
    // Where a password cannot apply, the flag is refused, not ignored.
    for args in [
        vec!["events", "--password-stdin"],
        vec![
            "unlock",
            "--context",
            "login",
            "--kind",
            "user",
            "--password-stdin",
        ],
    ] {
        let mut all = vec!["admin", "--addr", &addr, "--actor", "admin"];
        all.extend_from_slice(&args);
        let out = authgate_fed(&all, &[("AUTHGATE_API_KEY", &admin_key)], "x\n");
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains("password"),
            "{}",
            text(&out.stderr)
        );
    }
    let unlocked = admin(&["unlock", "--password-stdin"], &format!("{password}\n"));
    assert_eq!(unlocked, "UNLOCKED\n1\n");
    let verdict = bot
        .check_access(proto::CheckAccessRequest {
            context: "login".into(),
            subject: attempt(99),
        })
        .await
        .unwrap()
        .into_inner()
        .verdict
        .unwrap();
    assert_eq!(verdict.decision(), proto::Decision::Allow);
    let (_, log) = server.terminate();
    let forms = [hex::encode(&sprayed), hex::encode_upper(&sprayed)];
    assert!(
        log.iter()
            .all(|l| forms.iter().all(|f| !l.contains(f.as_str()))),
        "the fingerprint the CLI sent reaches no log"
    );
}

/// Five failures: the login context's user_ip rule locks the pair.
async fn lock_in_login(
    bot: &mut proto::access_service_client::AccessServiceClient<Keyed>,
    user: &str,
    ip: &str,
) {
    for _ in 0..5 {
        bot.record_failure(proto::RecordFailureRequest {
            context: "login".into(),
            subject: subject(user, ip),
            activity: String::new(),
        })
        .await
        .unwrap();
    }
}
