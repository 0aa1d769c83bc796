//! CheckAccess, RecordFailure and RecordSuccess: may this subject act now,
//! and what a failure or a success changes.

use super::state::required_user;
use super::{Gate, ServiceError};
use crate::domain::{
    ContextPolicy, Decision, EventKind, SecurityEvent, Slot, Subject, UnixMillis, Verdict,
};
use crate::store::StoreError;
use crate::telemetry::metrics;

/// A verdict and whether this very request started a lockout.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub lockout_applied: bool,
}

impl Gate {
    /// The allow list's verdict for a stranger; counting the attempt when
    /// `count` (CheckAccess counts attempts, the record calls only report).
    pub(super) async fn stranger(
        &self,
        subject: &Subject,
        count: bool,
        now: UnixMillis,
    ) -> Result<Option<Verdict>, StoreError> {
        let Some(slot) = self.policy.access.slot(subject) else {
            return Ok(None);
        };
        let slots = [slot];
        let states = if count {
            self.fail(&slots, now, &[], Some(EventKind::NotAllowed))
                .await?
                .0
        } else {
            self.load(&slots).await?
        };
        let verdict = slots[0].rule.assess(&slots[0].key, &states[0], now);
        Ok(Some(self.policy.access.judge(verdict)))
    }

    pub async fn check_access(
        &self,
        context: &str,
        subject: &Subject,
    ) -> Result<Verdict, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        match self.judge_access(ctx, subject).await {
            // A second factor cannot be checked without the store, so it
            // never fails open.
            Err(ServiceError::Store(StoreError::Unavailable(cause)))
                if ctx.fail_open && !self.policy.requires_totp(ctx, subject.user.as_ref()) =>
            {
                tracing::warn!(context, error = %cause, "store unavailable; failing open");
                metrics::failed_open(context);
                Ok(self.policy.access.unchecked(subject))
            }
            judged => judged,
        }
    }

    async fn judge_access(
        &self,
        ctx: &ContextPolicy,
        subject: &Subject,
    ) -> Result<Verdict, ServiceError> {
        let now = self.now();
        let (rates, slots): (Vec<_>, Vec<_>) = ctx
            .slots(subject, None)
            .into_iter()
            .partition(|s| s.rule.rate_limit().is_some());
        let mut verdicts = Self::judge(&slots, &self.load(&slots).await?, now);
        verdicts.extend(self.stranger(subject, true, now).await?);
        if self.policy.requires_totp(ctx, subject.user.as_ref()) {
            let user = required_user(subject)?;
            verdicts.push(self.second_factor(ctx, user, now).await?);
        }
        // Rate rules count the requests the rest lets through: one that is
        // refused anyway (blocked, denied) uses up no quota.
        let admitted = Verdict::most_severe(verdicts.clone()).decision < Decision::Deny;
        verdicts.extend(
            self.hit(&rates, &vec![1; rates.len()], admitted, now)
                .await?,
        );
        Ok(Verdict::most_severe(verdicts))
    }

    pub async fn record_failure(
        &self,
        context: &str,
        subject: &Subject,
        activity: &str,
        caller: &str,
    ) -> Result<Outcome, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let now = self.now();
        let counting = ctx.slots(subject, Some(activity));
        // The failure's audit record names the service that reported it.
        let recorded = SecurityEvent {
            context: Some(ctx.name.clone()),
            caller: caller.to_owned(),
            detail: activity.to_owned(),
            ..SecurityEvent::new(EventKind::FailureRecorded, now).about(subject)
        };
        let (states, lockout_applied) = self.fail(&counting, now, &[recorded], None).await?;
        let mut verdicts = Self::judge(&counting, &states, now);
        // Rules that do not count this activity still judge the request.
        let others: Vec<Slot<'_>> = ctx
            .slots(subject, None)
            .into_iter()
            .filter(|s| !counting.contains(s))
            .collect();
        verdicts.extend(Self::judge(&others, &self.load(&others).await?, now));
        verdicts.extend(self.stranger(subject, false, now).await?);
        Ok(Outcome {
            verdict: Verdict::most_severe(verdicts),
            lockout_applied,
        })
    }

    pub async fn record_success(
        &self,
        context: &str,
        subject: &Subject,
    ) -> Result<Verdict, ServiceError> {
        let ctx = self.policy.context("context", context)?;
        let now = self.now();
        let slots = ctx.slots(subject, None);
        let loaded = self.load(&slots).await?;
        let states = self.forgive(&slots, loaded).await?;
        let mut verdicts = Self::judge(&slots, &states, now);
        verdicts.extend(self.stranger(subject, false, now).await?);
        Ok(Verdict::most_severe(verdicts))
    }
}
