//! The values the store's interfaces speak, beside the domain's own types.

use crate::crypto::Sealed;
use crate::domain::{
    Admission, AdmissionState, ContextName, EventKind, IpPrefix, Key, KeyState, RuleName,
    SecurityEvent, Subject, TotpParams, UnixMillis, UserId,
};

/// The name of a stored row: a key of a rule in a context. (README,
/// "Architecture", tells it from `Key`, `Slot` and `KeyState`.) ListLocked
/// pages resume after one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateId {
    pub context: ContextName,
    pub rule: RuleName,
    pub key: Key,
}

/// State as stored, with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub id: StateId,
    pub state: KeyState,
}

/// What a transition writes for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub state: KeyState,
    /// When the state may be purged; `None` while it must be kept forever.
    pub expires_at: Option<UnixMillis>,
}

/// What a transition writes: the new states, in the order of the ids, and
/// the security events that commit with them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transition {
    pub updates: Vec<Update>,
    /// Audit records, and alerts (delivered to every replica's subscribers
    /// once committed); derived from the states they describe, so a lock
    /// and its alert commit together or not at all.
    pub events: Vec<SecurityEvent>,
}

/// Computes the new states, and the events they cause, from the current
/// ones (`None`: nothing stored), in the order of the ids given. Pure, and
/// may run more than once when the database asks for a retry.
pub type TransitionFn<'a> = dyn Fn(&[Option<KeyState>]) -> Transition + Send + Sync + 'a;

/// A committed transition: the states it started from (those of the run
/// that committed) and the states it wrote, in the order of the ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    pub before: Vec<Option<KeyState>>,
    pub after: Vec<KeyState>,
}

/// Which locks AdminUnlock lifts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockScope {
    /// One key in one context, in every rule there.
    Key {
        context: ContextName,
        key: Key,
    },
    /// Every key involving any identifier of the subject.
    Subject(Involving),
    All,
}

/// The stored keys an admin call about a subject covers: those involving
/// any of its identifiers, its address also as each prefix a rule counts
/// it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Involving {
    pub subject: Subject,
    pub prefixes: Vec<IpPrefix>,
}

/// A user's TOTP secret as stored: sealed, never in the clear.
#[derive(Clone)]
pub struct StoredTotp {
    pub sealed: Sealed,
    pub params: TotpParams,
    /// False while pending: enrolled, not yet proven by a code.
    pub confirmed: bool,
    pub created_at: UnixMillis,
    /// The last time step accepted.
    pub last_step: Option<u64>,
}

/// GetStats' figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: u64,
    pub authenticated: u64,
    pub processing: u64,
    pub expired: u64,
    /// Users whose TOTP counter is locked.
    pub blocked: u64,
    pub locks_temporary: u64,
    pub locks_permanent: u64,
}

/// ListAuditEvents' filters; empty strings and `None` match everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub user_id: String,
    pub ip: String,
    pub session_id: String,
    pub context: String,
    pub kind: Option<EventKind>,
    pub from: Option<UnixMillis>,
    pub to: Option<UnixMillis>,
    /// Only events older than this id (the previous page's last).
    pub before_id: Option<i64>,
}

/// Locks in force in one context, of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockCount {
    pub context: String,
    pub permanent: bool,
    pub count: u64,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired key states deleted.
    pub states: u64,
    /// Authenticated sessions found timed out and marked expired.
    pub sessions_expired: u64,
    /// Sessions that were not authenticated, deleted a day after their last
    /// change.
    pub sessions_deleted: u64,
    /// Locks that ended since the previous pass, now in the audit trail.
    pub locks_expired: u64,
    /// Audit events past retention, deleted.
    pub events_deleted: u64,
    /// Users' admission state, idle for a day and not blocked, deleted.
    pub admissions: u64,
    /// Bans that ran out, deleted (each now a ban_expired event).
    pub bans: u64,
}

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
    pub context: Option<ContextName>,
    pub user: Option<UserId>,
}

/// One user's admission state in one context, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRecord {
    pub context: ContextName,
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
