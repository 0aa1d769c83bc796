//! Typed settings: built-in defaults, then one TOML file, then `AUTHGATE_*`
//! environment variables (`__` separates nesting: `AUTHGATE_DATABASE__URL`).
//! `authgate.example.toml` documents every key with its default.
//!
//! One job a file: `schema` holds the keys and their defaults, `shipped` the
//! rule sets a deployment gets without writing any, `load` the layering of
//! file and environment, `policy` the checks that build the domain's policy,
//! `keys` the callers' credentials. `duration`, `by_name` and `lockout` read
//! values straight into their types and write them back as people write
//! them.

mod by_name;
mod changes;
mod duration;
mod keys;
mod load;
mod lockout;
mod policy;
mod schema;
mod shipped;

pub use changes::{Change, RESTART_ONLY, changes};
pub use load::{DEFAULT_CONFIG_FILE, NearMiss, near_misses};
pub use lockout::{LockoutConfig, ProgressiveConfig};
pub use schema::{
    AccessConfig, AdmissionConfig, AlertsConfig, ApiKeyConfig, AuthConfig, CaptchaAnswer,
    CertCallerConfig, CleanupConfig, ClockConfig, Config, ContextConfig, DatabaseConfig,
    DatabaseUrl, EntryKind, FailureMode, ForwardAuthConfig, GatewayConfig, GatewayRouteConfig,
    LogConfig, LogFormat, MetricsConfig, NotAllowedConfig, PasswordsConfig, RateLimitConfig,
    RuleConfig, RuleKindConfig, SecretKeyConfig, SecretValue, ServerConfig, SessionMode, TlsConfig,
    TotpConfig, UpdateKindConfig,
};

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key {key}: {problem}")]
    Invalid { key: String, problem: String },
}

/// A name in the file that does not parse is the key it was read from.
impl From<crate::domain::FieldError> for ConfigError {
    fn from(e: crate::domain::FieldError) -> Self {
        invalid(e.field, e.problem)
    }
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}
