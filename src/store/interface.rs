//! The store's interfaces, one per kind of state, each declared once, and
//! the `Store` that hands them out watched.
//!
//! A new operation is one line in one `interface!` below and its
//! implementations: in `shared/` when both dialects run the same SQL, in
//! `postgres/` and `sqlite.rs` when they differ. The outage gate, the
//! timing metric and the point of no return wrap every operation here, in
//! `Watched`, never in an implementation.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::model::{
    AdmissionRecord, AdmissionScope, AdmissionStats, AdmitFn, Applied, EventFilter, Involving,
    LockCount, OffenderCursor, Purged, StateId, Stats, Stored, StoredTotp, TransitionFn,
    UnlockScope,
};
use super::{Health, StoreError};
use crate::clock::Reading;
use crate::crypto::CodeHash;
use crate::domain::{
    Admission, Ban, BanScope, BanSet, ContextName, KeyState, SecurityEvent, Session, UnixMillis,
    UserId,
};
use crate::telemetry::metrics;

/// An interface's operations wrapped for their callers: refused at once
/// while the store is known to be unreachable, timed under the operation's
/// name, their failures counted and their outcome told to the health
/// gate. From the moment an operation starts, its work runs to completion
/// whatever its caller does.
pub struct Watched<'a, T: ?Sized> {
    inner: &'a T,
    health: &'a Health,
}

impl<T: ?Sized> Watched<'_, T> {
    async fn watch<R>(
        &self,
        op: &'static str,
        f: impl Future<Output = Result<R, StoreError>>,
    ) -> Result<R, StoreError> {
        crate::work::point_of_no_return();
        self.health.refuse_while_down()?;
        let start = Instant::now();
        let result = f.await;
        metrics::store_done(op, result.is_ok(), start.elapsed());
        self.health.observe(&result);
        result
    }
}

