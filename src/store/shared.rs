//! Statements both dialects run alike. They are written with Postgres's
//! `$N` placeholders; SQLite reads `?N` the same way, and `sqlite::sql`
//! converts. The `shared_methods!` macro expands one body per store, so the
//! logic is written once while each expansion binds to its own row types.

use super::SecurityEvent;

/// The confirmed secret first.
pub const GET_TOTP: &str = "SELECT pending, key_id, nonce, ciphertext, algorithm, digits, period, \
     created_at, last_step FROM totp_secret WHERE user_id = $1 ORDER BY pending";

pub const PUT_TOTP: &str = "INSERT INTO totp_secret \
       (user_id, pending, key_id, nonce, ciphertext, algorithm, digits, period, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (user_id, pending) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, \
       ciphertext = excluded.ciphertext, algorithm = excluded.algorithm, digits = excluded.digits, \
       period = excluded.period, created_at = excluded.created_at, last_step = NULL";

/// One statement, so two replicas accepting the same code race in the
/// database and exactly one wins. The nonce pins the secret the code was
/// checked against, in case it was replaced meanwhile.
pub const ACCEPT_STEP: &str = "UPDATE totp_secret SET last_step = $2 \
     WHERE user_id = $1 AND nonce = $3 AND (last_step IS NULL OR last_step < $2) RETURNING pending";

/// A pending secret's first valid code promotes it over the confirmed one.
pub const DROP_CONFIRMED: &str = "DELETE FROM totp_secret WHERE user_id = $1 AND pending = FALSE";
pub const PROMOTE_PENDING: &str =
    "UPDATE totp_secret SET pending = FALSE WHERE user_id = $1 AND nonce = $2";

pub const DELETE_TOTP: &str = "DELETE FROM totp_secret WHERE user_id = $1";

/// An imported (confirmed) secret replaces any enrollment under way.
pub const DROP_PENDING: &str = "DELETE FROM totp_secret WHERE user_id = $1 AND pending = TRUE";

pub const GET_SESSION: &str =
    "SELECT status, since, last_seen_at, expires_at FROM session WHERE user_id = $1";

pub const PUT_SESSION: &str = "INSERT INTO session (user_id, status, since, last_seen_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, since = excluded.since, \
       last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at";

pub const REVOKE_SESSION: &str = "UPDATE session SET status = 'unauthenticated', since = $2, \
       last_seen_at = NULL, expires_at = NULL \
     WHERE user_id = $1 AND status IN ('authenticated', 'processing')";

pub const REVOKE_ALL_SESSIONS: &str = "UPDATE session SET status = 'unauthenticated', since = $1, \
       last_seen_at = NULL, expires_at = NULL \
     WHERE status IN ('authenticated', 'processing')";

pub const SESSION_STATS: &str = "SELECT COUNT(*) AS total, \
       COALESCE(SUM(CASE WHEN status = 'authenticated' AND expires_at > $1 THEN 1 ELSE 0 END), 0) AS authenticated, \
       COALESCE(SUM(CASE WHEN status = 'processing' THEN 1 ELSE 0 END), 0) AS processing, \
       COALESCE(SUM(CASE WHEN status = 'expired' \
         OR (status = 'authenticated' AND expires_at <= $1) THEN 1 ELSE 0 END), 0) AS expired \
     FROM session";

pub const LOCK_STATS: &str = "SELECT \
       COALESCE(SUM(CASE WHEN locked_until IS NOT NULL THEN 1 ELSE 0 END), 0) AS temporary, \
       COALESCE(SUM(CASE WHEN locked_until IS NULL THEN 1 ELSE 0 END), 0) AS permanent, \
       COALESCE(SUM(CASE WHEN context = $2 THEN 1 ELSE 0 END), 0) AS totp \
     FROM key_state WHERE locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > $1)";

pub const ACTIVE_LOCKS: &str = "SELECT context, locked_until IS NULL AS permanent, COUNT(*) AS n \
     FROM key_state WHERE locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > $1) \
     GROUP BY 1, 2";

