use crate::config::Config;
use crate::domain::RuleKind;

const RATE: &str = r#"
    [[contexts.api.rules]]
    name = "burst"
    kind = "rate"
    key = "ip"
    limit = 100
    window = "1m"
"#;

#[test]
fn a_rate_rule_reads_with_an_optional_penalty_box() {
    let (_, policy) = Config::from_toml(RATE).unwrap();
    let rule = policy.rule("api", "burst").unwrap();
    assert_eq!(
        rule.kind,
        RuleKind::Rate {
            limit: 100,
            penalty_box: false
        }
    );
    let boxed = format!("{RATE}lockout = [\"10m\", \"permanent\"]\n");
    let (config, policy) = Config::from_toml(&boxed).unwrap();
    assert!(policy.rule("api", "burst").unwrap().locks());
    Config::from_toml(&config.to_toml()).expect("the output reads back");
}

#[test]
fn nonsense_on_a_rate_rule_names_its_key() {
    let err = |extra: &str, from: &str, to: &str| {
        let toml = format!("{}{extra}\n", RATE.replace(from, to));
        Config::from_toml(&toml).unwrap_err().to_string()
    };
    let key = "contexts.api.rules[0]";
    for (extra, field) in [
        ("captcha_after = 3", "captcha_after"),
        ("lock_after = 3\nlockout = [\"1m\"]", "lock_after"),
        ("activities = [\"x\"]", "activities"),
        ("extend_while_locked = true", "extend_while_locked"),
    ] {
        assert!(
            err(extra, "", "").contains(&format!("{key}.{field}")),
            "{field}"
        );
    }
    assert!(err("", "limit = 100", "limit = 0").contains(&format!("{key}.limit")));
    let over = err("", "limit = 100", "limit = 1001");
    assert!(
        over.contains(&format!("{key}.limit")) && over.contains("1000"),
        "{over}"
    );
    assert!(err("", "limit = 100", "").contains(&format!("{key}.limit")));
    assert!(err("", "\"ip\"", "\"password\"").contains(&format!("{key}.key")));
    let failure_limit = err("", "kind = \"rate\"", "lock_after = 2\nlockout = [\"1m\"]");
    assert!(
        failure_limit.contains(&format!("{key}.limit")),
        "{failure_limit}"
    );
}
