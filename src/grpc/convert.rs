//! Proto messages to domain values and back. Parsing failures name the
//! request field.

use std::time::Duration;

use prost_types::Timestamp;

use super::proto;
use crate::crypto::PasswordKeys;
use crate::domain::{
    Cause, ContextName, Decision, EventKind, FieldError, IpAddress, Key, KeyKind, Lock,
    SecurityEvent, SessionId, SessionStatus, Subject, UnixMillis, UserId, Verdict,
};
use crate::service::AdmitOutcome;
use crate::store::{AdmissionRecord, EventFilter, Stored};

/// Bytes in a password fingerprint: a SHA-256.
const FINGERPRINT_BYTES: usize = 32;

/// A subject from a request. Its password fingerprint, if any, is re-keyed
/// under `passwords` here and dropped: nothing past this point sees it.
/// Without keys (no password rule anywhere) it is checked and ignored, and
/// then it is no identifier: a request must name someone else.
pub fn subject(
    field: &str,
    s: Option<&proto::Subject>,
    passwords: Option<&PasswordKeys>,
) -> Result<Subject, FieldError> {
    let s = s.ok_or_else(|| FieldError::new(field, "is required"))?;
    let fingerprint: Option<&[u8; FINGERPRINT_BYTES]> = (!s.password_fingerprint.is_empty())
        .then(|| {
            s.password_fingerprint.as_slice().try_into().map_err(|_| {
                FieldError::new(
                    format!("{field}.password_fingerprint"),
                    format!(
                        "must be the {FINGERPRINT_BYTES} bytes of a SHA-256 of the password, got \
                         {} bytes",
                        s.password_fingerprint.len()
                    ),
                )
            })
        })
        .transpose()?;
    let rekeyed = fingerprint
        .zip(passwords)
        .map(|(fingerprint, keys)| keys.rekey(fingerprint))
        .unwrap_or_default();
    let mut subject =
        Subject::parse_with(field, &s.user_id, &s.ip, &s.session_id, !rekeyed.is_empty())?;
    subject.passwords = rekeyed;
    Ok(subject)
}

/// ListAuditEvents' filters, parsed as every other request's identifiers
/// are, so an address matches whichever way it is written (`2001:DB8::1`,
/// `::ffff:192.0.2.1`) and nothing malformed reaches the store. Empty
/// strings match everything.
pub fn event_filter(req: &proto::ListAuditEventsRequest) -> Result<EventFilter, FieldError> {
    fn canonical<T: ToString>(
        raw: &str,
        parse: impl Fn(&str) -> Result<T, FieldError>,
    ) -> Result<String, FieldError> {
        if raw.is_empty() {
            return Ok(String::new());
        }
        parse(raw).map(|v| v.to_string())
    }
    let kind = match req.kind.as_str() {
        "" => None,
        name => Some(EventKind::from_name(name).ok_or_else(|| {
            FieldError::new("kind", "is not an event kind (lockout, unlocked, ...)")
        })?),
    };
    Ok(EventFilter {
        user_id: canonical(&req.user_id, |r| UserId::parse("user_id", r))?,
        ip: canonical(&req.ip, |r| IpAddress::parse("ip", r))?,
        session_id: canonical(&req.session_id, |r| SessionId::parse("session_id", r))?,
        context: canonical(&req.context, |r| ContextName::parse("context", r))?,
        kind,
        from: req.from.as_ref().map(|t| millis("from", t)).transpose()?,
        to: req.to.as_ref().map(|t| millis("to", t)).transpose()?,
        before_id: None,
    })
}

/// A request's timestamp, checked as protobuf defines it: nanos within a
/// second.
pub fn millis(field: &str, t: &Timestamp) -> Result<UnixMillis, FieldError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(FieldError::new(
            format!("{field}.nanos"),
            "must be from 0 to 999,999,999",
        ));
    }
    Ok(UnixMillis(
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos / 1_000_000)),
    ))
}

