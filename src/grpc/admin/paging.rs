//! Pages of admin listings: their size and the opaque tokens that resume them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::{ContextName, FieldError, Key, KeyKind, RuleName, UserId};
use crate::store::{AdmissionRecord, OffenderCursor, StateId};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// Separates the parts of a page token; identifiers never contain control
/// characters, so it cannot occur inside one.
const SEP: char = '\u{1f}';

/// The page size a request asked for, within bounds.
pub(super) fn page_size(asked: u32) -> u32 {
    match asked {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// Cuts `rows`, fetched one longer than `limit` (the extra row tells that
/// another page follows), to the page, with the token for the next one.
pub(super) fn paginate<T>(
    mut rows: Vec<T>,
    limit: u32,
    token: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = match rows.last() {
        Some(last) if more => token(last),
        _ => String::new(),
    };
    (rows, next)
}

/// An opaque resume point: the last id of the page.
pub(super) fn page_token(id: &StateId) -> String {
    let k = &id.key;
    let parts = [
        id.context.to_string(),
        id.rule.to_string(),
        k.kind().as_str().to_owned(),
        k.user().map(|u| u.to_string()).unwrap_or_default(),
        k.ip().map(|i| i.to_string()).unwrap_or_default(),
        k.token().to_owned(),
    ];
    URL_SAFE_NO_PAD.encode(parts.join(&SEP.to_string()))
}

/// Where a page of offenders resumes: the last one's blocks, context and
/// user.
pub(super) fn offender_token(last: &AdmissionRecord) -> String {
    let parts = [
        last.state.blocks_total.to_string(),
        last.context.to_string(),
        last.user.to_string(),
    ];
    URL_SAFE_NO_PAD.encode(parts.join(&SEP.to_string()))
}

pub(super) fn parse_offender_token(token: &str) -> Result<OffenderCursor, FieldError> {
    let bad = || FieldError::new("page_token", "is not a token this server issued");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let parts: Vec<&str> = text.split(SEP).collect();
    let [blocks, context, user] = parts[..] else {
        return Err(bad());
    };
    Ok(OffenderCursor {
        blocks: blocks.parse().map_err(|_| bad())?,
        context: ContextName::parse("page_token", context)
            .map_err(|_| bad())?
            .to_string(),
        user: UserId::parse("page_token", user)
            .map_err(|_| bad())?
            .to_string(),
    })
}

pub(super) fn parse_page_token(token: &str) -> Result<StateId, FieldError> {
    let bad = || FieldError::new("page_token", "is not a token this server issued");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let parts: Vec<&str> = text.split(SEP).collect();
    let [context, rule, kind, user, ip, token] = parts[..] else {
        return Err(bad());
    };
    let kind = KeyKind::from_name(kind).ok_or_else(bad)?;
    let key = Key::from_parts("page_token", kind, user, ip, token).map_err(|_| bad())?;
    let context = ContextName::parse("page_token", context).map_err(|_| bad())?;
    let rule = RuleName::parse("page_token", rule).map_err(|_| bad())?;
    Ok(StateId { context, rule, key })
}
