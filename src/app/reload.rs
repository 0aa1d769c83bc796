//! Live reload: a new configuration's decisions (contexts, rules, allow and
//! admin lists, trusted and allowed networks) swapped in whole, or refused
//! whole. What needs a restart is reported and kept.

use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};
use crate::domain::Policy;
use crate::gateway::Mapping;
use crate::service::Gates;
use crate::telemetry::metrics;

/// Swaps configurations into a running server.
pub struct Reloader {
    gates: Gates,
    /// The configuration in force, against which a new one is compared.
    running: Mutex<(Config, String)>,
}

/// Which configuration this is, as authgate_config_info names it.
fn hash_of(config: &Config) -> String {
    hex::encode(&Sha256::digest(config.to_toml().as_bytes())[..6])
}

impl Reloader {
    pub(super) fn new(gates: Gates, config: &Config) -> Reloader {
        let hash = hash_of(config);
        // Before the server runs: the recorder must be there to keep it.
        metrics::handle();
        metrics::config_in_force(&hash, None);
        Reloader {
            gates,
            running: Mutex::new((config.clone(), hash)),
        }
    }

    /// Puts `loaded` in force, or refuses it whole (logged naming the key,
    /// counted) and keeps what runs. Calls in flight finish under the
    /// gate they started with. Returns whether it took.
    pub fn apply(&self, loaded: Result<(Config, Policy), ConfigError>) -> bool {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let checked = loaded.and_then(|(config, policy)| {
            // The gateway's routes stay as started, so they must still name
            // contexts the new file has.
            Mapping::new(&running.0.gateway, &policy)
                .map_err(|e| ConfigError::Invalid {
                    key: "gateway.routes".into(),
                    problem: format!("{e}; the running routes need it (they change on restart)"),
                })
                .map(|_| (config, policy))
        });
        let (config, policy) = match checked {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running one is kept");
                metrics::config_reload(false);
                return false;
            }
        };
        for section in restart_only(&running.0, &config) {
            tracing::warn!(
                section,
                "changed, but takes effect only after a restart; kept as running"
            );
        }
        let hash = hash_of(&config);
        self.gates.swap(self.gates.load().with_policy(policy));
        metrics::config_in_force(&hash, Some(&running.1));
        metrics::config_reload(true);
        tracing::info!(hash = %hash, "configuration reloaded");
        *running = (config, hash);
        true
    }
}

/// The sections of `next` that differ from `running` but are read only at
/// start: listeners, the database and its pool, callers' keys, the
/// gateway, TOTP and password keys, clocks and logs. Compared as they
/// render, so a secret changed in place (rendered REDACTED) goes unseen.
fn restart_only(running: &Config, next: &Config) -> Vec<&'static str> {
    fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_string(a).ok() == serde_json::to_string(b).ok()
    }
    [
        ("server", same(&running.server, &next.server)),
        ("database", same(&running.database, &next.database)),
        ("auth", same(&running.auth, &next.auth)),
        ("gateway", same(&running.gateway, &next.gateway)),
        ("metrics", same(&running.metrics, &next.metrics)),
        ("log", same(&running.log, &next.log)),
        ("clock", same(&running.clock, &next.clock)),
        ("cleanup", same(&running.cleanup, &next.cleanup)),
        ("alerts", same(&running.alerts, &next.alerts)),
        ("passwords", same(&running.passwords, &next.passwords)),
        ("totp.keys", same(&running.totp.keys, &next.totp.keys)),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(name, _)| name)
    .collect()
}
