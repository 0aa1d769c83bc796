//! The client libraries in the callers' languages, each driven by its own
//! test suite against a real authgate that requires API keys.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;

/// An authgate on the real clock (the suites generate TOTP codes from the
/// wall clock) with a `check` key, and the suites' environment.
fn server(dir: &Path, keys: &TestKeys) -> ChildServer {
    std::fs::write(dir.join("authgate.toml"), &keys.toml).unwrap();
    ChildServer::spawn(dir, &[], &[("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0")])
}

/// Runs `program` in `cwd` with `env` on top, panicking with everything it
/// printed unless it succeeds; returns its standard output and error.
fn run(program: &str, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> (String, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (scripts/test.sh): {e}"));
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    assert!(
        output.status.success(),
        "{program} {args:?} in {} failed (scripts/test.sh installs what it needs):\n{out}\n{err}",
        cwd.display()
    );
    (out, err)
}

/// A client's test suite against `addr` with the `check` key: all it printed.
fn run_suite(program: &str, args: &[&str], cwd: &Path, addr: &str, key: &str) -> String {
    let env = [("AUTHGATE_ADDR", addr), ("AUTHGATE_CHECK_KEY", key)];
    let (out, err) = run(program, args, cwd, &env);
    format!("{out}\n{err}")
}

/// The package as a user installs it: a wheel (and an sdist) built from
/// clients/python, installed into a fresh venv, whose tests then run
/// against that install rather than the source tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_and_middleware_from_the_built_wheel() {
    let dir = tempfile::tempdir().unwrap();
    let keys = TestKeys::new();
    let server = server(dir.path(), &keys);
    let addr = server.addr.to_string();
    let work = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let package = root.join("clients/python");
        let dist = work.path().join("dist");
        let venv = work.path().join("venv");
        let (dist_s, venv_s) = (dist.to_str().unwrap(), venv.to_str().unwrap());
        run(
            "python3",
            &[
                "-m",
                "build",
                "--no-isolation",
                "--wheel",
                "--sdist",
                "--outdir",
                dist_s,
                ".",
            ],
            &package,
            &[],
        );
        let built: Vec<String> = std::fs::read_dir(&dist)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let wheel = built
            .iter()
            .find(|f| f.ends_with("-py3-none-any.whl"))
            .unwrap_or_else(|| panic!("a wheel among {built:?}"));
        assert!(
            built.iter().any(|f| f.ends_with(".tar.gz")),
            "an sdist among {built:?}"
        );
        let wheel = dist.join(wheel);
        let (metadata, _) = run(
            "unzip",
            &[
                "-p",
                wheel.to_str().unwrap(),
                "authgate_client-*.dist-info/METADATA",
            ],
            work.path(),
            &[],
        );
        for field in [
            "Name: authgate-client",
            concat!("Version: ", env!("CARGO_PKG_VERSION")),
            "License-Expression: Apache-2.0",
            "License-File: LICENSE",
            "Project-URL: Source",
            "Classifier: Typing :: Typed",
            "Provides-Extra: aiogram",
        ] {
            assert!(
                metadata.contains(field),
                "METADATA lacks {field:?}:\n{metadata}"
            );
        }
        // The test tools and the dependencies come from the machine's
        // site-packages; authgate_client is nowhere but in the wheel.
        run(
            "python3",
            &["-m", "venv", "--system-site-packages", venv_s],
            work.path(),
            &[],
        );
        let python = venv.join("bin/python");
        let python = python.to_str().unwrap();
        run(
            python,
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                wheel.to_str().unwrap(),
            ],
            work.path(),
            &[],
        );
        let (found, _) = run(
            python,
            &[
                "-c",
                "import authgate_client; print(authgate_client.__file__)",
            ],
            work.path(),
            &[],
        );
        assert!(found.trim().starts_with(venv_s), "imported from {found}");
        let tests = package.join("tests");
        let tests = tests.to_str().unwrap();
        run_suite(
            python,
            &["-m", "unittest", "discover", "-s", tests, "-t", tests, "-v"],
            work.path(),
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
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        run_suite(
            "node",
            &["--test"],
            &root.join("clients/node"),
            &addr,
            &keys.check,
        )
    })
    .await
    .unwrap();
    assert!(
        out.contains("# fail 0") && out.contains("# skipped 0"),
        "{out}"
    );
    server.terminate();
}

