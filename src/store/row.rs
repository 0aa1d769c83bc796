//! A key state as both dialects store it: one row in plain types, the
//! identifier columns of a key, and the conditions that pick rows out.

use super::StoreError;
use super::model::{
    Applied, Involving, StateId, Stored, Transition, TransitionFn, UnlockScope, Update,
};
use crate::domain::{
    ContextName, Key, KeyKind, KeyState, Lock, RuleName, SecurityEvent, UnixMillis,
};

/// A key's identifier columns, borrowed from the key where its text is
/// already there. Session ids and password fingerprints share the `token`
/// column, told apart by `kind`: every query that matches one asks for its
/// kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyColumns<'a> {
    pub kind: &'static str,
    /// Empty when the key has no such part: the primary key cannot hold
    /// NULLs, and '' is never a valid identifier.
    pub user_id: &'a str,
    pub ip: String,
    pub token: &'a str,
}

impl KeyColumns<'_> {
    pub fn of(key: &Key) -> KeyColumns<'_> {
        KeyColumns {
            kind: key.kind().as_str(),
            user_id: key.user().map_or("", |u| u.as_str()),
            ip: key.ip().map(|i| i.to_string()).unwrap_or_default(),
            token: key.token(),
        }
    }
}

/// An id with its key's columns, worked out once for all the comparisons
/// and binds of one call.
pub(crate) struct Named<'a> {
    pub id: &'a StateId,
    pub columns: KeyColumns<'a>,
}

impl<'a> Named<'a> {
    pub fn new(id: &'a StateId) -> Named<'a> {
        Named {
            id,
            columns: KeyColumns::of(&id.key),
        }
    }

    pub fn all(ids: &'a [StateId]) -> Vec<Named<'a>> {
        ids.iter().map(Named::new).collect()
    }

    /// Whether `row` is the state of this id.
    pub fn is(&self, row: &Row) -> bool {
        row.context == *self.id.context
            && row.rule == *self.id.rule
            && row.user_id == self.columns.user_id
            && row.ip == self.columns.ip
            && row.token == self.columns.token
    }

    /// This id's row among `rows`.
    pub fn find<'r>(&self, rows: &'r [Row]) -> Option<&'r Row> {
        rows.iter().find(|r| self.is(r))
    }
}

/// One stored row in plain types, shared by both dialects' codecs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Row {
    pub context: String,
    pub rule: String,
    pub kind: &'static str,
    pub user_id: String,
    pub ip: String,
    pub token: String,
    pub recent_failures: Vec<i64>,
    pub failures_total: i64,
    pub last_failure_at: Option<i64>,
    pub locked_at: Option<i64>,
    pub locked_until: Option<i64>,
    pub lock_tier: i32,
    pub recent_lockouts: i32,
    pub last_lockout_at: Option<i64>,
    pub lockouts_total: i64,
    pub expires_at: Option<i64>,
    pub version: i64,
}

