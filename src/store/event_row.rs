//! A security event as both dialects store it: its columns in plain
//! types, the one place an event becomes columns and columns an event.

use std::borrow::Cow;

use super::StoreError;
use crate::domain::{EventKind, SecurityEvent};

/// One stored event, without its id, in EVENT_COLUMNS' order: borrowed
/// from the event where its text is already there, owned as read. ''
/// stands for an identifier the event does not name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EventRow<'a> {
    pub at: i64,
    pub kind: Cow<'a, str>,
    pub context: Cow<'a, str>,
    pub rule: Cow<'a, str>,
    pub key_kind: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    pub ip: Cow<'a, str>,
    pub session_id: Cow<'a, str>,
    pub password: Cow<'a, str>,
    pub tier: i32,
    pub until_at: Option<i64>,
    pub permanent: bool,
    pub actor: Cow<'a, str>,
    pub caller: Cow<'a, str>,
    pub detail: Cow<'a, str>,
}

fn text<T: std::ops::Deref<Target = str>>(v: &Option<T>) -> Cow<'_, str> {
    Cow::Borrowed(v.as_deref().unwrap_or_default())
}

/// An optional identifier read back through the checks it passed on the
/// way in; a stored value that fails them is corruption.
fn parsed<T: std::str::FromStr>(column: &str, raw: &str) -> Result<Option<T>, StoreError> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| StoreError::Corrupt(format!("security_event.{column} is malformed")))
}

impl EventRow<'_> {
    pub fn of(e: &SecurityEvent) -> EventRow<'_> {
        EventRow {
            at: e.at,
            kind: Cow::Borrowed(e.kind.as_str()),
            context: text(&e.context),
            rule: text(&e.rule),
            key_kind: Cow::Borrowed(e.key_kind.map_or("", |k| k.as_str())),
            user_id: text(&e.user),
            ip: e
                .ip
                .map_or(Cow::Borrowed(""), |ip| Cow::Owned(ip.to_string())),
            session_id: text(&e.session),
            password: text(&e.password),
            tier: i32::try_from(e.tier).unwrap_or(i32::MAX),
            until_at: e.until,
            permanent: e.permanent,
            actor: Cow::Borrowed(&e.actor),
            caller: Cow::Borrowed(&e.caller),
            detail: Cow::Borrowed(&e.detail),
        }
    }

    pub fn event(self) -> Result<SecurityEvent, StoreError> {
        Ok(SecurityEvent {
            at: self.at,
            kind: EventKind::from_name(&self.kind)
                .ok_or_else(|| StoreError::Corrupt("security_event.kind is unknown".into()))?,
            context: parsed("context", &self.context)?,
            rule: parsed("rule", &self.rule)?,
            key_kind: parsed("key_kind", &self.key_kind)?,
            user: parsed("user_id", &self.user_id)?,
            ip: parsed("ip", &self.ip)?,
            session: parsed("session_id", &self.session_id)?,
            password: Some(self.password.into_owned()).filter(|p| !p.is_empty()),
            tier: u32::try_from(self.tier).unwrap_or(0),
            until: self.until_at,
            permanent: self.permanent,
            actor: self.actor.into_owned(),
            caller: self.caller.into_owned(),
            detail: self.detail.into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ContextName, IpPrefix, Key, UnixMillis, UserId};

    #[test]
    fn an_event_reads_back_from_its_columns() {
        let user = UserId::parse("u", "alice").unwrap();
        let ip = IpPrefix::parse("ip", "2001:db8::/64").unwrap();
        let event = SecurityEvent {
            context: Some(ContextName::parse("c", "login").unwrap()),
            tier: 2,
            until: Some(9),
            detail: "d".into(),
            ..SecurityEvent::new(EventKind::Lockout, UnixMillis(5)).on_key(&Key::UserIp(user, ip))
        };
        let row = EventRow::of(&event);
        assert_eq!((&*row.key_kind, &*row.ip), ("user+ip", "2001:db8::/64"));
        assert_eq!(row.event().unwrap(), event);
    }

    #[test]
    fn a_malformed_stored_identifier_is_corruption_not_a_guess() {
        let row = EventRow {
            kind: "lockout".into(),
            ip: "not an address".into(),
            ..EventRow::default()
        };
        let err = row.event().unwrap_err();
        assert!(err.to_string().contains("security_event.ip"), "{err}");
    }
}
