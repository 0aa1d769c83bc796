//! The contexts and rule sets authgate ships with, in force until a file
//! gives `contexts`; authgate.example.toml spells out the same.

use std::collections::BTreeMap;
use std::time::Duration;

use super::lockout::{LockoutConfig, ProgressiveConfig};
use super::schema::{
    AdmissionConfig, ContextConfig, FailureMode, RuleConfig, RuleKindConfig, RuleMode, SessionMode,
    day, ten_minutes,
};
use crate::domain::{KeyKind, LockDuration};

fn rule(
    name: &str,
    key: KeyKind,
    window_min: u64,
    captcha_after: Option<u32>,
    lock_after: Option<u32>,
    lockout: Option<LockoutConfig>,
) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        kind: RuleKindConfig::Failures,
        key,
        activities: Vec::new(),
        window: Duration::from_secs(window_min * 60),
        captcha_after,
        lock_after,
        limit: None,
        lockout,
        recurrence_window: day(),
        extend_while_locked: false,
        ipv6_prefix: None,
        ipv4_prefix: None,
        mode: RuleMode::Enforce,
    }
}

fn progressive(base_min: u64, max_h: u64) -> Option<LockoutConfig> {
    Some(LockoutConfig::Progressive(ProgressiveConfig {
        base: Duration::from_secs(base_min * 60),
        factor: 2.0,
        max: Duration::from_secs(max_h * 3600),
        permanent_after: None,
    }))
}

pub fn contexts() -> BTreeMap<String, ContextConfig> {
    let login = vec![
        // oai-web's login limiter, on the user+ip pair so that a stranger
        // cannot lock a user out from their own address.
        rule(
            "user_ip",
            KeyKind::UserIp,
            30,
            None,
            Some(5),
            Some(LockoutConfig::Tiers(vec![
                LockDuration::For(Duration::from_secs(30 * 60)),
                LockDuration::Permanent,
            ])),
        ),
        // Password spraying from one address across many users.
        rule(
            "ip",
            KeyKind::Ip,
            30,
            Some(10),
            Some(20),
            progressive(30, 24),
        ),
        // Guessing one user's password from many addresses: a captcha, never
        // a lock, so attackers cannot lock the victim out this way.
        rule("user", KeyKind::User, 30, Some(10), None, None),
        // Password spraying: one common password tried once against many
        // accounts from many addresses. It locks the password, not a user:
        // the account owner, with another password, is not affected.
        rule(
            "password",
            KeyKind::Password,
            30,
            Some(10),
            Some(30),
            progressive(30, 24),
        ),
    ];
    let password_reset = vec![rule(
        "user",
        KeyKind::User,
        60,
        None,
        Some(3),
        progressive(60, 24),
    )];
    // The anti-spam seed: warnings (captcha) after 3 strikes, progressive
    // blocks from 5.
    let bot = vec![rule(
        "user",
        KeyKind::User,
        10,
        Some(3),
        Some(5),
        progressive(1, 24),
    )];
    let context = |rules, totp| ContextConfig {
        rules,
        totp,
        session_timeout: ten_minutes(),
        session_mode: SessionMode::Absolute,
        failure_mode: FailureMode::FailClosed,
        admission: None,
        trusted_networks: None,
        allowed_networks: Vec::new(),
        mode: RuleMode::Enforce,
    };
    [
        ("login", context(login, false)),
        ("password_reset", context(password_reset, false)),
        // A chat bot's flood protection: one Admit per incoming update.
        (
            "bot",
            ContextConfig {
                admission: Some(AdmissionConfig::default()),
                ..context(bot, false)
            },
        ),
        // Admin actions need a second factor.
        ("admin", context(Vec::new(), true)),
    ]
    .into_iter()
    .map(|(name, ctx)| (name.to_owned(), ctx))
    .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_validate_and_the_example_file_matches_them() {
        let (config, _) = Config::from_toml("").unwrap();
        let example = include_str!("../../authgate.example.toml");
        let (from_file, _) = Config::from_toml(example).unwrap();
        assert_eq!(config.to_toml(), from_file.to_toml());
    }
}