pub(crate) fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn tier(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

impl Row {
    /// The row `update` writes for `named`, at `version`: its only copy of
    /// the id's text.
    pub fn new(named: &Named<'_>, update: &Update, version: i64) -> Row {
        let s = &update.state;
        let c = &named.columns;
        Row {
            context: named.id.context.to_string(),
            rule: named.id.rule.to_string(),
            kind: c.kind,
            user_id: c.user_id.to_owned(),
            ip: c.ip.clone(),
            token: c.token.to_owned(),
            recent_failures: s.recent_failures.iter().map(|t| t.0).collect(),
            failures_total: big(s.failures_total),
            last_failure_at: s.last_failure_at.map(|t| t.0),
            locked_at: s.lock.as_ref().map(|l| l.locked_at.0),
            locked_until: s.lock.as_ref().and_then(|l| l.until).map(|t| t.0),
            lock_tier: s.lock.as_ref().map(|l| tier(l.tier)).unwrap_or(0),
            recent_lockouts: tier(s.recent_lockouts),
            last_lockout_at: s.last_lockout_at.map(|t| t.0),
            lockouts_total: big(s.lockouts_total),
            expires_at: update.expires_at.map(|t| t.0),
            version,
        }
    }

    /// recent_failures as text, written in place: comma-separated, as
    /// SQLite stores it, or within braces, Postgres's text form of the
    /// BIGINT[] a batched write casts it back to.
    pub fn failures_text(&self, braces: bool) -> String {
        use std::fmt::Write;
        let mut text = String::with_capacity(2 + self.recent_failures.len() * 14);
        if braces {
            text.push('{');
        }
        for (i, t) in self.recent_failures.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            let _ = write!(text, "{comma}{t}");
        }
        if braces {
            text.push('}');
        }
        text
    }

    /// A stored kind name as the one this build knows.
    pub fn kind_of(name: &str) -> Result<&'static str, StoreError> {
        KeyKind::from_name(name)
            .map(KeyKind::as_str)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown key kind {name:?}")))
    }

    fn id(&self) -> Result<StateId, StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("{what} in {}/{}", self.context, self.rule));
        let kind = KeyKind::from_name(self.kind).ok_or_else(|| corrupt("unknown key kind"))?;
        let key = Key::from_parts("key", kind, &self.user_id, &self.ip, &self.token)
            .map_err(|e| corrupt(&format!("bad {}", e.field)))?;
        Ok(StateId {
            context: ContextName::parse("context", &self.context)
                .map_err(|e| corrupt(&format!("bad {}", e.field)))?,
            rule: RuleName::parse("rule", &self.rule)
                .map_err(|e| corrupt(&format!("bad {}", e.field)))?,
            key,
        })
    }

    pub fn state(&self) -> KeyState {
        KeyState {
            recent_failures: self
                .recent_failures
                .iter()
                .copied()
                .map(UnixMillis)
                .collect(),
            failures_total: count(self.failures_total),
            last_failure_at: self.last_failure_at.map(UnixMillis),
            lock: self.locked_at.map(|at| Lock {
                locked_at: UnixMillis(at),
                until: self.locked_until.map(UnixMillis),
                tier: u32::try_from(self.lock_tier).unwrap_or(0),
            }),
            recent_lockouts: u32::try_from(self.recent_lockouts).unwrap_or(0),
            last_lockout_at: self.last_lockout_at.map(UnixMillis),
            lockouts_total: count(self.lockouts_total),
        }
    }

    pub fn stored(&self) -> Result<Stored, StoreError> {
        Ok(Stored {
            id: self.id()?,
            state: self.state(),
        })
    }
}

/// A stored row without its key's text, which whoever looks a key up has:
/// its state, when it may be purged, and its version. What the cache
/// keeps, and what reads answer in the order of the ids asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub update: Update,
    pub version: i64,
}

impl Known {
    pub fn of(row: &Row) -> Known {
        Known {
            update: Update {
                state: row.state(),
                expires_at: row.expires_at.map(UnixMillis),
            },
            version: row.version,
        }
    }
}

/// Appends the rows `scope` covers as a WHERE clause; the same text serves
/// both dialects.
pub(crate) fn push_scope<DB>(q: &mut sqlx::QueryBuilder<DB>, scope: &UnlockScope)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    match scope {
        UnlockScope::All => {
            q.push(" WHERE TRUE");
        }
        UnlockScope::Key { context, key } => {
            let c = KeyColumns::of(key);
            q.push(" WHERE context = ").push_bind(context.to_string());
            q.push(" AND kind = ").push_bind(c.kind.to_owned());
            q.push(" AND user_id = ").push_bind(c.user_id.to_owned());
            q.push(" AND ip = ").push_bind(c.ip);
            q.push(" AND token = ").push_bind(c.token.to_owned());
        }
        UnlockScope::Subject(involving) => {
            q.push(" WHERE ");
            push_subject(q, involving);
        }
    }
}

