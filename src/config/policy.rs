//! Validation of what the types cannot say (ranges, references between
//! keys, reserved names), building the domain's `Policy`. Every error names
//! the key it is about.

use std::collections::BTreeSet;
use std::time::Duration;

use super::lockout::LockoutConfig;
use super::schema::{
    AdmissionConfig, Config, FailureMode, PatternConfig, RuleConfig, RuleKindConfig, RuleMode,
    SecretKeyConfig, SessionMode, TotpConfig,
};
use super::{ConfigError, invalid};
use crate::domain::{
    AccessList, AdmissionPolicy, ContextName, ContextPolicy, KeyKind, Ladder, LockDuration,
    MAX_RATE_LIMIT, Networks, PatternRule, Patterns, Policy, Prefixes, Rule, RuleKind, RuleName,
    SessionPolicy, TimeoutMode, TotpParams, TotpPolicy, UpdateKind, UserId, Window,
};

impl Config {
    /// Validates everything that serde cannot and builds the domain policy.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        let url = self.database.url.expose();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite: or postgres://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if !self.metrics.path.starts_with('/') {
            return Err(invalid("metrics.path", "must start with /"));
        }
        if self.metrics.refresh_interval.is_zero() {
            return Err(invalid("metrics.refresh_interval", "must be more than 0"));
        }
        if self.gateway.http.trusted_hops == 0 {
            return Err(invalid(
                "gateway.http.trusted_hops",
                "must be at least 1: the proxy asking is itself one hop",
            ));
        }
        if self.cleanup.interval.is_zero() {
            return Err(invalid("cleanup.interval", "must be more than 0"));
        }
        if self.clock.skew_tolerance.is_zero() {
            return Err(invalid("clock.skew_tolerance", "must be more than 0"));
        }
        if self.clock.sync_interval.is_zero() {
            return Err(invalid("clock.sync_interval", "must be more than 0"));
        }
        if self.server.request_timeout.is_zero() {
            return Err(invalid("server.request_timeout", "must be more than 0"));
        }
        for (key, value) in [
            ("server.max_connection_age", self.server.max_connection_age),
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("server.keepalive_interval", self.server.keepalive_interval),
            ("server.keepalive_timeout", self.server.keepalive_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be more than 0"));
            }
        }
        if self.server.max_concurrent_requests == 0 {
            return Err(invalid(
                "server.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        let share = self.server.max_connection_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(invalid(
                "server.max_connection_share",
                "must be more than 0 and at most 1",
            ));
        }
        if self.server.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        let user_ids = |key: &str, raw: &[String]| -> Result<BTreeSet<UserId>, ConfigError> {
            raw.iter()
                .enumerate()
                .map(|(i, id)| Ok(UserId::parse(&format!("{key}[{i}]"), id)?))
                .collect()
        };
        let na = &self.access.not_allowed;
        if na.max_attempts == 0 {
            return Err(invalid(
                "access.not_allowed.max_attempts",
                "must be at least 1",
            ));
        }
        let allow_rule = Rule {
            name: RuleName::builtin(crate::domain::ALLOW_LIST_CONTEXT),
            key: KeyKind::User,
            // Outsiders of allowed networks count here address by address:
            // each is a network's stranger, judged by where it really is.
            prefixes: Prefixes::SINGLE,
            shadow: false,
            activities: Vec::new(),
            kind: RuleKind::Failures {
                captcha_after: None,
                lock_after: Some(na.max_attempts),
            },
            window: na.window,
            ladder: Ladder::Tiers(vec![LockDuration::For(na.block)]),
            recurrence_window: na.window,
            extend_while_locked: false,
        };
        let access = AccessList::new(
            user_ids("access.allowed_user_ids", &self.access.allowed_user_ids)?,
            user_ids("access.admin_user_ids", &self.access.admin_user_ids)?,
            allow_rule,
        )
        .map_err(|e| invalid("access.admin_user_ids", e.to_string()))?;

        let totp = self.totp.policy(&user_ids(
            "totp.required_user_ids",
            &self.totp.required_user_ids,
        )?)?;

        if self.contexts.is_empty() {
            return Err(invalid("contexts", "at least one context is needed"));
        }
        let trusted = Networks::parse("access.trusted_networks", &self.access.trusted_networks)?;
        let mut contexts = Vec::new();
        for (name, ctx) in &self.contexts {
            let key = format!("contexts.{name}");
            let cname = ContextName::parse(&key, name)?;
            if name == crate::domain::ALLOW_LIST_CONTEXT || name == crate::domain::TOTP_CONTEXT {
                return Err(invalid(key, "the name is reserved"));
            }
            if ctx.totp && ctx.failure_mode == FailureMode::FailOpen {
                return Err(invalid(
                    format!("{key}.failure_mode"),
                    "fail_open would skip the second factor this context requires",
                ));
            }
            if ctx.session_timeout.is_zero() {
                return Err(invalid(
                    format!("{key}.session_timeout"),
                    "must be more than 0",
                ));
            }
            let mut rules: Vec<Rule> = Vec::new();
            for (i, rc) in ctx.rules.iter().enumerate() {
                let mut rule = rc.to_rule(&format!("{key}.rules[{i}]"))?;
                rule.shadow |= ctx.mode == RuleMode::Shadow;
                if rules.iter().any(|r| r.name == rule.name) {
                    return Err(invalid(
                        format!("{key}.rules[{i}].name"),
                        format!("duplicate rule name {:?}", rule.name),
                    ));
                }
                rules.push(rule);
            }
            contexts.push(ContextPolicy {
                name: cname,
                rules,
                totp: ctx.totp,
                fail_open: ctx.failure_mode == FailureMode::FailOpen,
                session: SessionPolicy {
                    timeout: ctx.session_timeout,
                    mode: match ctx.session_mode {
                        SessionMode::Absolute => TimeoutMode::Absolute,
                        SessionMode::Idle => TimeoutMode::Idle,
                    },
                },
                admission: ctx
                    .admission
                    .as_ref()
                    .map(|a| a.to_policy(&format!("{key}.admission")))
                    .transpose()?,
                trusted: match &ctx.trusted_networks {
                    Some(own) => Networks::parse(&format!("{key}.trusted_networks"), own)?,
                    None => trusted.clone(),
                },
                allowed: Networks::parse(
                    &format!("{key}.allowed_networks"),
                    &ctx.allowed_networks,
                )?,
            });
        }
        validate_keys("passwords.keys", &self.passwords.keys)?;
        if let Some((i, k)) = self
            .passwords
            .keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.id.contains(':'))
        {
            // A stored password key is the id, ':' and the HMAC.
            return Err(invalid(
                format!("passwords.keys[{i}].id"),
                format!("{:?} must not contain ':'", k.id),
            ));
        }
        if url.starts_with("postgres")
            && self.passwords.keys.is_empty()
            && let Some(context) = contexts
                .iter()
                .find(|c| c.rules_on(KeyKind::Password).next().is_some())
        {
            return Err(invalid(
                "passwords.keys",
                format!(
                    "context {:?} has a password rule, which needs a key that re-keys password \
                     fingerprints on Postgres (replicas must share it)",
                    context.name.as_str()
                ),
            ));
        }
        let (v4, v6) = (
            self.access.ban_min_ipv4_prefix,
            self.access.ban_min_ipv6_prefix,
        );
        if v4 > 32 {
            return Err(invalid("access.ban_min_ipv4_prefix", "must be 0 to 32"));
        }
        if v6 > 128 {
            return Err(invalid("access.ban_min_ipv6_prefix", "must be 0 to 128"));
        }
        let mut policy = Policy::new(contexts, access, totp, self.alerts.suppression);
        policy.ban_minimum = Prefixes { v4, v6 };
        Ok(policy)
    }
}

