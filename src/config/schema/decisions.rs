//! The file's keys that decide requests: the allow and admin lists,
//! contexts and their rules, admission, two-factor sign-in and password
//! keys, each setting documented with its default and the reason for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::super::lockout::LockoutConfig;
use super::super::{by_name, duration};
use crate::domain::{KeyKind, KindClass, TotpAlgorithm};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Users who may act at all; empty allows everyone.
    pub allowed_user_ids: Vec<String>,
    /// Users who may call AdminService; must be in allowed_user_ids when
    /// that is non-empty.
    pub admin_user_ids: Vec<String>,
    /// What happens to users who are not on the allow list and keep trying
    /// (and to addresses outside a context's allowed_networks).
    pub not_allowed: NotAllowedConfig,
    /// Networks (CIDRs or addresses, IPv4 and IPv6) that rules on the
    /// address (`ip`, `user+ip`) never count or judge: an office or a
    /// carrier NAT must not lock out everyone behind it. Rules on the user
    /// still apply. Empty by default: trusting is a decision. Not the
    /// gateway's trusted_proxies, which say whose X-Forwarded-For to
    /// believe; a machine in the office is not a proxy.
    pub trusted_networks: Vec<String>,
    /// The widest range AdminService.Ban takes without `force`: a ban of
    /// an IPv4 network shorter than /16, or an IPv6 one shorter than /32
    /// (an ISP's allocation), is refused as the slip of a finger it
    /// usually is (10.0.0.0/8 for 10.0.0.8).
    pub ban_min_ipv4_prefix: u8,
    pub ban_min_ipv6_prefix: u8,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            allowed_user_ids: Vec::new(),
            admin_user_ids: Vec::new(),
            not_allowed: NotAllowedConfig::default(),
            trusted_networks: Vec::new(),
            ban_min_ipv4_prefix: crate::domain::BAN_MINIMUM.v4,
            ban_min_ipv6_prefix: crate::domain::BAN_MINIMUM.v6,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotAllowedConfig {
    /// Attempts within `window` that block the user.
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub window: Duration,
    #[serde(with = "duration")]
    pub block: Duration,
}

