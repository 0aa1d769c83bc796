//! Builds the server from configuration: store, migrations, listener, gRPC
//! services and the cleanup task. Tests bind port 0 and read `local_addr`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::clock::{Authority, Clock, Finding, Reading, SkewWatch, SystemClock};
use crate::config::{ClockConfig, Config, ConfigError, SecretKeyConfig, TlsConfig};
use crate::crypto::{self, CryptoError, PasswordKeys, SecretKeys};
use crate::domain::{KeyKind, Policy, Rule};
use crate::gateway::{ExtAuthz, ExtProc, ForwardAuth, Gateway, Mapping, RateLimitService};
use crate::grpc::auth::Authenticator;
use crate::grpc::proto::access_service_server::AccessServiceServer;
use crate::grpc::proto::admin_service_server::AdminServiceServer;
use crate::grpc::{
    AccessApi, AdminApi, AuthenticateLayer, LimitsLayer, RequestIdLayer, incoming, proto,
    wire_errors,
};
use crate::service::Gate;
use crate::store::{self, Health, PoolSettings, Store, StoreError};
use crate::store::{EventLog, Upkeep};
use crate::telemetry::metrics;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

/// Largest request accepted. authgate's requests are a few identifiers of
/// at most 256 bytes; anything near this size is abuse.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest message a proxy may send the gateway services: Envoy describes a
/// whole HTTP request's headers, up to its own default limit of 60 KiB
/// (max_request_headers_kb), with attributes beside them.
const MAX_PROXIED_BYTES: usize = 128 * 1024;

/// How often this replica asks the store whether it answers, for the health
/// service: often enough that a load balancer stops sending within seconds
/// of an outage, rarely enough to cost the store nothing.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A probe that takes longer than this counts as the store being down.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a store found down is asked again: calls are answered at once
/// meanwhile, so this bounds how long they keep failing after it returns.
const STORE_PROBE_RETRY: Duration = Duration::from_millis(100);

/// The health service name that stays SERVING for as long as the process
/// runs: Kubernetes' liveness probe asks for it, so a database outage takes
/// replicas out of rotation (readiness, the overall status) without having
/// them restarted.
pub const LIVENESS: &str = "liveness";

/// The health service name that tells whether this replica's wall clock is
/// within `clock.skew_tolerance` of the time authority: NOT_SERVING while it
/// is not, though the replica goes on serving (on the authority's time), so
/// no probe should take it out of rotation for that.
pub const CLOCK: &str = "clock";

