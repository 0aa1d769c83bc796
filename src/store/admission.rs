//! How a user's admission state is stored: the types the store speaks, and
//! the text form of the window's admitted updates (both dialects keep it in
//! one TEXT column).

use crate::domain::{
    Admission, AdmissionState, Admitted, Cause, KindClass, SecurityEvent, UnixMillis, UserId,
};

use super::StoreError;

/// What one Admit call writes: the user's new state, the events that commit
/// with it, and the answer for the caller.
#[derive(Debug, Clone)]
pub struct AdmissionStep {
    pub state: AdmissionState,
    pub events: Vec<SecurityEvent>,
    pub outcome: Admission,
}

/// Judges an update against the user's current state (the default for a
/// user not seen yet). Pure, and may run more than once when the database
/// asks for a retry.
pub type AdmitFn<'a> = dyn Fn(&AdmissionState) -> AdmissionStep + Send + Sync + 'a;

/// Whose admission state an admin call changes: one user in one context, a
/// user everywhere, a context, or everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionScope {
    pub context: Option<String>,
    pub user: Option<UserId>,
}

/// One user's admission state in one context, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRecord {
    pub context: String,
    pub user: UserId,
    pub state: AdmissionState,
}

/// The summary admins ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Users with stored state.
    pub users: u64,
    /// Updates refused, over a limit or while blocked.
    pub refused: u64,
    pub warnings: u64,
    /// Users blocked now.
    pub active_blocks: u64,
}

/// Where a page of offenders resumes: the last one's blocks, context and
/// user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffenderCursor {
    pub blocks: u64,
    pub context: String,
    pub user: String,
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
