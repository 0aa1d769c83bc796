use tonic::{Request, Response, Status};

use super::proto::{self, admin_service_server::AdminService};
use super::{caller, convert, observe};
use crate::domain::{
    ContextName, FieldError, SecurityEvent, Suppressor, TOTP_CONTEXT, TotpAlgorithm, TotpParams,
    UnixMillis, UserId,
};
use crate::grpc::convert::text;
use crate::service::{Admin, Gates, Lifetime};
use crate::store::{AdmissionRecord, AdmissionScope, EventFilter, UnlockScope};
use crate::telemetry::mask;
use crate::telemetry::metrics;
use std::pin::Pin;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

mod bans;
mod paging;
use paging::{
    offender_token, page_size, page_token, paginate, parse_offender_token, parse_page_token,
};

/// The most bans one ImportBans call takes: one transaction's worth.
const MAX_IMPORT: usize = 1000;

pub struct AdminApi {
    gate: Gates,
    /// Turns true when the server shuts down: alert streams end then, so
    /// draining does not wait on subscribers that never hang up.
    stop: watch::Receiver<bool>,
}

impl AdminApi {
    pub fn new(gate: Gates, stop: watch::Receiver<bool>) -> Self {
        AdminApi { gate, stop }
    }

    /// A user's admission state as admins see it, the updates in the
    /// window counted with the context's window.
    fn admission_state(&self, r: &AdmissionRecord, now: UnixMillis) -> proto::AdmissionState {
        let window = self
            .gate
            .load()
            .policy()
            .context("context", &r.context)
            .ok()
            .and_then(|c| c.admission.as_ref())
            .map(|a| a.window);
        convert::admission_state(r, window, now)
    }

    /// Every admin call acts for an admin user, named by the request's
    /// `actor`, through an authenticated caller: both are checked here,
    /// once, and returned with the request.
    fn authorize<T>(
        &self,
        request: Request<T>,
        actor: fn(&T) -> &str,
    ) -> Result<(Admin, T), Status> {
        let admin = self
            .gate
            .load()
            .authorize_admin(&caller(&request)?.name, actor(request.get_ref()))?;
        Ok((admin, request.into_inner()))
    }
}

/// Alerts queued for one subscriber's connection. Small: a slow reader makes
/// its own task wait, and the broadcast buffer behind it (bounded too) drops
/// what that reader cannot keep up with.
const ALERT_QUEUE: usize = 16;

fn alert(e: &SecurityEvent, suppressed: u64, dropped: u64) -> proto::SecurityAlert {
    proto::SecurityAlert {
        kind: e.kind.as_str().into(),
        at: Some(convert::timestamp(UnixMillis(e.at))),
        context: text(&e.context),
        rule: text(&e.rule),
        key: Some(convert::event_key(e)),
        tier: e.tier,
        unblock_at: e.until.map(|t| convert::timestamp(UnixMillis(t))),
        permanent: e.permanent,
        suppressed,
        dropped,
        detail: e.detail.clone(),
    }
}
#[tonic::async_trait]
impl AdminService for AdminApi {
    type WatchSecurityEventsStream =
        Pin<Box<dyn Stream<Item = Result<proto::SecurityAlert, Status>> + Send + 'static>>;

