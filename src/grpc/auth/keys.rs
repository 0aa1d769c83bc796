//! Who may call: API keys and client-certificate names, resolved once per
//! request into a typed caller with roles.
//!
//! API keys are 256 random bits, so a plain SHA-256 of the key is as good
//! as a password hash for storing them (no dictionary to attack) and cheap
//! enough to compute on every request. The configuration holds only hashes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// AccessService: checks, failures, successes, TOTP sign-in.
    Check,
    /// AdminService: unlocks, reports, the audit trail, alerts.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Check => "check",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "check" => Ok(Role::Check),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: use check or admin")),
        }
    }
}

/// The authenticated caller of one request: a service or bot, not the end
/// user it acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    roles: BTreeSet<Role>,
}

impl Caller {
    /// A proxy admitted by its address (`gateway.trusted_proxies`): it may
    /// check, through the gateway front doors only.
    pub fn trusted_proxy(addr: std::net::IpAddr) -> Caller {
        Caller {
            name: format!("trusted proxy {addr}"),
            roles: BTreeSet::from([Role::Check]),
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// A SHA-256 hash of an API key, written `sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> Self {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let hex_digits = text
            .strip_prefix("sha256:")
            .ok_or("must start with sha256:")?;
        let mut hash = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut hash)
            .map_err(|_| "must be sha256: and 64 hex digits")?;
        Ok(KeyHash(hash))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

/// A new API key (prefixed so leaked keys are easy to find by secret
/// scanners) and its hash for the configuration.
pub fn generate_key() -> (Zeroizing<String>, KeyHash) {
    use aes_gcm::aead::{OsRng, rand_core::RngCore};
    let mut bytes = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    let key = Zeroizing::new(format!("ag_{}", URL_SAFE_NO_PAD.encode(bytes.as_ref())));
    let hash = KeyHash::of(&key);
    (key, hash)
}

/// One configured API key.
pub struct Credential {
    pub name: String,
    pub hash: KeyHash,
    pub roles: BTreeSet<Role>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credential: send `authorization: Bearer <api key>` metadata")]
    Missing,
    #[error("the authorization metadata is not `Bearer <api key>`")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
}

impl AuthError {
    /// The `reason` label of authgate_auth_rejected_total.
    pub fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Unknown => "unknown_key",
        }
    }
}

/// Resolves credentials to callers.
pub struct Authenticator {
    keys: Vec<Credential>,
    /// Client-certificate names (subject CN or DNS SAN) and their roles.
    certs: BTreeMap<String, BTreeSet<Role>>,
}

impl Authenticator {
    pub fn new(keys: Vec<Credential>, certs: BTreeMap<String, BTreeSet<Role>>) -> Self {
        Authenticator { keys, certs }
    }

    /// Every caller as an operator names it: an API key's or a
    /// certificate's name, with its roles.
    pub fn callers(&self) -> Vec<String> {
        let roles = |r: &BTreeSet<Role>| {
            r.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        self.keys
            .iter()
            .map(|k| format!("key {:?} ({})", k.name, roles(&k.roles)))
            .chain(
                self.certs
                    .iter()
                    .map(|(name, r)| format!("cert {name:?} ({})", roles(r))),
            )
            .collect()
    }

    /// No credential is configured: every call is let through as the
    /// anonymous caller (the embedded default on loopback, or an explicit
    /// `auth.allow_anonymous`).
    pub fn is_anonymous(&self) -> bool {
        self.keys.is_empty() && self.certs.is_empty()
    }

    /// The caller behind `authorization` metadata (if sent) or, failing
    /// that, a verified client certificate's names.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        cert_names: &[String],
    ) -> Result<Caller, AuthError> {
        if self.is_anonymous() {
            return Ok(Caller {
                name: "anonymous".into(),
                roles: [Role::Check, Role::Admin].into(),
            });
        }
        if let Some(value) = authorization {
            let key = value
                .strip_prefix(b"Bearer ")
                .and_then(|k| std::str::from_utf8(k).ok())
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .ok_or(AuthError::Malformed)?;
            let presented = KeyHash::of(key);
            // Every configured hash is compared, in constant time, so the
            // answer's timing says nothing about which key came close.
            let mut found = None;
            for credential in &self.keys {
                if bool::from(credential.hash.0.ct_eq(&presented.0)) {
                    found = Some(credential);
                }
            }
            let credential = found.ok_or(AuthError::Unknown)?;
            return Ok(Caller {
                name: credential.name.clone(),
                roles: credential.roles.clone(),
            });
        }
        cert_names
            .iter()
            .find_map(|name| {
                self.certs.get(name).map(|roles| Caller {
                    name: format!("cert:{name}"),
                    roles: roles.clone(),
                })
            })
            .ok_or(AuthError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> (Authenticator, String) {
        let (key, hash) = generate_key();
        let keys = vec![Credential {
            name: "bot".into(),
            hash,
            roles: [Role::Check].into(),
        }];
        let certs = [("ops.example".to_owned(), [Role::Admin].into())].into();
        (Authenticator::new(keys, certs), key.to_string())
    }

    #[test]
    fn keys_resolve_to_their_caller_and_nothing_else_does() {
        let (auth, key) = authenticator();
        let caller = auth
            .authenticate(Some(format!("Bearer {key}").as_bytes()), &[])
            .unwrap();
        assert_eq!(caller.name, "bot");
        assert!(caller.has(Role::Check) && !caller.has(Role::Admin));
        let wrong = format!("Bearer {key}x");
        assert_eq!(
            auth.authenticate(Some(wrong.as_bytes()), &[]),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            auth.authenticate(Some(key.as_bytes()), &[]),
            Err(AuthError::Malformed)
        );
        assert_eq!(auth.authenticate(None, &[]), Err(AuthError::Missing));
    }

    #[test]
    fn a_mapped_certificate_name_is_a_caller_unless_a_key_is_sent() {
        let (auth, _) = authenticator();
        let names = ["other".to_owned(), "ops.example".to_owned()];
        let caller = auth.authenticate(None, &names).unwrap();
        assert_eq!(caller.name, "cert:ops.example");
        assert!(caller.has(Role::Admin));
        assert_eq!(
            auth.authenticate(None, &["stranger".to_owned()]),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(Some(b"Bearer nope"), &names),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn hashes_round_trip_and_reject_other_spellings() {
        let (key, hash) = generate_key();
        assert!(key.starts_with("ag_") && key.len() == 46);
        assert_eq!(KeyHash::parse(&hash.to_string()).unwrap(), hash);
        assert!(KeyHash::parse("sha256:abc").is_err());
        assert!(KeyHash::parse(&hash.to_string().replace("sha256:", "md5:")).is_err());
        // The known SHA-256 of "abc".
        assert_eq!(
            KeyHash::of("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn without_credentials_everyone_is_anonymous() {
        let auth = Authenticator::new(Vec::new(), BTreeMap::new());
        let caller = auth.authenticate(None, &[]).unwrap();
        assert_eq!(caller.name, "anonymous");
        assert!(caller.has(Role::Admin));
    }
}