/// Keys given as `setting`: each with an id of 1 to 64 bytes, the ids
/// distinct, and either a file or an inline key.
fn validate_keys(setting: &str, keys: &[SecretKeyConfig]) -> Result<(), ConfigError> {
    for (i, k) in keys.iter().enumerate() {
        if k.id.is_empty() || k.id.len() > 64 {
            return Err(invalid(
                format!("{setting}[{i}].id"),
                "must be 1 to 64 bytes",
            ));
        }
        if keys[..i].iter().any(|other| other.id == k.id) {
            return Err(invalid(
                format!("{setting}[{i}].id"),
                format!("duplicate id {:?}", k.id),
            ));
        }
        if k.file.is_some() == k.key.is_some() {
            return Err(invalid(
                format!("{setting}[{i}]"),
                "needs exactly one of file, key",
            ));
        }
    }
    Ok(())
}

impl TotpConfig {
    fn policy(&self, required: &BTreeSet<UserId>) -> Result<TotpPolicy, ConfigError> {
        let period = u32::try_from(self.period.as_secs()).unwrap_or(u32::MAX);
        if Duration::from_secs(u64::from(period)) != self.period {
            return Err(invalid("totp.period", "must be whole seconds"));
        }
        let defaults = TotpParams {
            algorithm: self.algorithm,
            digits: self.digits,
            period,
        };
        defaults.validate("totp.digits", "totp.period")?;
        if self.skew > 10 {
            return Err(invalid("totp.skew", "must be at most 10 steps"));
        }
        if self.drift_probe > 60 {
            return Err(invalid("totp.drift_probe", "must be at most 60 steps"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("totp.max_attempts", "must be at least 1"));
        }
        if self.window.is_zero() || self.block.is_zero() {
            return Err(invalid(
                "totp.block",
                "window and block must be more than 0",
            ));
        }
        validate_keys("totp.keys", &self.keys)?;
        if let Some(active) = &self.active_key
            && !self.keys.iter().any(|k| &k.id == active)
        {
            return Err(invalid(
                "totp.active_key",
                format!("no key with id {active:?} in totp.keys"),
            ));
        }
        if self.recovery_codes > crate::domain::MAX_RECOVERY_CODES {
            return Err(invalid(
                "totp.recovery_codes",
                format!("must be at most {}", crate::domain::MAX_RECOVERY_CODES),
            ));
        }
        Ok(TotpPolicy {
            recovery_codes: self.recovery_codes,
            issuer: self.issuer.clone(),
            defaults,
            window: Window {
                skew: self.skew,
                probe: self.drift_probe,
            },
            rule: Rule {
                name: RuleName::builtin(crate::domain::TOTP_CONTEXT),
                key: KeyKind::User,
                prefixes: Prefixes::DEFAULT,
                shadow: false,
                activities: Vec::new(),
                kind: RuleKind::Failures {
                    captcha_after: None,
                    lock_after: Some(self.max_attempts),
                },
                window: self.window,
                ladder: Ladder::Tiers(vec![LockDuration::For(self.block)]),
                recurrence_window: self.window,
                extend_while_locked: false,
            },
            required: required.clone(),
        })
    }
}

impl RuleConfig {
    fn to_rule(&self, key: &str) -> Result<Rule, ConfigError> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(invalid(format!("{key}.name"), "must be 1 to 64 bytes"));
        }
        if self.window.is_zero() {
            return Err(invalid(format!("{key}.window"), "must be more than 0"));
        }
        let kind = match self.kind {
            RuleKindConfig::Failures => self.failures(key)?,
            RuleKindConfig::Rate => self.rate(key)?,
        };
        let ladder = match &self.lockout {
            None => Ladder::Tiers(Vec::new()),
            Some(l) => l.to_ladder(&format!("{key}.lockout"))?,
        };
        if self.name == crate::domain::BAN_RULE {
            return Err(invalid(
                format!("{key}.name"),
                "the name is reserved: verdicts of admins' bans carry it",
            ));
        }
        Ok(Rule {
            name: RuleName::parse(&format!("{key}.name"), &self.name)?,
            key: self.key,
            prefixes: self.prefixes(key)?,
            shadow: self.mode == RuleMode::Shadow,
            kind,
            activities: self.activities.clone(),
            window: self.window,
            ladder,
            recurrence_window: self.recurrence_window,
            extend_while_locked: self.extend_while_locked,
        })
    }

    fn prefixes(&self, key: &str) -> Result<Prefixes, ConfigError> {
        let on_address = matches!(self.key, KeyKind::Ip | KeyKind::UserIp);
        let prefix =
            |name: &str, value: Option<u8>, range: std::ops::RangeInclusive<u8>, default| {
                match value {
                    None => Ok(default),
                    Some(_) if !on_address => Err(invalid(
                        format!("{key}.{name}"),
                        "only rules on the address (key ip or user+ip) count by a prefix",
                    )),
                    Some(v) if range.contains(&v) => Ok(v),
                    Some(v) => Err(invalid(
                        format!("{key}.{name}"),
                        format!("must be from {} to {}, got {v}", range.start(), range.end()),
                    )),
                }
            };
        Ok(Prefixes {
            v4: prefix(
                "ipv4_prefix",
                self.ipv4_prefix,
                8..=32,
                Prefixes::DEFAULT.v4,
            )?,
            v6: prefix(
                "ipv6_prefix",
                self.ipv6_prefix,
                32..=128,
                Prefixes::DEFAULT.v6,
            )?,
        })
    }

    fn failures(&self, key: &str) -> Result<RuleKind, ConfigError> {
        if self.limit.is_some() {
            return Err(invalid(
                format!("{key}.limit"),
                "only rate rules (kind = \"rate\") have a limit",
            ));
        }
        for (field, value) in [
            ("captcha_after", self.captcha_after),
            ("lock_after", self.lock_after),
        ] {
            if value == Some(0) {
                return Err(invalid(format!("{key}.{field}"), "must be at least 1"));
            }
            if value.is_some_and(|v| v > 1000) {
                return Err(invalid(format!("{key}.{field}"), "must be at most 1000"));
            }
        }
        if self.captcha_after.is_none() && self.lock_after.is_none() {
            return Err(invalid(key, "needs captcha_after, lock_after or both"));
        }
        if let (Some(c), Some(l)) = (self.captcha_after, self.lock_after)
            && c >= l
        {
            return Err(invalid(
                format!("{key}.captcha_after"),
                "must be below lock_after",
            ));
        }
        match (&self.lockout, self.lock_after) {
            (None, Some(_)) => Err(invalid(
                format!("{key}.lockout"),
                "is required with lock_after",
            )),
            (Some(_), None) => Err(invalid(format!("{key}.lockout"), "needs lock_after")),
            _ => Ok(RuleKind::Failures {
                captcha_after: self.captcha_after,
                lock_after: self.lock_after,
            }),
        }
    }

    /// A rate rule counts requests: the keys about failures mean nothing
    /// on it and are refused rather than ignored.
    fn rate(&self, key: &str) -> Result<RuleKind, ConfigError> {
        let failure_keys = [
            ("captcha_after", self.captcha_after.is_some()),
            ("lock_after", self.lock_after.is_some()),
            ("activities", !self.activities.is_empty()),
            ("extend_while_locked", self.extend_while_locked),
        ];
        if let Some((field, _)) = failure_keys.iter().find(|(_, set)| *set) {
            return Err(invalid(
                format!("{key}.{field}"),
                "is for failure rules: a rate rule counts requests (limit, window, lockout)",
            ));
        }
        if self.key == KeyKind::Password {
            return Err(invalid(
                format!("{key}.key"),
                "a rate rule counts on user, ip, user+ip or session",
            ));
        }
        let limit = match self.limit {
            None => {
                return Err(invalid(
                    format!("{key}.limit"),
                    "is required with kind = \"rate\"",
                ));
            }
            Some(0) => return Err(invalid(format!("{key}.limit"), "must be at least 1")),
            Some(n) if n > MAX_RATE_LIMIT => {
                return Err(invalid(
                    format!("{key}.limit"),
                    format!(
                        "must be at most {MAX_RATE_LIMIT}: the time of every counted request \
                         is kept"
                    ),
                ));
            }
            Some(n) => n,
        };
        Ok(RuleKind::Rate {
            limit,
            penalty_box: self.lockout.is_some(),
        })
    }
}

