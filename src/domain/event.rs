//! The security events authgate records: every kind there is, its stored
//! name, and which kinds are alerts (delivered to WatchSecurityEvents
//! subscribers as well as kept in the audit trail).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    ContextName, IpPrefix, Key, KeyKind, PasswordKey, RuleName, SessionId, Subject, UnixMillis,
    UserId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A caller reported a failure (RecordFailure).
    FailureRecorded,
    /// A failure locked a key for a while...
    Lockout,
    /// ...or for good, until an admin lifts it.
    PermanentLockout,
    /// A rule in shadow mode would have locked a key; nothing was refused.
    ShadowLockout,
    /// A lock ran out; recorded by the cleanup pass.
    LockoutExpired,
    /// A user not on the allow list tried to act.
    NotAllowed,
    /// Too many wrong codes locked a user's second factor.
    TotpBlocked,
    TotpEnrolled,
    /// A pending secret's first valid code confirmed it.
    TotpConfirmed,
    TotpImported,
    TotpReset,
    TotpFailed,
    SessionStarted,
    SessionExpired,
    SessionRevoked,
    /// An admin lifted locks.
    Unlocked,
    /// Admission blocked a user for spam (the cause is in the detail).
    AdmissionBlocked,
    /// An admin reset a user's admission warnings.
    WarningsReset,
    /// An admin banned a key or a range.
    Banned,
    /// An admin lifted a ban.
    BanLifted,
    /// A ban ran out; recorded by the cleanup pass.
    BanExpired,
    /// A user was issued recovery codes (the count in the detail).
    RecoveryCodesIssued,
    /// A recovery code signed a user in (those left in the detail).
    RecoveryCodeUsed,
    /// ...and it was the user's last one.
    RecoveryCodesExhausted,
}

impl EventKind {
    pub const ALL: [EventKind; 24] = [
        EventKind::FailureRecorded,
        EventKind::Lockout,
        EventKind::PermanentLockout,
        EventKind::ShadowLockout,
        EventKind::LockoutExpired,
        EventKind::NotAllowed,
        EventKind::TotpBlocked,
        EventKind::TotpEnrolled,
        EventKind::TotpConfirmed,
        EventKind::TotpImported,
        EventKind::TotpReset,
        EventKind::TotpFailed,
        EventKind::SessionStarted,
        EventKind::SessionExpired,
        EventKind::SessionRevoked,
        EventKind::Unlocked,
        EventKind::AdmissionBlocked,
        EventKind::WarningsReset,
        EventKind::Banned,
        EventKind::BanLifted,
        EventKind::BanExpired,
        EventKind::RecoveryCodesIssued,
        EventKind::RecoveryCodeUsed,
        EventKind::RecoveryCodesExhausted,
    ];

    /// The name stored in the audit trail and sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FailureRecorded => "failure_recorded",
            EventKind::Lockout => "lockout",
            EventKind::PermanentLockout => "permanent_lockout",
            EventKind::ShadowLockout => "shadow_lockout",
            EventKind::LockoutExpired => "lockout_expired",
            EventKind::NotAllowed => "not_allowed",
            EventKind::TotpBlocked => "totp_blocked",
            EventKind::TotpEnrolled => "totp_enrolled",
            EventKind::TotpConfirmed => "totp_confirmed",
            EventKind::TotpImported => "totp_imported",
            EventKind::TotpReset => "totp_reset",
            EventKind::TotpFailed => "totp_failed",
            EventKind::SessionStarted => "session_started",
            EventKind::SessionExpired => "session_expired",
            EventKind::SessionRevoked => "session_revoked",
            EventKind::Unlocked => "unlocked",
            EventKind::AdmissionBlocked => "admission_blocked",
            EventKind::WarningsReset => "warnings_reset",
            EventKind::Banned => "banned",
            EventKind::BanLifted => "ban_lifted",
            EventKind::BanExpired => "ban_expired",
            EventKind::RecoveryCodesIssued => "recovery_codes_issued",
            EventKind::RecoveryCodeUsed => "recovery_code_used",
            EventKind::RecoveryCodesExhausted => "recovery_codes_exhausted",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether subscribers are told at once: what an admin may have to act
    /// on. The rest is history, for ListAuditEvents.
    pub fn is_alert(self) -> bool {
        matches!(
            self,
            EventKind::Lockout
                | EventKind::PermanentLockout
                | EventKind::NotAllowed
                | EventKind::TotpBlocked
                | EventKind::AdmissionBlocked
                | EventKind::Banned
                | EventKind::BanLifted
                | EventKind::RecoveryCodeUsed
                | EventKind::RecoveryCodesExhausted
        )
    }

