//! `authgate admin ...`: the operator's client for AdminService, so a locked
//! admin can be unlocked at 3 a.m. without grpcurl and a proto file. Tables
//! for people, `--json` (one array of objects) for scripts.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use sha2::Digest;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::grpc::proto::admin_service_client::AdminServiceClient;
use crate::grpc::proto::{self, admin_unlock_request::Scope};

mod bans;
mod table;
use table::{Table, admission_table, key_text, time, until};

#[derive(Args)]
pub struct AdminArgs {
    /// The authgate to talk to: host:port, or a URL (https:// for TLS).
    #[arg(long, env = "AUTHGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// An API key with the admin role.
    #[arg(long, env = "AUTHGATE_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The admin user on whose behalf to act (must be on access.admin_user_ids).
    #[arg(long, env = "AUTHGATE_ACTOR")]
    actor: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// PEM CA bundle to verify the server's certificate.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate and key, for mutual TLS.
    #[arg(long, requires = "client_key")]
    client_cert: Option<PathBuf>,
    #[arg(long, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// How long to wait for the server.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Lift locks: everything of a subject (--user/--ip/--session), one key
    /// (add --context and --kind), or --all.
    Unlock {
        #[command(flatten)]
        subject: SubjectArgs,
        /// With --kind: lift only this context's key.
        #[arg(long, requires = "kind")]
        context: Option<String>,
        /// user, ip, user+ip or session.
        #[arg(long, requires = "context", conflicts_with = "password_stdin")]
        kind: Option<String>,
        /// Lift every lock there is.
        #[arg(long, conflicts_with_all = ["user", "ip", "session", "password_stdin", "context"])]
        all: bool,
    },
    /// Locks in force.
    ListLocked {
        #[arg(long, default_value = "")]
        context: String,
        /// At most this many (all pages are fetched up to it).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Everything stored about a subject.
    Subject {
        #[command(flatten)]
        subject: SubjectArgs,
    },
    /// Session, lock and admission counts across all replicas.
    Stats,
    /// A user's anti-spam admission state, per context.
    Admission {
        #[arg(long)]
        user: String,
    },
    /// The users with the most admission blocks.
    Offenders {
        #[arg(long, default_value = "")]
        context: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Forget admission warnings without lifting a block: one user (in one
    /// --context, or everywhere), or everyone in a --context.
    ResetWarnings {
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long, default_value = "")]
        context: String,
    },
    /// Ban a key (--user, --ip, both, --session, --password-stdin) or a
    /// --range, in one --context or every one, for a --duration or
    /// --permanent, with a --reason.
    Ban {
        #[command(flatten)]
        subject: SubjectArgs,
        /// A CIDR ("203.0.113.0/24"): every address in it.
        #[arg(long, conflicts_with_all = ["user", "ip", "session", "password_stdin"])]
        range: Option<String>,
        #[command(flatten)]
        how: bans::Defaults,
    },
    /// Export the locks and bans in force, or import bans from a file.
    Bans {
        #[command(subcommand)]
        command: bans::BansCommand,
    },
    /// The audit trail, newest first.
    Events {
        #[command(flatten)]
        subject: SubjectArgs,
        #[arg(long, default_value = "")]
        context: String,
        /// e.g. lockout, unlocked, failure_recorded.
        #[arg(long, default_value = "")]
        kind: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Args)]
struct SubjectArgs {
    #[arg(long, default_value = "")]
    user: String,
    #[arg(long, default_value = "")]
    ip: String,
    #[arg(long, default_value = "")]
    session: String,
    /// Also the password read from stdin (one line): only its SHA-256
    /// leaves this process, and the server keeps only an HMAC of that.
    #[arg(long)]
    password_stdin: bool,
}

impl SubjectArgs {
    fn proto(&self) -> anyhow::Result<proto::Subject> {
        let password_fingerprint = if self.password_stdin {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(
                !password.is_empty(),
                "--password-stdin: stdin gave no password"
            );
            sha2::Sha256::digest(password.as_bytes()).to_vec()
        } else {
            Vec::new()
        };
        Ok(proto::Subject {
            user_id: self.user.clone(),
            ip: self.ip.clone(),
            session_id: self.session.clone(),
            password_fingerprint,
        })
    }

