//! What operators see: a real Prometheus scraping a running authgate,
//! promtool on a live scrape, and logs that never carry raw identifiers.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn tool(name: &str) -> Command {
    let found = Command::new("which")
        .arg(name)
        .output()
        .map(|o| o.status.success());
    assert!(
        found.unwrap_or(false),
        "{name} is missing: install Debian's prometheus package (scripts/test.sh does)"
    );
    Command::new(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_lockouts_and_promtool_accepts_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let server = ChildServer::spawn(
        dir.path(),
        &[],
        &[
            ("AUTHGATE_DATABASE__URL", db.as_str()),
            ("AUTHGATE_SERVER__LISTEN", "127.0.0.1:0"),
            ("AUTHGATE_METRICS__REFRESH_INTERVAL", "200ms"),
        ],
    );
    let mut c = server.access().await;
    for _ in 0..4 {
        fail(&mut c, "login", subject("mia", "198.51.100.77")).await;
    }
    // The caller's request id comes back and tags the call's log lines.
    let mut fifth = tonic::Request::new(authgate::grpc::proto::RecordFailureRequest {
        context: "login".into(),
        subject: subject("mia", "198.51.100.77"),
        activity: String::new(),
    });
    fifth
        .metadata_mut()
        .insert("x-request-id", "lock-req-7".parse().unwrap());
    let answer = c.record_failure(fifth).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "lock-req-7");
    assert!(answer.into_inner().lockout_applied);
    // Without one, the server makes one up.
    let plain = c
        .check_access(authgate::grpc::proto::CheckAccessRequest {
            context: "login".into(),
            subject: subject("mia", "198.51.100.77"),
        })
        .await
        .unwrap();
    let generated = plain
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(generated.len(), 36, "{generated}");

    // promtool checks the exposition format and the naming conventions.
    let scrape = tokio::task::spawn_blocking({
        let url = server.metrics_url.clone();
        move || http_get(&url)
    })
    .await
    .unwrap();
    let mut promtool = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "authgate_decisions_total",
        "authgate_failures_total",
        "authgate_lockouts_total",
        "authgate_rpc_duration_seconds_bucket",
        "authgate_store_duration_seconds_bucket",
        "authgate_build_info",
    ] {
        assert!(
            scrape.contains(&format!("# HELP {}", name.trim_end_matches("_bucket"))),
            "{name}"
        );
    }
    assert!(
        !scrape.contains("mia") && !scrape.contains("198.51.100.77"),
        "no identifiers in labels"
    );

    // A real Prometheus scraping it sees the lockout.
    let target = server
        .metrics_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: authgate\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = tool("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=sum(authgate_lockouts_active)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let seen = loop {
        // Prometheus scrapes on its own schedule; poll its API, bounded.
        let q = query.clone();
        let answer = tokio::task::spawn_blocking(move || std::panic::catch_unwind(|| http_get(&q)))
            .await
            .unwrap();
        if let Ok(body) = answer {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let value = json["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if value.is_some_and(|v| v >= 1.0) {
                break true;
            }
            last = body;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert!(
        seen,
        "Prometheus never saw authgate_lockouts_active >= 1; last answer: {last}"
    );

    // Every line logged inside a call carries its request id, however deep
    // the code that logged it.
    let (_, logs) = server.terminate();
    let lines: Vec<serde_json::Value> = logs
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let lockout = lines
        .iter()
        .find(|l| l["message"] == "lockout applied")
        .expect("the lockout is logged");
    assert_eq!(lockout["span"]["request_id"], "lock-req-7", "{lockout}");
    assert_eq!(lockout["span"]["context"], "login", "{lockout}");
    let in_calls: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| !l["span"]["rpc"].is_null())
        .collect();
    assert!(!in_calls.is_empty());
    for line in in_calls {
        assert!(line["span"]["request_id"].is_string(), "{line}");
    }
}
