//! Users' second factors and sessions, alike in both dialects.

use sqlx::AssertSqlSafe;

use super::{Params, Sql};
use crate::crypto::{CodeHash, Sealed};
use crate::domain::{Session, SessionStatus, TotpAlgorithm, TotpParams, UnixMillis, UserId};
use crate::store::StoreError;
use crate::store::interface::{Sessions, TotpSecrets};
use crate::store::model::StoredTotp;

for_each_dialect! {
    #[async_trait::async_trait]
    impl TotpSecrets for Sql<Db> {
        async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError> {
            use sqlx::Row as _;
            let mut p = Params::<Db>::default();
            let user = p.bind(user.as_str());
            // The confirmed secret first.
            let sql = format!(
                "SELECT pending, key_id, nonce, ciphertext, algorithm, digits, period, \
                   created_at, last_step \
                 FROM totp_secret WHERE user_id = {user} ORDER BY pending"
            );
            let rows = sqlx::query_with(AssertSqlSafe(sql), p.done()?)
                .fetch_all(&self.readers)
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
                        algorithm: TotpAlgorithm::from_name(&algorithm)
                            .ok_or_else(|| corrupt("algorithm"))?,
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
            let mut tx = self.writer.begin_with(self.begin_write).await?;
            let mut p = Params::<Db>::default();
            let (user_id, pending) = (p.bind(user.as_str()), p.bind(!totp.confirmed));
            let key_id = p.bind(totp.sealed.key_id.as_str());
            let nonce = p.bind(totp.sealed.nonce.as_slice());
            let ciphertext = p.bind(totp.sealed.ciphertext.as_slice());
            let algorithm = p.bind(totp.params.algorithm.as_str());
            let digits = p.bind(i32::from(totp.params.digits));
            let period = p.bind(i32::try_from(totp.params.period).unwrap_or(i32::MAX));
            let created_at = p.bind(totp.created_at.0);
            let put = format!(
                "INSERT INTO totp_secret (user_id, pending, key_id, nonce, ciphertext, \
                   algorithm, digits, period, created_at) \
                 VALUES ({user_id}, {pending}, {key_id}, {nonce}, {ciphertext}, {algorithm}, \
                   {digits}, {period}, {created_at}) \
                 ON CONFLICT (user_id, pending) DO UPDATE SET key_id = excluded.key_id, \
                   nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
                   algorithm = excluded.algorithm, digits = excluded.digits, \
                   period = excluded.period, created_at = excluded.created_at, last_step = NULL"
            );
            sqlx::query_with(AssertSqlSafe(put), p.done()?)
                .execute(&mut *tx)
                .await?;
            if totp.confirmed {
                // An imported (confirmed) secret replaces any enrollment
                // under way.
                let mut p = Params::<Db>::default();
                let user_id = p.bind(user.as_str());
                let drop = format!(
                    "DELETE FROM totp_secret WHERE user_id = {user_id} AND pending = TRUE"
                );
                sqlx::query_with(AssertSqlSafe(drop), p.done()?)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn accept_totp_step(
            &self,
            user: &UserId,
            nonce: &[u8],
            step: u64,
            recovery: &[CodeHash],
            at: UnixMillis,
        ) -> Result<bool, StoreError> {
            let mut tx = self.writer.begin_with(self.begin_write).await?;
            let mut p = Params::<Db>::default();
            let user_id = p.bind(user.as_str());
            let step = p.bind(i64::try_from(step).unwrap_or(i64::MAX));
            let secret = p.bind(nonce);
            // One statement, so two replicas accepting the same code race
            // in the database and exactly one wins. The nonce pins the
            // secret the code was checked against, in case it was replaced
            // meanwhile.
            let accept = format!(
                "UPDATE totp_secret SET last_step = {step} \
                 WHERE user_id = {user_id} AND nonce = {secret} \
                   AND (last_step IS NULL OR last_step < {step}) \
                 RETURNING pending"
            );
            let pending: Option<bool> = sqlx::query_scalar_with(AssertSqlSafe(accept), p.done()?)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(pending) = pending else {
                return Ok(false);
            };
            if pending {
                // A pending secret's first valid code promotes it over the
                // confirmed one.
                let mut p = Params::<Db>::default();
                let user_id = p.bind(user.as_str());
                let drop =
                    format!("DELETE FROM totp_secret WHERE user_id = {user_id} AND pending = FALSE");
                sqlx::query_with(AssertSqlSafe(drop), p.done()?)
                    .execute(&mut *tx)
                    .await?;
                let mut p = Params::<Db>::default();
                let user_id = p.bind(user.as_str());
                let secret = p.bind(nonce);
                let promote = format!(
                    "UPDATE totp_secret SET pending = FALSE \
                     WHERE user_id = {user_id} AND nonce = {secret}"
                );
                sqlx::query_with(AssertSqlSafe(promote), p.done()?)
                    .execute(&mut *tx)
                    .await?;
                // The codes of the secret just proven, issued with it or not
                // at all; the old secret's go with it.
                replace_recovery_codes(&mut tx, user, recovery, at).await?;
            }
            tx.commit().await?;
            Ok(true)
        }

        async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError> {
            let mut tx = self.writer.begin_with(self.begin_write).await?;
            let mut p = Params::<Db>::default();
            let user_id = p.bind(user.as_str());
            let delete = format!("DELETE FROM totp_secret WHERE user_id = {user_id}");
            let done = sqlx::query_with(AssertSqlSafe(delete), p.done()?)
                .execute(&mut *tx)
                .await?;
            replace_recovery_codes(&mut tx, user, &[], UnixMillis(0)).await?;
            tx.commit().await?;
            Ok(done.rows_affected() > 0)
        }

        async fn put_recovery_codes(
            &self,
            user: &UserId,
            codes: &[CodeHash],
            at: UnixMillis,
        ) -> Result<(), StoreError> {
            let mut tx = self.writer.begin_with(self.begin_write).await?;
            replace_recovery_codes(&mut tx, user, codes, at).await?;
            tx.commit().await?;
            Ok(())
        }

        async fn use_recovery_code(
            &self,
            user: &UserId,
            candidates: &[CodeHash],
        ) -> Result<Option<u64>, StoreError> {
            let mut tx = self.writer.begin_with(self.begin_write).await?;
            let mut used = false;
            for candidate in candidates {
                let mut p = Params::<Db>::default();
                let (user_id, hmac) = (p.bind(user.as_str()), p.bind(&candidate.hmac[..]));
                let key_id = p.bind(candidate.key_id.as_str());
                // One DELETE: of two replicas racing with one code, the
                // second finds the row gone.
                let delete = format!(
                    "DELETE FROM recovery_code \
                     WHERE user_id = {user_id} AND hmac = {hmac} AND key_id = {key_id}"
                );
                let done = sqlx::query_with(AssertSqlSafe(delete), p.done()?)
                    .execute(&mut *tx)
                    .await?;
                used |= done.rows_affected() > 0;
            }
            if !used {
                return Ok(None);
            }
            let left = count_recovery_codes(&mut tx, user).await?;
            tx.commit().await?;
            Ok(Some(left))
        }

        async fn recovery_codes_left(&self, user: &UserId) -> Result<u64, StoreError> {
            let mut conn = self.readers.acquire().await?;
            count_recovery_codes(&mut conn, user).await
        }
    }

    async fn count_recovery_codes(
        conn: &mut <Db as sqlx::Database>::Connection,
        user: &UserId,
    ) -> Result<u64, StoreError> {
        let mut p = Params::<Db>::default();
        let user_id = p.bind(user.as_str());
        let count = format!("SELECT COUNT(*) FROM recovery_code WHERE user_id = {user_id}");
        let n: i64 = sqlx::query_scalar_with(AssertSqlSafe(count), p.done()?)
            .fetch_one(&mut *conn)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The user's recovery codes become `codes`, inside the caller's
    /// transaction.
    async fn replace_recovery_codes(
        conn: &mut <Db as sqlx::Database>::Connection,
        user: &UserId,
        codes: &[CodeHash],
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        let mut p = Params::<Db>::default();
        let user_id = p.bind(user.as_str());
        let clear = format!("DELETE FROM recovery_code WHERE user_id = {user_id}");
        sqlx::query_with(AssertSqlSafe(clear), p.done()?)
            .execute(&mut *conn)
            .await?;
        for code in codes {
            let mut p = Params::<Db>::default();
            let values = [
                p.bind(user.as_str()),
                p.bind(&code.hmac[..]),
                p.bind(code.key_id.as_str()),
                p.bind(at.0),
            ]
            .map(|v| v.to_string())
            .join(", ");
            let insert = format!(
                "INSERT INTO recovery_code (user_id, hmac, key_id, created_at) VALUES ({values})"
            );
            sqlx::query_with(AssertSqlSafe(insert), p.done()?)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    #[async_trait::async_trait]
    impl Sessions for Sql<Db> {
        async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError> {
            use sqlx::Row as _;
            let mut p = Params::<Db>::default();
            let user_id = p.bind(user.as_str());
            let get = format!(
                "SELECT status, since, last_seen_at, expires_at FROM session \
                 WHERE user_id = {user_id}"
            );
            let row = sqlx::query_with(AssertSqlSafe(get), p.done()?)
                .fetch_optional(&self.readers)
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
            let mut p = Params::<Db>::default();
            let user_id = p.bind(user.as_str());
            let status = p.bind(session.status.as_str());
            let since = p.bind(session.since.0);
            let last_seen = p.bind(session.last_seen.map(|t| t.0));
            let expires = p.bind(session.expires_at.map(|t| t.0));
            let put = format!(
                "INSERT INTO session (user_id, status, since, last_seen_at, expires_at) \
                 VALUES ({user_id}, {status}, {since}, {last_seen}, {expires}) \
                 ON CONFLICT (user_id) DO UPDATE SET status = excluded.status, \
                   since = excluded.since, last_seen_at = excluded.last_seen_at, \
                   expires_at = excluded.expires_at"
            );
            sqlx::query_with(AssertSqlSafe(put), p.done()?)
                .execute(&self.writer)
                .await?;
            Ok(())
        }

        async fn revoke_sessions(
            &self,
            user: Option<&UserId>,
            now: UnixMillis,
        ) -> Result<u64, StoreError> {
            let mut p = Params::<Db>::default();
            // '' for everyone's.
            let user_id = p.bind(user.map_or("", |u| u.as_str()));
            let now = p.bind(now.0);
            let revoke = format!(
                "UPDATE session SET status = 'unauthenticated', since = {now}, \
                   last_seen_at = NULL, expires_at = NULL \
                 WHERE ({user_id} = '' OR user_id = {user_id}) \
                   AND status IN ('authenticated', 'processing')"
            );
            let done = sqlx::query_with(AssertSqlSafe(revoke), p.done()?)
                .execute(&self.writer)
                .await?;
            Ok(done.rows_affected())
        }
    }
}
