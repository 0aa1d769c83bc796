//! Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`):
//! the request's `domain` is a context, each descriptor names one key, and
//! the context's rate rules judge and count them as CheckAccess does, with
//! a sliding window where Envoy's own service has a fixed one.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_service_server,
};
use tonic::{Request, Response, Status};

use super::{Quota, quota_headers};
use crate::config::{EntryKind, RateLimitConfig};
use crate::domain::{
    Decision, FieldError, IpAddress, Key, Policy, SessionId, UnixMillis, UserId, Verdict,
};
use crate::grpc::observe;
use crate::service::{Gates, ServiceError};
use crate::telemetry::metrics;

/// Descriptors one request may carry: Envoy sends one per rate-limit action
/// of a route, a handful; the cap bounds what one call can make authgate
/// lock and write.
const MAX_DESCRIPTORS: usize = 32;

/// `envoy.service.ratelimit.v3.RateLimitService` on authgate's gRPC port.
pub struct RateLimitService {
    gate: Gates,
    /// Descriptor entry keys and what their values identify.
    entries: BTreeMap<String, EntryKind>,
}

impl RateLimitService {
    pub fn new(gate: Gates, config: &RateLimitConfig) -> Self {
        RateLimitService {
            gate,
            entries: config.entries.clone(),
        }
    }

    /// The key descriptor `i` names, from the entries whose keys are
    /// configured (others are ignored), and its hits.
    fn key_of(
        &self,
        i: usize,
        descriptor: &RateLimitDescriptor,
        request_hits: u32,
    ) -> Result<(Key, u32), FieldError> {
        let field = format!("descriptors[{i}]");
        if descriptor.limit.is_some() {
            return Err(FieldError::new(
                format!("{field}.limit"),
                "limits are authgate's rate rules; overrides are not supported",
            ));
        }
        if descriptor.is_negative_hits {
            return Err(FieldError::new(
                format!("{field}.is_negative_hits"),
                "is not supported: a sliding window gives no requests back",
            ));
        }
        let (mut user, mut ip, mut session) = (None, None, None);
        for (j, entry) in descriptor.entries.iter().enumerate() {
            let Some(kind) = self.entries.get(&entry.key) else {
                continue;
            };
            let at = format!("{field}.entries[{j}]");
            let value = format!("{at}.value");
            let twice = match kind {
                EntryKind::Ip => ip
                    .replace(IpAddress::parse(&value, &entry.value)?)
                    .is_some(),
                EntryKind::User => user.replace(UserId::parse(&value, &entry.value)?).is_some(),
                EntryKind::Session => session
                    .replace(SessionId::parse(&value, &entry.value)?)
                    .is_some(),
            };
            if twice {
                return Err(FieldError::new(
                    at,
                    "names a key part an earlier entry of the descriptor already named",
                ));
            }
        }
        let key = match (user, ip, session) {
            (Some(u), Some(ip), None) => Key::UserIp(u, ip.into()),
            (Some(u), None, None) => Key::User(u),
            (None, Some(ip), None) => Key::Ip(ip.into()),
            (None, None, Some(s)) => Key::Session(s),
            (None, None, None) => {
                let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
                return Err(FieldError::new(
                    field,
                    format!(
                        "has no entry naming a key; configured entry keys: {}",
                        known.join(", ")
                    ),
                ));
            }
            _ => {
                return Err(FieldError::new(
                    field,
                    "a session key stands alone: no key combines it with a user or an ip",
                ));
            }
        };
        let hits = descriptor
            .hits_addend
            .map_or(request_hits, |h| u32::try_from(h.value).unwrap_or(u32::MAX));
        // Envoy's convention: an unset (zero) addend is one hit.
        Ok((key, hits.max(1)))
    }