/// The condition that a row's key involves any identifier of the subject
/// ('' for a part it lacks, which matches nothing), or a prefix of its
/// address.
pub(crate) fn push_subject<DB>(q: &mut sqlx::QueryBuilder<DB>, involving: &Involving)
where
    DB: sqlx::Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let subject = &involving.subject;
    let text = |part: Option<String>| part.unwrap_or_default();
    q.push("((user_id = ")
        .push_bind(text(subject.user.as_ref().map(|u| u.to_string())));
    q.push(" AND user_id <> '') OR (ip IN (");
    let mut forms = q.separated(", ");
    forms.push_bind(text(subject.ip.map(|i| i.to_string())));
    for prefix in &involving.prefixes {
        forms.push_bind(prefix.to_string());
    }
    q.push(") AND ip <> '') OR (token = ")
        .push_bind(text(subject.session.as_ref().map(|s| s.to_string())));
    q.push(" AND token <> '' AND kind = ")
        .push_bind(KeyKind::Session.as_str().to_owned());
    q.push(")");
    if !subject.passwords.is_empty() {
        q.push(" OR (kind = ")
            .push_bind(KeyKind::Password.as_str().to_owned());
        q.push(" AND token IN (");
        let mut keys = q.separated(", ");
        for key in &subject.passwords {
            keys.push_bind(key.as_str().to_owned());
        }
        q.push("))");
    }
    q.push(")");
}

/// The rows of `named`, in its order, from rows in any order.
pub(crate) fn align(named: &[Named<'_>], rows: &[Row]) -> Vec<Option<Known>> {
    named.iter().map(|n| n.find(rows).map(Known::of)).collect()
}

/// One run of a transition: the rows to write, each one version past what
/// was read (0 for a row not stored yet), the events to append with them,
/// and the states before and after.
pub(crate) struct NextRows {
    pub rows: Vec<Row>,
    pub events: Vec<SecurityEvent>,
    pub applied: Applied,
}

/// Runs `f` on `current`, the rows of `named` in its order.
pub(crate) fn next_rows(
    named: &[Named<'_>],
    current: &[Option<Known>],
    f: &TransitionFn<'_>,
) -> NextRows {
    let before: Vec<Option<KeyState>> = current
        .iter()
        .map(|k| k.as_ref().map(|k| k.update.state.clone()))
        .collect();
    let Transition { updates, events } = f(&before);
    let rows = named
        .iter()
        .zip(current)
        .zip(&updates)
        .map(|((n, known), update)| {
            Row::new(n, update, known.as_ref().map_or(0, |k| k.version) + 1)
        })
        .collect();
    NextRows {
        rows,
        events,
        applied: Applied {
            before,
            after: updates.into_iter().map(|u| u.state).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{IpPrefix, UserId};

    #[test]
    fn failures_are_written_as_each_dialect_reads_them() {
        let row = |times: &[i64]| Row {
            recent_failures: times.to_vec(),
            ..Row::default()
        };
        assert_eq!(row(&[]).failures_text(true), "{}");
        assert_eq!(row(&[]).failures_text(false), "");
        assert_eq!(row(&[7]).failures_text(true), "{7}");
        assert_eq!(row(&[1, -2, 3]).failures_text(true), "{1,-2,3}");
        assert_eq!(row(&[1, -2, 3]).failures_text(false), "1,-2,3");
    }

    #[test]
    fn a_row_round_trips() {
        let ids = [StateId {
            context: "login".into(),
            rule: "user_ip".into(),
            key: Key::UserIp(
                UserId::parse("u", "alice").unwrap(),
                IpPrefix::parse("i", "::1").unwrap(),
            ),
        }];
        let state = KeyState {
            recent_failures: vec![UnixMillis(1), UnixMillis(2)],
            failures_total: 7,
            last_failure_at: Some(UnixMillis(2)),
            lock: Some(Lock {
                locked_at: UnixMillis(2),
                until: None,
                tier: 2,
            }),
            recent_lockouts: 2,
            last_lockout_at: Some(UnixMillis(2)),
            lockouts_total: 3,
        };
        let named = Named::all(&ids);
        let update = Update {
            state: state.clone(),
            expires_at: None,
        };
        let row = Row::new(&named[0], &update, 1);
        assert!(named[0].is(&row));
        assert_eq!(
            row.stored().unwrap(),
            Stored {
                id: ids[0].clone(),
                state
            }
        );
    }
}
