//! Live reload: a new configuration's decisions (contexts, rules, allow and
//! admin lists, trusted and allowed networks), callers' API keys and the
//! TOTP and password keys swapped in whole, or refused whole; on SIGHUP, or
//! when the file, the keys file or a key file changes on disk. What needs
//! a restart is reported and kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::keys::{password_keys, secret_keys};
use crate::config::{Config, ConfigError, RESTART_ONLY, changes};
use crate::domain::Policy;
use crate::gateway::Mapping;
use crate::grpc::auth::Callers;
use crate::service::Gates;
use crate::telemetry::metrics;

/// Swaps configurations into a running server.
pub struct Reloader {
    gates: Gates,
    callers: Callers,
    /// The configuration in force, against which a new one is compared.
    running: Mutex<(Config, String)>,
}

/// How often the files are looked at: a Kubernetes ConfigMap or Secret
/// update arrives as a symlink swap, which no signal announces.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// What the files hold now, to tell when one changed (through symlinks, as
/// a swap of `..data` changes what the mounted path reads).
fn fingerprint(files: &[&Path]) -> Vec<u8> {
    let mut digest = Sha256::new();
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => digest.update(Sha256::digest(&bytes)),
            Err(e) => digest.update(e.kind().to_string()),
        }
    }
    digest.finalize().to_vec()
}

/// Which configuration this is, as authgate_config_info names it.
fn hash_of(config: &Config) -> String {
    hex::encode(&Sha256::digest(config.to_toml().as_bytes())[..6])
}

impl Reloader {
    pub(super) fn new(gates: Gates, callers: Callers, config: &Config) -> Reloader {
        let hash = hash_of(config);
        // Before the server runs: the recorder must be there to keep it.
        metrics::handle();
        metrics::config_in_force(&hash, None);
        Reloader {
            gates,
            callers,
            running: Mutex::new((config.clone(), hash)),
        }
    }

    /// Reloads `path` (or the implicit file) and the environment on SIGHUP
    /// and whenever the file, auth.keys_file or a TOTP or password key file
    /// changes on disk, until the task is dropped.
    pub async fn watch(self: Arc<Self>, path: Option<PathBuf>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only"))
            .ok();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        let mut seen = self.fingerprint(path.as_deref());
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let cause = tokio::select! {
                Some(()) = hangup => "SIGHUP",
                _ = tick.tick() => {
                    if self.fingerprint(path.as_deref()) == seen {
                        continue;
                    }
                    "a file changed"
                }
            };
            tracing::info!(cause, "reloading the configuration");
            self.apply(Config::load(path.as_deref()));
            seen = self.fingerprint(path.as_deref());
        }
    }

    fn fingerprint(&self, path: Option<&Path>) -> Vec<u8> {
        let implicit = Path::new(crate::config::DEFAULT_CONFIG_FILE);
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut files = vec![path.unwrap_or(implicit)];
        files.extend(running.0.auth.keys_file.as_deref());
        let key_files = running.0.totp.keys.iter().chain(&running.0.passwords.keys);
        files.extend(key_files.filter_map(|k| k.file.as_deref()));
        fingerprint(&files)
    }

    /// Puts `loaded` in force, or refuses it whole (logged naming the key,
    /// counted) and keeps what runs. Calls in flight finish under the
    /// gate they started with. Returns whether it took.
    pub fn apply(&self, loaded: Result<(Config, Policy), ConfigError>) -> bool {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let checked = loaded.and_then(|(config, policy)| {
            // The gateway's routes stay as started, so they must still name
            // contexts the new file has.
            Mapping::new(&running.0.gateway, &policy).map_err(|e| ConfigError::Invalid {
                key: "gateway.routes".into(),
                problem: format!("{e}; the running routes need it (they change on restart)"),
            })?;
            let callers = config.authenticator()?;
            let keys = secret_keys(&config).map_err(|e| ConfigError::Invalid {
                key: "totp.keys".into(),
                problem: e.to_string(),
            })?;
            let passwords = password_keys(&config).map_err(|e| ConfigError::Invalid {
                key: "passwords.keys".into(),
                problem: e.to_string(),
            })?;
            Ok((config, policy, callers, keys, passwords))
        });
        let (config, policy, callers, keys, passwords) = match checked {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running one is kept");
                metrics::config_reload(false);
                return false;
            }
        };
        for c in changes(&running.0, &self.callers.load(), &config, &callers) {
            if RESTART_ONLY.contains(&c.key.as_str()) {
                tracing::warn!(section = %c.key, "changed, but takes effect only after a restart; kept as running");
            } else {
                tracing::info!(key = %c.key, change = %c.what, "reload changes");
            }
        }
        let hash = hash_of(&config);
        self.gates
            .swap(self.gates.load().reconfigured(policy, keys, passwords));
        self.callers.swap(callers);
        metrics::config_in_force(&hash, Some(&running.1));
        metrics::config_reload(true);
        tracing::info!(hash = %hash, "configuration reloaded");
        *running = (config, hash);
        true
    }
}