/// Where decisions take their time from.
pub enum Time {
    /// The store's shared clock (Postgres's), or this host's wall clock
    /// where the store has none (SQLite), watched for skew and steps.
    Authority,
    /// A clock the caller moves (tests), taken as it is.
    Manual(Arc<dyn Clock>),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The TOTP encryption keys: the configured ones, or for the embedded
/// default a key file generated beside the SQLite database so `cargo run`
/// works. `None` (TOTP disabled) for Postgres without keys.
fn secret_keys(config: &Config) -> Result<Option<Arc<SecretKeys>>, StartError> {
    let t = &config.totp;
    if t.keys.is_empty() {
        let Some(db) = store::sqlite_file(config.database.url.expose()) else {
            tracing::warn!(
                "no totp.keys configured: TOTP enrollment and verification are disabled"
            );
            return Ok(None);
        };
        let key = local_key(&db, "totp-key", "totp.keys")?;
        return Ok(Some(Arc::new(SecretKeys::new(
            vec![(LOCAL_KEY.into(), key)],
            LOCAL_KEY,
        )?)));
    }
    let keys = configured_keys(&t.keys)?;
    let active = t
        .active_key
        .clone()
        .or_else(|| t.keys.last().map(|k| k.id.clone()))
        .unwrap_or_default();
    Ok(Some(Arc::new(SecretKeys::new(keys, &active)?)))
}

/// The key in the file `<db>.<suffix>` beside the SQLite database `db`,
/// generated (0600) the first time, so that `cargo run` works without
/// configuring `setting`.
fn local_key(
    db: &std::path::Path,
    suffix: &str,
    setting: &str,
) -> Result<Zeroizing<[u8; 32]>, StartError> {
    let path = PathBuf::from(format!("{}.{suffix}", db.display()));
    let (key, created) =
        crypto::key_file(LOCAL_KEY, &path).map_err(|source| StartError::KeyFile {
            path: path.clone(),
            source,
        })?;
    if created {
        tracing::warn!(
            path = %path.display(),
            setting,
            "generated a key beside the database; back it up with the database or configure the \
             setting"
        );
    }
    Ok(key)
}

/// Keys as configured: each from its file or inline.
fn configured_keys(configured: &[SecretKeyConfig]) -> Result<Vec<crypto::NamedKey>, StartError> {
    let mut keys = Vec::new();
    for k in configured {
        let material = match (&k.file, &k.key) {
            (Some(path), _) => {
                Zeroizing::new(std::fs::read(path).map_err(|source| StartError::KeyFile {
                    path: path.clone(),
                    source,
                })?)
            }
            (None, Some(inline)) => Zeroizing::new(inline.expose().as_bytes().to_vec()),
            (None, None) => Zeroizing::new(Vec::new()),
        };
        keys.push((k.id.clone(), crypto::parse_key(&k.id, &material)?));
    }
    Ok(keys)
}

/// The keys that re-key password fingerprints: the configured ones, or for
/// the embedded default a key file generated beside the SQLite database
/// (for an in-memory one, a key as short-lived as its counts). `None`
/// (fingerprints ignored) for Postgres without keys, which the
/// configuration accepts only where no context has a password rule.
fn password_keys(config: &Config) -> Result<Option<Arc<PasswordKeys>>, StartError> {
    let url = config.database.url.expose();
    let keys = if !config.passwords.keys.is_empty() {
        configured_keys(&config.passwords.keys)?
    } else if let Some(db) = store::sqlite_file(url) {
        vec![(
            LOCAL_KEY.into(),
            local_key(&db, "password-key", "passwords.keys")?,
        )]
    } else if url.starts_with("sqlite:") {
        vec![(
            LOCAL_KEY.into(),
            crypto::parse_key(LOCAL_KEY, crypto::generate_key().as_bytes())?,
        )]
    } else {
        return Ok(None);
    };
    Ok(Some(Arc::new(PasswordKeys::new(keys))))
}

/// The server's TLS settings: its identity and, for mutual TLS, the CA
/// that client certificates must chain to.
fn server_tls(t: &TlsConfig) -> Result<ServerTlsConfig, StartError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| StartError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&t.cert_file)?, read(&t.key_file)?));
    if let Some(ca) = &t.client_ca_file {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(!t.require_client_cert);
    }
    Ok(tls)
}

