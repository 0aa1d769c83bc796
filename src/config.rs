//! Typed settings: built-in defaults, then one TOML file, then `AUTHGATE_*`
//! environment variables (`__` separates nesting: `AUTHGATE_DATABASE__URL`).
//! `authgate.example.toml` documents every key with its default.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::auth::{Authenticator, Credential, KeyHash, Role};
use crate::domain::{
    AccessList, ContextName, ContextPolicy, KeyKind, Ladder, LockDuration, Policy, Rule,
    SessionPolicy, TimeoutMode, TotpAlgorithm, TotpParams, TotpPolicy, UserId, Window,
};

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key {key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub cleanup: CleanupConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub totp: TotpConfig,
    /// Replaces the built-in contexts as a whole when given, so a deployment
    /// never carries rules it did not write down.
    #[serde(default = "default_contexts")]
    pub contexts: BTreeMap<String, ContextConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address. Loopback by default: exposing it is a decision.
    pub listen: SocketAddr,
    /// Longest a call may run before it is answered DEADLINE_EXCEEDED
    /// (a caller's shorter grpc-timeout wins), so a stuck store cannot pile
    /// up requests.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Calls served at once; beyond it new calls are answered
    /// RESOURCE_EXHAUSTED at once rather than queued without bound, so an
    /// overloaded replica sheds load and clients retry elsewhere. Health
    /// checks are exempt.
    pub max_concurrent_requests: usize,
    /// After SIGTERM or SIGINT: how long in-flight calls may take to finish
    /// before the process exits anyway.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Connections are closed (gracefully, with GOAWAY) after this long, so
    /// clients balancing over the headless Service's addresses reconnect
    /// and spread onto replicas added since.
    #[serde(with = "duration")]
    pub max_connection_age: Duration,
    /// After max_connection_age, how long calls on the connection (alert
    /// streams included) may go on before it is closed regardless: an idle
    /// or unresponsive peer cannot keep a connection forever.
    #[serde(with = "duration")]
    pub max_connection_age_grace: Duration,
    /// A new connection that has sent nothing after this long is closed.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// How often an HTTP/2 ping checks an idle connection's peer...
    #[serde(with = "duration")]
    pub keepalive_interval: Duration,
    /// ...and how long the peer has to answer before the connection is
    /// closed, so half-open connections (a peer that vanished) go away.
    #[serde(with = "duration")]
    pub keepalive_timeout: Duration,
    /// TLS for the gRPC port; plaintext when absent.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            request_timeout: Duration::from_secs(5),
            max_concurrent_requests: 256,
            shutdown_grace: Duration::from_secs(20),
            max_connection_age: Duration::from_secs(300),
            max_connection_age_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain and private key of the server.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates are verified against; enables
    /// mutual TLS. A verified certificate whose name is in auth.certs
    /// authenticates its caller without an API key.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Refuse connections without a valid client certificate (with
    /// client_ca_file); otherwise they may still authenticate with a key.
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Serve without credentials on a non-loopback address. Without keys
    /// or certs every caller is anonymous and may do everything, which is
    /// only safe where the network itself is trusted.
    pub allow_anonymous: bool,
    /// API keys: `{ name, hash = "sha256:...", roles = ["check", "admin"] }`.
    /// `authgate keygen` prints a key and its hash.
    pub keys: Vec<ApiKeyConfig>,
    /// A TOML file with more keys as `[[keys]]` tables (a mounted Secret).
    pub keys_file: Option<PathBuf>,
    /// mTLS callers: `{ name, roles }`, name being a verified client
    /// certificate's subject common name or DNS subject-alternative name.
    pub certs: Vec<CertCallerConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds the key; logged and recorded in the audit trail.
    pub name: String,
    pub hash: String,
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertCallerConfig {
    pub name: String,
    pub roles: Vec<Role>,
}

/// The layout of auth.keys_file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKeyConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (the embedded default) or `postgres://...`.
    pub url: DatabaseUrl,
    /// Pool size per replica. Each in-flight state change holds one
    /// connection for a few round trips.
    pub max_connections: u32,
    /// How long an RPC waits for a connection before answering UNAVAILABLE:
    /// short, because a caller waiting on authgate is a user waiting.
    #[serde(with = "duration")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: DatabaseUrl("sqlite://authgate.db".into()),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// A database URL, which may carry a password: it prints with the password
/// replaced.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.split_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:REDACTED@{host}"),
                None => self.0.clone(),
            },
            None => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// How often expired failures and locks are purged (pyTMBot's 10 min).
    /// Purging is housekeeping only: expired state never affects a decision.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How long the audit trail keeps events.
    #[serde(with = "duration")]
    pub audit_retention: Duration,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            interval: Duration::from_secs(600),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `authgate=debug`, ...
    pub level: String,
    /// `json` (one object per line), `text`, or `auto`: JSON when stdout
    /// is not a terminal, as under Kubernetes.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Auto,
    Json,
    Text,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// After an alert of one kind about one subject, more of the same are
    /// held back this long (pyTMBot's ADMIN_NOTIFY_SUPPRESSION).
    #[serde(with = "duration")]
    pub suppression: Duration,
    /// Events a subscriber may fall behind before it loses the oldest (and
    /// is told how many); bounds memory and keeps RPCs from ever waiting.
    pub buffer: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            suppression: Duration::from_secs(300),
            buffer: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where Prometheus scrapes, apart from the gRPC port so it can be
    /// exposed to the monitoring network only.
    pub listen: SocketAddr,
    pub path: String,
    /// How often the session and lock gauges are recomputed from the shared
    /// store, so every replica reports the same truth.
    #[serde(with = "duration")]
    pub refresh_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            path: "/metrics".into(),
            refresh_interval: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Users who may act at all; empty allows everyone.
    pub allowed_user_ids: Vec<String>,
    /// Users who may call AdminService; must be in allowed_user_ids when
    /// that is non-empty.
    pub admin_user_ids: Vec<String>,
    /// What happens to users who are not on the allow list and keep trying.
    pub not_allowed: NotAllowedConfig,
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

