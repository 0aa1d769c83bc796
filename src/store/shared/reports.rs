//! What admins read of the key states and the audit trail, alike in both
//! dialects.

use sqlx::{AssertSqlSafe, QueryBuilder};

use super::{COLUMNS, EVENT_COLUMNS, Params, Sql};
use crate::domain::{EventKind, SecurityEvent, UnixMillis};
use crate::store::StoreError;
use crate::store::interface::Reports;
use crate::store::model::{EventFilter, Involving, LockCount, StateId, Stats, Stored};
use crate::store::row::{KeyColumns, count, push_subject};

/// A lock in force at `now`, as a condition on key_state's columns.
fn in_force(now: super::Placeholder) -> String {
    format!("locked_at IS NOT NULL AND (locked_until IS NULL OR locked_until > {now})")
}

for_each_dialect! {
    #[async_trait::async_trait]
    impl Reports for Sql<Db> {
        async fn list_locked(
            &self,
            context: Option<&str>,
            after: Option<&StateId>,
            limit: u32,
            now: UnixMillis,
        ) -> Result<Vec<Stored>, StoreError> {
            let mut p = Params::<Db>::default();
            let locked = in_force(p.bind(now.0));
            let context = p.bind(context.unwrap_or_default());
            let after = match after {
                None => "TRUE".to_owned(),
                Some(a) => {
                    let c = KeyColumns::of(&a.key);
                    format!(
                        "(context, rule, user_id, ip, token) > ({}, {}, {}, {}, {})",
                        p.bind(a.context.as_str()),
                        p.bind(a.rule.as_str()),
                        p.bind(c.user_id.to_owned()),
                        p.bind(c.ip),
                        p.bind(c.token.to_owned()),
                    )
                }
            };
            let limit = p.bind(i64::from(limit));
            let sql = format!(
                "SELECT {COLUMNS} FROM key_state \
                 WHERE {locked} AND ({context} = '' OR context = {context}) AND {after} \
                 ORDER BY context, rule, user_id, ip, token LIMIT {limit}"
            );
            let rows = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
                .fetch_all(&self.readers)
                .await?;
            rows.iter().map(|r| Self::decode(r)?.stored()).collect()
        }

        async fn subject_states(&self, involving: &Involving) -> Result<Vec<Stored>, StoreError> {
            let mut q =
                QueryBuilder::<Db>::new(format!("SELECT {COLUMNS} FROM key_state WHERE "));
            push_subject(&mut q, involving);
            q.push(" ORDER BY context, rule, user_id, ip, token");
            let rows = q.build().fetch_all(&self.readers).await?;
            rows.iter().map(|r| Self::decode(r)?.stored()).collect()
        }

        async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError> {
            use sqlx::Row as _;
            let mut p = Params::<Db>::default();
            let locked = in_force(p.bind(now.0));
            let sql = format!(
                "SELECT context, locked_until IS NULL AS permanent, COUNT(*) AS n \
                 FROM key_state WHERE {locked} GROUP BY 1, 2"
            );
            let rows = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
                .fetch_all(&self.readers)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(LockCount {
                        context: r.try_get("context")?,
                        permanent: r.try_get("permanent")?,
                        count: count(r.try_get("n")?),
                    })
                })
                .collect()
        }

        async fn list_events(
            &self,
            filter: &EventFilter,
            limit: u32,
        ) -> Result<Vec<(i64, SecurityEvent)>, StoreError> {
            let mut p = Params::<Db>::default();
            // '' matches every value of its column.
            let mut matches = |column: &str, value: &str| {
                let value = p.bind(value.to_owned());
                format!("({value} = '' OR {column} = {value})")
            };
            let conditions = [
                matches("user_id", &filter.user_id),
                matches("ip", &filter.ip),
                matches("session_id", &filter.session_id),
                matches("context", &filter.context),
                matches("kind", filter.kind.map_or("", EventKind::as_str)),
            ]
            .join(" AND ");
            let from = p.bind(filter.from.map_or(i64::MIN, |t| t.0));
            let to = p.bind(filter.to.map_or(i64::MAX, |t| t.0));
            let before = p.bind(filter.before_id.unwrap_or(i64::MAX));
            let limit = p.bind(i64::from(limit));
            let sql = format!(
                "SELECT id, {EVENT_COLUMNS} FROM security_event \
                 WHERE {conditions} AND at >= {from} AND at < {to} AND id < {before} \
                 ORDER BY id DESC LIMIT {limit}"
            );
            let rows = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
                .fetch_all(&self.readers)
                .await?;
            rows.iter().map(Self::decode_event).collect()
        }

        async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError> {
            use sqlx::Row as _;
            let at = now.0;
            let mut p = Params::<Db>::default();
            let now = p.bind(at);
            let sessions = format!(
                "SELECT COUNT(*) AS total, \
                   COALESCE(SUM(CASE WHEN status = 'authenticated' AND expires_at > {now} \
                     THEN 1 ELSE 0 END), 0) AS authenticated, \
                   COALESCE(SUM(CASE WHEN status = 'processing' THEN 1 ELSE 0 END), 0) \
                     AS processing, \
                   COALESCE(SUM(CASE WHEN status = 'expired' \
                     OR (status = 'authenticated' AND expires_at <= {now}) \
                     THEN 1 ELSE 0 END), 0) AS expired \
                 FROM session"
            );
            let s = sqlx::query_with(AssertSqlSafe(sessions), p.done()?)
                .fetch_one(&self.readers)
                .await?;
            let mut p = Params::<Db>::default();
            let locked = in_force(p.bind(at));
            let totp = p.bind(totp_context);
            let locks = format!(
                "SELECT \
                   COALESCE(SUM(CASE WHEN locked_until IS NOT NULL THEN 1 ELSE 0 END), 0) \
                     AS temporary, \
                   COALESCE(SUM(CASE WHEN locked_until IS NULL THEN 1 ELSE 0 END), 0) \
                     AS permanent, \
                   COALESCE(SUM(CASE WHEN context = {totp} THEN 1 ELSE 0 END), 0) AS totp \
                 FROM key_state WHERE {locked}"
            );
            let l = sqlx::query_with(AssertSqlSafe(locks), p.done()?)
                .fetch_one(&self.readers)
                .await?;
            Ok(Stats {
                total: count(s.try_get("total")?),
                authenticated: count(s.try_get("authenticated")?),
                processing: count(s.try_get("processing")?),
                expired: count(s.try_get("expired")?),
                blocked: count(l.try_get("totp")?),
                locks_temporary: count(l.try_get("temporary")?),
                locks_permanent: count(l.try_get("permanent")?),
            })
        }
    }
}