    /// The request's keys, or the field that is wrong. Nothing is judged
    /// before the whole request has been read.
    fn keys_of(&self, req: &RateLimitRequest) -> Result<Vec<(Key, u32)>, FieldError> {
        if req.descriptors.is_empty() {
            return Err(FieldError::new(
                "descriptors",
                "must hold at least one descriptor",
            ));
        }
        if req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(FieldError::new(
                "descriptors",
                format!("must hold at most {MAX_DESCRIPTORS} descriptors"),
            ));
        }
        req.descriptors
            .iter()
            .enumerate()
            .map(|(i, d)| self.key_of(i, d, req.hits_addend))
            .collect()
    }
}

/// Envoy's limit units, for a window that is exactly one of them.
fn unit_of(window: Duration) -> Unit {
    match window.as_millis() {
        1_000 => Unit::Second,
        60_000 => Unit::Minute,
        3_600_000 => Unit::Hour,
        86_400_000 => Unit::Day,
        _ => Unit::Unknown,
    }
}

/// A Duration in protobuf's form.
fn proto_duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// One descriptor's status: OK with no limit where no rate rule counts on
/// its key (Envoy's convention for a descriptor without a limit).
fn status(
    policy: &Policy,
    context: &str,
    verdict: Option<&Verdict>,
    now: UnixMillis,
) -> DescriptorStatus {
    let Some(v) = verdict else {
        return DescriptorStatus {
            code: Code::Ok.into(),
            ..DescriptorStatus::default()
        };
    };
    let over = v.decision == Decision::Blocked;
    let rule = v.rule.as_deref().and_then(|r| policy.rule(context, r));
    let current_limit = rule.and_then(|r| {
        let unit = unit_of(r.window);
        let name = match unit {
            Unit::Unknown => format!("{} per {}", r.name, humantime::format_duration(r.window)),
            _ => r.name.to_string(),
        };
        Some(RateLimit {
            name,
            requests_per_unit: r.rate_limit()?,
            unit: unit.into(),
        })
    });
    // Over the limit: until the request would fit (or the lock ends);
    // under it: until the oldest counted request leaves the window.
    let reset = if over { v.unblock_at } else { v.frees_at };
    DescriptorStatus {
        code: if over { Code::OverLimit } else { Code::Ok }.into(),
        current_limit,
        limit_remaining: v.remaining_attempts.unwrap_or(0),
        duration_until_reset: reset.map(|at| proto_duration(now.until(at))),
        ..DescriptorStatus::default()
    }
}

#[tonic::async_trait]
impl rate_limit_service_server::RateLimitService for RateLimitService {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        observe("ratelimit.ShouldRateLimit", async move {
            let req = request.into_inner();
            let keys = self.keys_of(&req).map_err(ServiceError::from)?;
            let context = req.domain.as_str();
            let gate = self.gate.load();
            let verdicts = gate.rate_limit(context, &keys).await?;
            let (policy, now) = (gate.policy(), gate.now());
            let statuses: Vec<DescriptorStatus> = verdicts
                .iter()
                .map(|v| status(policy, context, v.as_ref(), now))
                .collect();
            let worst = Verdict::most_severe(verdicts.into_iter().flatten());
            metrics::decided("ShouldRateLimit", context, worst.decision);
            let over = worst.decision == Decision::Blocked;
            let quota = Quota::of(policy, context, &worst);
            let response_headers_to_add = quota_headers(&worst, quota, now)
                .into_iter()
                .map(|(key, value)| HeaderValue {
                    key: key.to_owned(),
                    value,
                    ..HeaderValue::default()
                })
                .collect();
            Ok(Response::new(RateLimitResponse {
                overall_code: if over { Code::OverLimit } else { Code::Ok }.into(),
                statuses,
                response_headers_to_add,
                ..RateLimitResponse::default()
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_units_are_named_others_unknown() {
        assert_eq!(unit_of(Duration::from_secs(1)), Unit::Second);
        assert_eq!(unit_of(Duration::from_secs(60)), Unit::Minute);
        assert_eq!(unit_of(Duration::from_secs(3600)), Unit::Hour);
        assert_eq!(unit_of(Duration::from_secs(86_400)), Unit::Day);
        assert_eq!(unit_of(Duration::from_secs(90)), Unit::Unknown);
        assert_eq!(unit_of(Duration::from_millis(1_500)), Unit::Unknown);
    }
}
