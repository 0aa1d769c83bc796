//! CheckAccess, RecordFailure and RecordSuccess: may this subject act now,
//! and what a failure or a success changes.

use super::state::required_user;
use super::{Gate, ServiceError};
use crate::domain::{
    ContextPolicy, Decision, EventKind, Reason, SecurityEvent, Slot, Subject, UnixMillis, Verdict,
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
    /// The allow list's verdict for a stranger, and the context's for an
    /// address outside its allowed networks (the most severe of the two);
    /// counting the attempt when `count` (CheckAccess counts attempts, the
    /// record calls only report).
    pub(super) async fn stranger(
        &self,
        ctx: &ContextPolicy,
        subject: &Subject,
        count: bool,
        now: UnixMillis,
    ) -> Result<Option<Verdict>, ServiceError> {
        let access = &self.policy.access;
        let outsider = ctx.outsider(subject)?;
        let slots: Vec<(Slot<'_>, Reason)> = access
            .slot(subject)
            .map(|s| (s, Reason::NotOnAllowList))
            .into_iter()
            .chain(outsider.map(|ip| (access.network_slot(ip), Reason::NetworkNotAllowed)))
            .collect();
        if slots.is_empty() {
            return Ok(None);
        }
        let (slots, reasons): (Vec<_>, Vec<_>) = slots.into_iter().unzip();
        let states = if count {
            self.fail(&slots, now, &[], Some(EventKind::NotAllowed))
                .await?
                .0
        } else {
            self.load(&slots).await?
        };
        let verdicts = slots
            .iter()
            .zip(&states)
            .zip(reasons)
            .map(|((slot, state), reason)| {
                let verdict = slot.rule.assess(&slot.key, state, now);
                match reason {
                    Reason::NetworkNotAllowed => access.judge_outsider(verdict),
                    _ => access.judge(verdict),
                }
            });
        Ok(Some(Verdict::most_severe(verdicts)))
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
                // The network lists need no store either.
                if ctx.outsider(subject)?.is_some() {
                    return Ok(self.policy.access.judge_outsider(Verdict::allow()));
                }
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
        verdicts.extend(self.banned(ctx, subject, now).await?);
        verdicts.extend(self.stranger(ctx, subject, true, now).await?);
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
        Ok(ctx.annotate(subject, Verdict::most_severe(verdicts)))
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
        verdicts.extend(self.banned(ctx, subject, now).await?);
        verdicts.extend(self.stranger(ctx, subject, false, now).await?);
        Ok(Outcome {
            verdict: ctx.annotate(subject, Verdict::most_severe(verdicts)),
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
        verdicts.extend(self.banned(ctx, subject, now).await?);
        verdicts.extend(self.stranger(ctx, subject, false, now).await?);
        Ok(ctx.annotate(subject, Verdict::most_severe(verdicts)))
    }
}