impl Default for NotAllowedConfig {
    fn default() -> Self {
        NotAllowedConfig {
            max_attempts: 3,
            window: Duration::from_secs(3600),
            block: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Requests in this context need a second factor (TOTP).
    #[serde(default)]
    pub totp: bool,
    /// How long a two-factor session lasts here (pyTMBot's 10 min).
    #[serde(with = "duration", default = "ten_minutes")]
    pub session_timeout: Duration,
    /// `absolute`: from the login; `idle`: from the last allowed request.
    #[serde(default)]
    pub session_mode: SessionMode,
    /// What CheckAccess answers while the store is unreachable:
    /// `fail_closed` (UNAVAILABLE; callers deny) or `fail_open` (ALLOW with
    /// reason store_unavailable).
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Anti-spam admission (AccessService.Admit): per-kind limits, warnings,
    /// blocks, reputation and spam patterns. Absent: Admit is refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<AdmissionConfig>,
    /// This context's trusted networks, in place of access.trusted_networks
    /// (`[]` trusts none here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_networks: Option<Vec<String>>,
    /// The only networks this context admits (a webhook's sender's, as
    /// Telegram's 149.154.160.0/20 and 91.108.4.0/22); any other address is
    /// denied (network_not_allowed) and counted as access.not_allowed
    /// counts strangers, and a request without an address is refused.
    /// Empty: every address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_networks: Vec<String>,
    /// `shadow` runs every rule of the context in shadow mode, whatever
    /// its own mode says.
    #[serde(default, skip_serializing_if = "RuleMode::is_enforce")]
    pub mode: RuleMode,
}

/// A context's admission rules. The defaults are the aiogram anti-spam
/// middleware's, which the shipped `bot` context uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// The sliding window the limits count over.
    #[serde(with = "duration")]
    pub window: Duration,
    /// The kinds of update clients send, by name: each one's class (how the
    /// spam patterns see it: text, callback, media or command) and how many
    /// fit in the window (none: never limited; commands never are).
    pub kinds: BTreeMap<String, UpdateKindConfig>,
    /// Off: no kind is limited; patterns and blocks still apply.
    pub rate_limits: bool,
    /// Reputation (0.5 to 2.0, starting at 1.0; −0.1 a warning, −0.3 a
    /// block, +0.05 every 10 admitted updates) scales every limit. Off:
    /// limits stay as written.
    pub reputation: bool,
    /// Spam patterns among the user's 10 latest admitted updates.
    pub patterns: bool,
    /// Identical text fingerprints (a media update's is its caption's;
    /// commands aside) that make a pattern.
    pub identical_text: PatternConfig,
    /// Identical callback fingerprints that make a pattern.
    pub identical_callback: PatternConfig,
    /// Media updates that make a flood.
    pub media_flood: PatternConfig,
    /// A pattern this severe blocks at once; a milder one only warns.
    pub blocking_severity: f64,
    /// Warnings that block, when a rate-limit warning reaches them.
    pub warning_limit: u32,
    /// How long a block lasts...
    #[serde(with = "duration")]
    pub block: Duration,
    /// ...at most, when progressive.
    #[serde(with = "duration")]
    pub max_block: Duration,
    /// Blocks last `block × 2^(warnings ÷ warning_limit)`; off, always
    /// `block`.
    pub progressive: bool,
    /// Users on access.admin_user_ids are admitted without being counted.
    pub exempt_admins: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKindConfig {
    #[serde(with = "by_name")]
    pub class: KindClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    pub count: usize,
    pub severity: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        let kind = |class, limit| UpdateKindConfig { class, limit };
        AdmissionConfig {
            window: Duration::from_secs(10),
            kinds: [
                ("text", kind(KindClass::Text, Some(8))),
                ("forward", kind(KindClass::Text, Some(20))),
                ("callback", kind(KindClass::Callback, Some(10))),
                ("media", kind(KindClass::Media, Some(10))),
                ("command", kind(KindClass::Command, None)),
            ]
            .into_iter()
            .map(|(name, k)| (name.to_owned(), k))
            .collect(),
            rate_limits: true,
            reputation: true,
            patterns: true,
            identical_text: PatternConfig {
                count: 5,
                severity: 1.0,
            },
            identical_callback: PatternConfig {
                count: 8,
                severity: 0.8,
            },
            media_flood: PatternConfig {
                count: 7,
                severity: 0.6,
            },
            blocking_severity: 0.9,
            warning_limit: 3,
            block: Duration::from_secs(120),
            max_block: Duration::from_secs(3600),
            progressive: true,
            exempt_admins: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    #[default]
    FailClosed,
    FailOpen,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    #[default]
    Absolute,
    Idle,
}

pub(in crate::config) fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

/// A secret in the configuration: prints as REDACTED.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("REDACTED")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("REDACTED")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TotpConfig {
    /// The issuer authenticator apps show beside the account.
    pub issuer: String,
    /// For new enrollments (stored per user, so changing these later
    /// breaks nobody): SHA1 works with every app.
    #[serde(with = "by_name")]
    pub algorithm: TotpAlgorithm,
    pub digits: u8,
    #[serde(with = "duration")]
    pub period: Duration,
    /// Steps either side of now that are accepted.
    pub skew: u32,
    /// Steps beyond `skew` where a match is answered clock_skew.
    pub drift_probe: u32,
    /// Failed codes within `window` that block the user's TOTP for `block`
    /// (pyTMBot's max_totp_attempts).
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub window: Duration,
    #[serde(with = "duration")]
    pub block: Duration,
    /// Users who need a second factor in every context.
    pub required_user_ids: Vec<String>,
    /// One-time recovery codes issued when an enrollment is confirmed (and
    /// on request): a user who loses their phone signs in with one. 0
    /// issues none; at most 50.
    pub recovery_codes: u32,
    /// Keys that encrypt TOTP secrets at rest; new secrets use
    /// `active_key` (default: the last one). With none configured and the
    /// SQLite store, a key file is generated beside the database.
    pub keys: Vec<SecretKeyConfig>,
    pub active_key: Option<String>,
}

/// Password fingerprints (Subject.password_fingerprint) are re-keyed with
/// HMAC-SHA256 under these before anything keeps them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordsConfig {
    /// Every key counts each fingerprint under its own id, so a key is
    /// rotated by adding the new one and removing the old once its counts
    /// no longer matter. With none configured and the SQLite store, a key
    /// file is generated beside the database; on Postgres, a context with a
    /// `password` rule refuses to start without one.
    pub keys: Vec<SecretKeyConfig>,
}

impl Default for TotpConfig {
    fn default() -> Self {
        TotpConfig {
            issuer: "authgate".into(),
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
            period: Duration::from_secs(30),
            skew: 1,
            drift_probe: 10,
            max_attempts: 5,
            window: ten_minutes(),
            block: ten_minutes(),
            required_user_ids: Vec::new(),
            recovery_codes: 10,
            keys: Vec::new(),
            active_key: None,
        }
    }
}

/// One key: from a file (32 raw bytes or base64; how Kubernetes mounts a
/// Secret) or inline base64 (for environment variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyConfig {
    pub id: String,
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<SecretValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique within its context; reported in verdicts.
    pub name: String,
    /// `failures` (the default): counts what RecordFailure reports, with
    /// captcha_after and lock_after. `rate`: counts the requests CheckAccess
    /// and Envoy's ShouldRateLimit let through, at most `limit` a window.
    #[serde(default, skip_serializing_if = "RuleKindConfig::is_failures")]
    pub kind: RuleKindConfig,
    /// `user`, `ip`, `user+ip`, `session` or `password` (not for rate
    /// rules).
    #[serde(with = "by_name")]
    pub key: KeyKind,
    /// Activities counted (RecordFailure.activity); empty counts all.
    #[serde(default)]
    pub activities: Vec<String>,
    #[serde(with = "duration")]
    pub window: Duration,
    #[serde(default)]
    pub captcha_after: Option<u32>,
    #[serde(default)]
    pub lock_after: Option<u32>,
    /// A rate rule's requests per window, 1 to 1000.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Required with lock_after. On a rate rule, optional: a request over
    /// the limit then also locks the key (a penalty box).
    #[serde(default)]
    pub lockout: Option<LockoutConfig>,
    #[serde(with = "duration", default = "day")]
    pub recurrence_window: Duration,
    #[serde(default)]
    pub extend_while_locked: bool,
    /// Rules on the address (`ip`, `user+ip`): IPv6 addresses count by
    /// this prefix, 32 to 128. Default 64: one subscriber holds a /64, so a
    /// rule per address would be no rule at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_prefix: Option<u8>,
    /// Rules on the address: IPv4 addresses count by this prefix, 8 to 32.
    /// Default 32, each address on its own; 24 makes a subnet rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_prefix: Option<u8>,
    /// `enforce` (the default), or `shadow`: the rule counts and decides
    /// as usual but never changes the answer, which reports what it would
    /// have decided. Its counts are its own, and stay when it is switched
    /// to enforcing.
    #[serde(default, skip_serializing_if = "RuleMode::is_enforce")]
    pub mode: RuleMode,
}

/// Whether a rule's verdicts decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    #[default]
    Enforce,
    Shadow,
}

impl RuleMode {
    fn is_enforce(&self) -> bool {
        *self == RuleMode::Enforce
    }
}

/// What a rule counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKindConfig {
    #[default]
    Failures,
    Rate,
}

impl RuleKindConfig {
    fn is_failures(&self) -> bool {
        *self == RuleKindConfig::Failures
    }
}

pub(in crate::config) fn day() -> Duration {
    Duration::from_secs(24 * 3600)
}
