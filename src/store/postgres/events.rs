//! The audit trail on Postgres: every statement that writes events binds
//! them here, as parallel arrays, and notifies the alerts among them in
//! the same statement, so every replica hears of one exactly when it
//! commits.

use sqlx::{AssertSqlSafe, PgExecutor, Postgres};

use super::relay::EVENT_CHANNEL;
use crate::domain::{EventKind, SecurityEvent};
use crate::store::StoreError;
use crate::store::event_row::EventRow;
use crate::store::shared::{EVENT_COLUMNS, Params};

/// Binds `events`, each of the request beside it, and gives back the CTEs
/// `logged` (the events inserted, those of requests that `keep` holds
/// for; `keep` may name the column `request`) and `notified` (the alerts
/// among them, NOTIFY-ed).
pub fn logged_and_notified(
    p: &mut Params<Postgres>,
    events: &[(i32, &SecurityEvent)],
    keep: &str,
) -> String {
    let rows: Vec<EventRow<'_>> = events.iter().map(|(_, e)| EventRow::of(e)).collect();
    let column = |p: &mut Params<Postgres>, f: for<'r> fn(&'r EventRow<'_>) -> &'r str| {
        p.bind(rows.iter().map(f).collect::<Vec<_>>())
    };
    let at = p.bind(rows.iter().map(|e| e.at).collect::<Vec<_>>());
    let kind = column(p, |e| &e.kind);
    let context = column(p, |e| &e.context);
    let rule = column(p, |e| &e.rule);
    let key_kind = column(p, |e| &e.key_kind);
    let user_id = column(p, |e| &e.user_id);
    let ip = column(p, |e| &e.ip);
    let session_id = column(p, |e| &e.session_id);
    let password = column(p, |e| &e.password);
    let tier = p.bind(rows.iter().map(|e| e.tier).collect::<Vec<_>>());
    let until = p.bind(rows.iter().map(|e| e.until_at).collect::<Vec<_>>());
    let permanent = p.bind(rows.iter().map(|e| e.permanent).collect::<Vec<_>>());
    let actor = column(p, |e| &e.actor);
    let caller = column(p, |e| &e.caller);
    let detail = column(p, |e| &e.detail);
    let request = p.bind(events.iter().map(|(r, _)| *r).collect::<Vec<_>>());
    let channel = p.bind(EVENT_CHANNEL);
    let alerts = p.bind(EventKind::alert_names());
    format!(
        "logged AS (INSERT INTO security_event \
           ({EVENT_COLUMNS}) \
           SELECT {EVENT_COLUMNS} \
           FROM UNNEST({at}::bigint[], {kind}::text[], {context}::text[], {rule}::text[], \
             {key_kind}::text[], {user_id}::text[], {ip}::text[], {session_id}::text[], \
             {password}::text[], \
             {tier}::int[], {until}::bigint[], {permanent}::bool[], {actor}::text[], \
             {caller}::text[], {detail}::text[], {request}::int[]) \
             AS e({EVENT_COLUMNS}, request) \
           WHERE {keep} RETURNING *), \
         notified AS (SELECT pg_notify({channel}, row_to_json(logged)::text) FROM logged \
           WHERE kind = ANY({alerts}))"
    )
}

/// Appends one event; one statement, so the row and, for an alert, the
/// NOTIFY commit together, and every replica's listener (this one's
/// included) delivers it.
pub async fn append<'c>(conn: impl PgExecutor<'c>, e: &SecurityEvent) -> Result<(), StoreError> {
    let mut p = Params::<Postgres>::default();
    let ctes = logged_and_notified(&mut p, &[(0, e)], "TRUE");
    let sql = format!("WITH {ctes} SELECT (SELECT count(*) FROM notified)");
    sqlx::query_with(AssertSqlSafe(sql), p.done()?)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sends `payload` on `channel`, delivered when `conn`'s transaction
/// commits (at once outside one).
pub async fn notify<'c>(
    conn: impl PgExecutor<'c>,
    channel: &str,
    payload: &str,
) -> Result<(), StoreError> {
    let mut p = Params::<Postgres>::default();
    let sql = format!("SELECT pg_notify({}, {})", p.bind(channel), p.bind(payload));
    sqlx::query_with(AssertSqlSafe(sql), p.done()?)
        .execute(conn)
        .await?;
    Ok(())
}