fn ten_minutes() -> Duration {
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
    pub algorithm: String,
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
    /// Keys that encrypt TOTP secrets at rest; new secrets use
    /// `active_key` (default: the last one). With none configured and the
    /// SQLite store, a key file is generated beside the database.
    pub keys: Vec<TotpKeyConfig>,
    pub active_key: Option<String>,
}

impl Default for TotpConfig {
    fn default() -> Self {
        TotpConfig {
            issuer: "authgate".into(),
            algorithm: "SHA1".into(),
            digits: 6,
            period: Duration::from_secs(30),
            skew: 1,
            drift_probe: 10,
            max_attempts: 5,
            window: ten_minutes(),
            block: ten_minutes(),
            required_user_ids: Vec::new(),
            keys: Vec::new(),
            active_key: None,
        }
    }
}

/// One encryption key: from a file (32 raw bytes or base64; how Kubernetes
/// mounts a Secret) or inline base64 (for environment variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpKeyConfig {
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
    /// `user`, `ip`, `user+ip` or `session`.
    pub key: String,
    /// Activities counted (RecordFailure.activity); empty counts all.
    #[serde(default)]
    pub activities: Vec<String>,
    #[serde(with = "duration")]
    pub window: Duration,
    #[serde(default)]
    pub captcha_after: Option<u32>,
    #[serde(default)]
    pub lock_after: Option<u32>,
    /// Required with lock_after.
    #[serde(default)]
    pub lockout: Option<LockoutConfig>,
    #[serde(with = "duration", default = "day")]
    pub recurrence_window: Duration,
    #[serde(default)]
    pub extend_while_locked: bool,
}