/// Streams a peer may have the server reset for it (streams it opened past
/// the stream limit, for one) before its connection is closed with GOAWAY:
/// hyper's own default, which tonic leaves unset, so that a peer that keeps
/// ignoring the limit cannot keep the server busy refusing it.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// How long connections may live and idle, and how many there may be (see
/// ServerConfig).
struct ConnectionLimits {
    max_connections: usize,
    max_streams: u32,
    max_age: Duration,
    max_age_grace: Duration,
    handshake_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

/// The calls one connection may hold: its share of the replica's, at least
/// one.
fn calls_per_connection(server: &crate::config::ServerConfig) -> usize {
    let share = server.max_concurrent_requests as f64 * server.max_connection_share;
    (share as usize).max(1)
}

/// The id of the generated key of the embedded default.
const LOCAL_KEY: &str = "local";

pub struct Application {
    listener: TcpListener,
    auth: Arc<Authenticator>,
    /// Proxies admitted to the gateway services without a key.
    trusted_proxies: Vec<ipnet::IpNet>,
    tls: Option<ServerTlsConfig>,
    limits: LimitsLayer,
    shutdown_grace: Duration,
    connections: ConnectionLimits,
    metrics_listener: TcpListener,
    /// `gateway.http`, when configured, and what it serves.
    forward_auth: Option<(TcpListener, Arc<ForwardAuth>)>,
    metrics_path: String,
    metrics_refresh: Duration,
    gate: Arc<Gate>,
    gateway: Arc<Gateway>,
    rate_limit: Arc<RateLimitService>,
    store_health: Arc<Health>,
    cleanup_interval: Duration,
    audit_retention: Duration,
    /// `None` with a manual clock: nothing to read or watch.
    authority: Option<Arc<Authority>>,
    clock: ClockConfig,
}

/// Opens and migrates the configured store.
pub async fn open_store(config: &Config) -> Result<Arc<Store>, StoreError> {
    Ok(open_watched_store(config).await?.0)
}

/// Opens and migrates the configured store, with what tells whether it
/// answers.
async fn open_watched_store(config: &Config) -> Result<(Arc<Store>, Arc<Health>), StoreError> {
    let settings = PoolSettings {
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.acquire_timeout,
        cache_entries: config.database.cache_entries,
        event_buffer: config.alerts.buffer,
    };
    let health = Health::new();
    let store: Arc<Store> = store::connect(config.database.url.expose(), &settings, &health)
        .await?
        .into();
    store.upkeep().migrate().await?;
    Ok((store, health))
}

impl Application {
    pub async fn build(config: &Config, policy: Policy, time: Time) -> Result<Self, StartError> {
        let (store, store_health) = open_watched_store(config).await?;
        let (clock, authority): (Arc<dyn Clock>, _) = match time {
            Time::Manual(clock) => (clock, None),
            Time::Authority => {
                let first = store.upkeep().clock().await?.unwrap_or_else(Reading::wall);
                let authority = Arc::new(Authority::new(first));
                (authority.clone(), Some(authority))
            }
        };
        // Alert subscribers may join as soon as the server listens: from
        // then on they must hear of every alert, so the events of other
        // replicas must be flowing first.
        if !store
            .events()
            .events_ready(config.database.acquire_timeout)
            .await
        {
            tracing::warn!(
                "security events from other replicas are not flowing yet; alerts committed \
                 meanwhile are delivered once they do"
            );
        }
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let maddr = config.metrics.listen;
        let metrics_listener =
            TcpListener::bind(maddr)
                .await
                .map_err(|source| StartError::Bind {
                    addr: maddr,
                    source,
                })?;
        let forward_auth_listener = match config.gateway.http.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let keys = secret_keys(config)?;
        let passwords = password_keys(config)?;
        let auth = Arc::new(config.authenticator()?);
        if auth.is_anonymous() {
            tracing::warn!(
                listen = %config.server.listen,
                "NO API KEYS CONFIGURED: every caller may check, record failures and unlock \
                 accounts. Add auth.keys (authgate keygen) before exposing this service"
            );
        }
        let tls = config.server.tls.as_ref().map(server_tls).transpose()?;
        let mapping = Mapping::new(&config.gateway, &policy)?;
        // The forward-auth listener's peer is a proxy, never the client: its
        // mapping counts X-Forwarded-For hops of its own.
        let forward_mapping = Mapping::new(
            &crate::config::GatewayConfig {
                trusted_hops: config.gateway.http.trusted_hops,
                ..config.gateway.clone()
            },
            &policy,
        )?;
        let gate = Arc::new(Gate::new(policy, store, clock, keys, passwords));
        let forward_auth = forward_auth_listener.map(|listener| {
            let gateway = Arc::new(Gateway::new(gate.clone(), forward_mapping));
            let endpoints = ForwardAuth::new(
                gateway,
                auth.clone(),
                config.gateway.trusted_proxies.clone(),
                config.server.request_timeout,
            );
            (listener, Arc::new(endpoints))
        });
        Ok(Application {
            listener,
            auth,
            trusted_proxies: config.gateway.trusted_proxies.clone(),
            tls,
            limits: LimitsLayer::new(
                config.server.max_concurrent_requests,
                calls_per_connection(&config.server),
                config.server.request_timeout,
                MAX_MESSAGE_BYTES,
                MAX_PROXIED_BYTES,
            ),
            shutdown_grace: config.server.shutdown_grace,
            connections: ConnectionLimits {
                max_connections: config.server.max_connections,
                max_streams: config.server.max_concurrent_streams,
                max_age: config.server.max_connection_age,
                max_age_grace: config.server.max_connection_age_grace,
                handshake_timeout: config.server.handshake_timeout,
                keepalive_interval: config.server.keepalive_interval,
                keepalive_timeout: config.server.keepalive_timeout,
            },
            metrics_listener,
            forward_auth,
            metrics_path: config.metrics.path.clone(),
            metrics_refresh: config.metrics.refresh_interval,
            gateway: Arc::new(Gateway::new(gate.clone(), mapping)),
            rate_limit: Arc::new(RateLimitService::new(
                gate.clone(),
                &config.gateway.rate_limit,
            )),
            gate,
            store_health,
            cleanup_interval: config.cleanup.interval,
            audit_retention: config.cleanup.audit_retention,
            authority,
            clock: config.clock.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The forward-auth listener's address, when `gateway.http.listen` is
    /// set.
    pub fn forward_auth_addr(&self) -> Option<SocketAddr> {
        self.forward_auth.as_ref().map(|(listener, _)| {
            listener
                .local_addr()
                .expect("a bound TCP listener has a local address")
        })
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight RPCs finish and stops the cleanup task.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let cleanup = tokio::spawn(cleanup_loop(
            self.gate.clone(),
            self.cleanup_interval,
            self.audit_retention,
            stop_rx.clone(),
        ));
        let handle = metrics::handle();
        for name in self.gate.policy().context_names() {
            let Ok(context) = self.gate.policy().context("context", name) else {
                continue;
            };
            for kind in KeyKind::ALL {
                if context.rules_on(kind).any(Rule::locks) {
                    metrics::lockouts_possible(name, kind.as_str());
                }
            }
        }
        let refresher = tokio::spawn(refresh_loop(
            self.gate.clone(),
            handle.clone(),
            self.metrics_refresh,
            stop_rx.clone(),
        ));
        let metrics_addr = self.metrics_addr();
        let forward_auth_addr = self.forward_auth_addr();
        let addr = self.local_addr();
        let stop_for_streams = stop_rx.clone();
        let mut metrics_stop = stop_rx.clone();
        let exporter = tokio::spawn(metrics::serve(
            self.metrics_listener,
            self.metrics_path.clone(),
            handle,
            async move {
                let _ = metrics_stop.changed().await;
            },
        ));

        let forward_auth = self.forward_auth.map(|(listener, endpoints)| {
            let mut stop = stop_rx.clone();
            tokio::spawn(endpoints.serve(listener, async move {
                let _ = stop.changed().await;
            }))
        });

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        health_reporter
            .set_service_status(CLOCK, ServingStatus::Serving)
            .await;
        let clock_watch = self.authority.clone().map(|authority| {
            tokio::spawn(clock_loop(
                self.gate.clone(),
                authority,
                self.clock.clone(),
                health_reporter.clone(),
                stop_rx.clone(),
            ))
        });
        // The store answered the migrations a moment ago: every service is
        // known, and SERVING, from the first connection on; the probe takes
        // over from here.
        report(health_reporter.clone(), ServingStatus::Serving).await;
        metrics::store_up(true);
        let prober = tokio::spawn(health_loop(
            self.gate.clone(),
            self.store_health.clone(),
            health_reporter.clone(),
            stop_rx.clone(),
        ));
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        tracing::info!(
            addr = %addr,
            metrics = %format!("http://{metrics_addr}{}", self.metrics_path),
            tls = self.tls.is_some(),
            forward_auth = forward_auth_addr.map(|a| a.to_string()),
            "authgate listening"
        );
        let limits = &self.connections;
        let mut builder = Server::builder()
            .max_concurrent_streams(limits.max_streams)
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_connection_age(limits.max_age)
            .max_connection_age_grace(limits.max_age_grace)
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout));
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls.timeout(limits.handshake_timeout))?;
        }
        let mut grace_timer = stop_for_streams.clone();
        // Credentials first: a call that has none never holds a permit.
        let server = builder
            .layer(RequestIdLayer)
            .layer(AuthenticateLayer::new(
                self.auth.clone(),
                self.trusted_proxies.clone(),
            ))
            .layer(self.limits)
            .layer(wire_errors())
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                AccessServiceServer::new(AccessApi::new(self.gate.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                AdminServiceServer::new(AdminApi::new(self.gate.clone(), stop_for_streams))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                AuthorizationServer::new(ExtAuthz::new(self.gateway.clone()))
                    .max_decoding_message_size(MAX_PROXIED_BYTES),
            )
            .add_service(
                ExternalProcessorServer::new(ExtProc::new(self.gateway.clone()))
                    .max_decoding_message_size(MAX_PROXIED_BYTES),
            )
            .add_service(
                RateLimitServiceServer::from_arc(self.rate_limit.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(
                incoming(
                    self.listener,
                    limits.handshake_timeout,
                    limits.max_connections,
                ),
                async move {
                    shutdown.await;
                    tracing::info!("shutting down: no new connections; draining calls in flight");
                    // Ends alert streams and background loops and turns the
                    // health service NOT_SERVING, so draining waits only for
                    // calls that will finish.
                    let _ = stop_tx.send(true);
                },
            );
        let grace = self.shutdown_grace;
        let result = tokio::select! {
            served = server => served,
            () = async move {
                let _ = grace_timer.changed().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace = ?grace, "calls still in flight after server.shutdown_grace; exiting anyway");
                Ok(())
            }
        };
        let _ = prober.await;
        if let Some(watch) = clock_watch {
            let _ = watch.await;
        }
        let _ = cleanup.await;
        let _ = refresher.await;
        if let Ok(Err(e)) = exporter.await {
            tracing::warn!(error = %e, "metrics endpoint failed");
        }
        if let Some(served) = forward_auth
            && let Ok(Err(e)) = served.await
        {
            tracing::warn!(error = %e, "forward-auth endpoint failed");
        }
        tracing::info!("authgate stopped");
        Ok(result?)
    }
}

/// Asks the store every STORE_PROBE_INTERVAL whether it answers (at once
/// when a call found it unreachable, and every STORE_PROBE_RETRY while it is
/// down), tells `store_health`, and reports it through the health service:
/// the overall status and every service's turn NOT_SERVING while it does
/// not answer (the liveness name stays SERVING), and all of them once
/// shutdown begins.
async fn health_loop(
    gate: Arc<Gate>,
    store_health: Arc<Health>,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    // run_until reported SERVING before the first connection.
    let mut was_up = true;
    loop {
        let answer = tokio::time::timeout(STORE_PROBE_TIMEOUT, gate.ping())
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut.into()));
        store_health.probed(&answer);
        let up = answer.is_ok();
        if up != was_up {
            if up {
                tracing::info!("state store answers again: SERVING");
            } else {
                tracing::warn!("state store unreachable: health NOT_SERVING");
            }
            metrics::store_up(up);
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            report(reporter.clone(), status).await;
            was_up = up;
        }
        let pause = if up {
            STORE_PROBE_INTERVAL
        } else {
            STORE_PROBE_RETRY
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = store_health.suspected() => {}
            _ = stop.changed() => break,
        }
    }
    report(reporter, ServingStatus::NotServing).await;
}

