//! Bans on the wire: a BanSpec read into the order the service checks, a
//! ban shown as a Lock, and the page tokens of ListLocked's bans.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::super::convert::{self, millis, timestamp};
use super::super::proto;
use crate::crypto::PasswordKeys;
use crate::domain::{Ban, BanTarget, ContextName, FieldError, IpPrefix, Key, KeyKind};
use crate::service::{BanOrder, Lifetime};

/// What a ListLocked page token starting so resumes: a page of bans. (Key
/// locks' tokens are bare base64, which has no '.'.)
const BAN_TOKEN: &str = "ban.";

/// The token of a page that ends with the last ban: the next one starts
/// with the first of the rules' locks.
pub const LOCKS_FROM_START: &str = "locks.";

/// Separates a ban token's parts; no identifier holds a control character.
const SEP: char = '\u{1f}';

/// Reads `spec` (the request's `field`) into a ban order.
pub fn order(
    field: &str,
    spec: Option<&proto::BanSpec>,
    passwords: Option<&PasswordKeys>,
) -> Result<BanOrder, FieldError> {
    use proto::ban_spec::{Lifetime as Life, Target};
    let spec = spec.ok_or_else(|| FieldError::new(field, "is required"))?;
    let context = (!spec.context.is_empty())
        .then(|| ContextName::parse(&format!("{field}.context"), &spec.context))
        .transpose()?;
    let key = match &spec.target {
        Some(Target::Key(k)) => convert::parse_key(&format!("{field}.key"), Some(k))?,
        Some(Target::Range(r)) => Key::Ip(IpPrefix::parse(&format!("{field}.range"), r.trim())?),
        Some(Target::PasswordFingerprint(f)) => {
            let field = format!("{field}.password_fingerprint");
            let fingerprint: &[u8; 32] = f.as_slice().try_into().map_err(|_| {
                FieldError::new(&field, "must be the 32 bytes of a SHA-256 of the password")
            })?;
            let keys = passwords.ok_or_else(|| {
                FieldError::new(&field, "no password key is configured on this server")
            })?;
            keys.rekey(fingerprint)
                .into_iter()
                .next()
                .map(Key::Password)
                .ok_or_else(|| FieldError::new(&field, "no password key is configured"))?
        }
        None => {
            return Err(FieldError::new(
                field,
                "one of key, range, password_fingerprint is required",
            ));
        }
    };
    let lifetime = match &spec.lifetime {
        Some(Life::Duration(d)) => {
            if d.seconds < 0 || d.nanos < 0 {
                return Err(FieldError::new(
                    format!("{field}.duration"),
                    "must be more than 0 (or ban with permanent)",
                ));
            }
            Lifetime::For(
                Duration::from_secs(d.seconds.unsigned_abs())
                    + Duration::from_nanos(u64::from(d.nanos.unsigned_abs())),
            )
        }
        Some(Life::Until(t)) => Lifetime::Until(millis(&format!("{field}.until"), t)?),
        Some(Life::Permanent(true)) => Lifetime::Permanent,
        Some(Life::Permanent(false)) => {
            return Err(FieldError::new(
                format!("{field}.permanent"),
                "must be true when chosen",
            ));
        }
        None => {
            return Err(FieldError::new(
                field,
                "one of duration, until, permanent is required",
            ));
        }
    };
    Ok(BanOrder {
        context,
        key,
        lifetime,
        reason: spec.reason.clone(),
        force: spec.force,
    })
}

/// A ban as ListLocked, GetSubject and Ban show it.
pub fn lock(b: &Ban) -> proto::Lock {
    proto::Lock {
        context: b
            .target
            .context
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        rule: crate::domain::BAN_RULE.to_owned(),
        key: Some(convert::key(&b.target.key)),
        tier: 0,
        locked_at: Some(timestamp(b.created_at)),
        unblock_at: b.until.map(timestamp),
        permanent: b.until.is_none(),
        reason: b.reason.clone(),
        actor: b.actor.clone(),
        caller: b.caller.clone(),
    }
}

/// Where a ListLocked page stops in the bans: after the last one shown.
pub fn token(last: &BanTarget) -> String {
    let k = &last.key;
    let parts = [
        last.context
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        k.kind().as_str().to_owned(),
        k.user().map(|u| u.to_string()).unwrap_or_default(),
        k.ip().map(|i| i.to_string()).unwrap_or_default(),
        k.token().to_owned(),
    ];
    format!(
        "{BAN_TOKEN}{}",
        URL_SAFE_NO_PAD.encode(parts.join(&SEP.to_string()))
    )
}

/// The ban a ListLocked token resumes after, if it is a ban token.
pub fn parse_token(token: &str) -> Option<Result<BanTarget, FieldError>> {
    let raw = token.strip_prefix(BAN_TOKEN)?;
    let bad = || FieldError::new("page_token", "is not a token this server issued");
    let parse = || -> Result<BanTarget, FieldError> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?)
            .map_err(|_| bad())?;
        let parts: Vec<&str> = text.split(SEP).collect();
        let [context, kind, user, ip, key_token] = parts[..] else {
            return Err(bad());
        };
        let kind = KeyKind::from_name(kind).ok_or_else(bad)?;
        Ok(BanTarget {
            context: (!context.is_empty())
                .then(|| ContextName::parse("page_token", context))
                .transpose()
                .map_err(|_| bad())?,
            key: Key::from_parts("page_token", kind, user, ip, key_token).map_err(|_| bad())?,
        })
    };
    Some(parse())
}
