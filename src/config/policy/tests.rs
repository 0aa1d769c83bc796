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

#[test]
fn operator_controls_read_and_their_nonsense_names_its_key() {
    let shadowed = format!(
        "{RATE}ipv6_prefix = 56\nipv4_prefix = 24\nmode = \"shadow\"\n\
         [contexts.api]\ntrusted_networks = [\"10.0.0.0/8\"]\n\
         allowed_networks = [\"149.154.160.0/20\"]\n"
    );
    let (config, policy) = Config::from_toml(&shadowed).unwrap();
    let rule = policy.rule("api", "burst").unwrap();
    assert!(rule.shadow);
    assert_eq!((rule.prefixes.v4, rule.prefixes.v6), (24, 56));
    Config::from_toml(&config.to_toml()).expect("the output reads back");

    let err = |extra: &str| {
        Config::from_toml(&format!("{RATE}{extra}\n"))
            .unwrap_err()
            .to_string()
    };
    let key = "contexts.api.rules[0]";
    assert!(err("ipv6_prefix = 16").contains(&format!("{key}.ipv6_prefix")));
    assert!(err("ipv4_prefix = 33").contains(&format!("{key}.ipv4_prefix")));
    let on_user = Config::from_toml(&format!(
        "{}ipv6_prefix = 64\n",
        RATE.replace("\"ip\"", "\"user\"")
    ))
    .unwrap_err()
    .to_string();
    assert!(on_user.contains(&format!("{key}.ipv6_prefix")), "{on_user}");
    let bad_net = err("[contexts.api]\nallowed_networks = [\"149.154.160.0/33\"]");
    assert!(
        bad_net.contains("contexts.api.allowed_networks[0]"),
        "{bad_net}"
    );
    let bad_trusted = Config::from_toml("[access]\ntrusted_networks = [\"office\"]")
        .unwrap_err()
        .to_string();
    assert!(
        bad_trusted.contains("access.trusted_networks[0]"),
        "{bad_trusted}"
    );
}