/// The cleanup task: timed-out sessions become expired (so statistics see
/// them), and sessions that are not authenticated are forgotten a day after
/// they last changed.
pub const EXPIRE_SESSIONS: &str = "UPDATE session SET status = 'expired', since = $1 WHERE status = 'authenticated' AND expires_at <= $1";
pub const DELETE_EXPIRED_STATES: &str = "DELETE FROM key_state WHERE expires_at <= $1";
pub const SWEEP_SESSIONS: &str =
    "DELETE FROM session WHERE status <> 'authenticated' AND since <= $1";

/// One security event as $1..$13, in the order `bind_event!` binds them;
/// a macro so Postgres can wrap it in its NOTIFY statement with `concat!`.
macro_rules! insert_event {
    () => {
        "INSERT INTO security_event \
           (at, kind, context, rule, user_id, ip, session_id, tier, until_at, permanent, actor, caller, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    };
}
pub(super) use insert_event;

pub const INSERT_EVENT: &str = insert_event!();

/// Binds an event's fields as `insert_event!` numbers them.
macro_rules! bind_event {
    ($query:expr, $event:expr) => {{
        let e: &SecurityEvent = $event;
        $query
            .bind(e.at)
            .bind(&e.kind)
            .bind(&e.context)
            .bind(&e.rule)
            .bind(&e.user_id)
            .bind(&e.ip)
            .bind(&e.session_id)
            .bind(i32::try_from(e.tier).unwrap_or(i32::MAX))
            .bind(e.until)
            .bind(e.permanent)
            .bind(&e.actor)
            .bind(&e.caller)
            .bind(&e.detail)
    }};
}
pub(super) use bind_event;

pub const LIST_EVENTS: &str = concat!(
    "SELECT id, ",
    event_columns!(),
    " FROM security_event \
     WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR ip = $2) AND ($3 = '' OR session_id = $3) \
       AND ($4 = '' OR context = $4) AND ($5 = '' OR kind = $5) AND at >= $6 AND at < $7 AND id < $8 \
     ORDER BY id DESC LIMIT $9"
);

/// A security event row, with its id, in either dialect.
pub fn decode_event<R>(r: &R) -> Result<(i64, SecurityEvent), sqlx::Error>
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let tier: i32 = r.try_get("tier")?;
    Ok((
        r.try_get("id")?,
        SecurityEvent {
            at: r.try_get("at")?,
            kind: r.try_get("kind")?,
            context: r.try_get("context")?,
            rule: r.try_get("rule")?,
            user_id: r.try_get("user_id")?,
            ip: r.try_get("ip")?,
            session_id: r.try_get("session_id")?,
            tier: u32::try_from(tier).unwrap_or(0),
            until: r.try_get("until_at")?,
            permanent: r.try_get("permanent")?,
            actor: r.try_get("actor")?,
            caller: r.try_get("caller")?,
            detail: r.try_get("detail")?,
        },
    ))
}

/// The cleanup pass, in order: locks that ended since the last pass become
/// audit events (before their rows can be purged), then the marker moves.
pub const LAST_PASS: &str = "SELECT last_at FROM maintenance WHERE name = 'cleanup'";
pub const LOCKS_EXPIRED: &str = "INSERT INTO security_event \
       (at, kind, context, rule, user_id, ip, session_id, tier, until_at) \
     SELECT locked_until, 'lockout_expired', context, rule, user_id, ip, session_id, lock_tier, locked_until \
     FROM key_state WHERE locked_until > $1 AND locked_until <= $2";
pub const MARK_PASS: &str = "INSERT INTO maintenance (name, last_at) VALUES ('cleanup', $1) \
     ON CONFLICT (name) DO UPDATE SET last_at = excluded.last_at";
pub const SESSIONS_EXPIRED: &str = "INSERT INTO security_event (at, kind, user_id) \
     SELECT expires_at, 'session_expired', user_id FROM session \
     WHERE status = 'authenticated' AND expires_at <= $1";
pub const DROP_OLD_EVENTS: &str = "DELETE FROM security_event WHERE at < $1";

