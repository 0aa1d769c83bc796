//! What both SQL dialects run alike, written once: sqlx's SQLite driver
//! takes Postgres's `$N` placeholders, so most statements are the same
//! text. `for_each_dialect!` expands the code that runs them once per
//! driver, so each expansion type-checks against its own; the few
//! differences are fields of `Sql` (how a write transaction begins) and
//! `FailuresColumn` (how the recent-failures column reads).

use std::fmt;

use sqlx::error::BoxDynError;
use sqlx::{Arguments, Database, Encode, Pool, Type};

use super::StoreError;

/// Expands the items given once for Postgres and once for SQLite, with
/// `Db` naming the driver in each.
macro_rules! for_each_dialect {
    ($($item:item)*) => {
        const _: () = {
            type Db = sqlx::Postgres;
            $($item)*
        };
        const _: () = {
            type Db = sqlx::Sqlite;
            $($item)*
        };
    };
}

mod admission;
mod bans;
mod cleanup;
mod reports;
mod totp;

pub(crate) use admission::{ADMISSION_COLUMNS, encode_recent};

/// The columns of a stored key state, in the order `Row` has them.
pub const COLUMNS: &str = "context, rule, kind, user_id, ip, token, recent_failures, \
     failures_total, last_failure_at, locked_at, locked_until, lock_tier, recent_lockouts, \
     last_lockout_at, lockouts_total, expires_at, version";

/// The columns of a security event, without its id.
pub const EVENT_COLUMNS: &str = "at, kind, context, rule, key_kind, user_id, ip, session_id, \
     password, tier, until_at, permanent, actor, caller, detail";

/// A key-state row's recent_failures column, which each dialect stores its
/// own way (Postgres as BIGINT[], SQLite as comma-separated text).
pub trait FailuresColumn {
    fn recent_failures(&self) -> Result<Vec<i64>, StoreError>;
}

/// One database's pools and what differs in running the shared statements.
pub struct Sql<DB: Database> {
    /// Where writes go; for SQLite its one writer connection.
    pub writer: Pool<DB>,
    /// Where reads go (the same pool on Postgres).
    pub readers: Pool<DB>,
    /// How a transaction that writes begins: SQLite must take the write lock
    /// at BEGIN (IMMEDIATE), or two transactions deadlock upgrading to it.
    pub begin_write: &'static str,
}

impl<DB: Database> Clone for Sql<DB> {
    fn clone(&self) -> Self {
        Sql {
            writer: self.writer.clone(),
            readers: self.readers.clone(),
            begin_write: self.begin_write,
        }
    }
}

/// A statement's parameters, bound by name: `bind` adds a value and gives
/// back its placeholder, which the statement's text then names wherever
/// the value is used. Nobody counts `$N`s.
pub struct Params<DB: Database> {
    args: DB::Arguments,
    /// The first value that could not be encoded; the statement is not run.
    error: Option<BoxDynError>,
}

impl<DB: Database> Default for Params<DB> {
    fn default() -> Self {
        Params {
            args: DB::Arguments::default(),
            error: None,
        }
    }
}

/// Where a bound value goes in a statement's text: `$N`.
#[derive(Debug, Clone, Copy)]
pub struct Placeholder(usize);

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}", self.0)
    }
}

impl<DB: Database> Params<DB> {
    pub fn bind<'q, T: Encode<'q, DB> + Type<DB>>(&mut self, value: T) -> Placeholder {
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        Placeholder(self.args.len())
    }

    /// The values bound, for `sqlx::query_with`.
    pub fn done(self) -> Result<DB::Arguments, StoreError> {
        match self.error {
            None => Ok(self.args),
            Some(e) => Err(sqlx::Error::Encode(e).into()),
        }
    }
}

for_each_dialect! {
    impl Sql<Db> {
        pub fn decode(row: &<Db as Database>::Row) -> Result<super::Row, StoreError> {
            use sqlx::Row as _;
            let kind: String = row.try_get("kind")?;
            Ok(super::Row {
                context: row.try_get("context")?,
                rule: row.try_get("rule")?,
                kind: super::Row::kind_of(&kind)?,
                user_id: row.try_get("user_id")?,
                ip: row.try_get("ip")?,
                token: row.try_get("token")?,
                recent_failures: row.recent_failures()?,
                failures_total: row.try_get("failures_total")?,
                last_failure_at: row.try_get("last_failure_at")?,
                locked_at: row.try_get("locked_at")?,
                locked_until: row.try_get("locked_until")?,
                lock_tier: row.try_get("lock_tier")?,
                recent_lockouts: row.try_get("recent_lockouts")?,
                last_lockout_at: row.try_get("last_lockout_at")?,
                lockouts_total: row.try_get("lockouts_total")?,
                expires_at: row.try_get("expires_at")?,
                version: row.try_get("version")?,
            })
        }

        pub fn decode_event(
            row: &<Db as Database>::Row,
        ) -> Result<(i64, crate::domain::SecurityEvent), StoreError> {
            use crate::store::event_row::EventRow;
            use sqlx::Row as _;
            let text = |column: &str| -> Result<std::borrow::Cow<'static, str>, StoreError> {
                Ok(std::borrow::Cow::Owned(row.try_get::<String, _>(column)?))
            };
            let stored = EventRow {
                at: row.try_get("at")?,
                kind: text("kind")?,
                context: text("context")?,
                rule: text("rule")?,
                key_kind: text("key_kind")?,
                user_id: text("user_id")?,
                ip: text("ip")?,
                session_id: text("session_id")?,
                password: text("password")?,
                tier: row.try_get("tier")?,
                until_at: row.try_get("until_at")?,
                permanent: row.try_get("permanent")?,
                actor: text("actor")?,
                caller: text("caller")?,
                detail: text("detail")?,
            };
            Ok((row.try_get("id")?, stored.event()?))
        }
    }

    #[async_trait::async_trait]
    impl super::interface::Probe for Sql<Db> {
        async fn ping(&self) -> Result<(), StoreError> {
            sqlx::query("SELECT 1").execute(&self.writer).await?;
            Ok(())
        }
    }
}
