//! The security events authgate records: every kind there is, its stored
//! name, and which kinds are alerts (delivered to WatchSecurityEvents
//! subscribers as well as kept in the audit trail).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Subject, UnixMillis};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A caller reported a failure (RecordFailure).
    FailureRecorded,
    /// A failure locked a key for a while...
    Lockout,
    /// ...or for good, until an admin lifts it.
    PermanentLockout,
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
}

impl EventKind {
    pub const ALL: [EventKind; 17] = [
        EventKind::FailureRecorded,
        EventKind::Lockout,
        EventKind::PermanentLockout,
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
    ];

    /// The name stored in the audit trail and sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FailureRecorded => "failure_recorded",
            EventKind::Lockout => "lockout",
            EventKind::PermanentLockout => "permanent_lockout",
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
/// broadcast to every replica's alert subscribers. Identifiers are in their
/// canonical text; '' where the event names none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityEvent {
    /// Unix milliseconds.
    pub at: i64,
    pub kind: EventKind,
    pub context: String,
    pub rule: String,
    pub user_id: String,
    pub ip: String,
    pub session_id: String,
    /// The password key an event is about, as admins are shown it (never
    /// the whole HMAC: see PasswordKey::shown).
    #[serde(default)]
    pub password: String,
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
            context: String::new(),
            rule: String::new(),
            user_id: String::new(),
            ip: String::new(),
            session_id: String::new(),
            password: String::new(),
            tier: 0,
            until: None,
            permanent: false,
            actor: String::new(),
            caller: String::new(),
            detail: String::new(),
        }
    }

    /// Fills in the subject's identifiers.
    pub fn about(self, subject: &Subject) -> Self {
        SecurityEvent {
            user_id: subject
                .user
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            ip: subject.ip.map(|i| i.to_string()).unwrap_or_default(),
            session_id: subject
                .session
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            ..self
        }
    }

    pub fn is_alert(&self) -> bool {
        self.kind.is_alert()
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
                "admission_blocked"
            ]
        );
    }
}