fn day() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Either a list of tiers (`["30m", "permanent"]`, the last repeating) or a
/// progressive ladder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LockoutConfig {
    Tiers(Vec<String>),
    Progressive(ProgressiveConfig),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressiveConfig {
    #[serde(with = "duration")]
    pub base: Duration,
    pub factor: f64,
    #[serde(with = "duration")]
    pub max: Duration,
    #[serde(default)]
    pub permanent_after: Option<u32>,
}

fn rule(
    name: &str,
    key: &str,
    window_min: u64,
    captcha_after: Option<u32>,
    lock_after: Option<u32>,
    lockout: Option<LockoutConfig>,
) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        key: key.into(),
        activities: Vec::new(),
        window: Duration::from_secs(window_min * 60),
        captcha_after,
        lock_after,
        lockout,
        recurrence_window: day(),
        extend_while_locked: false,
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

/// The shipped rule sets; authgate.example.toml spells out the same.
fn default_contexts() -> BTreeMap<String, ContextConfig> {
    let login = vec![
        // oai-web's login limiter, on the user+ip pair so that a stranger
        // cannot lock a user out from their own address.
        rule(
            "user_ip",
            "user+ip",
            30,
            None,
            Some(5),
            Some(LockoutConfig::Tiers(vec!["30m".into(), "permanent".into()])),
        ),
        // Password spraying from one address across many users.
        rule("ip", "ip", 30, Some(10), Some(20), progressive(30, 24)),
        // Guessing one user's password from many addresses: a captcha, never
        // a lock, so attackers cannot lock the victim out this way.
        rule("user", "user", 30, Some(10), None, None),
    ];
    let password_reset = vec![rule("user", "user", 60, None, Some(3), progressive(60, 24))];
    // The anti-spam seed: warnings (captcha) after 3 strikes, progressive
    // blocks from 5.
    let bot = vec![rule(
        "user",
        "user",
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
    };
    [
        ("login", context(login, false)),
        ("password_reset", context(password_reset, false)),
        ("bot", context(bot, false)),
        // Admin actions need a second factor.
        ("admin", context(Vec::new(), true)),
    ]
    .into_iter()
    .map(|(name, ctx)| (name.to_owned(), ctx))
    .collect()
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            database: DatabaseConfig::default(),
            cleanup: CleanupConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            alerts: AlertsConfig::default(),
            access: AccessConfig::default(),
            totp: TotpConfig::default(),
            contexts: default_contexts(),
        }
    }
}

/// Durations as people write them: read with humantime (`90days`, `30m`,
/// `1h 30m`), written back in the largest unit that divides them (`90d`,
/// `30m`, `90m`), never as humantime's calendar months.
mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime_serde::deserialize(d)
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*value))
    }

    pub fn format(value: Duration) -> String {
        const UNITS: [(u128, &str); 5] = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
            (1, "ms"),
        ];
        let ms = value.as_millis();
        if !value.subsec_nanos().is_multiple_of(1_000_000) {
            return humantime::format_duration(value).to_string();
        }
        if ms == 0 {
            return "0s".into();
        }
        let (size, unit) = UNITS
            .iter()
            .find(|(size, _)| ms.is_multiple_of(*size))
            .copied()
            .unwrap_or((1, "ms"));
        format!("{}{unit}", ms / size)
    }
}

const ENV_PREFIX: &str = "AUTHGATE_";

