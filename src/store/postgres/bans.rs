//! Bans on Postgres: each change commits with its events and a notice on
//! the key channel, which makes every other replica read the bans again.

use std::sync::Arc;
use std::time::Instant;

use super::PostgresStore;
use super::cache::KEY_CHANNEL;
use super::events::{append, notify};
use crate::domain::{Ban, BanScope, BanSet, EventKind, SecurityEvent, UnixMillis};
use crate::store::StoreError;
use crate::store::interface::Bans;

/// What a ban notice's payload starts with: then the sending replica's id.
pub const BANS: &str = "bans:";

/// The notice `replica` sends when it changed the bans.
pub fn notice(replica: &str) -> String {
    format!("{BANS}{replica}")
}

impl PostgresStore {
    /// Commits a change of the bans with its notice, and drops this
    /// replica's copy.
    async fn commit_bans(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<(), StoreError> {
        notify(&mut *tx, KEY_CHANNEL, &notice(&self.replica)).await?;
        tx.commit().await?;
        self.bans.changed();
        Ok(())
    }
}

#[async_trait::async_trait]
impl Bans for PostgresStore {
    async fn active_bans(&self) -> Result<Arc<BanSet>, StoreError> {
        // The key cache's trust is proof that every notice, of keys and of
        // bans alike, committed before a recent heartbeat was heard.
        let trusted = self
            .cache
            .as_ref()
            .is_some_and(|c| c.trusted(Instant::now()));
        self.bans.get(trusted, self.sql.read_bans(None)).await
    }

    async fn list_bans(&self, now: UnixMillis) -> Result<Vec<Ban>, StoreError> {
        self.sql.read_bans(Some(now)).await
    }

    async fn put_bans(&self, bans: &[Ban]) -> Result<u64, StoreError> {
        let mut tx = self.sql.writer.begin().await?;
        let written = self.sql.write_bans(&mut tx, bans).await?;
        for ban in &written {
            append(&mut *tx, &ban.placed()).await?;
        }
        let n = written.len() as u64;
        if n > 0 {
            self.commit_bans(tx).await?;
        }
        Ok(n)
    }

    async fn lift_bans(&self, scope: &BanScope, lifted: &SecurityEvent) -> Result<u64, StoreError> {
        let mut tx = self.sql.writer.begin().await?;
        let gone = self
            .sql
            .delete_bans(&mut tx, scope, UnixMillis(lifted.at))
            .await?;
        for ban in &gone {
            append(&mut *tx, &ban.event(EventKind::BanLifted, lifted.clone())).await?;
        }
        self.commit_bans(tx).await?;
        Ok(gone.len() as u64)
    }
}