/// Reads the time authority every `clock.sync_interval` and carries its
/// time forward from there; tells of a step of the authority against the
/// monotonic clock (counted) and of this replica's wall clock leaving or
/// re-entering `clock.skew_tolerance` of it (logged once per change,
/// exported as a gauge and as the `clock` health service).
async fn clock_loop(
    gate: Arc<Gate>,
    authority: Arc<Authority>,
    config: ClockConfig,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut skew = SkewWatch::new(config.skew_tolerance);
    // On /metrics at 0 from the start, so the first step is an increase.
    metrics::clock_steps(0);
    let mut ticker = tokio::time::interval(config.sync_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        // An unreachable store is the health probe's to report; meanwhile
        // the monotonic clock carries the last reading.
        let (reading, source) =
            match tokio::time::timeout(STORE_PROBE_TIMEOUT, gate.read_clock()).await {
                Ok(Ok(Some(reading))) => (reading, "postgres"),
                Ok(Ok(None)) => (Reading::wall(), "wall"),
                Ok(Err(_)) | Err(_) => continue,
            };
        let wall = SystemClock.now();
        if let Some(moved) = authority.adopt(reading)
            && skew.is_step(moved)
        {
            tracing::warn!(
                authority = source,
                moved_seconds = moved as f64 / 1000.0,
                "the time authority stepped against the monotonic clock: locks and failure \
                 windows in flight now end that much sooner (forward) or later (back)"
            );
            metrics::clock_steps(1);
        }
        let skew_ms = reading.skew_of(wall);
        metrics::clock_skew(skew_ms, config.skew_tolerance);
        let status = match skew.judge(skew_ms) {
            None => continue,
            Some(Finding::Skewed) => {
                tracing::warn!(
                    skew_seconds = skew_ms as f64 / 1000.0,
                    tolerance = ?config.skew_tolerance,
                    "this replica's wall clock is off from the database's clock; it goes on \
                     deciding by the database's time, but fix its NTP: its log timestamps are off"
                );
                ServingStatus::NotServing
            }
            Some(Finding::Recovered) => {
                tracing::info!(
                    skew_seconds = skew_ms as f64 / 1000.0,
                    "this replica's wall clock is within clock.skew_tolerance of the database's again"
                );
                ServingStatus::Serving
            }
        };
        reporter.set_service_status(CLOCK, status).await;
    }
}

