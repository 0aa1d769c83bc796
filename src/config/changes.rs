//! What a reload from one configuration to another changes, in the words
//! an operator needs: which contexts and rules come and go (and what that
//! does to their counts), which settings change, which callers gain or
//! lose access, and what waits for a restart. `authgate check-config
//! --since` prints it; a reload logs it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Config;
use crate::grpc::auth::Authenticator;

/// The sections read only at start: a change to one waits for a restart.
pub const RESTART_ONLY: [&str; 8] = [
    "server", "database", "gateway", "metrics", "log", "clock", "cleanup", "alerts",
];

/// One change a reload makes, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub what: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.what)
    }
}

fn change(key: impl Into<String>, what: impl Into<String>) -> Change {
    Change {
        key: key.into(),
        what: what.into(),
    }
}

fn object(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// The keys of two objects whose values differ, absent ones included.
fn differing(a: &Value, b: &Value) -> Vec<String> {
    let (a, b) = (object(a), object(b));
    a.keys()
        .chain(b.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// A context's rules by name.
fn rules(context: &Value) -> BTreeMap<String, Value> {
    context
        .get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r.get("name")?.as_str()?.to_owned(), r.clone())))
        .collect()
}

fn contexts(running: &Value, next: &Value, out: &mut Vec<Change>) {
    let (old, new) = (object(running), object(next));
    for name in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        let key = format!("contexts.{name}");
        let (Some(a), Some(b)) = (old.get(name), new.get(name)) else {
            out.push(if new.contains_key(name) {
                change(key, "added")
            } else {
                change(key, "removed: no longer judged; its stored state expires")
            });
            continue;
        };
        for field in differing(a, b).into_iter().filter(|f| f != "rules") {
            out.push(change(format!("{key}.{field}"), "changed"));
        }
        let (ra, rb) = (rules(a), rules(b));
        for rule in ra.keys().chain(rb.keys()).collect::<BTreeSet<_>>() {
            let key = format!("{key}.rules.{rule}");
            match (ra.get(rule), rb.get(rule)) {
                (None, _) => out.push(change(key, "added, counting from nothing")),
                (_, None) => out.push(change(key, "removed: stops judging; its counts expire")),
                (Some(x), Some(y)) if x != y => {
                    let fields = differing(x, y).join(", ");
                    // The file leaves the default mode out.
                    let mode = |r: &Value| {
                        r.get("mode")
                            .and_then(Value::as_str)
                            .unwrap_or("enforce")
                            .to_owned()
                    };
                    let what = match (mode(x).as_str(), mode(y).as_str()) {
                        ("shadow", "enforce") => format!(
                            "{fields} changed; enforced from now on, from its shadow counts"
                        ),
                        _ => format!("{fields} changed; its counts are kept"),
                    };
                    out.push(change(key, what));
                }
                _ => {}
            }
        }
    }
}

/// Callers as an operator names them: an API key's or certificate's name
/// with its roles.
fn callers(auth: &Authenticator) -> BTreeSet<String> {
    auth.callers().into_iter().collect()
}

/// What reloading `next` over `running` changes, section by section; the
/// authenticators are each one's callers, keys file read.
pub fn changes(
    running: &Config,
    running_callers: &Authenticator,
    next: &Config,
    next_callers: &Authenticator,
) -> Vec<Change> {
    let (a, b) = (
        serde_json::to_value(running).unwrap_or_default(),
        serde_json::to_value(next).unwrap_or_default(),
    );
    let mut out = Vec::new();
    for section in differing(&a, &b) {
        let (x, y) = (&a[&section], &b[&section]);
        match section.as_str() {
            s if RESTART_ONLY.contains(&s) => out.push(change(
                s,
                "changed, but read only at start: kept as running until a restart",
            )),
            "contexts" => contexts(x, y, &mut out),
            "auth" => {
                for field in differing(x, y).into_iter().filter(|f| f != "keys") {
                    out.push(change(format!("auth.{field}"), "changed"));
                }
            }
            "totp" | "passwords" => {
                for field in differing(x, y) {
                    let what = if field == "keys" || field == "active_key" {
                        "changed: the keys in force are swapped; keep every key a stored \
                         secret or count was made under until it is rewritten or expires"
                    } else {
                        "changed"
                    };
                    out.push(change(format!("{section}.{field}"), what));
                }
            }
            _ => {
                for field in differing(x, y) {
                    out.push(change(format!("{section}.{field}"), "changed"));
                }
            }
        }
    }
    let (had, has) = (callers(running_callers), callers(next_callers));
    for gone in had.difference(&has) {
        out.push(change(
            "auth",
            format!("caller {gone} removed: stops authenticating at once"),
        ));
    }
    for new in has.difference(&had) {
        out.push(change("auth", format!("caller {new} added")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> (Config, Authenticator) {
        let (config, _) = Config::from_toml(toml).expect("valid");
        let auth = config.authenticator().expect("callers");
        (config, auth)
    }

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:50051"
[[contexts.login.rules]]
name = "per_user"
key = "user"
window = "1h"
lock_after = 5
lockout = ["1h"]
[[contexts.login.rules]]
name = "tight"
key = "ip"
mode = "shadow"
window = "1h"
lock_after = 3
lockout = ["1h"]
[[contexts.old.rules]]
name = "per_user"
key = "user"
window = "1h"
lock_after = 5
lockout = ["1h"]
"#;

    #[test]
    fn a_reload_is_told_rule_by_rule() {
        let (running, running_auth) = load(BASE);
        let next = BASE
            .replace("127.0.0.1:50051", "127.0.0.1:50052")
            .replace(
                "lock_after = 5\nlockout = [\"1h\"]\n[[contexts.login.rules]]",
                "lock_after = 4\nlockout = [\"1h\"]\n[[contexts.login.rules]]",
            )
            .replace("mode = \"shadow\"", "mode = \"enforce\"")
            .replace("[[contexts.old.rules]]", "[[contexts.new.rules]]")
            + "[access]\nallowed_user_ids = [\"alice\"]\nadmin_user_ids = [\"alice\"]\n";
        let (next, next_auth) = load(&next);
        let told: Vec<String> = changes(&running, &running_auth, &next, &next_auth)
            .iter()
            .map(ToString::to_string)
            .collect();
        let expect = [
            "access.admin_user_ids: changed",
            "access.allowed_user_ids: changed",
            "contexts.login.rules.per_user: lock_after changed; its counts are kept",
            "contexts.login.rules.tight: mode changed; enforced from now on, from its shadow counts",
            "contexts.new: added",
            "contexts.old: removed: no longer judged; its stored state expires",
            "server: changed, but read only at start: kept as running until a restart",
        ];
        for line in expect {
            assert!(told.iter().any(|t| t == line), "{line:?} not in {told:#?}");
        }
        assert_eq!(told.len(), expect.len(), "{told:#?}");
        assert!(changes(&running, &running_auth, &running, &running_auth).is_empty());
    }
}