pub fn timestamp(t: UnixMillis) -> Timestamp {
    Timestamp {
        seconds: t.0.div_euclid(1000),
        nanos: i32::try_from(t.0.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn decision(d: Decision) -> proto::Decision {
    match d {
        Decision::Allow => proto::Decision::Allow,
        Decision::ChallengeCaptcha => proto::Decision::ChallengeCaptcha,
        Decision::ChallengeTotp => proto::Decision::ChallengeTotp,
        Decision::EnrollTotp => proto::Decision::EnrollTotp,
        Decision::Deny => proto::Decision::Deny,
        Decision::Blocked => proto::Decision::Blocked,
    }
}

fn key_kind(k: KeyKind) -> proto::KeyKind {
    match k {
        KeyKind::User => proto::KeyKind::User,
        KeyKind::Ip => proto::KeyKind::Ip,
        KeyKind::UserIp => proto::KeyKind::UserIp,
        KeyKind::Session => proto::KeyKind::Session,
        KeyKind::Password => proto::KeyKind::Password,
    }
}

/// An optional value as a proto3 string field holds it: '' for none.
pub fn text<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The key an event names, of the kind it was recorded with.
pub fn event_key(e: &SecurityEvent) -> proto::Key {
    proto::Key {
        kind: e
            .key_kind
            .map_or(proto::KeyKind::Unspecified, key_kind)
            .into(),
        user_id: text(&e.user),
        ip: text(&e.ip),
        session_id: text(&e.session),
        password: text(&e.password),
    }
}

pub fn key(k: &Key) -> proto::Key {
    proto::Key {
        kind: key_kind(k.kind()).into(),
        user_id: k.user().map(|u| u.to_string()).unwrap_or_default(),
        ip: k.ip().map(|i| i.to_string()).unwrap_or_default(),
        session_id: k.session().map(|s| s.to_string()).unwrap_or_default(),
        password: k.password().map(|p| p.shown()).unwrap_or_default(),
    }
}

/// A key from a request: the fields its kind needs, and no others.
pub fn parse_key(field: &str, k: Option<&proto::Key>) -> Result<Key, FieldError> {
    let k = k.ok_or_else(|| FieldError::new(field, "is required"))?;
    let kind = match proto::KeyKind::try_from(k.kind) {
        Ok(proto::KeyKind::User) => KeyKind::User,
        Ok(proto::KeyKind::Ip) => KeyKind::Ip,
        Ok(proto::KeyKind::UserIp) => KeyKind::UserIp,
        Ok(proto::KeyKind::Session) => KeyKind::Session,
        Ok(proto::KeyKind::Password) => {
            return Err(FieldError::new(
                format!("{field}.kind"),
                "PASSWORD keys are named by subject.password_fingerprint (the subject scope), \
                 never by what a Key shows of them",
            ));
        }
        _ => {
            return Err(FieldError::new(
                format!("{field}.kind"),
                "must be USER, IP, USER_IP or SESSION",
            ));
        }
    };
    let key = Key::from_parts(field, kind, &k.user_id, &k.ip, &k.session_id)?;
    let stray = [
        ("user_id", !k.user_id.is_empty() && key.user().is_none()),
        ("ip", !k.ip.is_empty() && key.ip().is_none()),
        (
            "session_id",
            !k.session_id.is_empty() && key.session().is_none(),
        ),
    ];
    if let Some((name, _)) = stray.iter().find(|(_, bad)| *bad) {
        return Err(FieldError::new(
            format!("{field}.{name}"),
            "is not part of a key of this kind",
        ));
    }
    Ok(key)
}

pub fn session_state(s: SessionStatus) -> proto::SessionState {
    match s {
        SessionStatus::Unauthenticated => proto::SessionState::Unauthenticated,
        SessionStatus::Processing => proto::SessionState::Processing,
        SessionStatus::Authenticated => proto::SessionState::Authenticated,
        SessionStatus::Expired => proto::SessionState::Expired,
    }
}

/// What the shadow rules behind a verdict decided.
pub fn shadow(v: &Verdict, now: UnixMillis) -> Vec<proto::Verdict> {
    v.shadowed.iter().map(|s| verdict(s, now)).collect()
}

pub fn verdict(v: &Verdict, now: UnixMillis) -> proto::Verdict {
    proto::Verdict {
        decision: decision(v.decision).into(),
        reason: v.reason.as_str().into(),
        rule: v.rule.as_deref().unwrap_or_default().to_owned(),
        key: v.key.as_ref().map(key),
        remaining_attempts: v.remaining_attempts,
        unblock_at: v.unblock_at.map(timestamp),
        retry_after_seconds: v.retry_after_seconds(now),
        permanent: v.permanent,
        ban_reason: v.ban_reason.clone().unwrap_or_default(),
    }
}

pub fn lock(s: &Stored, l: &Lock) -> proto::Lock {
    proto::Lock {
        context: s.id.context.to_string(),
        rule: s.id.rule.to_string(),
        key: Some(key(&s.id.key)),
        tier: l.tier,
        locked_at: Some(timestamp(l.locked_at)),
        unblock_at: l.until.map(timestamp),
        permanent: l.until.is_none(),
        reason: String::new(),
        actor: String::new(),
        caller: String::new(),
    }
}

/// The full stored state, with the lock only while it is in force, and the
/// failure count as the rule would count it now.
pub fn key_state(s: &Stored, failures_in_window: u32, now: UnixMillis) -> proto::KeyState {
    proto::KeyState {
        context: s.id.context.to_string(),
        rule: s.id.rule.to_string(),
        key: Some(key(&s.id.key)),
        failures_in_window,
        failures_total: s.state.failures_total,
        last_failure_at: s.state.last_failure_at.map(timestamp),
        recent_lockouts: s.state.recent_lockouts,
        lockouts_total: s.state.lockouts_total,
        lock: s.state.active_lock(now).map(|l| lock(s, l)),
    }
}

pub fn spam_cause(c: Option<Cause>) -> proto::SpamCause {
    match c {
        None => proto::SpamCause::Unspecified,
        Some(Cause::RateLimit) => proto::SpamCause::RateLimit,
        Some(Cause::IdenticalMessages) => proto::SpamCause::IdenticalMessages,
        Some(Cause::CallbackSpam) => proto::SpamCause::CallbackSpam,
        Some(Cause::MediaFlood) => proto::SpamCause::MediaFlood,
    }
}

/// Hundredths to the 0.5 to 2.0 a caller reads.
pub fn reputation(hundredths: u32) -> f64 {
    f64::from(hundredths) / 100.0
}

pub fn admit_response(
    outcome: &AdmitOutcome,
    window: Duration,
    now: UnixMillis,
) -> proto::AdmitResponse {
    let base = proto::AdmitResponse {
        verdict: Some(verdict(&outcome.verdict, now)),
        window_seconds: u32::try_from(window.as_secs()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    let Some(a) = &outcome.admission else {
        // Not judged: an exempt admin is admitted, a stranger is not.
        let exempt = outcome.verdict.decision == Decision::Allow;
        return proto::AdmitResponse {
            admitted: exempt,
            exempt,
            reputation: 1.0,
            ..base
        };
    };
    proto::AdmitResponse {
        admitted: a.admitted && outcome.verdict.decision != Decision::Blocked,
        warning: a.warning.is_some(),
        warning_cause: spam_cause(a.warning).into(),
        warnings: a.warnings,
        warning_limit: a.warning_limit,
        limit: a.limit,
        used: a.used,
        reputation: reputation(a.reputation),
        block_number: a
            .block
            .map_or(0, |b| u32::try_from(b.number).unwrap_or(u32::MAX)),
        block_cause: spam_cause(a.block.map(|b| b.cause)).into(),
        block_started: a.block.is_some_and(|b| b.started),
        ..base
    }
}

/// One user's admission state for admins; `window` counts the updates in
/// it (None: the context no longer admits, all remembered ones count).
pub fn admission_state(
    r: &AdmissionRecord,
    window: Option<Duration>,
    now: UnixMillis,
) -> proto::AdmissionState {
    let s = &r.state;
    let in_window = s
        .recent
        .iter()
        .filter(|u| window.is_none_or(|w| u.at.plus(w) > now))
        .count();
    proto::AdmissionState {
        context: r.context.to_string(),
        user_id: r.user.to_string(),
        warnings: s.warnings,
        reputation: reputation(s.reputation),
        blocked_until: s.active_block(now).map(timestamp),
        block_cause: spam_cause(s.active_block(now).and(s.block_cause)).into(),
        updates_in_window: u32::try_from(in_window).unwrap_or(u32::MAX),
        updates_total: s.updates_total,
        blocks_total: s.blocks_total,
        warnings_total: s.warnings_total,
        refused_total: s.refused_total,
        first_seen: s.first_seen.map(timestamp),
        last_seen: s.last_seen.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_milliseconds() {
        let t = timestamp(UnixMillis(1_500));
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        let t = timestamp(UnixMillis(-1));
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }

    #[test]
    fn keys_take_exactly_their_parts() {
        let k = proto::Key {
            kind: proto::KeyKind::Ip.into(),
            ip: "10.0.0.1".into(),
            user_id: "alice".into(),
            ..Default::default()
        };
        assert_eq!(
            parse_key("key.key", Some(&k)).unwrap_err().field,
            "key.key.user_id"
        );
        let k = proto::Key {
            kind: 0,
            ..Default::default()
        };
        assert_eq!(
            parse_key("key.key", Some(&k)).unwrap_err().field,
            "key.key.kind"
        );
    }
}