/// Sets the overall status and every service's (not liveness's).
async fn report(reporter: HealthReporter, status: ServingStatus) {
    for service in [
        "",
        <AccessServiceServer<AccessApi> as NamedService>::NAME,
        <AdminServiceServer<AdminApi> as NamedService>::NAME,
    ] {
        reporter.set_service_status(service, status).await;
    }
}

/// Recomputes the store-wide gauges every `interval`, so every replica
/// reports the same session and lock figures, and lets the recorder do its
/// housekeeping.
async fn refresh_loop(
    gate: Arc<Gate>,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = gate.refresh_gauges().await {
            tracing::warn!(error = %e, "could not refresh session and lock gauges");
        }
        handle.run_upkeep();
    }
}

/// Purges expired state every `interval` until told to stop. A failed pass
/// is logged and retried at the next tick: purging is housekeeping, never
/// needed for a correct decision.
async fn cleanup_loop(
    gate: Arc<Gate>,
    interval: Duration,
    audit_retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The first pass waits one interval: replicas starting together would
    // otherwise all purge at once, for nothing.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        match gate.purge_expired(audit_retention).await {
            Ok(Some(p)) => tracing::debug!(
                states = p.states,
                sessions_expired = p.sessions_expired,
                sessions_deleted = p.sessions_deleted,
                locks_expired = p.locks_expired,
                events_deleted = p.events_deleted,
                "expired state purged"
            ),
            Ok(None) => tracing::debug!("cleanup running on another replica"),
            Err(e) => tracing::warn!(error = %e, "cleanup failed; retrying next interval"),
        }
    }
}
