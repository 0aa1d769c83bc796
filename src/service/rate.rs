//! Rate limiting on its own (Envoy's ShouldRateLimit): each of a request's
//! keys judged by the context's rate rules of its kind, all counted or
//! refused together.

use std::collections::BTreeMap;

use super::state::id_of;
use super::{Gate, ServiceError};
use crate::domain::{Key, Slot, Verdict};
use crate::store::{StateId, StoreError};
use crate::telemetry::metrics;

impl Gate {
    /// Judges one request that names several keys, each with its hits:
    /// every rate rule of `context` on a key's kind judges that key, and the
    /// request is counted on all of them or, when any refuses it, on none
    /// (as CheckAccess counts its rate rules). One verdict per key, the
    /// most severe of its rules'; `None` where no rate rule counts on the
    /// key's kind. Failure rules do not judge here: they are not limits on
    /// requests, and CheckAccess (ext_authz) judges them.
    ///
    /// The same key named twice is one count: its hits add up.
    pub async fn rate_limit(
        &self,
        context: &str,
        keys: &[(Key, u32)],
    ) -> Result<Vec<Option<Verdict>>, ServiceError> {
        let ctx = self.policy.context("domain", context)?;
        let mut merged: BTreeMap<StateId, (Slot<'_>, u32)> = BTreeMap::new();
        let per_key: Vec<Vec<StateId>> = keys
            .iter()
            .map(|(key, hits)| {
                ctx.rate_slots(key)
                    .into_iter()
                    .map(|slot| {
                        let id = id_of(&slot);
                        merged
                            .entry(id.clone())
                            .and_modify(|(_, n)| *n = n.saturating_add(*hits))
                            .or_insert((slot, *hits));
                        id
                    })
                    .collect()
            })
            .collect();
        let (ids, (slots, hits)): (Vec<StateId>, (Vec<Slot<'_>>, Vec<u32>)) =
            merged.into_iter().unzip();
        let now = self.now();
        let verdicts = match self.hit(&slots, &hits, true, now).await {
            Ok(v) => v,
            Err(StoreError::Unavailable(cause)) if ctx.fail_open => {
                tracing::warn!(context, error = %cause, "store unavailable; failing open");
                metrics::failed_open(context);
                return Ok(vec![None; keys.len()]);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(per_key
            .iter()
            .map(|mine| {
                let judged: Vec<Verdict> = ids
                    .iter()
                    .zip(&verdicts)
                    .filter(|(id, _)| mine.contains(id))
                    .map(|(_, v)| v.clone())
                    .collect();
                (!judged.is_empty()).then(|| Verdict::most_severe(judged))
            })
            .collect())
    }
}
