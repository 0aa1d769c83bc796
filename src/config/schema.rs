//! The file's keys: one struct per section, each setting documented with
//! its default and the reason for it. Here the process's own sections
//! (listeners, callers, database, upkeep, logs, metrics); what decides
//! requests is in decisions.rs, the gateway's routes in gateway.rs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, shipped};
use crate::grpc::auth::Role;

mod decisions;
mod gateway;
pub use decisions::*;
pub use gateway::*;

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
    pub clock: ClockConfig,
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
    #[serde(default)]
    pub passwords: PasswordsConfig,
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Replaces the built-in contexts as a whole when given, so a deployment
    /// never carries rules it did not write down.
    #[serde(default = "shipped::contexts")]
    pub contexts: BTreeMap<String, ContextConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            database: DatabaseConfig::default(),
            cleanup: CleanupConfig::default(),
            clock: ClockConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            alerts: AlertsConfig::default(),
            access: AccessConfig::default(),
            totp: TotpConfig::default(),
            passwords: PasswordsConfig::default(),
            gateway: GatewayConfig::default(),
            contexts: shipped::contexts(),
        }
    }
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
    /// The share of max_concurrent_requests the calls of one connection may
    /// hold at once (at least one call); past it its calls are answered
    /// RESOURCE_EXHAUSTED like the replica's, so one connection cannot take
    /// a replica's capacity. At the default 0.5 (128 of 256) a client that
    /// keeps to max_concurrent_streams never meets it: its calls queue at
    /// the client instead, and one connection holds at most 100.
    pub max_connection_share: f64,
    /// HTTP/2 streams (calls) one connection may have open at once,
    /// advertised to clients as SETTINGS_MAX_CONCURRENT_STREAMS: clients
    /// queue calls beyond it, and streams a peer opens past it are refused.
    /// A stream whose answer the client does not read stays open and counts
    /// here, so this also bounds the memory a connection can pin with
    /// unread answers. It is also how many streams a peer may reset before
    /// the server has taken them up before its connection is closed
    /// (GOAWAY ENHANCE_YOUR_CALM, the rapid-reset defence): h2's own limit
    /// of 20 closed the connections of honest clients that cancel calls on
    /// short deadlines while a busy replica lags behind them.
    pub max_concurrent_streams: u32,
    /// Connections served at once; a connection accepted past it is closed
    /// at once, so a client retries another replica. With
    /// max_concurrent_streams it bounds what unread answers can hold: about
    /// 2 KiB a stalled stream and 15 KiB a connection, so at the defaults
    /// some 110 MiB at worst, within the shipped Deployment's 256Mi.
    pub max_connections: usize,
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
            max_connection_share: 0.5,
            max_concurrent_streams: 100,
            max_connections: 512,
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
    /// Postgres only: key states each replica keeps to answer checks
    /// without a round trip, invalidated across replicas through
    /// LISTEN/NOTIFY; 0 turns the cache off. About 250 bytes each.
    pub cache_entries: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: DatabaseUrl("sqlite://authgate.db".into()),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(2),
            cache_entries: 50_000,
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
pub struct ClockConfig {
    /// How far this replica's wall clock may be from the time authority
    /// (Postgres's clock) before it is reported as skewed, and how far the
    /// authority may move against the monotonic clock between two readings
    /// before that is reported as a step. A few seconds: NTP keeps hosts
    /// within milliseconds, so more is a fault, while a lock's or window's
    /// edge moving by less decides nothing an attacker can use.
    #[serde(with = "duration")]
    pub skew_tolerance: Duration,
    /// How often the authority is read again. Between readings time is
    /// carried by the monotonic clock, which drifts by parts per million,
    /// so this bounds how long a step of the authority goes unseen rather
    /// than the error of `now`.
    #[serde(with = "duration")]
    pub sync_interval: Duration,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            skew_tolerance: Duration::from_secs(2),
            sync_interval: Duration::from_secs(1),
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

#[cfg(test)]
mod tests;
