use super::*;

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

#[test]
fn tables_align_and_json_keeps_types() {
    let mut t = Table::new(&["context", "tier", "until"]);
    t.rows
        .push(vec![json!("login"), json!(2), until(None, true)]);
    t.rows.push(vec![
        json!("password_reset"),
        json!(1),
        until(Some(&at(1_700_000_000)), false),
    ]);
    assert_eq!(
        t.render(false),
        "CONTEXT         TIER  UNTIL\n\
         login           2     permanent\n\
         password_reset  1     2023-11-14T22:13:20Z\n"
    );
    let parsed: Value = serde_json::from_str(&t.render(true)).unwrap();
    assert_eq!(parsed[0]["tier"], json!(2));
    assert_eq!(parsed[1]["until"], json!("2023-11-14T22:13:20Z"));
    assert_eq!(
        Table::new(&["unlocked"]).render(false),
        "UNLOCKED\n(none)\n"
    );
}
