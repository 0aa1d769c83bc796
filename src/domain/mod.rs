//! Pure decision logic: stored state, an event and `now` in; new state and a
//! verdict out. Nothing here performs I/O, reads the clock or knows about
//! gRPC or SQL, so every rule can be pinned by unit and property tests.

mod admission;
mod alerts;
mod ban;
mod event;
mod network;
mod policy;
mod recovery;
mod rule;
mod session;
mod subject;
mod time;
mod totp;
mod verdict;

pub use admission::{
    Admission, AdmissionPolicy, AdmissionState, Admitted, Block, Cause, KindClass, PatternRule,
    Patterns, UpdateKind, admit,
};
pub use alerts::Suppressor;
pub use ban::{BAN_MINIMUM, BAN_RULE, Ban, BanScope, BanSet, BanTarget, MAX_REASON};
pub use event::{EventKind, SecurityEvent};
pub use network::{IpPrefix, Networks, Prefixes};
pub use policy::{
    ALLOW_LIST_CONTEXT, AccessList, ContextPolicy, Policy, PolicyError, Slot, TOTP_CONTEXT,
    TotpPolicy,
};
pub use recovery::{MAX_RECOVERY_CODES, RecoveryCode};
pub use rule::{
    Hit, KeyState, Ladder, Lock, LockDuration, MAX_RATE_LIMIT, Rule, RuleKind, Transition, hit_all,
};
pub use session::{Session, SessionPolicy, SessionStatus, SessionStep, TimeoutMode};
pub use subject::{
    ContextName, FieldError, HIDDEN_HEX, IpAddress, Key, KeyKind, PasswordKey, RuleName, SessionId,
    Subject, UserId,
};
pub use time::UnixMillis;
pub use totp::{
    Code, CodeCheck, Provisioning, TotpAlgorithm, TotpParams, Window, check_code, provisioning,
};
pub use verdict::{Decision, Reason, Verdict};