/// Declares an interface and its `Watched` form, which runs each operation
/// through `Watched::watch` under the operation's name.
macro_rules! interface {
    (
        $(#[$meta:meta])*
        pub trait $name:ident {
            $(
                $(#[$op_meta:meta])*
                async fn $op:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
            )*
        }
    ) => {
        $(#[$meta])*
        #[async_trait::async_trait]
        pub trait $name: Send + Sync {
            $( $(#[$op_meta])* async fn $op(&self $(, $arg: $ty)*) -> $ret; )*
        }

        #[async_trait::async_trait]
        impl<T: $name + ?Sized> $name for Watched<'_, T> {
            $(
                async fn $op(&self $(, $arg: $ty)*) -> $ret {
                    self.watch(stringify!($op), self.inner.$op($($arg),*)).await
                }
            )*
        }
    };
}

interface! {
    /// What rules count: each key's recent failures, requests and lock.
    pub trait KeyStates {
        /// Current states of `ids`, in order; `None` where nothing is
        /// stored.
        async fn load(&self, ids: &[StateId]) -> Result<Vec<Option<KeyState>>, StoreError>;

        /// Reads, transforms with `f` and writes the states of `ids`, with
        /// the events `f` derives, as one atomic step: concurrent
        /// transitions on the same ids, from any replica, run one after
        /// another, and the result is committed before this returns.
        async fn transition(
            &self,
            ids: &[StateId],
            f: &TransitionFn<'_>,
        ) -> Result<Applied, StoreError>;

        /// Resets every key in `scope`: lifts its lock, forgets its recent
        /// failures and its run of lockouts (totals are kept). Returns how
        /// many locks in force at `now` were lifted.
        async fn unlock(&self, scope: &UnlockScope, now: UnixMillis) -> Result<u64, StoreError>;
    }
}

interface! {
    /// Admins' bans of keys and of ranges of addresses.
    pub trait Bans {
        /// The bans as this replica knows them: its own changes at once,
        /// any other replica's at most bans::STALENESS later.
        async fn active_bans(&self) -> Result<Arc<BanSet>, StoreError>;

        /// The bans in force at `now`, read from the store itself, ordered
        /// by target.
        async fn list_bans(&self, now: UnixMillis) -> Result<Vec<Ban>, StoreError>;

        /// Writes `bans`, each over whatever its target held, with a
        /// `banned` event for each that changes anything, as one atomic
        /// step; returns how many changed (none, for bans stored already).
        async fn put_bans(&self, bans: &[Ban]) -> Result<u64, StoreError>;

        /// Lifts the bans in `scope`, with a `ban_lifted` event built on
        /// `lifted` (who acted, and when) for each that was in force then,
        /// as one atomic step; returns how many were.
        async fn lift_bans(&self, scope: &BanScope, lifted: &SecurityEvent) -> Result<u64, StoreError>;
    }
}

interface! {
    /// What admins read of the key states and the audit trail.
    pub trait Reports {
        /// Locks in force at `now`, ordered by id, after `after`.
        async fn list_locked(
            &self,
            context: Option<&str>,
            after: Option<&StateId>,
            limit: u32,
            now: UnixMillis,
        ) -> Result<Vec<Stored>, StoreError>;

        /// Every state involving any identifier of `subject`, ordered by id.
        async fn subject_states(&self, involving: &Involving) -> Result<Vec<Stored>, StoreError>;

        /// Locks in force at `now`, counted by context and kind; contexts
        /// with none are absent.
        async fn active_locks(&self, now: UnixMillis) -> Result<Vec<LockCount>, StoreError>;

        /// Audit events matching `filter`, newest first, with their ids.
        async fn list_events(
            &self,
            filter: &EventFilter,
            limit: u32,
        ) -> Result<Vec<(i64, SecurityEvent)>, StoreError>;

        async fn stats(&self, now: UnixMillis, totp_context: &str) -> Result<Stats, StoreError>;
    }
}

interface! {
    /// Users' second factors.
    pub trait TotpSecrets {
        /// The user's secrets: the confirmed one first, then a pending one.
        async fn totp(&self, user: &UserId) -> Result<Vec<StoredTotp>, StoreError>;

        /// Stores a pending secret (replacing any pending one), or a
        /// confirmed one (replacing both).
        async fn put_totp(&self, user: &UserId, totp: &StoredTotp) -> Result<(), StoreError>;

        /// Records `step` as accepted for the secret sealed with `nonce`,
        /// unless that step or a later one was accepted already; a pending
        /// secret becomes the confirmed one, its recovery codes `recovery`
        /// (replacing any the user had). Atomic across replicas: of two
        /// concurrent calls with one step, one returns true.
        async fn accept_totp_step(
            &self,
            user: &UserId,
            nonce: &[u8],
            step: u64,
            recovery: &[CodeHash],
            at: UnixMillis,
        ) -> Result<bool, StoreError>;

        /// Replaces the user's recovery codes with `codes`.
        async fn put_recovery_codes(
            &self,
            user: &UserId,
            codes: &[CodeHash],
            at: UnixMillis,
        ) -> Result<(), StoreError>;

        /// Uses up the user's recovery code stored as any of `candidates`
        /// (one code under each key): how many remain after, or `None` when
        /// none matched. Atomic across replicas: of two concurrent calls
        /// with one code, one gets `Some`.
        async fn use_recovery_code(
            &self,
            user: &UserId,
            candidates: &[CodeHash],
        ) -> Result<Option<u64>, StoreError>;

        async fn recovery_codes_left(&self, user: &UserId) -> Result<u64, StoreError>;

        /// Deletes confirmed and pending secrets and the recovery codes;
        /// returns whether there were any secrets.
        async fn delete_totp(&self, user: &UserId) -> Result<bool, StoreError>;
    }
}

interface! {
    /// Users' two-factor sessions.
    pub trait Sessions {
        async fn session(&self, user: &UserId) -> Result<Option<Session>, StoreError>;

        async fn put_session(&self, user: &UserId, session: &Session) -> Result<(), StoreError>;

        /// Ends authenticated and processing sessions, one user's or
        /// everyone's.
        async fn revoke_sessions(
            &self,
            user: Option<&UserId>,
            now: UnixMillis,
        ) -> Result<u64, StoreError>;
    }
}

interface! {
    /// The anti-spam judgement of a bot's updates (the Admit RPC).
    pub trait Admissions {
        /// Judges one update with `f` against `user`'s admission state in
        /// `context` and writes the outcome with its events, as one atomic
        /// step: concurrent updates of one user, from any replica, are
        /// judged one after another.
        async fn admit(
            &self,
            context: &ContextName,
            user: &UserId,
            now: UnixMillis,
            f: &AdmitFn<'_>,
        ) -> Result<Admission, StoreError>;
    }
}

interface! {
    /// What admins read and reset of the admission state.
    pub trait AdmissionRecords {
        /// A user's admission state in every context.
        async fn admissions(&self, user: &UserId) -> Result<Vec<AdmissionRecord>, StoreError>;

        /// Forgets the warnings of every user in `scope`, blocked or not,
        /// and with `unblock` lifts the blocks in force at `now`; returns
        /// how many blocks were lifted, or without `unblock` how many users
        /// had warnings.
        async fn reset_admission(
            &self,
            scope: &AdmissionScope,
            unblock: bool,
            now: UnixMillis,
        ) -> Result<u64, StoreError>;

        /// Users with blocks, most first, after `after`.
        async fn admission_offenders(
            &self,
            context: Option<&str>,
            after: Option<&OffenderCursor>,
            limit: u32,
        ) -> Result<Vec<AdmissionRecord>, StoreError>;

        async fn admission_stats(
            &self,
            context: Option<&str>,
            now: UnixMillis,
        ) -> Result<AdmissionStats, StoreError>;
    }
}

interface! {
    /// The store as a whole: its schema, its cleanup and its clock.
    pub trait Upkeep {
        /// Runs the embedded migrations.
        async fn migrate(&self) -> Result<(), StoreError>;

        /// Deletes state that expired before `now`, sweeps sessions,
        /// records the locks and sessions that ended since the previous
        /// pass and drops audit events older than `retention`. Returns
        /// `None` when another replica is purging at the same moment.
        async fn purge_expired(
            &self,
            now: UnixMillis,
            retention: Duration,
        ) -> Result<Option<Purged>, StoreError>;

        /// The clock every replica of this store shares, read now; `None`
        /// when the store has none (SQLite: one process, whose wall clock
        /// it is).
        async fn clock(&self) -> Result<Option<Reading>, StoreError>;
    }
}

/// Whether the store answers at all: the probe that decides whether it is
/// back, so never refused by the gate it clears.
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    /// One trivial round trip.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The audit trail and the alerts it carries to every replica. Declared by
/// hand, as only `append` is a store operation to watch.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync {
    /// Appends `event` durably; an alert kind is then delivered to the
    /// subscribers of every replica sharing this store.
    async fn append(&self, event: &SecurityEvent) -> Result<(), StoreError>;

    /// Events appended from now on, by any replica. The buffer is bounded:
    /// a receiver that falls behind loses the oldest and is told how many.
    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent>;

    /// Waits, at most `within`, until every alert committed from now on by
    /// any replica reaches `subscribe`'s receivers; false if that did not
    /// happen in time.
    async fn events_ready(&self, within: Duration) -> bool;
}

#[async_trait::async_trait]
impl<T: EventLog + ?Sized> EventLog for Watched<'_, T> {
    async fn append(&self, event: &SecurityEvent) -> Result<(), StoreError> {
        self.watch("append_event", self.inner.append(event)).await
    }

    fn subscribe(&self) -> broadcast::Receiver<SecurityEvent> {
        self.inner.subscribe()
    }

    async fn events_ready(&self, within: Duration) -> bool {
        self.inner.events_ready(within).await
    }
}

/// One dialect's implementations of every interface.
pub struct Parts {
    pub keys: Arc<dyn KeyStates>,
    pub bans: Arc<dyn Bans>,
    pub reports: Arc<dyn Reports>,
    pub events: Arc<dyn EventLog>,
    pub totp: Arc<dyn TotpSecrets>,
    pub sessions: Arc<dyn Sessions>,
    pub admissions: Arc<dyn Admissions>,
    pub admission_records: Arc<dyn AdmissionRecords>,
    pub upkeep: Arc<dyn Upkeep>,
    pub probe: Arc<dyn Probe>,
}

impl Parts {
    /// Every interface from the one value that implements them all, and
    /// the SQL both dialects share on its pools.
    pub fn of<D, S>(dialect: Arc<D>, shared: Arc<S>) -> Parts
    where
        D: KeyStates + Bans + EventLog + Admissions + Upkeep + 'static,
        S: Reports + TotpSecrets + Sessions + AdmissionRecords + Probe + 'static,
    {
        Parts {
            keys: dialect.clone(),
            bans: dialect.clone(),
            events: dialect.clone(),
            admissions: dialect.clone(),
            upkeep: dialect,
            reports: shared.clone(),
            totp: shared.clone(),
            sessions: shared.clone(),
            admission_records: shared.clone(),
            probe: shared,
        }
    }
}

/// Where state lives: each kind behind its own interface, watched.
pub struct Store {
    parts: Parts,
    health: Arc<Health>,
}

impl Store {
    pub fn new(parts: Parts, health: Arc<Health>) -> Store {
        Store { parts, health }
    }

    fn watched<'a, T: ?Sized>(&'a self, inner: &'a T) -> Watched<'a, T> {
        Watched {
            inner,
            health: &self.health,
        }
    }

    pub fn keys(&self) -> Watched<'_, dyn KeyStates> {
        self.watched(&*self.parts.keys)
    }

    pub fn bans(&self) -> Watched<'_, dyn Bans> {
        self.watched(&*self.parts.bans)
    }

    pub fn reports(&self) -> Watched<'_, dyn Reports> {
        self.watched(&*self.parts.reports)
    }

    pub fn events(&self) -> Watched<'_, dyn EventLog> {
        self.watched(&*self.parts.events)
    }

    pub fn totp(&self) -> Watched<'_, dyn TotpSecrets> {
        self.watched(&*self.parts.totp)
    }

    pub fn sessions(&self) -> Watched<'_, dyn Sessions> {
        self.watched(&*self.parts.sessions)
    }

    pub fn admissions(&self) -> Watched<'_, dyn Admissions> {
        self.watched(&*self.parts.admissions)
    }

    pub fn admission_records(&self) -> Watched<'_, dyn AdmissionRecords> {
        self.watched(&*self.parts.admission_records)
    }

    pub fn upkeep(&self) -> Watched<'_, dyn Upkeep> {
        self.watched(&*self.parts.upkeep)
    }

    /// Timed like every operation, but never refused: the probe that
    /// decides whether the store is back.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let start = Instant::now();
        let result = self.parts.probe.ping().await;
        metrics::store_done("ping", result.is_ok(), start.elapsed());
        result
    }
}