/// How long a session that is not authenticated is kept after it changed.
pub const SESSION_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Implements `Store` for `$store`: the dialect's own methods as given in
/// the braces, plus those for sessions, TOTP secrets, statistics and events
/// written here once. `$pool` is the store's field for writes, `$readers`
/// for reads, `$sql` turns shared SQL into the dialect's. (The whole impl is
/// generated because async_trait must see every method.)
macro_rules! store_impl {
    ($store:ty, $pool:ident, $readers:ident, $sql:path, { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl Store for $store {
        $($own)*

        async fn ping(&self) -> Result<(), StoreError> {
            sqlx::query("SELECT 1").execute(&self.$pool).await?;
            Ok(())
        }

        async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError> {
            let rows = sqlx::query($sql(shared::GET_TOTP))
                .bind(user.as_str())
                .fetch_all(&self.$readers)
                .await?;
            let corrupt = |what: &str| StoreError::Corrupt(format!("totp_secret {what}"));
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let algorithm: String = r.try_get("algorithm")?;
                let digits: i32 = r.try_get("digits")?;
                let period: i32 = r.try_get("period")?;
                let last_step: Option<i64> = r.try_get("last_step")?;
                let pending: bool = r.try_get("pending")?;
                out.push(StoredTotp {
                    sealed: Sealed {
                        key_id: r.try_get("key_id")?,
                        nonce: r.try_get("nonce")?,
                        ciphertext: r.try_get("ciphertext")?,
                    },
                    params: TotpParams {
                        algorithm: TotpAlgorithm::from_name(&algorithm).ok_or_else(|| corrupt("algorithm"))?,
                        digits: u8::try_from(digits).map_err(|_| corrupt("digits"))?,
                        period: u32::try_from(period).map_err(|_| corrupt("period"))?,
                    },
                    confirmed: !pending,
                    created_at: UnixMillis(r.try_get("created_at")?),
                    last_step: last_step.map(|s| u64::try_from(s).unwrap_or(0)),
                });
            }
            Ok(out)
        }

        async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError> {
            let mut tx = self.$pool.begin().await?;
            sqlx::query($sql(shared::PUT_TOTP))
                .bind(user.as_str())
                .bind(!totp.confirmed)
                .bind(&totp.sealed.key_id)
                .bind(&totp.sealed.nonce)
                .bind(&totp.sealed.ciphertext)
                .bind(totp.params.algorithm.as_str())
                .bind(i32::from(totp.params.digits))
                .bind(i32::try_from(totp.params.period).unwrap_or(i32::MAX))
                .bind(totp.created_at.0)
                .execute(&mut *tx)
                .await?;
            if totp.confirmed {
                sqlx::query($sql(shared::DROP_PENDING))
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn accept_totp_step(&self, user: &UserId, nonce: &[u8], step: u64) -> Result<bool, StoreError> {
            let mut tx = self.$pool.begin().await?;
            let pending: Option<bool> = sqlx::query_scalar($sql(shared::ACCEPT_STEP))
                .bind(user.as_str())
                .bind(i64::try_from(step).unwrap_or(i64::MAX))
                .bind(nonce)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(pending) = pending else { return Ok(false) };
            if pending {
                sqlx::query($sql(shared::DROP_CONFIRMED))
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($sql(shared::PROMOTE_PENDING))
                    .bind(user.as_str())
                    .bind(nonce)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        }

        async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError> {
            let done = sqlx::query($sql(shared::DELETE_TOTP))
                .bind(user.as_str())
                .execute(&self.$pool)
                .await?;
            Ok(done.rows_affected() > 0)
        }

        async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError> {
            let row = sqlx::query($sql(shared::GET_SESSION))
                .bind(user.as_str())
                .fetch_optional(&self.$readers)
                .await?;
            let Some(r) = row else { return Ok(None) };
            let status: String = r.try_get("status")?;
            let last_seen: Option<i64> = r.try_get("last_seen_at")?;
            let expires: Option<i64> = r.try_get("expires_at")?;
            Ok(Some(Session {
                status: SessionStatus::from_name(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("session status {status:?}")))?,
                since: UnixMillis(r.try_get("since")?),
                last_seen: last_seen.map(UnixMillis),
                expires_at: expires.map(UnixMillis),
            }))
        }

        async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError> {
            sqlx::query($sql(shared::PUT_SESSION))
                .bind(user.as_str())
                .bind(session.status.as_str())
                .bind(session.since.0)
                .bind(session.last_seen.map(|t| t.0))
                .bind(session.expires_at.map(|t| t.0))
                .execute(&self.$pool)
                .await?;
            Ok(())
        }

        async fn revoke_sessions(&self, user: Option<&UserId>, now: UnixMillis) -> Result<u64, StoreError> {
            let done = match user {
                Some(u) => {
                    sqlx::query($sql(shared::REVOKE_SESSION))
                        .bind(u.as_str())
                        .bind(now.0)
                        .execute(&self.$pool)
                        .await?
                }
                None => {
                    sqlx::query($sql(shared::REVOKE_ALL_SESSIONS))
                        .bind(now.0)
                        .execute(&self.$pool)
                        .await?
                }
            };
            Ok(done.rows_affected())
        }

        async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError> {
            let s = sqlx::query($sql(shared::SESSION_STATS))
                .bind(now.0)
                .fetch_one(&self.$readers)
                .await?;
            let l = sqlx::query($sql(shared::LOCK_STATS))
                .bind(now.0)
                .bind(totp_context)
                .fetch_one(&self.$readers)
                .await?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(Stats {
                total: n(s.try_get("total")?),
                authenticated: n(s.try_get("authenticated")?),
                processing: n(s.try_get("processing")?),
                expired: n(s.try_get("expired")?),
                blocked: n(l.try_get("totp")?),
                locks_temporary: n(l.try_get("temporary")?),
                locks_permanent: n(l.try_get("permanent")?),
            })
        }

        async fn list_events(&self, filter: &EventFilter, limit: u32) -> Result<Vec<(i64, SecurityEvent)>, StoreError> {
            let rows = sqlx::query($sql(shared::LIST_EVENTS))
                .bind(&filter.user_id)
                .bind(&filter.ip)
                .bind(&filter.session_id)
                .bind(&filter.context)
                .bind(&filter.kind)
                .bind(filter.from.map_or(i64::MIN, |t| t.0))
                .bind(filter.to.map_or(i64::MAX, |t| t.0))
                .bind(filter.before_id.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.$readers)
                .await?;
            rows.iter()
                .map(|r| Ok(shared::decode_event(r)?))
                .collect()
        }

        async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError> {
            let rows = sqlx::query($sql(shared::ACTIVE_LOCKS))
                .bind(now.0)
                .fetch_all(&self.$readers)
                .await?;
            rows.iter()
                .map(|r| {
                    let n: i64 = r.try_get("n")?;
                    Ok(LockCount {
                        context: r.try_get("context")?,
                        permanent: r.try_get("permanent")?,
                        count: u64::try_from(n).unwrap_or(0),
                    })
                })
                .collect()
        }

        }
    };
}

pub(crate) use store_impl;

/// One cleanup pass inside the caller's transaction `$tx` (see the
/// statements above for the order and why).
macro_rules! cleanup_pass {
    ($tx:expr, $sql:path, $now:expr, $retention:expr) => {{
        let now: UnixMillis = $now;
        let last: Option<i64> = sqlx::query_scalar($sql(shared::LAST_PASS))
            .fetch_optional(&mut *$tx)
            .await?;
        let locks_expired = sqlx::query($sql(shared::LOCKS_EXPIRED))
            .bind(last.unwrap_or(i64::MIN))
            .bind(now.0)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        sqlx::query($sql(shared::MARK_PASS))
            .bind(now.0)
            .execute(&mut *$tx)
            .await?;
        let states = sqlx::query($sql(shared::DELETE_EXPIRED_STATES))
            .bind(now.0)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        sqlx::query($sql(shared::SESSIONS_EXPIRED))
            .bind(now.0)
            .execute(&mut *$tx)
            .await?;
        let sessions_expired = sqlx::query($sql(shared::EXPIRE_SESSIONS))
            .bind(now.0)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        let sessions_deleted = sqlx::query($sql(shared::SWEEP_SESSIONS))
            .bind(now.0 - shared::SESSION_RETENTION_MS)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        let retention_ms = i64::try_from($retention.as_millis()).unwrap_or(i64::MAX);
        let events_deleted = sqlx::query($sql(shared::DROP_OLD_EVENTS))
            .bind(now.0.saturating_sub(retention_ms))
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        Purged {
            states,
            sessions_expired,
            sessions_deleted,
            locks_expired,
            events_deleted,
        }
    }};
}

pub(crate) use cleanup_pass;