/// The Node package as a user installs it: its types check under tsc,
/// `npm pack` makes a tarball of what it needs (the protos included, the
/// tests not), and that tarball, installed into a fresh folder, calls a
/// real authgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_package_packs_installs_and_calls_authgate() {
    let dir = tempfile::tempdir().unwrap();
    let keys = TestKeys::new();
    let server = server(dir.path(), &keys);
    let addr = server.addr.to_string();
    let work = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let package = root.join("clients/node");
        run("npm", &["run", "--silent", "typecheck"], &package, &[]);
        // Packed from a copy laid out as the repository is: prepack copies
        // ../../proto in, which must not appear in the checkout while the
        // other Node test reads it.
        let copy = work.path().join("repo/clients/node");
        std::fs::create_dir_all(&copy).unwrap();
        let node_files = ["index.js", "index.d.ts", "lib", "package.json", "LICENSE", "README.md"];
        for file in node_files {
            let from = package.join(file);
            run("cp", &["-r", from.to_str().unwrap(), copy.to_str().unwrap()], work.path(), &[]);
        }
        let from = root.join("proto");
        let to = work.path().join("repo");
        run("cp", &["-r", from.to_str().unwrap(), to.to_str().unwrap()], work.path(), &[]);
        let (packed, _) = run(
            "npm",
            &["pack", "--silent", "--pack-destination", work.path().to_str().unwrap()],
            &copy, &[]);
        let tarball = work.path().join(packed.trim());
        let (listed, _) = run("tar", &["tzf", tarball.to_str().unwrap()], work.path(), &[]);
        for needed in [
            "package/package.json",
            "package/index.js",
            "package/index.d.ts",
            "package/lib/client.js",
            "package/proto/authgate/v1/access.proto",
            "package/LICENSE",
        ] {
            assert!(listed.lines().any(|l| l == needed), "{needed} not packed:\n{listed}");
        }
        assert!(
            !listed.contains("package/test/") && !listed.contains("node_modules"),
            "only what the package needs:\n{listed}"
        );
        assert!(!copy.join("proto").exists(), "packing leaves the tree as it was");
        let user = work.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("package.json"), r#"{"name":"smoke","private":true}"#).unwrap();
        run(
            "npm",
            &["install", "--no-audit", "--no-fund", "--loglevel=error", tarball.to_str().unwrap()],
            &user, &[]);
        let smoke = r#"
            const { createClient, DEFAULT_PROTO_DIR, VERSION } = require('@authgate/client');
            const client = createClient({ address: process.env.ADDR, apiKey: process.env.KEY });
            client.checkAccess({ context: 'login', userId: 'smoke' }).then((r) => {
              console.log(JSON.stringify({ decision: r.verdict.decision, DEFAULT_PROTO_DIR, VERSION }));
              client.close();
            }, (e) => { console.error(e); process.exit(1); });
        "#;
        let (printed, _) = run(
            "node",
            &["-e", smoke],
            &user,
            &[("ADDR", &addr), ("KEY", &keys.check)],
        );
        let answer: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
        (answer, user)
    })
    .await
    .unwrap();
    let (answer, user) = out;
    assert_eq!(answer["decision"], "DECISION_ALLOW", "{answer}");
    assert_eq!(answer["VERSION"], env!("CARGO_PKG_VERSION"));
    assert!(
        answer["DEFAULT_PROTO_DIR"]
            .as_str()
            .is_some_and(|d| d.starts_with(user.to_str().unwrap())),
        "the installed package reads its own protos: {answer}"
    );
    server.terminate();
}
