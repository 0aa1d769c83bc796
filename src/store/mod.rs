//! Where state lives: one narrow interface per kind of state
//! (`interface.rs`), the values they speak (`model.rs`), and SQL only
//! below here: what both dialects run alike in `shared/`, what each does
//! its own way in `postgres/` and `sqlite.rs`.

mod bans;
mod batch;
mod event_row;
mod health;
mod interface;
mod model;
mod postgres;
mod row;
mod shared;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

pub use health::Health;
pub use interface::{
    AdmissionRecords, Admissions, Bans, EventLog, KeyStates, Reports, Sessions, Store, TotpSecrets,
    Upkeep,
};
pub use model::{
    AdmissionRecord, AdmissionScope, AdmissionStats, AdmissionStep, AdmitFn, Applied, EventFilter,
    Involving, LockCount, OffenderCursor, Purged, StateId, Stats, Stored, StoredTotp, Transition,
    TransitionFn, UnlockScope, Update,
};
pub use postgres::{CLEANUP_LOCK, PostgresStore};
pub use sqlite::SqliteStore;

pub(crate) use row::Row;

/// Clone, because one failed read answers every request that shared it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is refusing work right now; the
    /// caller should retry later. Becomes UNAVAILABLE.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// A row that the domain cannot read: a bug or a hand-edited database.
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    #[error("store error: {0}")]
    Other(#[source] Arc<sqlx::Error>),
    #[error("migration failed: {0}")]
    Migrate(#[source] Arc<sqlx::migrate::MigrateError>),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // Whatever keeps authgate from talking to its database, rather than
        // a fault of a statement: the caller may retry, a fail_open context
        // may fail open. A protocol error is a server that is not (or no
        // longer) speaking Postgres's protocol on that address.
        let unavailable = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                // 08: connection exceptions; 28: the server refuses these
                // credentials; 3D000: no such database; 57P0x: the server
                // is shutting down or starting; 53300: too many
                // connections; SQLite's 5 and 6: the file is busy or locked
                // by another process.
                c.starts_with("08")
                    || c.starts_with("28")
                    || c == "3D000"
                    || c.starts_with("57P0")
                    || c == "53300"
                    || c == "5"
                    || c == "6"
            }),
            _ => false,
        };
        if unavailable {
            StoreError::Unavailable(Arc::new(e))
        } else {
            StoreError::Other(Arc::new(e))
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(Arc::new(e))
    }
}

/// Connection settings shared by both implementations.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Key states cached per replica (Postgres); 0 for none.
    pub cache_entries: usize,
    /// How many security events a subscriber may fall behind before it
    /// loses the oldest.
    pub event_buffer: usize,
}

/// The database file of an SQLite URL; `None` for other URLs and for
/// in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    (!file.as_os_str().is_empty() && file != std::path::Path::new(":memory:"))
        .then(|| file.to_path_buf())
}

/// Opens the store the URL names; `health` learns from its every operation
/// whether the database answers.
pub async fn connect(
    url: &str,
    settings: &PoolSettings,
    health: &Arc<Health>,
) -> Result<Store, StoreError> {
    let parts = if url.starts_with("sqlite:") {
        SqliteStore::connect(url, settings).await?
    } else {
        PostgresStore::connect(url, settings, health.clone())?
    };
    Ok(Store::new(parts, health.clone()))
}
