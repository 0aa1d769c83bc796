//! `authgate admin ban` and `authgate admin bans export|import`: bans and
//! locks written out as JSON lines or CSV, and read back, or from a plain
//! list of addresses and ranges (as `cscli decisions import` takes them).
//!
//! An import is all or nothing as far as the server can tell beforehand:
//! every line is parsed, then every batch is checked by the server
//! (ImportBans with validate_only), and only then written. A line that
//! fails either is reported by its number, and nothing is written.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::grpc::proto::admin_service_client::AdminServiceClient;
use crate::grpc::proto::ban_spec::{Lifetime, Target};
use crate::grpc::proto::{self, BanSpec};

/// Bans per ImportBans call: well under the server's 1000.
const BATCH: usize = 500;

#[derive(Subcommand)]
pub enum BansCommand {
    /// Write every lock and ban in force, one per line.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// Only this context's (and every context's bans).
        #[arg(long, default_value = "")]
        context: String,
    },
    /// Ban what a file lists: an export (JSON lines or CSV), or one address
    /// or range per line. All or nothing: a bad line is named and nothing
    /// is imported. Importing a file twice changes nothing.
    Import {
        /// The file; "-" reads stdin.
        file: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        format: Format,
        #[command(flatten)]
        defaults: Defaults,
        /// Check every line with the server, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON lines for export; on import, told from the file's first line.
    Auto,
    Jsonl,
    Csv,
    /// One address or CIDR per line; '#' starts a comment.
    List,
}

/// What a line that does not say takes (every line of a plain list).
#[derive(Args, Clone)]
pub struct Defaults {
    /// A configured context; empty bans in every context.
    #[arg(long, default_value = "")]
    pub context: String,
    /// How long, from now.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "permanent")]
    pub duration: Option<Duration>,
    #[arg(long)]
    pub permanent: bool,
    #[arg(long)]
    pub reason: Option<String>,
    /// Take ranges wider than the server's minimum.
    #[arg(long)]
    pub force: bool,
}

/// One lock or ban, as export writes it and import reads it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// "ban", or "lock" for a rule's lock (imported as a ban of its key).
    #[serde(rename = "type", default)]
    record: String,
    /// "*" (or empty) for every context.
    #[serde(default)]
    context: String,
    #[serde(default)]
    rule: String,
    /// user, ip (an address or a range), user+ip or session.
    kind: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    session_id: String,
    /// RFC 3339; absent when permanent.
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    permanent: bool,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    actor: String,
}

fn kind_name(kind: i32) -> &'static str {
    match proto::KeyKind::try_from(kind) {
        Ok(proto::KeyKind::User) => "user",
        Ok(proto::KeyKind::Ip) => "ip",
        Ok(proto::KeyKind::UserIp) => "user+ip",
        Ok(proto::KeyKind::Session) => "session",
        Ok(proto::KeyKind::Password) => "password",
        _ => "unknown",
    }
}

