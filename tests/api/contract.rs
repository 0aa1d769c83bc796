//! The API contract: authgate.v1 passes buf's standard lint, and nothing in
//! it breaks the wire (binary or JSON) of the recorded baseline, which a
//! deliberate breaking change is shown to fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// buf as scripts/test.sh installs it.
fn buf(dir: &Path, args: &[&str]) -> Output {
    let bin = root().join("scripts/buf/node_modules/.bin/buf");
    assert!(
        bin.exists(),
        "buf is not installed: run scripts/test.sh (npm ci in scripts/buf)"
    );
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("buf runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_protos_pass_bufs_standard_lint() {
    let out = buf(&root().join("proto"), &["lint"]);
    assert!(out.status.success(), "buf lint:\n{}", text(&out));
}

#[test]
fn nothing_breaks_the_wire_of_the_baseline_and_a_breaking_change_is_caught() {
    let proto = root().join("proto");
    let against = proto.join("authgate-v1.baseline.json");
    let against = against.to_str().unwrap();
    let out = buf(&proto, &["breaking", "--against", against]);
    assert!(out.status.success(), "buf breaking:\n{}", text(&out));

    // The same check on a scratch copy that renumbers a Verdict field.
    let scratch = tempfile::tempdir().unwrap();
    let v1 = scratch.path().join("authgate/v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(proto.join("buf.yaml"), scratch.path().join("buf.yaml")).unwrap();
    for file in ["access.proto", "admin.proto"] {
        std::fs::copy(proto.join("authgate/v1").join(file), v1.join(file)).unwrap();
    }
    let access = v1.join("access.proto");
    let source = std::fs::read_to_string(&access).unwrap();
    let broken = source.replacen("string reason = 2;", "string reason = 12;", 1);
    assert_ne!(broken, source, "the scratch change applies");
    std::fs::write(&access, broken).unwrap();
    let out = buf(scratch.path(), &["breaking", "--against", against]);
    assert!(
        !out.status.success(),
        "a renumbered field passed:\n{}",
        text(&out)
    );
    assert!(text(&out).contains("Verdict"), "{}", text(&out));
}
