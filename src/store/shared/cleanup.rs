//! The cleanup pass, alike in both dialects, inside the transaction each
//! runs it in.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::{Params, Placeholder, Sql};
use crate::domain::{EventKind, HIDDEN_HEX, UnixMillis};
use crate::store::StoreError;
use crate::store::model::Purged;

/// How long a session that is not authenticated is kept after it changed.
const SESSION_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How long a user's admission state is kept after their last update,
/// unless they are blocked.
const ADMISSION_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Locks that ended after `after` and by `now` become audit events, each
/// naming its key's token as the kind says: a session key's in session_id,
/// a password key's in password as admins are shown it.
fn locks_expired(after: Placeholder, now: Placeholder, kind: Placeholder) -> String {
    format!(
        "INSERT INTO security_event \
           (at, kind, context, rule, key_kind, user_id, ip, session_id, password, tier, \
            until_at) \
         SELECT locked_until, {kind}, context, rule, kind, user_id, ip, \
           CASE WHEN kind = 'session' THEN token ELSE '' END, \
           CASE WHEN kind = 'password' \
             THEN substr(token, 1, length(token) - {HIDDEN_HEX}) ELSE '' END, \
           lock_tier, locked_until \
         FROM key_state WHERE locked_until > {after} AND locked_until <= {now}"
    )
}

for_each_dialect! {
    impl Sql<Db> {
        /// One cleanup pass inside the caller's transaction, in order: locks
        /// and bans that ended since the last pass become audit events
        /// (before their rows can be purged), then the marker moves; timed-out sessions
        /// become expired (so statistics see them), and sessions that are
        /// not authenticated are forgotten a day after they last changed.
        pub async fn cleanup(
            &self,
            conn: &mut <Db as sqlx::Database>::Connection,
            now: UnixMillis,
            retention: Duration,
        ) -> Result<Purged, StoreError> {
            let last: Option<i64> =
                sqlx::query_scalar("SELECT last_at FROM maintenance WHERE name = 'cleanup'")
                    .fetch_optional(&mut *conn)
                    .await?;
            let at = now.0;
            let mut p = Params::<Db>::default();
            let (after, until) = (p.bind(last.unwrap_or(i64::MIN)), p.bind(at));
            let sql = locks_expired(after, until, p.bind(EventKind::LockoutExpired.as_str()));
            let locks_expired = run(conn, sql, p).await?;
            let bans = self.purge_bans(conn, last.unwrap_or(i64::MIN), now).await?;
            let mut p = Params::<Db>::default();
            let sql = format!(
                "INSERT INTO maintenance (name, last_at) VALUES ('cleanup', {}) \
                 ON CONFLICT (name) DO UPDATE SET last_at = excluded.last_at",
                p.bind(at)
            );
            run(conn, sql, p).await?;
            let mut p = Params::<Db>::default();
            let sql = format!("DELETE FROM key_state WHERE expires_at <= {}", p.bind(at));
            let states = run(conn, sql, p).await?;
            let mut p = Params::<Db>::default();
            let (until, kind) = (p.bind(at), p.bind(EventKind::SessionExpired.as_str()));
            let sql = format!(
                "INSERT INTO security_event (at, kind, key_kind, user_id) \
                 SELECT expires_at, {kind}, 'user', user_id FROM session \
                 WHERE status = 'authenticated' AND expires_at <= {until}"
            );
            run(conn, sql, p).await?;
            let mut p = Params::<Db>::default();
            let until = p.bind(at);
            let sql = format!(
                "UPDATE session SET status = 'expired', since = {until} \
                 WHERE status = 'authenticated' AND expires_at <= {until}"
            );
            let sessions_expired = run(conn, sql, p).await?;
            let mut p = Params::<Db>::default();
            let sql = format!(
                "DELETE FROM session WHERE status <> 'authenticated' AND since <= {}",
                p.bind(at - SESSION_RETENTION_MS)
            );
            let sessions_deleted = run(conn, sql, p).await?;
            let mut p = Params::<Db>::default();
            let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
            let sql = format!(
                "DELETE FROM security_event WHERE at < {}",
                p.bind(at.saturating_sub(retention_ms))
            );
            let events_deleted = run(conn, sql, p).await?;
            // Users idle for a day and not blocked now.
            let mut p = Params::<Db>::default();
            let (idle_since, until) = (p.bind(at - ADMISSION_RETENTION_MS), p.bind(at));
            let sql = format!(
                "DELETE FROM admission WHERE touched_at <= {idle_since} \
                   AND (blocked_until IS NULL OR blocked_until <= {until})"
            );
            let admissions = run(conn, sql, p).await?;
            Ok(Purged {
                states,
                sessions_expired,
                sessions_deleted,
                locks_expired,
                events_deleted,
                admissions,
                bans,
            })
        }
    }

    /// Runs one step of the pass; how many rows it changed.
    async fn run(
        conn: &mut <Db as sqlx::Database>::Connection,
        sql: String,
        p: Params<Db>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
            .execute(conn)
            .await?;
        Ok(done.rows_affected())
    }
}