fn rfc3339(t: &prost_types::Timestamp) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(t.seconds.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The record of a lock as ListLocked shows it; `None` for what cannot
/// be imported again: password keys (named by the password, which no
/// export holds) and the pseudo-contexts' locks.
fn record(l: proto::Lock) -> Option<Record> {
    let key = l.key?;
    if key.kind == proto::KeyKind::Password as i32
        || [
            crate::domain::ALLOW_LIST_CONTEXT,
            crate::domain::TOTP_CONTEXT,
        ]
        .contains(&l.context.as_str())
    {
        return None;
    }
    let ban = l.rule == crate::domain::BAN_RULE;
    Some(Record {
        record: if ban { "ban" } else { "lock" }.into(),
        context: if l.context.is_empty() {
            "*".into()
        } else {
            l.context
        },
        rule: l.rule,
        kind: kind_name(key.kind).into(),
        user_id: key.user_id,
        ip: key.ip,
        session_id: key.session_id,
        until: l.unblock_at.as_ref().map(rfc3339),
        permanent: l.permanent,
        reason: l.reason,
        actor: l.actor,
    })
}

type Client<S> = AdminServiceClient<S>;

/// Writes every lock and ban in force to stdout; returns how many could not
/// be written (password keys, pseudo-contexts).
pub async fn export<S>(
    client: &mut Client<S>,
    actor: &str,
    context: &str,
    format: Format,
) -> anyhow::Result<usize>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut csv = (format == Format::Csv).then(|| csv::Writer::from_writer(Vec::new()));
    let mut skipped = 0;
    let mut page_token = String::new();
    loop {
        let r = client
            .list_locked(proto::ListLockedRequest {
                actor_user_id: actor.to_owned(),
                context: context.to_owned(),
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        for lock in r.locks {
            let Some(rec) = record(lock) else {
                skipped += 1;
                continue;
            };
            match &mut csv {
                Some(w) => w.serialize(&rec)?,
                None => writeln!(out, "{}", serde_json::to_string(&rec)?)?,
            }
        }
        page_token = r.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    if let Some(w) = csv {
        out.write_all(&w.into_inner()?)?;
    }
    out.flush()?;
    Ok(skipped)
}

/// What an import did.
#[derive(Default)]
pub struct Imported {
    pub written: u64,
    pub unchanged: u64,
    /// Lines whose lock or ban had ended by the server's clock.
    pub ended: u64,
}

/// A parsed line: its number and the ban it asks for.
type Line = (usize, BanSpec);

/// The bans `text` lists, each with its line number.
fn parse(text: &str, format: Format, d: &Defaults) -> anyhow::Result<Vec<Line>> {
    let format = match format {
        Format::Auto => {
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'));
            match first {
                Some(l) if l.starts_with('{') => Format::Jsonl,
                Some(l) if l.starts_with("type,") || l.starts_with("context,") => Format::Csv,
                _ => Format::List,
            }
        }
        f => f,
    };
    let mut lines = Vec::new();
    let mut take = |n: usize, rec: Record| -> anyhow::Result<()> {
        lines.push((
            n,
            spec(rec, d).map_err(|e| anyhow::anyhow!("line {n}: {e}"))?,
        ));
        Ok(())
    };
    match format {
        Format::Jsonl | Format::Auto => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let rec: Record = serde_json::from_str(line)
                    .map_err(|e| anyhow::anyhow!("line {}: not a ban: {e}", i + 1))?;
                take(i + 1, rec)?;
            }
        }
        Format::Csv => {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let headers = reader
                .headers()
                .map_err(|e| anyhow::anyhow!("line 1: not a CSV header: {e}"))?
                .clone();
            for row in reader.records() {
                let row = row.map_err(|e| {
                    let n = e.position().map_or(0, |p| p.line());
                    anyhow::anyhow!("line {n}: not a ban: {e}")
                })?;
                let n = row
                    .position()
                    .and_then(|p| usize::try_from(p.line()).ok())
                    .unwrap_or(0);
                let rec: Record = row
                    .deserialize(Some(&headers))
                    .map_err(|e| anyhow::anyhow!("line {n}: not a ban: {e}"))?;
                take(n, rec)?;
            }
        }
        Format::List => {
            for (i, line) in text.lines().enumerate() {
                let entry = line.split('#').next().unwrap_or("").trim();
                if entry.is_empty() {
                    continue;
                }
                take(
                    i + 1,
                    Record {
                        kind: "range".into(),
                        ip: entry.to_owned(),
                        ..Record::default()
                    },
                )?;
            }
        }
    }
    Ok(lines)
}

/// The lifetime `d` gives, if it gives one.
pub fn lifetime(d: &Defaults) -> Option<Lifetime> {
    match (d.duration, d.permanent) {
        (Some(d), _) => Some(Lifetime::Duration(prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        })),
        (None, true) => Some(Lifetime::Permanent(true)),
        (None, false) => None,
    }
}

