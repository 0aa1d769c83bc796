//! The contract outside Rust: a Python grpcio client generated from the
//! proto at run time drives a real server.

use std::process::Command;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_walks_the_lockout_flow() {
    let server = TestServer::spawn_with(
        Backend::Sqlite,
        "[access]\nadmin_user_ids = [\"admin\", \"py-admin\"]",
    )
    .await;
    let root = env!("CARGO_MANIFEST_DIR");
    let addr = server.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(format!("{root}/tests/python/client_check.py"))
            .arg(addr)
            .arg(format!("{root}/proto"))
            .output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed to run the cross-language test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python client failed ({:?}); if grpcio is missing: \
         pip install -r tests/python/requirements.txt\n{stdout}\n{stderr}",
        output.status.code()
    );
    assert!(
        stdout.contains("python client: 11 passed, 0 failed"),
        "{stdout}"
    );
    server.stop().await;
}
