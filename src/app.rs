//! Builds the server from configuration: store, migrations, listener, gRPC
//! services and the cleanup task. Tests bind port 0 and read `local_addr`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use std::path::PathBuf;

use crate::clock::{Authority, Clock, Reading};
use crate::config::{ClockConfig, Config, ConfigError, TlsConfig};
use crate::crypto::CryptoError;
use crate::domain::{KeyKind, Policy, Rule};
use crate::gateway::{ExtAuthz, ExtProc, ForwardAuth, Gateway, Mapping, RateLimitService};
use crate::grpc::auth::Callers;
use crate::grpc::proto::access_service_server::AccessServiceServer;
use crate::grpc::proto::admin_service_server::AdminServiceServer;
use crate::grpc::{
    AccessApi, AdminApi, AuthenticateLayer, LimitsLayer, RequestIdLayer, incoming, proto,
    wire_errors,
};
use crate::service::{Gate, Gates};
use crate::store::{self, Health, PoolSettings, Store, StoreError};
use crate::store::{EventLog, Upkeep};
use crate::telemetry::metrics;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;

mod keys;
mod reload;
mod tasks;
use keys::{password_keys, secret_keys};
pub use reload::Reloader;
use tasks::{cleanup_loop, clock_loop, health_loop, refresh_loop, report};

/// Largest request accepted. authgate's requests are a few identifiers of
/// at most 256 bytes; anything near this size is abuse.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest message a proxy may send the gateway services: Envoy describes a
/// whole HTTP request's headers, up to its own default limit of 60 KiB
/// (max_request_headers_kb), with attributes beside them.
const MAX_PROXIED_BYTES: usize = 128 * 1024;

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

pub struct Application {
    listener: TcpListener,
    auth: Callers,
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
    gate: Gates,
    reloader: Arc<Reloader>,
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
        let authenticator = config.authenticator()?;
        if authenticator.is_anonymous() {
            tracing::warn!(
                listen = %config.server.listen,
                "NO API KEYS CONFIGURED: every caller may check, record failures and unlock \
                 accounts. Add auth.keys (authgate keygen) before exposing this service"
            );
        }
        let auth = Callers::new(authenticator);
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
        let gate = Gates::new(Gate::new(policy, store, clock, keys, passwords));
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
        let reloader = Arc::new(Reloader::new(gate.clone(), auth.clone(), config));
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
            reloader,
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

    /// What swaps a new configuration in while this server runs.
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
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
        let gate = self.gate.load();
        for name in gate.policy().context_names() {
            let Ok(context) = gate.policy().context("context", name) else {
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
            .http2_max_pending_accept_reset_streams(Some(limits.max_streams as usize))
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
