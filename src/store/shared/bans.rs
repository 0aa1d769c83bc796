//! Bans as both dialects store them: read whole, written one row each,
//! lifted by scope. Each dialect runs these inside its own transaction and
//! appends the events beside them its own way.

use sqlx::QueryBuilder;

use super::Sql;
use crate::domain::{Ban, BanScope, BanTarget, ContextName, Key, KeyKind, UnixMillis};
use crate::store::StoreError;
use crate::store::row::KeyColumns;

const BAN_COLUMNS: &str =
    "context, kind, user_id, ip, token, reason, actor, caller, created_at, until_at";

/// A stored ban's target from its columns; a row the domain cannot read is
/// corruption, not a ban to skip.
fn target(
    context: &str,
    kind: &str,
    user: &str,
    ip: &str,
    token: &str,
) -> Result<BanTarget, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("ban: {e}"));
    let kind = KeyKind::from_name(kind).ok_or_else(|| corrupt(format!("unknown kind {kind:?}")))?;
    Ok(BanTarget {
        context: (!context.is_empty())
            .then(|| ContextName::parse("context", context))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))?,
        key: Key::from_parts("ban", kind, user, ip, token).map_err(|e| corrupt(e.to_string()))?,
    })
}

/// Appends to `q` the condition that picks out `key`'s row in any context.
fn push_key<DB>(q: &mut QueryBuilder<DB>, key: &Key)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let c = KeyColumns::of(key);
    q.push("(kind = ")
        .push_bind(c.kind.to_owned())
        .push(" AND user_id = ")
        .push_bind(c.user_id.to_owned())
        .push(" AND ip = ")
        .push_bind(c.ip)
        .push(" AND token = ")
        .push_bind(c.token.to_owned())
        .push(")");
}

/// Appends the WHERE clause of `scope`.
fn push_scope<DB>(q: &mut QueryBuilder<DB>, scope: &BanScope)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let (targets, keys): (Vec<&BanTarget>, Vec<&Key>) = match scope {
        BanScope::All => return,
        BanScope::Targets(t) => (t.iter().collect(), Vec::new()),
        BanScope::Keys(k) => (Vec::new(), k.iter().collect()),
    };
    q.push(" WHERE FALSE");
    for t in targets {
        q.push(" OR (context = ")
            .push_bind(t.context.as_ref().map_or(String::new(), |c| c.to_string()))
            .push(" AND ");
        push_key(q, &t.key);
        q.push(")");
    }
    for k in keys {
        q.push(" OR ");
        push_key(q, k);
    }
}