impl LockoutConfig {
    fn to_ladder(&self, key: &str) -> Result<Ladder, ConfigError> {
        match self {
            LockoutConfig::Tiers(tiers) => {
                if tiers.is_empty() {
                    return Err(invalid(key, "needs at least one tier"));
                }
                Ok(Ladder::Tiers(tiers.clone()))
            }
            LockoutConfig::Progressive(p) => {
                if p.base.is_zero() {
                    return Err(invalid(format!("{key}.base"), "must be more than 0"));
                }
                if !(p.factor.is_finite() && p.factor >= 1.0) {
                    return Err(invalid(
                        format!("{key}.factor"),
                        "must be a number of at least 1",
                    ));
                }
                if p.max < p.base {
                    return Err(invalid(format!("{key}.max"), "must be at least base"));
                }
                if p.permanent_after == Some(0) {
                    return Err(invalid(
                        format!("{key}.permanent_after"),
                        "must be at least 1",
                    ));
                }
                Ok(Ladder::Progressive {
                    base: p.base,
                    factor: p.factor,
                    max: p.max,
                    permanent_after: p.permanent_after,
                })
            }
        }
    }
}

impl AdmissionConfig {
    /// Checks ranges and the kinds' names (clients send them, and they label
    /// metrics, so they are identifiers of a few plain characters).
    fn to_policy(&self, key: &str) -> Result<AdmissionPolicy, ConfigError> {
        if self.window.is_zero() {
            return Err(invalid(format!("{key}.window"), "must be more than 0"));
        }
        if self.kinds.is_empty() {
            return Err(invalid(format!("{key}.kinds"), "needs at least one kind"));
        }
        for (name, kind) in &self.kinds {
            let plain = !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !plain {
                return Err(invalid(
                    format!("{key}.kinds"),
                    format!("{name:?}: names are 1 to 32 of a-z, 0-9 and _"),
                ));
            }
            if kind.limit == Some(0) {
                return Err(invalid(
                    format!("{key}.kinds.{name}.limit"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        if self.warning_limit == 0 {
            return Err(invalid(
                format!("{key}.warning_limit"),
                "must be at least 1",
            ));
        }
        if self.block.is_zero() {
            return Err(invalid(format!("{key}.block"), "must be more than 0"));
        }
        if self.max_block < self.block {
            return Err(invalid(
                format!("{key}.max_block"),
                "must be at least admission.block",
            ));
        }
        if !(0.0..=1.0).contains(&self.blocking_severity) {
            return Err(invalid(
                format!("{key}.blocking_severity"),
                "must be from 0.0 to 1.0",
            ));
        }
        let pattern = |name: &str, p: PatternConfig| {
            if p.count == 0 || !(0.0..=1.0).contains(&p.severity) {
                return Err(invalid(
                    format!("{key}.{name}"),
                    "count must be at least 1 and severity from 0.0 to 1.0",
                ));
            }
            Ok(PatternRule {
                count: p.count,
                severity: p.severity,
            })
        };
        let patterns = Patterns {
            identical_text: pattern("identical_text", self.identical_text)?,
            identical_callback: pattern("identical_callback", self.identical_callback)?,
            media_flood: pattern("media_flood", self.media_flood)?,
            blocking_severity: self.blocking_severity,
            ..Patterns::default()
        };
        Ok(AdmissionPolicy {
            window: self.window,
            kinds: self
                .kinds
                .iter()
                .map(|(name, k)| UpdateKind {
                    name: name.clone(),
                    class: k.class,
                    limit: k.limit,
                })
                .collect(),
            rate_limits: self.rate_limits,
            reputation: self.reputation,
            patterns: self.patterns.then_some(patterns),
            warning_limit: self.warning_limit,
            block: self.block,
            max_block: self.max_block,
            progressive: self.progressive,
            exempt_admins: self.exempt_admins,
        })
    }
}

#[cfg(test)]
mod tests;
