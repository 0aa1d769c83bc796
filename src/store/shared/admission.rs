//! Admission state as both dialects keep it: the record codec, the row
//! lock of the slow path, and what admins read and reset.

use sqlx::AssertSqlSafe;

use super::{Params, Sql};
use crate::domain::{AdmissionState, Admitted, Cause, ContextName, KindClass, UnixMillis, UserId};
use crate::store::StoreError;
use crate::store::interface::AdmissionRecords;
use crate::store::model::{AdmissionRecord, AdmissionScope, AdmissionStats, OffenderCursor};
use crate::store::row::count;

/// A user's admission row, as `decode_admission` reads it.
pub const ADMISSION_COLUMNS: &str = "context, user_id, recent, warnings, reputation, \
     blocked_until, block_cause, updates_total, blocks_total, warnings_total, refused_total, \
     first_seen, last_seen";

for_each_dialect! {
    impl Sql<Db> {
        pub fn decode_admission(
            row: &<Db as sqlx::Database>::Row,
        ) -> Result<AdmissionRecord, StoreError> {
            use sqlx::Row as _;
            let warnings: i32 = row.try_get("warnings")?;
            let reputation: i32 = row.try_get("reputation")?;
            let recent: String = row.try_get("recent")?;
            let user: String = row.try_get("user_id")?;
            let context: String = row.try_get("context")?;
            Ok(AdmissionRecord {
                context: ContextName::parse("context", &context)
                    .map_err(|e| StoreError::Corrupt(format!("admission {e}")))?,
                user: UserId::parse("user_id", &user)
                    .map_err(|e| StoreError::Corrupt(format!("admission {e}")))?,
                state: AdmissionState {
                    recent: decode_recent(&recent)?,
                    warnings: u32::try_from(warnings).unwrap_or(0),
                    reputation: u32::try_from(reputation).unwrap_or(0),
                    blocked_until: row
                        .try_get::<Option<i64>, _>("blocked_until")?
                        .map(UnixMillis),
                    block_cause: decode_cause(row.try_get("block_cause")?)?,
                    updates_total: count(row.try_get("updates_total")?),
                    blocks_total: count(row.try_get("blocks_total")?),
                    warnings_total: count(row.try_get("warnings_total")?),
                    refused_total: count(row.try_get("refused_total")?),
                    first_seen: row.try_get::<Option<i64>, _>("first_seen")?.map(UnixMillis),
                    last_seen: row.try_get::<Option<i64>, _>("last_seen")?.map(UnixMillis),
                },
            })
        }

        /// Takes one user's row lock, creating the row first, and returns
        /// its state: one statement, whether or not the user was seen
        /// before, in either dialect.
        pub async fn lock_admission(
            &self,
            conn: &mut <Db as sqlx::Database>::Connection,
            context: &ContextName,
            user: &UserId,
            now: UnixMillis,
        ) -> Result<AdmissionState, StoreError> {
            let mut p = Params::<Db>::default();
            let (context, user_id, now) =
                (p.bind(context.as_str()), p.bind(user.as_str()), p.bind(now.0));
            let lock = format!(
                "INSERT INTO admission (context, user_id, touched_at) \
                 VALUES ({context}, {user_id}, {now}) \
                 ON CONFLICT (context, user_id) DO UPDATE SET version = admission.version \
                 RETURNING {ADMISSION_COLUMNS}"
            );
            let row = sqlx::query_with(AssertSqlSafe(lock), p.done()?)
                .fetch_one(conn)
                .await?;
            Ok(Self::decode_admission(&row)?.state)
        }

        /// Writes the state judged under `lock_admission`'s row lock.
        pub async fn save_admission(
            &self,
            conn: &mut <Db as sqlx::Database>::Connection,
            context: &ContextName,
            user: &UserId,
            s: &AdmissionState,
            now: UnixMillis,
        ) -> Result<(), StoreError> {
            let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let small = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
            let mut p = Params::<Db>::default();
            let (context, user_id) = (p.bind(context.as_str()), p.bind(user.as_str()));
            let save = format!(
                "UPDATE admission SET recent = {}, warnings = {}, reputation = {}, \
                   blocked_until = {}, block_cause = {}, updates_total = {}, \
                   blocks_total = {}, warnings_total = {}, refused_total = {}, \
                   first_seen = {}, last_seen = {}, touched_at = {}, version = version + 1 \
                 WHERE context = {context} AND user_id = {user_id}",
                p.bind(encode_recent(&s.recent)),
                p.bind(small(s.warnings)),
                p.bind(small(s.reputation)),
                p.bind(s.blocked_until.map(|t| t.0)),
                p.bind(s.block_cause.map(Cause::as_str)),
                p.bind(big(s.updates_total)),
                p.bind(big(s.blocks_total)),
                p.bind(big(s.warnings_total)),
                p.bind(big(s.refused_total)),
                p.bind(s.first_seen.map(|t| t.0)),
                p.bind(s.last_seen.map(|t| t.0)),
                p.bind(now.0),
            );
            sqlx::query_with(AssertSqlSafe(save), p.done()?)
                .execute(conn)
                .await?;
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl AdmissionRecords for Sql<Db> {
        async fn admissions(&self, user: &UserId) -> Result<Vec<AdmissionRecord>, StoreError> {
            let mut p = Params::<Db>::default();
            let user_id = p.bind(user.as_str());
            let sql = format!(
                "SELECT {ADMISSION_COLUMNS} FROM admission WHERE user_id = {user_id} \
                 ORDER BY context"
            );
            let rows = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
                .fetch_all(&self.readers)
                .await?;
            rows.iter().map(Self::decode_admission).collect()
        }

        async fn reset_admission(
            &self,
            scope: &AdmissionScope,
            unblock: bool,
            now: UnixMillis,
        ) -> Result<u64, StoreError> {
            let context = scope.context.as_deref().unwrap_or_default();
            let user = scope.user.as_ref().map_or("", |u| u.as_str());
            // One transaction, so an unlock never lifts a block and leaves
            // the warnings that would block again at the next one too many.
            let mut tx = self.writer.begin_with(self.begin_write).await?;
            let unblocked = if unblock {
                let mut p = Params::<Db>::default();
                let covered = covers(&mut p, context, user);
                let now = p.bind(now.0);
                let lift = format!(
                    "UPDATE admission SET blocked_until = NULL, version = version + 1 \
                     WHERE {covered} AND blocked_until > {now}"
                );
                let done = sqlx::query_with(AssertSqlSafe(lift), p.done()?)
                    .execute(&mut *tx)
                    .await?;
                Some(done.rows_affected())
            } else {
                None
            };
            let mut p = Params::<Db>::default();
            let covered = covers(&mut p, context, user);
            let forget = format!(
                "UPDATE admission SET warnings = 0, version = version + 1 \
                 WHERE {covered} AND warnings > 0"
            );
            let reset = sqlx::query_with(AssertSqlSafe(forget), p.done()?)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(unblocked.unwrap_or(reset.rows_affected()))
        }

        async fn admission_offenders(
            &self,
            context: Option<&str>,
            after: Option<&OffenderCursor>,
            limit: u32,
        ) -> Result<Vec<AdmissionRecord>, StoreError> {
            let mut p = Params::<Db>::default();
            let covered = covers(&mut p, context.unwrap_or_default(), "");
            // Most blocks first; after the cursor when paging.
            let after = match after {
                None => "TRUE".to_owned(),
                Some(a) => {
                    let blocks = p.bind(i64::try_from(a.blocks).unwrap_or(i64::MAX));
                    let (context, user) = (p.bind(a.context.as_str()), p.bind(a.user.as_str()));
                    format!(
                        "(blocks_total < {blocks} \
                          OR (blocks_total = {blocks} AND (context, user_id) > ({context}, {user})))"
                    )
                }
            };
            let limit = p.bind(i64::from(limit));
            let sql = format!(
                "SELECT {ADMISSION_COLUMNS} FROM admission \
                 WHERE {covered} AND blocks_total > 0 AND {after} \
                 ORDER BY blocks_total DESC, context, user_id LIMIT {limit}"
            );
            let rows = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
                .fetch_all(&self.readers)
                .await?;
            rows.iter().map(Self::decode_admission).collect()
        }

        async fn admission_stats(
            &self,
            context: Option<&str>,
            now: UnixMillis,
        ) -> Result<AdmissionStats, StoreError> {
            use sqlx::Row as _;
            let mut p = Params::<Db>::default();
            let covered = covers(&mut p, context.unwrap_or_default(), "");
            let now = p.bind(now.0);
            let sql = format!(
                "SELECT COUNT(*) AS users, \
                   CAST(COALESCE(SUM(refused_total), 0) AS BIGINT) AS refused, \
                   CAST(COALESCE(SUM(warnings_total), 0) AS BIGINT) AS warnings, \
                   COALESCE(SUM(CASE WHEN blocked_until > {now} THEN 1 ELSE 0 END), 0) \
                     AS blocked \
                 FROM admission WHERE {covered}"
            );
            let row = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
                .fetch_one(&self.readers)
                .await?;
            Ok(AdmissionStats {
                users: count(row.try_get("users")?),
                refused: count(row.try_get("refused")?),
                warnings: count(row.try_get("warnings")?),
                active_blocks: count(row.try_get("blocked")?),
            })
        }
    }

    /// Which rows an admin call covers: `context`, or every one for '';
    /// `user`, or every one for ''.
    fn covers(p: &mut Params<Db>, context: &str, user: &str) -> String {
        let (context, user) = (p.bind(context.to_owned()), p.bind(user.to_owned()));
        format!("({context} = '' OR context = {context}) AND ({user} = '' OR user_id = {user})")
    }
}

fn class_letter(class: KindClass) -> char {
    match class {
        KindClass::Text => 't',
        KindClass::Callback => 'c',
        KindClass::Media => 'm',
        KindClass::Command => 'k',
    }
}

fn letter_class(letter: &str) -> Option<KindClass> {
    match letter {
        "t" => Some(KindClass::Text),
        "c" => Some(KindClass::Callback),
        "m" => Some(KindClass::Media),
        "k" => Some(KindClass::Command),
        _ => None,
    }
}

/// `at,kind,class,fingerprint` entries joined by ';'. Kind names are
/// `[a-z0-9_]` (the configuration checks), so neither separator occurs in
/// one.
pub fn encode_recent(recent: &[Admitted]) -> String {
    recent
        .iter()
        .map(|u| {
            let print = u
                .fingerprint
                .map_or_else(|| "-".to_owned(), |p| format!("{p:016x}"));
            format!("{},{},{},{print}", u.at.0, u.kind, class_letter(u.class))
        })
        .collect::<Vec<_>>()
        .join(";")
}

pub fn decode_recent(text: &str) -> Result<Vec<Admitted>, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("admission.recent {text:?}"));
    text.split(';')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.split(',').collect();
            let [at, kind, class, print] = parts[..] else {
                return Err(corrupt());
            };
            Ok(Admitted {
                at: UnixMillis(at.parse().map_err(|_| corrupt())?),
                kind: kind.to_owned(),
                class: letter_class(class).ok_or_else(corrupt)?,
                fingerprint: match print {
                    "-" => None,
                    hex => Some(u64::from_str_radix(hex, 16).map_err(|_| corrupt())?),
                },
            })
        })
        .collect()
}

/// A stored block cause; unknown names are corrupt rows.
pub fn decode_cause(name: Option<String>) -> Result<Option<Cause>, StoreError> {
    name.map(|n| {
        Cause::from_name(&n).ok_or_else(|| StoreError::Corrupt(format!("admission cause {n:?}")))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_round_trips() {
        let recent = vec![
            Admitted {
                at: UnixMillis(1_767_225_600_000),
                kind: "text".into(),
                class: KindClass::Text,
                fingerprint: Some(0xdead_beef_0000_0001),
            },
            Admitted {
                at: UnixMillis(1_767_225_600_010),
                kind: "my_command".into(),
                class: KindClass::Command,
                fingerprint: None,
            },
        ];
        let text = encode_recent(&recent);
        assert_eq!(decode_recent(&text).unwrap(), recent);
        assert_eq!(decode_recent("").unwrap(), Vec::new());
        assert!(decode_recent("1,text,x,-").is_err());
    }
}
