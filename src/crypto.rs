//! Secrets at rest, under keys that never live in the database.
//!
//! TOTP secrets: AES-256-GCM. Every ciphertext names its key, so keys can be
//! rotated: new writes use the active key, old ids still decrypt.
//!
//! Password fingerprints: HMAC-SHA256, so what is stored cannot be tested
//! against a password dictionary without the key. Each key names what it
//! made, so keys can be rotated too: a fingerprint is re-keyed under every
//! configured key, and counts kept under one being retired still count.

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::domain::PasswordKey;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("no TOTP encryption key with id {0:?} is configured")]
    UnknownKey(String),
    /// The ciphertext, its nonce or the row it claims to belong to was
    /// altered, or the key with that id is not the one that sealed it.
    #[error("a stored TOTP secret failed authentication")]
    Tampered,
    #[error("key {id}: {problem}")]
    BadKey { id: String, problem: String },
}

/// A secret as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

pub struct SecretKeys {
    active: String,
    keys: BTreeMap<String, Aes256Gcm>,
    /// Per key, the HMAC that recovery codes are stored as: keyed by a
    /// key derived from it, so no key serves two algorithms.
    recovery: BTreeMap<String, Hmac<Sha256>>,
}

/// What a recovery code is stored as: the id of the key its HMAC is
/// under, and the HMAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeHash {
    pub key_id: String,
    pub hmac: [u8; 32],
}

/// Separates the recovery codes' HMAC key from the key's use for AES.
const RECOVERY_KEY_LABEL: &[u8] = b"authgate recovery codes v1";

/// 32 bytes from key material: raw bytes, or base64 text of them.
pub fn parse_key(id: &str, material: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let bad = |problem: &str| CryptoError::BadKey {
        id: id.to_owned(),
        problem: problem.to_owned(),
    };
    let decoded = if material.len() == 32 {
        Zeroizing::new(material.to_vec())
    } else {
        let text =
            std::str::from_utf8(material).map_err(|_| bad("is neither 32 raw bytes nor base64"))?;
        Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| bad("is neither 32 raw bytes nor base64"))?,
        )
    };
    let key: [u8; 32] = decoded
        .as_slice()
        .try_into()
        .map_err(|_| bad("must be 32 bytes (256 bits)"))?;
    Ok(Zeroizing::new(key))
}

/// A fresh random key, base64.
pub fn generate_key() -> Zeroizing<String> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    Zeroizing::new(STANDARD.encode(key.as_ref()))
}

/// Reads the key file at `path`, creating it (mode 0600, a fresh random
/// key) when it does not exist. Returns the key and whether it was created.
///
/// The key is written whole to a file of its own and only then linked in
/// place: a process killed halfway leaves no empty key file that every
/// later start would refuse, and of two processes starting together one
/// links first and the other reads its key.
pub fn key_file(id: &str, path: &Path) -> Result<(Zeroizing<[u8; 32]>, bool), std::io::Error> {
    let mut created = false;
    if !path.exists() {
        use std::io::Write;
        let draft = draft_of(path);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&draft)?;
        file.write_all(generate_key().as_bytes())?;
        file.sync_all()?;
        let linked = std::fs::hard_link(&draft, path);
        std::fs::remove_file(&draft)?;
        match linked {
            Ok(()) => created = true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let material = Zeroizing::new(std::fs::read(path)?);
    let key = parse_key(id, &material)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    Ok((key, created))
}

impl SecretKeys {
    /// `keys` by id; `active` seals new secrets and must be among them.
    pub fn new(
        keys: Vec<(String, Zeroizing<[u8; 32]>)>,
        active: &str,
    ) -> Result<Self, CryptoError> {
        let recovery = keys
            .iter()
            .map(|(id, k)| {
                let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(k.as_ref())
                    .expect("HMAC takes a key of any length");
                derive.update(RECOVERY_KEY_LABEL);
                let derived: Zeroizing<[u8; 32]> =
                    Zeroizing::new(derive.finalize().into_bytes().into());
                let mac = <Hmac<Sha256> as Mac>::new_from_slice(derived.as_ref())
                    .expect("HMAC takes a key of any length");
                (id.clone(), mac)
            })
            .collect();
        let keys: BTreeMap<String, Aes256Gcm> = keys
            .into_iter()
            .map(|(id, k)| (id, Aes256Gcm::new(&Key::<Aes256Gcm>::from(*k))))
            .collect();
        if !keys.contains_key(active) {
            return Err(CryptoError::UnknownKey(active.to_owned()));
        }
        Ok(SecretKeys {
            active: active.to_owned(),
            keys,
            recovery,
        })
    }

    /// `code` of `user` as stored, under the key `id`.
    fn code_hash(&self, id: &str, user: &[u8], code: &str) -> Option<CodeHash> {
        let mut mac = self.recovery.get(id)?.clone();
        // The user's id first, length-prefixed: a code is worth nothing on
        // another user's row.
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user);
        mac.update(code.as_bytes());
        Some(CodeHash {
            key_id: id.to_owned(),
            hmac: mac.finalize().into_bytes().into(),
        })
    }

    /// What a new recovery code of `user` is stored as: its HMAC under the
    /// active key.
    pub fn hash_code(&self, user: &[u8], code: &str) -> CodeHash {
        self.code_hash(&self.active, user, code)
            .expect("the active key is among the keys")
    }

    /// What `code` of `user` may be stored as: under each key, so codes
    /// issued before a rotation still count.
    pub fn code_hashes(&self, user: &[u8], code: &str) -> Vec<CodeHash> {
        self.recovery
            .keys()
            .filter_map(|id| self.code_hash(id, user, code))
            .collect()
    }

    /// Encrypts `secret` for the row named by `aad` (the user id), so a
    /// ciphertext copied onto another user's row does not decrypt.
    pub fn seal(&self, aad: &[u8], secret: &[u8]) -> Sealed {
        let cipher = &self.keys[&self.active];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(&nonce, Payload { msg: secret, aad })
            .expect("AES-GCM encryption of a short secret cannot fail");
        Sealed {
            key_id: self.active.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.key_id.clone()))?;
        let nonce: [u8; 12] = sealed
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Tampered)?;
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Tampered)
    }
}