/// The top-level tables of the configuration, as the defaults serialize.
fn sections() -> BTreeSet<String> {
    match toml::Table::try_from(Config::default()) {
        Ok(table) => table.keys().cloned().collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The section a key (`server.listen`) belongs to.
fn section_of(key: &str) -> &str {
    key.split('.').next().unwrap_or_default()
}

/// An `AUTHGATE_*` variable that sets no configuration key and looks as if
/// it was meant to: it starts with a section's name but lacks the `__`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    pub variable: String,
    /// The variable it probably meant.
    pub meant: String,
}

/// The `AUTHGATE_*` variables of `vars` that were ignored although they
/// resemble configuration keys. Only names are looked at: values may be
/// secrets.
pub fn near_misses(vars: impl Iterator<Item = String>) -> Vec<NearMiss> {
    let sections = sections();
    vars.filter_map(|variable| {
        let rest = variable.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
        if rest.contains("__") {
            return None;
        }
        let section = sections.iter().find(|s| {
            rest.strip_prefix(s.as_str())
                .is_some_and(|tail| tail.len() > 1 && tail.starts_with('_'))
        })?;
        let meant = format!(
            "{ENV_PREFIX}{}__{}",
            section.to_ascii_uppercase(),
            rest[section.len() + 1..].to_ascii_uppercase()
        );
        Some(NearMiss { variable, meant })
    })
    .collect()
}

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "authgate.toml";

impl Config {
    /// Loads `path` (or ./authgate.toml when present), then the environment,
    /// and validates the result.
    pub fn load(path: Option<&Path>) -> Result<(Config, Policy), ConfigError> {
        let mut figment = Figment::new();
        let implicit = PathBuf::from(DEFAULT_CONFIG_FILE);
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(invalid(
                        "--config",
                        format!("{} does not exist", p.display()),
                    ));
                }
                figment = figment.merge(Toml::file_exact(p));
            }
            None if implicit.exists() => figment = figment.merge(Toml::file_exact(implicit)),
            None => {}
        }
        Self::from_figment(figment.merge(Self::env()))
    }

    /// The `AUTHGATE_<SECTION>__<KEY>` variables, for the sections this
    /// configuration has. Any other `AUTHGATE_*` variable is not a key and
    /// is left alone: Kubernetes gives every pod `AUTHGATE_SERVICE_HOST`,
    /// `AUTHGATE_PORT` and the like beside a Service named authgate, the
    /// admin CLI reads `AUTHGATE_ADDR`, and `AUTHGATE_CONFIG` names the file.
    /// A misspelt key inside a section is still an error, as in the file.
    fn env() -> Env {
        let sections = sections();
        Env::prefixed(ENV_PREFIX)
            .split("__")
            .filter(move |key| sections.contains(&section_of(key.as_str()).to_ascii_lowercase()))
    }

    pub fn from_figment(figment: Figment) -> Result<(Config, Policy), ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        let policy = config.policy()?;
        Ok((config, policy))
    }

    /// Parses a TOML document on top of the defaults; for tests and tools.
    pub fn from_toml(text: &str) -> Result<(Config, Policy), ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

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
        if self.cleanup.interval.is_zero() {
            return Err(invalid("cleanup.interval", "must be more than 0"));
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
        let user_ids = |key: &str, raw: &[String]| -> Result<BTreeSet<UserId>, ConfigError> {
            raw.iter()
                .enumerate()
                .map(|(i, id)| {
                    UserId::parse(&format!("{key}[{i}]"), id)
                        .map_err(|e| invalid(e.field, e.problem))
                })
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
            name: "allow_list".into(),
            key: KeyKind::User,
            activities: Vec::new(),
            window: na.window,
            captcha_after: None,
            lock_after: Some(na.max_attempts),
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
        let mut contexts = Vec::new();
        for (name, ctx) in &self.contexts {
            let key = format!("contexts.{name}");
            let cname = ContextName::parse(&key, name).map_err(|e| invalid(e.field, e.problem))?;
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
                let rule = rc.to_rule(&format!("{key}.rules[{i}]"))?;
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
            });
        }
        Ok(Policy::new(contexts, access, totp, self.alerts.suppression))
    }
}

