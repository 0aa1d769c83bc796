//! The bench's same-work baseline (scripts/bench/failure-work.sql), run by
//! the real pgbench on authgate's migrated schema: what it writes must be
//! failures as authgate itself reads and audits them, or RecordFailure's
//! "vs work" ratio compares it with some other work.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use authgate::domain::UnixMillis;
use authgate::grpc::proto::{self, Decision};

use crate::helpers::*;

const CONTEXT: &str = r#"
[[contexts.pgbench.rules]]
name = "user_ip"
key = "user+ip"
window = "30m"
lock_after = 5
lockout = ["30m"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_work_baseline_writes_failures_authgate_counts() {
    let server = TestServer::spawn_with(Backend::Postgres, CONTEXT).await;
    // The script stamps rows with the database's wall clock.
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    server
        .clock
        .set(UnixMillis(i64::try_from(wall.as_millis()).unwrap()));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/bench/failure-work.sql"
    );
    let out = Command::new(pg_bin("pgbench"))
        .args([
            "-n", "-c", "1", "-t", "3", "-M", "prepared", "-D", "users=1", "-f", script,
        ])
        .arg(server.db.url())
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "pgbench: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut a = server.admin().await;
    let found = a
        .get_subject(proto::GetSubjectRequest {
            actor_user_id: "admin".into(),
            subject: subject("bench-1", "10.0.0.1"),
        })
        .await
        .expect("GetSubject")
        .into_inner();
    let state = found
        .states
        .iter()
        .find(|s| s.context == "pgbench" && s.rule == "user_ip")
        .expect("pgbench's row is a key state authgate reads");
    assert_eq!((state.failures_in_window, state.failures_total), (3, 3));
    let events = a
        .list_audit_events(proto::ListAuditEventsRequest {
            actor_user_id: "admin".into(),
            user_id: "bench-1".into(),
            kind: "failure_recorded".into(),
            context: "pgbench".into(),
            ..Default::default()
        })
        .await
        .expect("ListAuditEvents")
        .into_inner();
    assert_eq!(events.events.len(), 3);

    // authgate goes on counting from pgbench's rows: two more failures are
    // the rule's fifth, and lock the key.
    let mut c = server.access().await;
    for _ in 0..2 {
        fail(&mut c, "pgbench", subject("bench-1", "10.0.0.1")).await;
    }
    let verdict = check(&mut c, "pgbench", subject("bench-1", "10.0.0.1")).await;
    assert_eq!(decision(&verdict), Decision::Blocked);
    server.stop().await;
}
