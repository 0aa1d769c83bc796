//! The keys the server starts with: TOTP encryption and password
//! fingerprint keys, configured or, for the embedded default, generated.

use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::StartError;
use crate::config::{Config, SecretKeyConfig};
use crate::crypto::{self, PasswordKeys, SecretKeys};
use crate::store;

/// The TOTP encryption keys: the configured ones, or for the embedded
/// default a key file generated beside the SQLite database so `cargo run`
/// works. `None` (TOTP disabled) for Postgres without keys.
pub(super) fn secret_keys(config: &Config) -> Result<Option<Arc<SecretKeys>>, StartError> {
    let t = &config.totp;
    if t.keys.is_empty() {
        let Some(db) = store::sqlite_file(config.database.url.expose()) else {
            tracing::warn!(
                "no totp.keys configured: TOTP enrollment and verification are disabled"
            );
            return Ok(None);
        };
        let key = local_key(&db, "totp-key", "totp.keys")?;
        return Ok(Some(Arc::new(SecretKeys::new(
            vec![(LOCAL_KEY.into(), key)],
            LOCAL_KEY,
        )?)));
    }
    let keys = configured_keys(&t.keys)?;
    let active = t
        .active_key
        .clone()
        .or_else(|| t.keys.last().map(|k| k.id.clone()))
        .unwrap_or_default();
    Ok(Some(Arc::new(SecretKeys::new(keys, &active)?)))
}

/// The key in the file `<db>.<suffix>` beside the SQLite database `db`,
/// generated (0600) the first time, so that `cargo run` works without
/// configuring `setting`.
fn local_key(
    db: &std::path::Path,
    suffix: &str,
    setting: &str,
) -> Result<Zeroizing<[u8; 32]>, StartError> {
    let path = PathBuf::from(format!("{}.{suffix}", db.display()));
    let (key, created) =
        crypto::key_file(LOCAL_KEY, &path).map_err(|source| StartError::KeyFile {
            path: path.clone(),
            source,
        })?;
    if created {
        tracing::warn!(
            path = %path.display(),
            setting,
            "generated a key beside the database; back it up with the database or configure the \
             setting"
        );
    }
    Ok(key)
}

/// Keys as configured: each from its file or inline.
fn configured_keys(configured: &[SecretKeyConfig]) -> Result<Vec<crypto::NamedKey>, StartError> {
    let mut keys = Vec::new();
    for k in configured {
        let material = match (&k.file, &k.key) {
            (Some(path), _) => {
                Zeroizing::new(std::fs::read(path).map_err(|source| StartError::KeyFile {
                    path: path.clone(),
                    source,
                })?)
            }
            (None, Some(inline)) => Zeroizing::new(inline.expose().as_bytes().to_vec()),
            (None, None) => Zeroizing::new(Vec::new()),
        };
        keys.push((k.id.clone(), crypto::parse_key(&k.id, &material)?));
    }
    Ok(keys)
}

/// The keys that re-key password fingerprints: the configured ones, or for
/// the embedded default a key file generated beside the SQLite database
/// (for an in-memory one, a key as short-lived as its counts). `None`
/// (fingerprints ignored) for Postgres without keys, which the
/// configuration accepts only where no context has a password rule.
pub(super) fn password_keys(config: &Config) -> Result<Option<Arc<PasswordKeys>>, StartError> {
    let url = config.database.url.expose();
    let keys = if !config.passwords.keys.is_empty() {
        configured_keys(&config.passwords.keys)?
    } else if let Some(db) = store::sqlite_file(url) {
        vec![(
            LOCAL_KEY.into(),
            local_key(&db, "password-key", "passwords.keys")?,
        )]
    } else if url.starts_with("sqlite:") {
        vec![(
            LOCAL_KEY.into(),
            crypto::parse_key(LOCAL_KEY, crypto::generate_key().as_bytes())?,
        )]
    } else {
        return Ok(None);
    };
    Ok(Some(Arc::new(PasswordKeys::new(keys))))
}

/// The id of the generated key of the embedded default.
const LOCAL_KEY: &str = "local";
