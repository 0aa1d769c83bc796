//! How the admin client prints: aligned tables for people, JSON objects
//! for scripts, and the cells both share.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::grpc::proto;

/// Rows with named columns, printed as a table or as JSON objects.
pub(super) struct Table {
    pub(super) columns: Vec<&'static str>,
    pub(super) rows: Vec<Vec<Value>>,
}

impl Table {
    pub(super) fn new(columns: &[&'static str]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(super) fn render(&self, as_json: bool) -> String {
        if as_json {
            let objects: Vec<Value> = self
                .rows
                .iter()
                .map(|row| {
                    let object: Map<String, Value> = self
                        .columns
                        .iter()
                        .map(|c| (*c).to_owned())
                        .zip(row.iter().cloned())
                        .collect();
                    Value::Object(object)
                })
                .collect();
            return serde_json::to_string_pretty(&objects).unwrap_or_default() + "\n";
        }
        let cell = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(cell).collect())
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([c.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |values: Vec<String>| {
            let padded: Vec<String> = values
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_owned() + "\n"
        };
        let mut out = line(self.columns.iter().map(|c| c.to_uppercase()).collect());
        for row in cells {
            out += &line(row);
        }
        if self.rows.is_empty() {
            out += "(none)\n";
        }
        out
    }
}

pub(super) fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let at = UNIX_EPOCH + Duration::from_secs(secs);
        Some(Value::String(
            humantime::format_rfc3339_seconds(at).to_string(),
        ))
    })
    .unwrap_or(Value::Null)
}

pub(super) fn key_text(key: Option<&proto::Key>) -> Value {
    let Some(k) = key else {
        return Value::Null;
    };
    let parts: Vec<String> = [
        ("user", &k.user_id),
        ("ip", &k.ip),
        ("session", &k.session_id),
        ("password", &k.password),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(n, v)| format!("{n}={v}"))
    .collect();
    Value::String(parts.join(" "))
}

pub(super) fn until(t: Option<&prost_types::Timestamp>, permanent: bool) -> Value {
    if permanent {
        Value::String("permanent".into())
    } else {
        time(t)
    }
}

pub(super) fn admission_table(states: Vec<proto::AdmissionState>) -> Table {
    let mut t = Table::new(&[
        "context",
        "user",
        "warnings",
        "reputation",
        "blocked_until",
        "cause",
        "in_window",
        "updates",
        "blocks",
        "refused",
    ]);
    for s in states {
        let cause = match s.block_cause() {
            proto::SpamCause::Unspecified => Value::Null,
            other => json!(
                other
                    .as_str_name()
                    .trim_start_matches("SPAM_CAUSE_")
                    .to_lowercase()
            ),
        };
        t.rows.push(vec![
            json!(s.context),
            json!(s.user_id),
            json!(s.warnings),
            json!(s.reputation),
            time(s.blocked_until.as_ref()),
            cause,
            json!(s.updates_in_window),
            json!(s.updates_total),
            json!(s.blocks_total),
            json!(s.refused_total),
        ]);
    }
    t
}
