//! The use cases behind the RPCs: pick the slots a request touches, let the
//! domain decide, let the store persist. Knows neither gRPC nor SQL.

mod access;
mod admin;
mod admission;
mod bans;
mod rate;
mod recovery;
mod state;
mod totp;
mod upkeep;

pub use access::Outcome;
pub use admin::{Admin, SubjectReport};
pub use admission::{AdmitOutcome, MAX_FINGERPRINT_BYTES};
pub use bans::{BanOrder, Lifetime};
pub use recovery::proof;
pub use totp::{Enrollment, Proof, TotpResult, VerifyOutcome};

use std::sync::Arc;

use crate::clock::Clock;
use crate::crypto::{CryptoError, PasswordKeys, SecretKeys};
use crate::domain::{FieldError, Policy, UnixMillis};
use crate::store::{Store, StoreError};

/// Why a use case could not be carried out. Each variant maps to one gRPC
/// status in `grpc::status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// INVALID_ARGUMENT naming the field.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// PERMISSION_DENIED.
    #[error("{0}")]
    PermissionDenied(String),
    /// FAILED_PRECONDITION: the request is well-formed but the state of
    /// things does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// UNAVAILABLE when the store cannot be reached, INTERNAL otherwise.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// INTERNAL: a stored secret cannot be decrypted.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// INTERNAL: work moved off the async threads did not finish.
    #[error("a task failed: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

pub struct Gate {
    policy: Policy,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    /// `None` when no TOTP encryption key is configured (Postgres without
    /// totp.keys): TOTP calls answer FAILED_PRECONDITION.
    keys: Option<Arc<SecretKeys>>,
    /// `None` when no password key is configured (Postgres without a
    /// password rule): fingerprints are then ignored.
    passwords: Option<Arc<PasswordKeys>>,
}

impl Gate {
    pub fn new(
        policy: Policy,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        keys: Option<Arc<SecretKeys>>,
        passwords: Option<Arc<PasswordKeys>>,
    ) -> Self {
        Gate {
            policy,
            store,
            clock,
            keys,
            passwords,
        }
    }

    /// What re-keys the password fingerprints requests carry.
    pub fn passwords(&self) -> Option<&PasswordKeys> {
        self.passwords.as_deref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// The same store and clock under another policy and keys: what a
    /// reload swaps in.
    pub fn reconfigured(
        &self,
        policy: Policy,
        keys: Option<Arc<SecretKeys>>,
        passwords: Option<Arc<PasswordKeys>>,
    ) -> Gate {
        Gate {
            policy,
            store: self.store.clone(),
            clock: self.clock.clone(),
            keys,
            passwords,
        }
    }
}

/// The gate in force, swapped whole by a reload.
pub type Gates = crate::current::Current<Gate>;