impl Config {
    /// The credentials callers must present, read from auth.keys and
    /// auth.keys_file. Refuses to serve a non-loopback address without any
    /// unless auth.allow_anonymous says so.
    pub fn authenticator(&self) -> Result<Authenticator, ConfigError> {
        let mut entries: Vec<(String, ApiKeyConfig)> = self
            .auth
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("auth.keys[{i}]"), k.clone()))
            .collect();
        if let Some(path) = &self.auth.keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("auth.keys_file", format!("{}: {e}", path.display())))?;
            let file: KeysFile = toml::from_str(&text)
                .map_err(|e| invalid("auth.keys_file", format!("{}: {e}", path.display())))?;
            entries.extend(
                file.keys
                    .into_iter()
                    .enumerate()
                    .map(|(i, k)| (format!("auth.keys_file {} keys[{i}]", path.display()), k)),
            );
        }
        let mut names = BTreeSet::new();
        let mut keys = Vec::new();
        for (key, k) in entries {
            if k.name.is_empty() || k.name.len() > 64 {
                return Err(invalid(format!("{key}.name"), "must be 1 to 64 bytes"));
            }
            if !names.insert(k.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate key name {:?}", k.name),
                ));
            }
            if k.roles.is_empty() {
                return Err(invalid(
                    format!("{key}.roles"),
                    "needs check, admin or both",
                ));
            }
            let hash = KeyHash::parse(&k.hash).map_err(|p| invalid(format!("{key}.hash"), p))?;
            keys.push(Credential {
                name: k.name,
                hash,
                roles: k.roles.into_iter().collect(),
            });
        }
        let mut certs = BTreeMap::new();
        for (i, c) in self.auth.certs.iter().enumerate() {
            if c.roles.is_empty() {
                return Err(invalid(
                    format!("auth.certs[{i}].roles"),
                    "needs check, admin or both",
                ));
            }
            if certs
                .insert(c.name.clone(), c.roles.iter().copied().collect())
                .is_some()
            {
                return Err(invalid(
                    format!("auth.certs[{i}].name"),
                    format!("duplicate name {:?}", c.name),
                ));
            }
        }
        if !certs.is_empty()
            && self
                .server
                .tls
                .as_ref()
                .and_then(|t| t.client_ca_file.as_ref())
                .is_none()
        {
            return Err(invalid(
                "auth.certs",
                "needs server.tls.client_ca_file, or no certificate could ever be verified",
            ));
        }
        let auth = Authenticator::new(keys, certs);
        if auth.is_anonymous()
            && !self.server.listen.ip().is_loopback()
            && !self.auth.allow_anonymous
        {
            return Err(invalid(
                "auth.keys",
                format!(
                    "no API keys configured and server.listen ({}) is not loopback: anyone who \
                     can reach it could unlock accounts. Add keys (authgate keygen) or set \
                     auth.allow_anonymous = true",
                    self.server.listen
                ),
            ));
        }
        Ok(auth)
    }
}