for_each_dialect! {
    impl Sql<Db> {
        fn decode_ban(row: &<Db as sqlx::Database>::Row) -> Result<Ban, StoreError> {
            use sqlx::Row as _;
            let text = |c: &str| row.try_get::<String, _>(c);
            Ok(Ban {
                target: target(
                    &text("context")?,
                    &text("kind")?,
                    &text("user_id")?,
                    &text("ip")?,
                    &text("token")?,
                )?,
                reason: text("reason")?,
                actor: text("actor")?,
                caller: text("caller")?,
                created_at: UnixMillis(row.try_get("created_at")?),
                until: row.try_get::<Option<i64>, _>("until_at")?.map(UnixMillis),
            })
        }

        /// Every stored ban, in force at `now` when given, ordered by
        /// target; some may have run out and await cleanup when not.
        pub async fn read_bans(&self, now: Option<UnixMillis>) -> Result<Vec<Ban>, StoreError> {
            let mut conn = self.readers.acquire().await?;
            let mut q: QueryBuilder<Db> = QueryBuilder::new(format!("SELECT {BAN_COLUMNS} FROM ban"));
            if let Some(now) = now {
                q.push(" WHERE until_at IS NULL OR until_at > ").push_bind(now.0);
            }
            q.push(" ORDER BY context, kind, user_id, ip, token");
            q.build()
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(Self::decode_ban)
                .collect()
        }

        /// Writes each of `bans` over whatever its target held, skipping
        /// those that change nothing (the same reason and end); returns the
        /// ones written.
        pub async fn write_bans<'b>(
            &self,
            conn: &mut <Db as sqlx::Database>::Connection,
            bans: &'b [Ban],
        ) -> Result<Vec<&'b Ban>, StoreError> {
            let mut written = Vec::new();
            for ban in bans {
                let mut q: QueryBuilder<Db> =
                    QueryBuilder::new(format!("SELECT {BAN_COLUMNS} FROM ban"));
                push_scope(&mut q, &BanScope::Targets(vec![ban.target.clone()]));
                let stored = q.build().fetch_optional(&mut *conn).await?;
                if let Some(row) = stored
                    && ban.same_as(&Self::decode_ban(&row)?)
                {
                    continue;
                }
                let c = KeyColumns::of(&ban.target.key);
                let context = ban.target.context.as_ref().map_or(String::new(), |c| c.to_string());
                let mut q: QueryBuilder<Db> =
                    QueryBuilder::new(format!("INSERT INTO ban ({BAN_COLUMNS}) VALUES ("));
                let mut values = q.separated(", ");
                values
                    .push_bind(context)
                    .push_bind(c.kind.to_owned())
                    .push_bind(c.user_id.to_owned())
                    .push_bind(c.ip.clone())
                    .push_bind(c.token.to_owned())
                    .push_bind(ban.reason.clone())
                    .push_bind(ban.actor.clone())
                    .push_bind(ban.caller.clone())
                    .push_bind(ban.created_at.0)
                    .push_bind(ban.until.map(|t| t.0));
                q.push(
                    ") ON CONFLICT (context, kind, user_id, ip, token) DO UPDATE SET \
                     reason = excluded.reason, actor = excluded.actor, \
                     caller = excluded.caller, created_at = excluded.created_at, \
                     until_at = excluded.until_at",
                );
                q.build().execute(&mut *conn).await?;
                written.push(ban);
            }
            Ok(written)
        }

        /// Deletes the bans in `scope`; returns those that were in force at
        /// `now`.
        pub async fn delete_bans(
            &self,
            conn: &mut <Db as sqlx::Database>::Connection,
            scope: &BanScope,
            now: UnixMillis,
        ) -> Result<Vec<Ban>, StoreError> {
            let mut q: QueryBuilder<Db> = QueryBuilder::new("DELETE FROM ban");
            push_scope(&mut q, scope);
            q.push(format!(" RETURNING {BAN_COLUMNS}"));
            let deleted: Vec<Ban> = q
                .build()
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(Self::decode_ban)
                .collect::<Result<_, _>>()?;
            Ok(deleted.into_iter().filter(|b| b.in_force(now)).collect())
        }

        /// The cleanup pass's part: bans that ran out after `after` and by
        /// `now` become audit events, then every ban run out goes.
        pub async fn purge_bans(
            &self,
            conn: &mut <Db as sqlx::Database>::Connection,
            after: i64,
            now: UnixMillis,
        ) -> Result<u64, StoreError> {
            use crate::domain::{EventKind, HIDDEN_HEX};
            let mut q: QueryBuilder<Db> = QueryBuilder::new(
                "INSERT INTO security_event \
                   (at, kind, context, rule, key_kind, user_id, ip, session_id, password, \
                    until_at, detail) SELECT until_at, ",
            );
            q.push_bind(EventKind::BanExpired.as_str().to_owned())
                .push(", context, ")
                .push_bind(crate::domain::BAN_RULE.to_owned())
                .push(
                    ", kind, user_id, ip, \
                     CASE WHEN kind = 'session' THEN token ELSE '' END, \
                     CASE WHEN kind = 'password' THEN substr(token, 1, length(token) - ",
                )
                .push(HIDDEN_HEX)
                .push(
                    ") ELSE '' END, until_at, reason FROM ban WHERE until_at > ",
                )
                .push_bind(after)
                .push(" AND until_at <= ")
                .push_bind(now.0);
            q.build().execute(&mut *conn).await?;
            let mut q: QueryBuilder<Db> = QueryBuilder::new("DELETE FROM ban WHERE until_at <= ");
            q.push_bind(now.0);
            Ok(q.build().execute(&mut *conn).await?.rows_affected())
        }
    }
}