    #[tracing::instrument(skip_all)]
    async fn watch_security_events(
        &self,
        request: Request<proto::WatchSecurityEventsRequest>,
    ) -> Result<Response<Self::WatchSecurityEventsStream>, Status> {
        observe("WatchSecurityEvents", async move {
            let gate = self.gate.load();
            let (admin, _) = self.authorize(request, |r| &r.actor_user_id)?;
            let mut events = gate.subscribe();
            let mut suppressor = Suppressor::new(gate.policy().alert_suppression);
            let mut stop = self.stop.clone();
            let (tx, rx) = mpsc::channel(ALERT_QUEUE);
            tracing::info!(actor = %mask(admin.actor.as_str()), caller = %admin.caller, "alert subscriber joined");
            tokio::spawn(async move {
                let mut dropped = 0u64;
                loop {
                    let event = tokio::select! {
                        received = events.recv() => match received {
                            Ok(event) => event,
                            Err(RecvError::Lagged(n)) => {
                                dropped += n;
                                metrics::events_dropped(n);
                                continue;
                            }
                            Err(RecvError::Closed) => return,
                        },
                        _ = stop.wait_for(|stopped| *stopped) => return,
                        _ = tx.closed() => return,
                    };
                    let subject = format!(
                        "{}|{}|{}|{}",
                        text(&event.user),
                        text(&event.ip),
                        text(&event.session),
                        text(&event.password)
                    );
                    let Some(suppressed) =
                        suppressor.offer(event.kind.as_str(), &subject, UnixMillis(event.at))
                    else {
                        continue;
                    };
                    if tx
                        .send(Ok(alert(&event, suppressed, dropped)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    dropped = 0;
                }
            });
            let stream: Self::WatchSecurityEventsStream = Box::pin(ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn admin_unlock(
        &self,
        request: Request<proto::AdminUnlockRequest>,
    ) -> Result<Response<proto::AdminUnlockResponse>, Status> {
        observe("AdminUnlock", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            use proto::admin_unlock_request::Scope;
            let scope = match req.scope {
                Some(Scope::Key(k)) => UnlockScope::Key {
                    context: ContextName::parse("key.context", &k.context)?,
                    key: convert::parse_key("key.key", k.key.as_ref())?,
                },
                Some(Scope::Subject(s)) => UnlockScope::Subject(gate.involving(convert::subject(
                    "subject",
                    Some(&s),
                    gate.passwords(),
                )?)),
                Some(Scope::All(true)) => UnlockScope::All,
                Some(Scope::All(false)) => {
                    return Err(FieldError::new("all", "must be true when chosen").into());
                }
                None => {
                    return Err(
                        FieldError::new("scope", "one of key, subject, all is required").into(),
                    );
                }
            };
            let unlocked = gate.unlock(&admin, &scope).await?;
            Ok(Response::new(proto::AdminUnlockResponse { unlocked }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn ban(
        &self,
        request: Request<proto::BanRequest>,
    ) -> Result<Response<proto::BanResponse>, Status> {
        observe("Ban", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let order = bans::order("ban", req.ban.as_ref(), gate.passwords())?;
            let ban = gate.ban_of(&admin, order, "ban")?;
            let changed = gate.ban(&admin, std::slice::from_ref(&ban)).await? > 0;
            Ok(Response::new(proto::BanResponse {
                ban: Some(bans::lock(&ban)),
                changed,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn import_bans(
        &self,
        request: Request<proto::ImportBansRequest>,
    ) -> Result<Response<proto::ImportBansResponse>, Status> {
        observe("ImportBans", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            if req.bans.len() > MAX_IMPORT {
                return Err(FieldError::new(
                    "bans",
                    format!(
                        "holds {} bans; send at most {MAX_IMPORT} at a time",
                        req.bans.len()
                    ),
                )
                .into());
            }
            let now = gate.now();
            let mut checked = Vec::new();
            let mut ended = 0;
            for (i, spec) in req.bans.iter().enumerate() {
                let field = format!("bans[{i}]");
                let order = bans::order(&field, Some(spec), gate.passwords())?;
                // What ended since it was exported is no mistake in the file.
                if matches!(order.lifetime, Lifetime::Until(at) if at <= now) {
                    ended += 1;
                    continue;
                }
                checked.push(gate.ban_of(&admin, order, &field)?);
            }
            if req.validate_only {
                return Ok(Response::new(proto::ImportBansResponse {
                    ended,
                    ..Default::default()
                }));
            }
            let written = gate.ban(&admin, &checked).await?;
            Ok(Response::new(proto::ImportBansResponse {
                written,
                unchanged: checked.len() as u64 - written,
                ended,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_locked(
        &self,
        request: Request<proto::ListLockedRequest>,
    ) -> Result<Response<proto::ListLockedResponse>, Status> {
        observe("ListLocked", async move {
            let gate = self.gate.load();
            let (_, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let limit = page_size(req.page_size);
            let context = (!req.context.is_empty()).then_some(req.context.as_str());
            // Bans come first, then the rules' locks: a token says which
            // of them it resumes.
            let token = req.page_token.as_str();
            let (in_bans, ban_after, lock_after) = match bans::parse_token(token) {
                Some(after) => (true, Some(after?), None),
                None if token.is_empty() => (true, None, None),
                None if token == bans::LOCKS_FROM_START => (false, None, None),
                None => (false, None, Some(parse_page_token(token)?)),
            };
            let mut locks = Vec::new();
            if in_bans {
                let mut all = gate.list_bans(context).await?;
                all.sort_by(|a, b| a.target.cmp(&b.target));
                let page: Vec<_> = all
                    .into_iter()
                    .filter(|b| ban_after.as_ref().is_none_or(|after| b.target > *after))
                    .take(limit as usize + 1)
                    .collect();
                let (page, next) = paginate(page, limit, |last| bans::token(&last.target));
                locks.extend(page.iter().map(bans::lock));
                if !next.is_empty() {
                    return Ok(Response::new(proto::ListLockedResponse {
                        locks,
                        next_page_token: next,
                    }));
                }
            }
            let room = limit - u32::try_from(locks.len()).unwrap_or(limit);
            if room == 0 {
                return Ok(Response::new(proto::ListLockedResponse {
                    locks,
                    next_page_token: bans::LOCKS_FROM_START.to_owned(),
                }));
            }
            let rows = gate
                .list_locked(context, lock_after.as_ref(), room + 1)
                .await?;
            let (rows, next_page_token) = paginate(rows, room, |last| page_token(&last.id));
            let now = gate.now();
            locks.extend(
                rows.iter()
                    .filter_map(|s| s.state.active_lock(now).map(|l| convert::lock(s, l))),
            );
            Ok(Response::new(proto::ListLockedResponse {
                locks,
                next_page_token,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_subject(
        &self,
        request: Request<proto::GetSubjectRequest>,
    ) -> Result<Response<proto::GetSubjectResponse>, Status> {
        observe("GetSubject", async move {
            let gate = self.gate.load();
            let (_, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let subject = convert::subject("subject", req.subject.as_ref(), gate.passwords())?;
            let report = gate.subject(&subject).await?;
            let now = gate.now();
            let policy = gate.policy();
            let states = report
                .states
                .iter()
                .map(|s| {
                    let in_window = policy
                        .rule(&s.id.context, &s.id.rule)
                        .map(|r| r.in_window(&s.state, now))
                        .unwrap_or(
                            u32::try_from(s.state.recent_failures.len()).unwrap_or(u32::MAX),
                        );
                    convert::key_state(s, in_window, now)
                })
                .collect();
            // BLOCKED is the user's TOTP counter being locked, whether or not a
            // session was stored before.
            let totp_lock = report
                .states
                .iter()
                .filter(|s| s.id.context == TOTP_CONTEXT)
                .find_map(|s| s.state.active_lock(now));
            let session = match (&report.session, totp_lock) {
                (stored, Some(lock)) => Some(proto::Session {
                    state: proto::SessionState::Blocked.into(),
                    since: Some(convert::timestamp(lock.locked_at)),
                    last_seen_at: stored
                        .as_ref()
                        .and_then(|s| s.last_seen)
                        .map(convert::timestamp),
                }),
                (Some(s), None) => Some(proto::Session {
                    state: convert::session_state(s.status).into(),
                    since: Some(convert::timestamp(s.since)),
                    last_seen_at: s.last_seen.map(convert::timestamp),
                }),
                (None, None) => None,
            };
            let totp = report.totp.as_ref().map(|t| proto::TotpEnrollment {
                confirmed: t.confirmed,
                algorithm: t.params.algorithm.as_str().into(),
                digits: u32::from(t.params.digits),
                period_seconds: t.params.period,
                created_at: Some(convert::timestamp(t.created_at)),
                recovery_codes_remaining: u32::try_from(report.recovery_codes_left)
                    .unwrap_or(u32::MAX),
            });
            let admission = report
                .admission
                .iter()
                .map(|r| self.admission_state(r, now))
                .collect();
            Ok(Response::new(proto::GetSubjectResponse {
                bans: report.bans.iter().map(bans::lock).collect(),
                allowed: report.allowed,
                admin: report.admin,
                states,
                session,
                totp,
                admission,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_audit_events(
        &self,
        request: Request<proto::ListAuditEventsRequest>,
    ) -> Result<Response<proto::ListAuditEventsResponse>, Status> {
        observe("ListAuditEvents", async move {
            let gate = self.gate.load();
            let (_, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let before_id =
                match req.page_token.as_str() {
                    "" => None,
                    token => Some(token.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(
                        || {
                            Status::from(FieldError::new(
                                "page_token",
                                "is not a token this server issued",
                            ))
                        },
                    )?),
                };
            let filter = EventFilter {
                before_id,
                ..convert::event_filter(&req)?
            };
            let limit = page_size(req.page_size);
            let rows = gate.audit_events(&filter, limit + 1).await?;
            let (rows, next_page_token) = paginate(rows, limit, |(id, _)| id.to_string());
            let events = rows
                .iter()
                .map(|(id, e)| proto::AuditEvent {
                    id: u64::try_from(*id).unwrap_or(0),
                    kind: e.kind.as_str().into(),
                    at: Some(convert::timestamp(UnixMillis(e.at))),
                    context: text(&e.context),
                    rule: text(&e.rule),
                    key: Some(convert::event_key(e)),
                    tier: e.tier,
                    unblock_at: e.until.map(|t| convert::timestamp(UnixMillis(t))),
                    permanent: e.permanent,
                    actor: e.actor.clone(),
                    caller: e.caller.clone(),
                    detail: e.detail.clone(),
                })
                .collect();
            Ok(Response::new(proto::ListAuditEventsResponse {
                events,
                next_page_token,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_session(
        &self,
        request: Request<proto::RevokeSessionRequest>,
    ) -> Result<Response<proto::RevokeSessionResponse>, Status> {
        observe("RevokeSession", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            use proto::revoke_session_request::Scope;
            let user = match req.scope {
                Some(Scope::UserId(u)) => Some(UserId::parse("user_id", &u)?),
                Some(Scope::All(true)) => None,
                Some(Scope::All(false)) => {
                    return Err(FieldError::new("all", "must be true when chosen").into());
                }
                None => {
                    return Err(FieldError::new("scope", "one of user_id, all is required").into());
                }
            };
            let revoked = gate.revoke_sessions(&admin, user.as_ref()).await?;
            Ok(Response::new(proto::RevokeSessionResponse { revoked }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn get_stats(
        &self,
        request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        observe("GetStats", async move {
            let gate = self.gate.load();
            self.authorize(request, |r| &r.actor_user_id)?;
            let s = gate.stats().await?;
            let a = gate.admission_stats(None).await?;
            Ok(Response::new(proto::GetStatsResponse {
                total: s.total,
                authenticated: s.authenticated,
                processing: s.processing,
                blocked: s.blocked,
                expired: s.expired,
                locks_temporary: s.locks_temporary,
                locks_permanent: s.locks_permanent,
                admission_users: a.users,
                admission_refused: a.refused,
                admission_warnings: a.warnings,
                admission_blocks_active: a.active_blocks,
            }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn reset_totp(
        &self,
        request: Request<proto::ResetTotpRequest>,
    ) -> Result<Response<proto::ResetTotpResponse>, Status> {
        observe("ResetTotp", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let user = UserId::parse("user_id", &req.user_id)?;
            let removed = gate.reset_totp(&admin, &user).await?;
            tracing::info!(actor = %mask(admin.actor.as_str()), caller = %admin.caller, user = %mask(user.as_str()), removed, "TOTP reset");
            Ok(Response::new(proto::ResetTotpResponse { removed }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn regenerate_recovery_codes(
        &self,
        request: Request<proto::AdminServiceRegenerateRecoveryCodesRequest>,
    ) -> Result<Response<proto::AdminServiceRegenerateRecoveryCodesResponse>, Status> {
        observe("AdminRegenerateRecoveryCodes", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let user = UserId::parse("user_id", &req.user_id)?;
            let codes = gate.admin_regenerate_recovery_codes(&admin, &user).await?;
            Ok(Response::new(
                proto::AdminServiceRegenerateRecoveryCodesResponse {
                    recovery_codes: codes.iter().map(|c| c.shown().to_string()).collect(),
                },
            ))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn import_totp(
        &self,
        request: Request<proto::ImportTotpRequest>,
    ) -> Result<Response<proto::ImportTotpResponse>, Status> {
        observe("ImportTotp", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let user = UserId::parse("user_id", &req.user_id)?;
            let algorithm = match req.algorithm.as_str() {
                "" => TotpAlgorithm::Sha1,
                name => TotpAlgorithm::from_name(name).ok_or_else(|| {
                    Status::from(FieldError::new("algorithm", "must be SHA1, SHA256 or SHA512"))
                })?,
            };
            let params = TotpParams {
                algorithm,
                digits: match req.digits {
                    0 => 6,
                    d => u8::try_from(d).unwrap_or(u8::MAX),
                },
                period: match req.period_seconds {
                    0 => 30,
                    p => p,
                },
            };
            gate
                .import_totp(&admin, &user, &req.secret_base32, params)
                .await?;
            tracing::info!(actor = %mask(admin.actor.as_str()), caller = %admin.caller, user = %mask(user.as_str()), "TOTP imported");
            Ok(Response::new(proto::ImportTotpResponse {}))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn reset_warnings(
        &self,
        request: Request<proto::ResetWarningsRequest>,
    ) -> Result<Response<proto::ResetWarningsResponse>, Status> {
        observe("ResetWarnings", async move {
            let gate = self.gate.load();
            let (admin, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let scope = AdmissionScope {
                context: (!req.context.is_empty())
                    .then(|| ContextName::parse("context", &req.context))
                    .transpose()?,
                user: (!req.user_id.is_empty())
                    .then(|| UserId::parse("user_id", &req.user_id))
                    .transpose()?,
            };
            let reset = gate.reset_warnings(&admin, &scope).await?;
            Ok(Response::new(proto::ResetWarningsResponse { reset }))
        })
        .await
    }

    #[tracing::instrument(skip_all)]
    async fn list_offenders(
        &self,
        request: Request<proto::ListOffendersRequest>,
    ) -> Result<Response<proto::ListOffendersResponse>, Status> {
        observe("ListOffenders", async move {
            let gate = self.gate.load();
            let (_, req) = self.authorize(request, |r| &r.actor_user_id)?;
            let after = (!req.page_token.is_empty())
                .then(|| parse_offender_token(&req.page_token))
                .transpose()?;
            let limit = page_size(req.page_size);
            let context = (!req.context.is_empty()).then_some(req.context.as_str());
            let rows = gate
                .admission_offenders(context, after.as_ref(), limit + 1)
                .await?;
            let (rows, next_page_token) = paginate(rows, limit, offender_token);
            let now = gate.now();
            Ok(Response::new(proto::ListOffendersResponse {
                offenders: rows.iter().map(|r| self.admission_state(r, now)).collect(),
                next_page_token,
            }))
        })
        .await
    }
}

#[cfg(test)]
mod tests;
