//! Pure decision logic: stored state, an event and `now` in; new state and a
//! verdict out. Nothing here performs I/O, reads the clock or knows about
//! gRPC or SQL, so every rule can be pinned by unit and property tests.

mod policy;
mod rule;
mod subject;
mod time;
mod verdict;

pub use policy::{ALLOW_LIST_CONTEXT, AccessList, ContextPolicy, Policy, PolicyError, Slot};
pub use rule::{KeyState, Ladder, Lock, LockDuration, Rule, Transition};
pub use subject::{ContextName, FieldError, IpAddress, Key, KeyKind, SessionId, Subject, UserId};
pub use time::UnixMillis;
pub use verdict::{Decision, Reason, Verdict};