    /// The stored names of the alert kinds.
    pub fn alert_names() -> Vec<&'static str> {
        Self::ALL
            .into_iter()
            .filter(|k| k.is_alert())
            .map(EventKind::as_str)
            .collect()
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        EventKind::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event kind {name:?}")))
    }
}

/// One entry of the append-only security event log, as stored and as
/// broadcast to every replica's alert subscribers (field names are the
/// columns', as `row_to_json` sends them; `None` is stored as '').
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityEvent {
    /// Unix milliseconds.
    pub at: i64,
    pub kind: EventKind,
    #[serde(with = "blank")]
    pub context: Option<ContextName>,
    #[serde(with = "blank")]
    pub rule: Option<RuleName>,
    /// What the identifiers below make up: the key a lock is on, or the
    /// subject's kind for an event about a request. Stored, never guessed
    /// from which identifiers are present.
    #[serde(with = "blank", default)]
    pub key_kind: Option<KeyKind>,
    #[serde(rename = "user_id", with = "blank")]
    pub user: Option<UserId>,
    /// An address, or the prefix a rule counted it by.
    #[serde(with = "blank")]
    pub ip: Option<IpPrefix>,
    #[serde(rename = "session_id", with = "blank")]
    pub session: Option<SessionId>,
    /// The password key an event is about, as admins are shown it (never
    /// the whole HMAC: see PasswordKey::shown).
    #[serde(with = "blank", default)]
    pub password: Option<String>,
    pub tier: u32,
    /// End of a temporary lock, Unix milliseconds.
    #[serde(rename = "until_at")]
    pub until: Option<i64>,
    pub permanent: bool,
    /// The admin who acted, for unlocks, resets and revocations.
    #[serde(default)]
    pub actor: String,
    /// The authenticated caller (API key or certificate name) that made
    /// the admin call or reported the failure.
    #[serde(default)]
    pub caller: String,
    #[serde(default)]
    pub detail: String,
}

impl SecurityEvent {
    /// An event of `kind` at `at` about nobody in particular; callers fill
    /// in what they know.
    pub fn new(kind: EventKind, at: UnixMillis) -> Self {
        SecurityEvent {
            at: at.0,
            kind,
            context: None,
            rule: None,
            key_kind: None,
            user: None,
            ip: None,
            session: None,
            password: None,
            tier: 0,
            until: None,
            permanent: false,
            actor: String::new(),
            caller: String::new(),
            detail: String::new(),
        }
    }

    /// Fills in the subject's identifiers, and the kind of key they make
    /// up: a user and an address are a user+ip subject, and so on.
    pub fn about(self, subject: &Subject) -> Self {
        let key_kind = match (&subject.user, subject.ip, &subject.session) {
            (Some(_), Some(_), _) => Some(KeyKind::UserIp),
            (Some(_), None, _) => Some(KeyKind::User),
            (None, Some(_), _) => Some(KeyKind::Ip),
            (None, None, Some(_)) => Some(KeyKind::Session),
            (None, None, None) => None,
        };
        SecurityEvent {
            key_kind,
            user: subject.user.clone(),
            ip: subject.ip.map(IpPrefix::from),
            session: subject.session.clone(),
            ..self
        }
    }

    /// Fills in one key: its kind and its identifiers.
    pub fn on_key(self, key: &Key) -> Self {
        SecurityEvent {
            key_kind: Some(key.kind()),
            user: key.user().cloned(),
            ip: key.ip(),
            session: key.session().cloned(),
            password: key.password().map(PasswordKey::shown),
            ..self
        }
    }

    pub fn is_alert(&self) -> bool {
        self.kind.is_alert()
    }
}

/// An optional identifier as a column holds it: '' for none, else its
/// text, parsed back as it was checked on the way in.
mod blank {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let raw = String::deserialize(d)?;
        if raw.is_empty() {
            return Ok(None);
        }
        raw.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_stored_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::from_name("lockout\0"), None);
        assert_eq!(
            EventKind::alert_names(),
            [
                "lockout",
                "permanent_lockout",
                "not_allowed",
                "totp_blocked",
                "admission_blocked",
                "banned",
                "ban_lifted",
                "recovery_code_used",
                "recovery_codes_exhausted"
            ]
        );
    }
}
