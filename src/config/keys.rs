//! The callers' credentials: API keys from auth.keys and auth.keys_file,
//! certificate names from auth.certs, built into the `Authenticator`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::schema::{ApiKeyConfig, Config};
use super::{ConfigError, invalid};
use crate::grpc::auth::{Authenticator, Credential, KeyHash};

/// The layout of auth.keys_file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ApiKeyConfig>,
}

impl Config {
    /// The credentials callers must present, read from auth.keys and
    /// auth.keys_file. Refuses to serve a non-loopback address without any
    /// unless auth.allow_anonymous says so.
    pub fn authenticator(&self) -> Result<Authenticator, ConfigError> {
        let mut entries: Vec<(String, ApiKeyConfig)> = self
            .auth
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("auth.keys[{i}]"), k.clone()))
            .collect();
        if let Some(path) = &self.auth.keys_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("auth.keys_file", format!("{}: {e}", path.display())))?;
            let file: KeysFile = toml::from_str(&text)
                .map_err(|e| invalid("auth.keys_file", format!("{}: {e}", path.display())))?;
            entries.extend(
                file.keys
                    .into_iter()
                    .enumerate()
                    .map(|(i, k)| (format!("auth.keys_file {} keys[{i}]", path.display()), k)),
            );
        }
        let mut names = BTreeSet::new();
        let mut keys = Vec::new();
        for (key, k) in entries {
            if k.name.is_empty() || k.name.len() > 64 {
                return Err(invalid(format!("{key}.name"), "must be 1 to 64 bytes"));
            }
            if !names.insert(k.name.clone()) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("duplicate key name {:?}", k.name),
                ));
            }
            if k.roles.is_empty() {
                return Err(invalid(
                    format!("{key}.roles"),
                    "needs check, admin or both",
                ));
            }
            let hash = KeyHash::parse(&k.hash).map_err(|p| invalid(format!("{key}.hash"), p))?;
            keys.push(Credential {
                name: k.name,
                hash,
                roles: k.roles.into_iter().collect(),
            });
        }
        let mut certs = BTreeMap::new();
        for (i, c) in self.auth.certs.iter().enumerate() {
            if c.roles.is_empty() {
                return Err(invalid(
                    format!("auth.certs[{i}].roles"),
                    "needs check, admin or both",
                ));
            }
            if certs
                .insert(c.name.clone(), c.roles.iter().copied().collect())
                .is_some()
            {
                return Err(invalid(
                    format!("auth.certs[{i}].name"),
                    format!("duplicate name {:?}", c.name),
                ));
            }
        }
        if !certs.is_empty()
            && self
                .server
                .tls
                .as_ref()
                .and_then(|t| t.client_ca_file.as_ref())
                .is_none()
        {
            return Err(invalid(
                "auth.certs",
                "needs server.tls.client_ca_file, or no certificate could ever be verified",
            ));
        }
        let auth = Authenticator::new(keys, certs);
        if auth.is_anonymous()
            && !self.server.listen.ip().is_loopback()
            && !self.auth.allow_anonymous
        {
            return Err(invalid(
                "auth.keys",
                format!(
                    "no API keys configured and server.listen ({}) is not loopback: anyone who \
                     can reach it could unlock accounts. Add keys (authgate keygen) or set \
                     auth.allow_anonymous = true",
                    self.server.listen
                ),
            ));
        }
        if let Some(listen) = self.gateway.http.listen
            && auth.is_anonymous()
            && !listen.ip().is_loopback()
            && !self.auth.allow_anonymous
        {
            return Err(invalid(
                "auth.keys",
                format!(
                    "no API keys configured and gateway.http.listen ({listen}) is not loopback: \
                     anyone who can reach it could probe who is locked out. Add keys (authgate \
                     keygen) or set auth.allow_anonymous = true"
                ),
            ));
        }
        Ok(auth)
    }
}