/// The ban a record asks for.
fn spec(rec: Record, d: &Defaults) -> Result<BanSpec, String> {
    let key = |kind: proto::KeyKind| {
        Target::Key(proto::Key {
            kind: kind.into(),
            user_id: rec.user_id.clone(),
            ip: rec.ip.clone(),
            session_id: rec.session_id.clone(),
            password: String::new(),
        })
    };
    let target = match rec.kind.as_str() {
        "range" => Target::Range(rec.ip.clone()),
        "ip" if rec.ip.contains('/') => Target::Range(rec.ip.clone()),
        "ip" => key(proto::KeyKind::Ip),
        "user" => key(proto::KeyKind::User),
        "user+ip" => key(proto::KeyKind::UserIp),
        "session" => key(proto::KeyKind::Session),
        "password" => return Err(
            "password bans cannot be imported: they are named by the password, which no file holds"
                .into(),
        ),
        other => {
            return Err(format!(
                "kind {other:?}: use user, ip, range, user+ip or session"
            ));
        }
    };
    let lifetime = match (&rec.until, rec.permanent) {
        (_, true) => Lifetime::Permanent(true),
        (Some(until), false) => {
            let at = humantime::parse_rfc3339_weak(until)
                .map_err(|e| format!("until {until:?}: {e}"))?;
            let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            Lifetime::Until(prost_types::Timestamp {
                seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nanos: 0,
            })
        }
        (None, false) => {
            lifetime(d).ok_or("no until or permanent: give --duration or --permanent")?
        }
    };
    let reason = match (rec.reason.trim(), &d.reason) {
        ("", Some(given)) => given.clone(),
        ("", None) if rec.record == "lock" => format!("lock of rule {}, imported", rec.rule),
        ("", None) => return Err("no reason: give one per line or --reason".into()),
        (own, _) => own.to_owned(),
    };
    let context = match rec.context.as_str() {
        "" if rec.record.is_empty() => d.context.clone(),
        "*" | "" => String::new(),
        own => own.to_owned(),
    };
    Ok(BanSpec {
        context,
        target: Some(target),
        lifetime: Some(lifetime),
        reason,
        force: d.force,
    })
}

/// The line a server error about `bans[i]` of `batch` is about, in its
/// message.
fn located(e: tonic::Status, batch: &[Line]) -> anyhow::Error {
    let at = e
        .message()
        .strip_prefix("bans[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok())
        .and_then(|i| batch.get(i));
    match at {
        Some((n, _)) => anyhow::anyhow!("line {n}: {}; nothing imported", e.message()),
        None => anyhow::anyhow!("{}: {}", e.code(), e.message()),
    }
}

pub async fn import<S>(
    client: &mut Client<S>,
    actor: &str,
    file: &PathBuf,
    format: Format,
    defaults: &Defaults,
    dry_run: bool,
) -> anyhow::Result<Imported>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        for line in std::io::stdin().lock().lines() {
            text += &line?;
            text.push('\n');
        }
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
    };
    let lines = parse(&text, format, defaults)?;
    let request = |batch: &[Line], validate_only| proto::ImportBansRequest {
        actor_user_id: actor.to_owned(),
        bans: batch.iter().map(|(_, s)| s.clone()).collect(),
        validate_only,
    };
    let mut checked = Imported::default();
    for batch in lines.chunks(BATCH) {
        let r = client
            .import_bans(request(batch, true))
            .await
            .map_err(|e| located(e, batch))?
            .into_inner();
        checked.ended += r.ended;
    }
    if dry_run {
        return Ok(checked);
    }
    let mut done = Imported::default();
    for batch in lines.chunks(BATCH) {
        let r = client
            .import_bans(request(batch, false))
            .await
            .map_err(|e| located(e, batch))?
            .into_inner();
        done.written += r.written;
        done.unchanged += r.unchanged;
        done.ended += r.ended;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            context: String::new(),
            duration: Some(Duration::from_secs(3600)),
            permanent: false,
            reason: Some("blocklist".into()),
            force: false,
        }
    }

    #[test]
    fn a_list_bans_each_entry_and_skips_comments() {
        let lines = parse(
            "# blocklist\n203.0.113.0/24\n\n198.51.100.7  # one host\n",
            Format::Auto,
            &defaults(),
        )
        .unwrap();
        let numbers: Vec<usize> = lines.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [2, 4]);
        assert_eq!(
            lines[1].1.target,
            Some(Target::Range("198.51.100.7".into()))
        );
        assert_eq!(lines[1].1.reason, "blocklist");
    }

    #[test]
    fn a_malformed_line_is_named_by_its_number() {
        let text = "{\"type\":\"ban\",\"kind\":\"user\",\"user_id\":\"m\",\"permanent\":true,\"reason\":\"r\"}\n{\"kind\":\n";
        let err = parse(text, Format::Auto, &defaults()).unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        let csv = "type,context,rule,kind,user_id,ip,session_id,until,permanent,reason,actor\n\
                   ban,*,ban,user,m,,,,true,r,admin\n\
                   ban,*,ban,planet,m,,,,true,r,admin\n";
        let err = parse(csv, Format::Auto, &defaults()).unwrap_err();
        assert!(err.to_string().starts_with("line 3:"), "{err}");
    }
}