impl TotpConfig {
    fn policy(&self, required: &BTreeSet<UserId>) -> Result<TotpPolicy, ConfigError> {
        let algorithm = TotpAlgorithm::from_name(&self.algorithm)
            .ok_or_else(|| invalid("totp.algorithm", "must be SHA1, SHA256 or SHA512"))?;
        let period = u32::try_from(self.period.as_secs()).unwrap_or(u32::MAX);
        if Duration::from_secs(u64::from(period)) != self.period {
            return Err(invalid("totp.period", "must be whole seconds"));
        }
        let defaults = TotpParams {
            algorithm,
            digits: self.digits,
            period,
        };
        defaults
            .validate("totp.digits", "totp.period")
            .map_err(|e| invalid(e.field, e.problem))?;
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
        for (i, k) in self.keys.iter().enumerate() {
            if k.id.is_empty() || k.id.len() > 64 {
                return Err(invalid(
                    format!("totp.keys[{i}].id"),
                    "must be 1 to 64 bytes",
                ));
            }
            if k.file.is_some() == k.key.is_some() {
                return Err(invalid(
                    format!("totp.keys[{i}]"),
                    "needs exactly one of file, key",
                ));
            }
        }
        if let Some(active) = &self.active_key
            && !self.keys.iter().any(|k| &k.id == active)
        {
            return Err(invalid(
                "totp.active_key",
                format!("no key with id {active:?} in totp.keys"),
            ));
        }
        Ok(TotpPolicy {
            issuer: self.issuer.clone(),
            defaults,
            window: Window {
                skew: self.skew,
                probe: self.drift_probe,
            },
            rule: Rule {
                name: "totp".into(),
                key: KeyKind::User,
                activities: Vec::new(),
                window: self.window,
                captcha_after: None,
                lock_after: Some(self.max_attempts),
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
        let kind = KeyKind::from_name(&self.key).ok_or_else(|| {
            invalid(
                format!("{key}.key"),
                format!("{:?} is not one of user, ip, user+ip, session", self.key),
            )
        })?;
        if self.window.is_zero() {
            return Err(invalid(format!("{key}.window"), "must be more than 0"));
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
        let ladder = match (&self.lockout, self.lock_after) {
            (None, Some(_)) => {
                return Err(invalid(
                    format!("{key}.lockout"),
                    "is required with lock_after",
                ));
            }
            (Some(_), None) => {
                return Err(invalid(format!("{key}.lockout"), "needs lock_after"));
            }
            (None, None) => Ladder::Tiers(Vec::new()),
            (Some(l), Some(_)) => l.to_ladder(&format!("{key}.lockout"))?,
        };
        Ok(Rule {
            name: self.name.clone(),
            key: kind,
            activities: self.activities.clone(),
            window: self.window,
            captcha_after: self.captcha_after,
            lock_after: self.lock_after,
            ladder,
            recurrence_window: self.recurrence_window,
            extend_while_locked: self.extend_while_locked,
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
                tiers
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        if t == "permanent" {
                            return Ok(LockDuration::Permanent);
                        }
                        match humantime::parse_duration(t) {
                            Ok(d) if !d.is_zero() => Ok(LockDuration::For(d)),
                            _ => Err(invalid(
                                format!("{key}[{i}]"),
                                format!("{t:?} is neither a duration like 30m nor \"permanent\""),
                            )),
                        }
                    })
                    .collect::<Result<_, _>>()
                    .map(Ladder::Tiers)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn defaults_validate_and_the_example_file_matches_them() {
        let (config, _) = Config::from_toml("").unwrap();
        let example = include_str!("../authgate.example.toml");
        let (from_file, _) = Config::from_toml(example).unwrap();
        assert_eq!(config.to_toml(), from_file.to_toml());
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[server]\nlisten = \"nope\"").contains("server.listen"));
        assert!(err("[database]\nurl = \"mysql://x\"").contains("database.url"));
        assert!(err("[cleanup]\ninterval = \"soon\"").contains("cleanup.interval"));
        let bad_rule = r#"
            [[contexts.login.rules]]
            name = "r"
            key = "mac"
            window = "1m"
            lock_after = 1
            lockout = ["1m"]
        "#;
        assert!(err(bad_rule).contains("contexts.login.rules[0].key"));
        let bad_tier = bad_rule
            .replace("\"mac\"", "\"ip\"")
            .replace("[\"1m\"]", "[\"forever\"]");
        assert!(err(&bad_tier).contains("contexts.login.rules[0].lockout[0]"));
        assert!(
            err("[access]\nallowed_user_ids = [\"a\"]\nadmin_user_ids = [\"a\", \"b\"]")
                .contains("not there: b")
        );
        assert!(err("[server]\nlisen = \"x\"").contains("lisen"));
        assert!(
            err("[contexts.admin]\ntotp = true\nfailure_mode = \"fail_open\"")
                .contains("contexts.admin.failure_mode")
        );
        assert!(
            err("[server]\nmax_concurrent_requests = 0").contains("server.max_concurrent_requests")
        );
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        let (config, _) = Config::from_toml("[cleanup]\ninterval = \"500ms\"").unwrap();
        assert_eq!(config.cleanup.interval, Duration::from_millis(500));
    }

    #[test]
    fn passwords_never_print() {
        let url = DatabaseUrl::new("postgres://app:hunter2@db:5432/authgate");
        assert_eq!(url.redacted(), "postgres://app:REDACTED@db:5432/authgate");
        assert!(!format!("{url:?}").contains("hunter2"));
        let config = Config {
            database: DatabaseConfig {
                url,
                ..DatabaseConfig::default()
            },
            ..Config::default()
        };
        assert!(!config.to_toml().contains("hunter2"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("authgate.toml", "[server]\nlisten = \"127.0.0.1:1\"")?;
            jail.set_env("AUTHGATE_SERVER__LISTEN", "127.0.0.1:2");
            jail.set_env("AUTHGATE_ACCESS__ADMIN_USER_IDS", "[\"ops\"]");
            jail.set_env("AUTHGATE_CONFIG", "ignored.toml");
            let (config, policy) = Config::load(None).expect("loads");
            assert_eq!(config.server.listen.port(), 2);
            assert!(policy.access.is_admin(&UserId::parse("x", "ops").unwrap()));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn variables_that_are_not_keys_do_not_stop_start_up() {
        figment::Jail::expect_with(|jail| {
            // What Kubernetes sets beside a Service named authgate, and what
            // the admin CLI reads.
            for (name, value) in [
                ("AUTHGATE_SERVICE_HOST", "10.96.0.12"),
                ("AUTHGATE_SERVICE_PORT", "50051"),
                ("AUTHGATE_PORT", "tcp://10.96.0.12:50051"),
                ("AUTHGATE_PORT_50051_TCP_ADDR", "10.96.0.12"),
                ("AUTHGATE_ADDR", "http://127.0.0.1:50051"),
                ("AUTHGATE_API_KEY", "ag_secret"),
                ("AUTHGATE_ACTOR", "ops"),
                ("AUTHGATE_SERVER_LISTEN", "127.0.0.1:3"),
            ] {
                jail.set_env(name, value);
            }
            let (config, _) = Config::load(None).expect("loads");
            assert_eq!(config.server.listen, ServerConfig::default().listen);
            // A misspelt key inside a section is refused, as in the file.
            jail.set_env("AUTHGATE_SERVER__LISTNE", "127.0.0.1:2");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listne"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn durations_print_in_the_largest_whole_unit() {
        let (config, _) = Config::from_toml(
            "[cleanup]\naudit_retention = \"90days\"\ninterval = \"1h 30m\"\n\
             [server]\nrequest_timeout = \"1500ms\"",
        )
        .unwrap();
        let text = config.to_toml();
        assert!(text.contains("audit_retention = \"90d\""), "{text}");
        assert!(text.contains("interval = \"90m\""), "{text}");
        assert!(text.contains("request_timeout = \"1500ms\""), "{text}");
        let (again, _) = Config::from_toml(&text).expect("the output reads back");
        assert_eq!(
            again.cleanup.audit_retention,
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(duration::format(Duration::ZERO), "0s");
    }

    #[test]
    fn near_misses_name_the_key_they_resemble() {
        let vars = [
            "AUTHGATE_SERVER_LISTEN",
            "AUTHGATE_DATABASE_URL",
            "AUTHGATE_SERVICE_HOST",
            "AUTHGATE_SERVER__LISTEN",
            "AUTHGATE_PORT_50051_TCP",
            "HOME",
        ]
        .map(String::from);
        let misses = near_misses(vars.into_iter());
        assert_eq!(
            misses,
            [
                NearMiss {
                    variable: "AUTHGATE_SERVER_LISTEN".into(),
                    meant: "AUTHGATE_SERVER__LISTEN".into(),
                },
                NearMiss {
                    variable: "AUTHGATE_DATABASE_URL".into(),
                    meant: "AUTHGATE_DATABASE__URL".into(),
                },
            ]
        );
    }
}