    fn is_empty(&self) -> bool {
        self.user.is_empty()
            && self.ip.is_empty()
            && self.session.is_empty()
            && !self.password_stdin
    }
}

/// The server's URL: `host:port` as written, or with the scheme TLS
/// settings imply.
fn server_url(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

async fn channel(args: &AdminArgs) -> anyhow::Result<Channel> {
    let url = server_url(&args.addr, args.ca_cert.is_some());
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("--addr {:?}: {e}", args.addr))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    if url.starts_with("https://") || args.ca_cert.is_some() {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.ca_cert {
            tls = tls.ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

/// Runs one admin command and prints its answer.
pub async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let bearer: Option<MetadataValue<_>> = match &args.key {
        Some(k) => Some(format!("Bearer {k}").parse().map_err(|_| {
            anyhow::anyhow!("--key holds characters that cannot be sent as metadata")
        })?),
        None => None,
    };
    let channel = channel(&args).await?;
    let mut client = AdminServiceClient::with_interceptor(channel, move |mut r: Request<()>| {
        if let Some(b) = &bearer {
            r.metadata_mut().insert("authorization", b.clone());
        }
        Ok::<_, Status>(r)
    });
    let actor = args.actor.clone();
    let out = match args.command {
        AdminCommand::Unlock {
            subject,
            context,
            kind,
            all,
        } => {
            let scope = match (all, context, kind) {
                (true, _, _) => Scope::All(true),
                (false, Some(context), Some(kind)) => Scope::Key(proto::KeyRef {
                    context,
                    key: Some(proto::Key {
                        kind: key_kind(&kind)? as i32,
                        ..key_of(&subject)
                    }),
                }),
                _ if subject.is_empty() => {
                    anyhow::bail!(
                        "say what to unlock: --user/--ip/--session/--password-stdin, or --all"
                    )
                }
                _ => Scope::Subject(subject.proto()?),
            };
            let r = client
                .admin_unlock(proto::AdminUnlockRequest {
                    actor_user_id: actor,
                    scope: Some(scope),
                })
                .await?
                .into_inner();
            let mut t = Table::new(&["unlocked"]);
            t.rows.push(vec![json!(r.unlocked)]);
            t
        }
        AdminCommand::Ban {
            subject,
            range,
            how,
        } => {
            use proto::ban_spec::Target;
            let s = subject.proto()?;
            let kind = |kind: proto::KeyKind| {
                Target::Key(proto::Key {
                    kind: kind.into(),
                    ..key_of(&subject)
                })
            };
            let target = match (range, &s) {
                (Some(r), _) => Target::Range(r),
                (None, s) if !s.password_fingerprint.is_empty() => {
                    Target::PasswordFingerprint(s.password_fingerprint.clone())
                }
                (None, s) if !s.user_id.is_empty() && !s.ip.is_empty() => {
                    kind(proto::KeyKind::UserIp)
                }
                (None, s) if !s.user_id.is_empty() => kind(proto::KeyKind::User),
                (None, s) if !s.ip.is_empty() => kind(proto::KeyKind::Ip),
                (None, s) if !s.session_id.is_empty() => kind(proto::KeyKind::Session),
                _ => anyhow::bail!(
                    "say what to ban: --user, --ip, both, --session, --password-stdin or --range"
                ),
            };
            let lifetime = bans::lifetime(&how)
                .ok_or_else(|| anyhow::anyhow!("say how long: --duration 1h, or --permanent"))?;
            let r = client
                .ban(proto::BanRequest {
                    actor_user_id: actor,
                    ban: Some(proto::BanSpec {
                        context: how.context.clone(),
                        target: Some(target),
                        lifetime: Some(lifetime),
                        reason: how.reason.clone().unwrap_or_default(),
                        force: how.force,
                    }),
                })
                .await?
                .into_inner();
            let mut t = Table::new(&["context", "key", "until", "reason", "changed"]);
            if let Some(b) = r.ban {
                t.rows.push(vec![
                    json!(if b.context.is_empty() {
                        "*"
                    } else {
                        &b.context
                    }),
                    key_text(b.key.as_ref()),
                    until(b.unblock_at.as_ref(), b.permanent),
                    json!(b.reason),
                    json!(r.changed),
                ]);
            }
            t
        }
        AdminCommand::Bans { command } => match command {
            bans::BansCommand::Export { format, context } => {
                let skipped = bans::export(&mut client, &actor, &context, format).await?;
                if skipped > 0 {
                    eprintln!(
                        "{skipped} locks not exported: password keys and the allow_list and totp \
                         counters cannot be imported as bans"
                    );
                }
                return Ok(());
            }
            bans::BansCommand::Import {
                file,
                format,
                defaults,
                dry_run,
            } => {
                let done =
                    bans::import(&mut client, &actor, &file, format, &defaults, dry_run).await?;
                let mut t = Table::new(&["written", "unchanged", "ended", "dry_run"]);
                t.rows.push(vec![
                    json!(done.written),
                    json!(done.unchanged),
                    json!(done.ended),
                    json!(dry_run),
                ]);
                t
            }
        },
        AdminCommand::ListLocked { context, limit } => {
            let mut t = Table::new(&["context", "rule", "key", "tier", "locked_at", "until"]);
            let mut page_token = String::new();
            loop {
                let r = client
                    .list_locked(proto::ListLockedRequest {
                        actor_user_id: actor.clone(),
                        context: context.clone(),
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                for l in r.locks {
                    t.rows.push(vec![
                        json!(l.context),
                        json!(l.rule),
                        key_text(l.key.as_ref()),
                        json!(l.tier),
                        time(l.locked_at.as_ref()),
                        until(l.unblock_at.as_ref(), l.permanent),
                    ]);
                }
                page_token = r.next_page_token;
                if page_token.is_empty() || t.rows.len() >= limit {
                    break;
                }
            }
            t.rows.truncate(limit);
            t
        }
        AdminCommand::Subject { subject } => {
            if subject.is_empty() {
                anyhow::bail!("name the subject: --user, --ip and/or --session");
            }
            let r = client
                .get_subject(proto::GetSubjectRequest {
                    actor_user_id: actor,
                    subject: Some(subject.proto()?),
                })
                .await?
                .into_inner();
            let mut t = Table::new(&[
                "context",
                "rule",
                "key",
                "failures_in_window",
                "failures_total",
                "lockouts_total",
                "locked_until",
                "note",
            ]);
            for s in r.states {
                t.rows.push(vec![
                    json!(s.context),
                    json!(s.rule),
                    key_text(s.key.as_ref()),
                    json!(s.failures_in_window),
                    json!(s.failures_total),
                    json!(s.lockouts_total),
                    s.lock
                        .as_ref()
                        .map_or(Value::Null, |l| until(l.unblock_at.as_ref(), l.permanent)),
                    Value::Null,
                ]);
            }
            for b in r.bans {
                t.rows.push(vec![
                    json!(if b.context.is_empty() {
                        "*"
                    } else {
                        &b.context
                    }),
                    json!(b.rule),
                    key_text(b.key.as_ref()),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    until(b.unblock_at.as_ref(), b.permanent),
                    json!(format!("banned by {}: {}", b.actor, b.reason)),
                ]);
            }
            if let Some(totp) = r.totp {
                t.rows.push(vec![
                    json!(crate::domain::TOTP_CONTEXT),
                    json!("enrollment"),
                    json!(format!("user={}", subject.user)),
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    json!(format!(
                        "{}, {} recovery codes left",
                        if totp.confirmed {
                            "confirmed"
                        } else {
                            "pending"
                        },
                        totp.recovery_codes_remaining
                    )),
                ]);
            }
            t
        }
        AdminCommand::Stats => {
            let s = client
                .get_stats(proto::GetStatsRequest {
                    actor_user_id: actor,
                })
                .await?
                .into_inner();
            let mut t = Table::new(&[
                "sessions",
                "authenticated",
                "processing",
                "blocked",
                "expired",
                "locks_temporary",
                "locks_permanent",
                "admission_users",
                "admission_refused",
                "admission_warnings",
                "admission_blocked",
            ]);
            t.rows.push(vec![
                json!(s.total),
                json!(s.authenticated),
                json!(s.processing),
                json!(s.blocked),
                json!(s.expired),
                json!(s.locks_temporary),
                json!(s.locks_permanent),
                json!(s.admission_users),
                json!(s.admission_refused),
                json!(s.admission_warnings),
                json!(s.admission_blocks_active),
            ]);
            t
        }
        AdminCommand::Admission { user } => {
            let r = client
                .get_subject(proto::GetSubjectRequest {
                    actor_user_id: actor,
                    subject: Some(proto::Subject {
                        user_id: user,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            admission_table(r.admission)
        }
        AdminCommand::Offenders { context, limit } => {
            let mut offenders = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = client
                    .list_offenders(proto::ListOffendersRequest {
                        actor_user_id: actor.clone(),
                        context: context.clone(),
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                offenders.extend(r.offenders);
                page_token = r.next_page_token;
                if page_token.is_empty() || offenders.len() >= limit {
                    break;
                }
            }
            offenders.truncate(limit);
            admission_table(offenders)
        }
        AdminCommand::ResetWarnings { user, context } => {
            if user.is_empty() && context.is_empty() {
                anyhow::bail!("say whose warnings: --user and/or --context");
            }
            let r = client
                .reset_warnings(proto::ResetWarningsRequest {
                    actor_user_id: actor,
                    context,
                    user_id: user,
                })
                .await?
                .into_inner();
            let mut t = Table::new(&["reset"]);
            t.rows.push(vec![json!(r.reset)]);
            t
        }
        AdminCommand::Events {
            subject,
            context,
            kind,
            limit,
        } => {
            anyhow::ensure!(
                !subject.password_stdin,
                "events: --password-stdin filters nothing (events show a password key by its \
                 prefix); use --kind lockout --context ..."
            );
            let mut t = Table::new(&[
                "at", "kind", "context", "rule", "key", "actor", "caller", "detail",
            ]);
            let mut page_token = String::new();
            loop {
                let r = client
                    .list_audit_events(proto::ListAuditEventsRequest {
                        actor_user_id: actor.clone(),
                        user_id: subject.user.clone(),
                        ip: subject.ip.clone(),
                        session_id: subject.session.clone(),
                        context: context.clone(),
                        kind: kind.clone(),
                        from: None,
                        to: None,
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                for e in r.events {
                    t.rows.push(vec![
                        time(e.at.as_ref()),
                        json!(e.kind),
                        json!(e.context),
                        json!(e.rule),
                        key_text(e.key.as_ref()),
                        json!(e.actor),
                        json!(e.caller),
                        json!(e.detail),
                    ]);
                }
                page_token = r.next_page_token;
                if page_token.is_empty() || t.rows.len() >= limit {
                    break;
                }
            }
            t.rows.truncate(limit);
            t
        }
    };
    print!("{}", out.render(args.json));
    Ok(())
}

fn key_kind(name: &str) -> anyhow::Result<proto::KeyKind> {
    Ok(match name {
        "user" => proto::KeyKind::User,
        "ip" => proto::KeyKind::Ip,
        "user+ip" => proto::KeyKind::UserIp,
        "session" => proto::KeyKind::Session,
        other => anyhow::bail!("--kind {other:?}: use user, ip, user+ip or session"),
    })
}

fn key_of(subject: &SubjectArgs) -> proto::Key {
    proto::Key {
        kind: 0,
        user_id: subject.user.clone(),
        ip: subject.ip.clone(),
        session_id: subject.session.clone(),
        password: String::new(),
    }
}

#[cfg(test)]
mod tests;