/// Where `key_file` writes a key before it links it at `path`.
fn draft_of(path: &Path) -> std::path::PathBuf {
    format!("{}.{}.draft", path.display(), std::process::id()).into()
}

/// A key and its id.
pub type NamedKey = (String, Zeroizing<[u8; 32]>);

/// The keys that re-key password fingerprints, in configured order.
pub struct PasswordKeys {
    keys: Vec<(String, Hmac<Sha256>)>,
}

impl PasswordKeys {
    pub fn new(keys: Vec<NamedKey>) -> Self {
        PasswordKeys {
            keys: keys
                .into_iter()
                .map(|(id, k)| {
                    let mac = <Hmac<Sha256> as Mac>::new_from_slice(k.as_ref())
                        .expect("HMAC takes a key of any length");
                    (id, mac)
                })
                .collect(),
        }
    }

    /// The keys `fingerprint` is counted under: one per configured key.
    pub fn rekey(&self, fingerprint: &[u8; 32]) -> Vec<PasswordKey> {
        self.keys
            .iter()
            .map(|(id, mac)| {
                let mut mac = mac.clone();
                mac.update(fingerprint);
                let hmac: [u8; 32] = mac.finalize().into_bytes().into();
                PasswordKey::new(id, &hmac)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn key(byte: u8) -> Zeroizing<[u8; 32]> {
        Zeroizing::new([byte; 32])
    }

    #[test]
    fn seals_and_opens_bound_to_the_user() {
        let keys = SecretKeys::new(vec![("k1".into(), key(1))], "k1").unwrap();
        let sealed = keys.seal(b"alice", b"the secret");
        assert!(!sealed.ciphertext.windows(10).any(|w| w == b"the secret"));
        assert_eq!(
            keys.open(b"alice", &sealed).unwrap().as_slice(),
            b"the secret"
        );
        assert!(matches!(
            keys.open(b"mallory", &sealed),
            Err(CryptoError::Tampered)
        ));
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(matches!(
            keys.open(b"alice", &flipped),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn rotation_keeps_old_ciphertexts_readable() {
        let old = SecretKeys::new(vec![("k1".into(), key(1))], "k1").unwrap();
        let sealed = old.seal(b"u", b"s");
        let rotated =
            SecretKeys::new(vec![("k1".into(), key(1)), ("k2".into(), key(2))], "k2").unwrap();
        assert_eq!(rotated.open(b"u", &sealed).unwrap().as_slice(), b"s");
        assert_eq!(rotated.seal(b"u", b"s").key_id, "k2");
        let retired = SecretKeys::new(vec![("k2".into(), key(2))], "k2").unwrap();
        assert!(matches!(
            retired.open(b"u", &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn fingerprints_are_rekeyed_under_every_key() {
        let fingerprint: [u8; 32] = Sha256::digest(b"Summer2024!").into();
        let one = PasswordKeys::new(vec![("p1".into(), key(1))]);
        let both = PasswordKeys::new(vec![("p1".into(), key(1)), ("p2".into(), key(2))]);
        let keys = both.rekey(&fingerprint);
        assert_eq!(keys[0], one.rekey(&fingerprint)[0], "stable under one key");
        assert!(keys[0].as_str().starts_with("p1:"));
        assert!(keys[1].as_str().starts_with("p2:"));
        assert_ne!(keys[0].as_str()[3..], keys[1].as_str()[3..]);
        let raw = hex::encode(fingerprint);
        assert!(keys.iter().all(|k| !k.as_str().contains(&raw)));
        // HMAC-SHA256 as another implementation computes it (Python:
        // hmac.new(b"Jefe" + bytes(28), b"a" * 32, hashlib.sha256)).
        let jefe = PasswordKeys::new(vec![("j".into(), {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(b"Jefe");
            Zeroizing::new(k)
        })]);
        assert_eq!(
            jefe.rekey(&[b'a'; 32])[0].as_str(),
            "j:364f5c3a7b63017de4919a0b5a5aef5ada18770895ce2aec3bfdfecc8b06bf7b"
        );
        assert_eq!(keys[0].shown().len(), "p1:".len() + 4);
    }

    #[test]
    fn keys_parse_from_raw_or_base64_and_files_are_private() {
        assert!(parse_key("k", &[7u8; 32]).is_ok());
        assert!(parse_key("k", generate_key().as_bytes()).is_ok());
        assert!(parse_key("k", b"short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let (first, created) = key_file("k", &path).unwrap();
        assert!(created);
        let (again, created) = key_file("k", &path).unwrap();
        assert!(!created);
        // A draft left by a process killed while writing it stands in the
        // way of nothing.
        let fresh = dir.path().join("fresh");
        std::fs::write(draft_of(&fresh), b"half a k").unwrap();
        let (_, created) = key_file("k", &fresh).unwrap();
        assert!(created);
        assert!(!draft_of(&fresh).exists());
        assert_eq!(first.as_ref(), again.as_ref());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
