//! Loading: the defaults, then one TOML file, then the `AUTHGATE_*`
//! variables that name keys; warnings for those that nearly do; the
//! effective configuration printed back as TOML.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use super::schema::Config;
use super::{ConfigError, invalid};
use crate::domain::Policy;

const ENV_PREFIX: &str = "AUTHGATE_";

/// The top-level tables of the configuration, as the defaults serialize.
fn sections() -> BTreeSet<String> {
    match toml::Table::try_from(Config::default()) {
        Ok(table) => table.keys().cloned().collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The section a key (`server.listen`) belongs to.
fn section_of(key: &str) -> &str {
    key.split('.').next().unwrap_or_default()
}

/// An `AUTHGATE_*` variable that sets no configuration key and looks as if
/// it was meant to: it starts with a section's name but lacks the `__`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    pub variable: String,
    /// The variable it probably meant.
    pub meant: String,
}

/// The `AUTHGATE_*` variables of `vars` that were ignored although they
/// resemble configuration keys. Only names are looked at: values may be
/// secrets.
pub fn near_misses(vars: impl Iterator<Item = String>) -> Vec<NearMiss> {
    let sections = sections();
    vars.filter_map(|variable| {
        let rest = variable.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
        if rest.contains("__") {
            return None;
        }
        let section = sections.iter().find(|s| {
            rest.strip_prefix(s.as_str())
                .is_some_and(|tail| tail.len() > 1 && tail.starts_with('_'))
        })?;
        let meant = format!(
            "{ENV_PREFIX}{}__{}",
            section.to_ascii_uppercase(),
            rest[section.len() + 1..].to_ascii_uppercase()
        );
        Some(NearMiss { variable, meant })
    })
    .collect()
}

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "authgate.toml";

impl Config {
    /// Loads `path` (or ./authgate.toml when present), then the environment,
    /// and validates the result.
    pub fn load(path: Option<&Path>) -> Result<(Config, Policy), ConfigError> {
        let mut figment = Figment::new();
        let implicit = PathBuf::from(DEFAULT_CONFIG_FILE);
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(invalid(
                        "--config",
                        format!("{} does not exist", p.display()),
                    ));
                }
                figment = figment.merge(Toml::file_exact(p));
            }
            None if implicit.exists() => figment = figment.merge(Toml::file_exact(implicit)),
            None => {}
        }
        Self::from_figment(figment.merge(Self::env()))
    }

    /// The `AUTHGATE_<SECTION>__<KEY>` variables, for the sections this
    /// configuration has. Any other `AUTHGATE_*` variable is not a key and
    /// is left alone: Kubernetes gives every pod `AUTHGATE_SERVICE_HOST`,
    /// `AUTHGATE_PORT` and the like beside a Service named authgate, the
    /// admin CLI reads `AUTHGATE_ADDR`, and `AUTHGATE_CONFIG` names the file.
    /// A misspelt key inside a section is still an error, as in the file.
    fn env() -> Env {
        let sections = sections();
        Env::prefixed(ENV_PREFIX)
            .split("__")
            .filter(move |key| sections.contains(&section_of(key.as_str()).to_ascii_lowercase()))
    }

    pub fn from_figment(figment: Figment) -> Result<(Config, Policy), ConfigError> {
        let config: Config = figment.extract().map_err(|mut e| {
            // Rewriting the first error is enough: only deserialization
            // errors have a path, and one comes alone, as figment reports the
            // providers' errors without deserializing.
            e.path = bracket_indices(&e.path);
            Box::new(e)
        })?;
        let policy = config.policy()?;
        Ok((config, policy))
    }

    /// Parses a TOML document on top of the defaults; for tests and tools.
    pub fn from_toml(text: &str) -> Result<(Config, Policy), ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)))
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// figment names an array element by its index as one more key
/// (`rules.0.key`); the file, and every other message, write `rules[0].key`.
fn bracket_indices(path: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for segment in path {
        match keys.last_mut() {
            Some(key) if segment.parse::<usize>().is_ok() => {
                key.push_str(&format!("[{segment}]"));
            }
            _ => keys.push(segment.clone()),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::domain::UserId;

    fn err(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[server]\nlisten = \"nope\"").contains("server.listen"));
        assert!(err("[database]\nurl = \"mysql://x\"").contains("database.url"));
        assert!(err("[cleanup]\ninterval = \"soon\"").contains("cleanup.interval"));
        let bad_rule = r#"
            [[contexts.login.rules]]
            name = "r"
            key = "mac"
            window = "1m"
            lock_after = 1
            lockout = ["1m"]
        "#;
        assert!(err(bad_rule).contains("contexts.login.rules[0].key"));
        let bad_tier = bad_rule
            .replace("\"mac\"", "\"ip\"")
            .replace("[\"1m\"]", "[\"forever\"]");
        assert!(err(&bad_tier).contains("contexts.login.rules[0].lockout[0]"));
        assert!(
            err("[access]\nallowed_user_ids = [\"a\"]\nadmin_user_ids = [\"a\", \"b\"]")
                .contains("not there: b")
        );
        assert!(err("[server]\nlisen = \"x\"").contains("lisen"));
        assert!(
            err("[contexts.admin]\ntotp = true\nfailure_mode = \"fail_open\"")
                .contains("contexts.admin.failure_mode")
        );
        assert!(
            err("[server]\nmax_concurrent_requests = 0").contains("server.max_concurrent_requests")
        );
        for share in ["0.0", "1.5", "-1.0", "nan"] {
            assert!(
                err(&format!("[server]\nmax_connection_share = {share}"))
                    .contains("server.max_connection_share"),
                "{share}"
            );
        }
        assert!(
            err("[server]\nmax_concurrent_streams = 0").contains("server.max_concurrent_streams")
        );
        assert!(err("[server]\nmax_connections = 0").contains("server.max_connections"));
        assert!(err("[gateway.http]\ntrusted_hops = 0").contains("gateway.http.trusted_hops"));
        assert!(
            err("[gateway]\ntrusted_proxies = [\"10.0.0.0/33\"]")
                .contains("gateway.trusted_proxies")
        );
    }

    #[test]
    fn forward_auth_off_loopback_needs_keys_or_a_decision() {
        let open = "[gateway.http]\nlisten = \"0.0.0.0:9091\"";
        let (config, _) = Config::from_toml(open).unwrap();
        let refused = config.authenticator().err().map(|e| e.to_string());
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("gateway.http.listen")),
            "{refused:?}"
        );
        let (config, _) =
            Config::from_toml(&format!("{open}\n[auth]\nallow_anonymous = true")).unwrap();
        assert!(config.authenticator().is_ok());
        let (config, _) = Config::from_toml("[gateway.http]\nlisten = \"127.0.0.1:9091\"").unwrap();
        assert!(config.authenticator().is_ok());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("authgate.toml", "[server]\nlisten = \"127.0.0.1:1\"")?;
            jail.set_env("AUTHGATE_SERVER__LISTEN", "127.0.0.1:2");
            jail.set_env("AUTHGATE_ACCESS__ADMIN_USER_IDS", "[\"ops\"]");
            jail.set_env("AUTHGATE_CONFIG", "ignored.toml");
            let (config, policy) = Config::load(None).expect("loads");
            assert_eq!(config.server.listen.port(), 2);
            assert!(policy.access.is_admin(&UserId::parse("x", "ops").unwrap()));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn variables_that_are_not_keys_do_not_stop_start_up() {
        figment::Jail::expect_with(|jail| {
            // What Kubernetes sets beside a Service named authgate, and what
            // the admin CLI reads.
            for (name, value) in [
                ("AUTHGATE_SERVICE_HOST", "10.96.0.12"),
                ("AUTHGATE_SERVICE_PORT", "50051"),
                ("AUTHGATE_PORT", "tcp://10.96.0.12:50051"),
                ("AUTHGATE_PORT_50051_TCP_ADDR", "10.96.0.12"),
                ("AUTHGATE_ADDR", "http://127.0.0.1:50051"),
                ("AUTHGATE_API_KEY", "ag_secret"),
                ("AUTHGATE_ACTOR", "ops"),
                ("AUTHGATE_SERVER_LISTEN", "127.0.0.1:3"),
            ] {
                jail.set_env(name, value);
            }
            let (config, _) = Config::load(None).expect("loads");
            assert_eq!(config.server.listen, ServerConfig::default().listen);
            // A misspelt key inside a section is refused, as in the file.
            jail.set_env("AUTHGATE_SERVER__LISTNE", "127.0.0.1:2");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("listne"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn near_misses_name_the_key_they_resemble() {
        let vars = [
            "AUTHGATE_SERVER_LISTEN",
            "AUTHGATE_DATABASE_URL",
            "AUTHGATE_SERVICE_HOST",
            "AUTHGATE_SERVER__LISTEN",
            "AUTHGATE_PORT_50051_TCP",
            "HOME",
        ]
        .map(String::from);
        let misses = near_misses(vars.into_iter());
        assert_eq!(
            misses,
            [
                NearMiss {
                    variable: "AUTHGATE_SERVER_LISTEN".into(),
                    meant: "AUTHGATE_SERVER__LISTEN".into(),
                },
                NearMiss {
                    variable: "AUTHGATE_DATABASE_URL".into(),
                    meant: "AUTHGATE_DATABASE__URL".into(),
                },
            ]
        );
    }
}
