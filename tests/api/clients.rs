//! The client libraries in the callers' languages, each driven by its own
//! test suite against a real authgate that requires API keys.

use std::process::Command;

use crate::helpers::*;

/// An authgate on the real clock (the suites generate TOTP codes from the
/// wall clock) with a `check` key, and the suites' environment.
fn server(dir: &std::path::Path, keys: &TestKeys) -> ChildServer {
    std::fs::write(dir.join("authgate.toml"), &keys.toml).unwrap();
    ChildServer::spawn(dir, &[], &[("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0")])
}

fn run_suite(program: &str, args: &[&str], subdir: &str, addr: &str, key: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new(program)
        .args(args)
        .current_dir(format!("{root}/clients/{subdir}"))
        .env("AUTHGATE_ADDR", addr)
        .env("AUTHGATE_CHECK_KEY", key)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed for clients/{subdir}: {e}"));
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "clients/{subdir} tests failed (scripts/test.sh installs their packages):\n{all}"
    );
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_and_middleware() {
    let dir = tempfile::tempdir().unwrap();
    let keys = TestKeys::new();
    let server = server(dir.path(), &keys);
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_suite(
            "python3",
            &["-m", "unittest", "discover", "-s", "tests", "-v"],
            "python",
            &addr,
            &keys.check,
        )
    })
    .await
    .unwrap();
    // With a key given, no test may be skipped: the key tests must run.
    assert!(out.contains("\nOK") && !out.contains("skipped="), "{out}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_and_middleware() {
    let dir = tempfile::tempdir().unwrap();
    let keys = TestKeys::new();
    let server = server(dir.path(), &keys);
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_suite("node", &["--test"], "node", &addr, &keys.check)
    })
    .await
    .unwrap();
    assert!(
        out.contains("# fail 0") && out.contains("# skipped 0"),
        "{out}"
    );
    server.terminate();
}
