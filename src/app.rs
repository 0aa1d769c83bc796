//! Builds the server from configuration: store, migrations, listener, gRPC
//! services and the cleanup task. Tests bind port 0 and read `local_addr`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::{self, CryptoError, SecretKeys};
use crate::domain::Policy;
use crate::grpc::proto::access_service_server::AccessServiceServer;
use crate::grpc::proto::admin_service_server::AdminServiceServer;
use crate::grpc::{AccessApi, AdminApi, RequestIdLayer, proto};
use crate::metrics;
use crate::service::Gate;
use crate::store::{self, Instrumented, PoolSettings, Store, StoreError};

/// Largest request accepted. authgate's requests are a few identifiers of
/// at most 256 bytes; anything near this size is abuse.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

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
    #[error("TOTP key file {path}: {source}")]
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
        let path = PathBuf::from(format!("{}.totp-key", db.display()));
        let (key, created) =
            crypto::key_file(LOCAL_KEY, &path).map_err(|source| StartError::KeyFile {
                path: path.clone(),
                source,
            })?;
        if created {
            tracing::warn!(
                path = %path.display(),
                "generated a TOTP encryption key beside the database; back it up with the database \
                 or configure totp.keys"
            );
        }
        return Ok(Some(Arc::new(SecretKeys::new(
            vec![(LOCAL_KEY.into(), key)],
            LOCAL_KEY,
        )?)));
    }
    let mut keys = Vec::new();
    for k in &t.keys {
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
    let active = t
        .active_key
        .clone()
        .or_else(|| t.keys.last().map(|k| k.id.clone()))
        .unwrap_or_default();
    Ok(Some(Arc::new(SecretKeys::new(keys, &active)?)))
}

/// The id of the generated key of the embedded default.
const LOCAL_KEY: &str = "local";

pub struct Application {
    listener: TcpListener,
    metrics_listener: TcpListener,
    metrics_path: String,
    metrics_refresh: Duration,
    gate: Arc<Gate>,
    cleanup_interval: Duration,
    audit_retention: Duration,
}

/// Opens and migrates the configured store.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let settings = PoolSettings {
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.acquire_timeout,
        event_buffer: config.alerts.buffer,
    };
    let store: Arc<dyn Store> = Arc::new(Instrumented(
        store::connect(config.database.url.expose(), &settings).await?,
    ));
    store.migrate().await?;
    Ok(store)
}

impl Application {
    pub async fn build(
        config: &Config,
        policy: Policy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let store = open_store(config).await?;
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
        let keys = secret_keys(config)?;
        Ok(Application {
            listener,
            metrics_listener,
            metrics_path: config.metrics.path.clone(),
            metrics_refresh: config.metrics.refresh_interval,
            gate: Arc::new(Gate::new(policy, store, clock, keys)),
            cleanup_interval: config.cleanup.interval,
            audit_retention: config.cleanup.audit_retention,
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
        let refresher = tokio::spawn(refresh_loop(
            self.gate.clone(),
            handle.clone(),
            self.metrics_refresh,
            stop_rx.clone(),
        ));
        let metrics_addr = self.metrics_addr();
        let addr = self.local_addr();
        let stop_for_streams = stop_rx.clone();
        let mut metrics_stop = stop_rx;
        let exporter = tokio::spawn(metrics::serve(
            self.metrics_listener,
            self.metrics_path.clone(),
            handle,
            async move {
                let _ = metrics_stop.changed().await;
            },
        ));

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<AccessServiceServer<AccessApi>>()
            .await;
        health_reporter
            .set_serving::<AdminServiceServer<AdminApi>>()
            .await;
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
            "authgate listening"
        );
        let result = Server::builder()
            .layer(RequestIdLayer)
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
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), async move {
                shutdown.await;
                // Ends alert streams and background loops, so draining
                // waits only for calls that will finish.
                let _ = stop_tx.send(true);
            })
            .await;
        let _ = cleanup.await;
        let _ = refresher.await;
        if let Ok(Err(e)) = exporter.await {
            tracing::warn!(error = %e, "metrics endpoint failed");
        }
        tracing::info!("authgate stopped");
        Ok(result?)
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
