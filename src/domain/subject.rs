use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use super::{IpPrefix, Prefixes};

/// Longest identifier accepted, in bytes. Caps what an attacker-controlled
/// string can cost in the store and in every index over it.
const MAX_ID_BYTES: usize = 256;

/// A request field that failed to parse. `field` is the path a caller sees in
/// its own message (for example `subject.ip`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Checks the shape every identifier shares: non-empty, capped, and free of
/// control characters (which would corrupt logs and composite keys).
fn parse_identifier(field: &str, raw: &str) -> Result<String, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_ID_BYTES} bytes, got {}", raw.len()),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(raw.to_owned())
}

/// An identifier a caller chose, opaque to authgate: at most MAX_ID_BYTES,
/// no control characters. `Of` says what it names, so that a user id is
/// never taken for a session id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identifier<Of>(String, PhantomData<Of>);

impl<Of> Identifier<Of> {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        parse_identifier(field, raw).map(|id| Identifier(id, PhantomData))
    }

    /// A name authgate itself defines (a built-in context or its rule),
    /// well formed by construction.
    pub fn builtin(name: &'static str) -> Self {
        Identifier(name.to_owned(), PhantomData)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Stored identifiers read back through the same checks.
impl<Of> std::str::FromStr for Identifier<Of> {
    type Err = FieldError;

    fn from_str(raw: &str) -> Result<Self, FieldError> {
        Self::parse("identifier", raw)
    }
}

/// Tests name contexts and rules by literals, which are well formed.
#[cfg(test)]
impl<Of> From<&str> for Identifier<Of> {
    fn from(raw: &str) -> Self {
        Self::parse("test", raw).expect("a well-formed identifier")
    }
}

/// An identifier reads as the text it was parsed from: it is only ever
/// made by parsing, so what it derefs to is always well formed.
impl<Of> std::ops::Deref for Identifier<Of> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<Of> PartialEq<str> for Identifier<Of> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl<Of> PartialEq<&str> for Identifier<Of> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<Of> fmt::Display for Identifier<Of> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an `Identifier` names: a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OfUser {}
/// What an `Identifier` names: a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OfSession {}
/// What an `Identifier` names: a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OfContext {}
/// What an `Identifier` names: a rule of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OfRule {}

/// The caller's id for a user.
pub type UserId = Identifier<OfUser>;
/// The caller's id for a session.
pub type SessionId = Identifier<OfSession>;
/// The name of an activity with its own counters ("login", "bot", ...).
pub type ContextName = Identifier<OfContext>;
/// The name of a rule, unique within its context.
pub type RuleName = Identifier<OfRule>;

/// An IP address in canonical form, so `::ffff:10.0.0.1` and `10.0.0.1` are
/// one key and an attacker cannot double their attempts by switching notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpAddress(IpAddr);

impl IpAddress {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        parse_identifier(field, raw)?;
        raw.parse::<IpAddr>()
            .map(IpAddress::canonical)
            .map_err(|_| FieldError::new(field, "is not an IPv4 or IPv6 address"))
    }

    pub fn canonical(addr: IpAddr) -> IpAddress {
        IpAddress(addr.to_canonical())
    }
}

impl IpAddress {
    pub fn addr(self) -> IpAddr {
        self.0
    }
}

impl std::str::FromStr for IpAddress {
    type Err = FieldError;

    fn from_str(raw: &str) -> Result<Self, FieldError> {
        Self::parse("ip", raw)
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A password tried, as authgate keeps it: the id of the secret that
/// re-keyed the caller's fingerprint, ':' and the HMAC-SHA256 in lowercase
/// hex. Never the fingerprint, which is a fast hash of the password: a
/// stolen table of fingerprints is a dictionary attack away from the
/// passwords, a table of HMACs is not without the secret.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PasswordKey(String);

/// Hex digits of the HMAC that admins see: 16 bits, which thousands of
/// common passwords share, so a prefix confirms no guess.
const SHOWN_HEX: usize = 4;
/// Hex digits of the HMAC past what admins see: a stored key less these
/// is what `PasswordKey::shown` gives, which SQL can cut too.
pub const HIDDEN_HEX: usize = 64 - SHOWN_HEX;

impl PasswordKey {
    /// The key of `hmac` made under the secret `secret_id`.
    pub fn new(secret_id: &str, hmac: &[u8; 32]) -> PasswordKey {
        PasswordKey(format!("{secret_id}:{}", hex::encode(hmac)))
    }

    /// A key as stored, checked for its shape.
    pub fn parse(field: &str, raw: &str) -> Result<PasswordKey, FieldError> {
        let well_formed = raw.split_once(':').is_some_and(|(id, hex)| {
            !id.is_empty()
                && hex.len() == 64
                && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if !well_formed || raw.len() > MAX_ID_BYTES {
            return Err(FieldError::new(field, "is not a stored password key"));
        }
        Ok(PasswordKey(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What an admin is shown: the secret id and the first hex digits.
    pub fn shown(&self) -> String {
        let (id, hex) = self.0.split_once(':').unwrap_or(("", &self.0));
        format!("{id}:{}", &hex[..SHOWN_HEX.min(hex.len())])
    }
}

impl fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordKey({}…)", self.shown())
    }
}

/// The kind of key a rule counts failures on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    User,
    Ip,
    UserIp,
    Session,
    Password,
}

impl KeyKind {
    pub const ALL: [KeyKind; 5] = [
        KeyKind::User,
        KeyKind::Ip,
        KeyKind::UserIp,
        KeyKind::Session,
        KeyKind::Password,
    ];

    /// The spelling used in configuration and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::User => "user",
            KeyKind::Ip => "ip",
            KeyKind::UserIp => "user+ip",
            KeyKind::Session => "session",
            KeyKind::Password => "password",
        }
    }

    pub fn from_name(name: &str) -> Option<KeyKind> {
        KeyKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyKind {
    type Err = FieldError;

    fn from_str(raw: &str) -> Result<Self, FieldError> {
        KeyKind::from_name(raw).ok_or_else(|| FieldError::new("kind", "is not a key kind"))
    }
}

/// One key a rule counts on: the identifiers of its kind and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    User(UserId),
    Ip(IpPrefix),
    UserIp(UserId, IpPrefix),
    Session(SessionId),
    Password(PasswordKey),
}

impl Key {
    /// A key of `kind` from its identifiers as text; only the parts the kind
    /// needs are read. `token` is a session key's session id or a password
    /// key's fingerprint, as `Key::token` gives them. `field` prefixes the
    /// names of the parts in errors.
    pub fn from_parts(
        field: &str,
        kind: KeyKind,
        user: &str,
        ip: &str,
        token: &str,
    ) -> Result<Key, FieldError> {
        let user = || UserId::parse(&format!("{field}.user_id"), user);
        let ip = || IpPrefix::parse(&format!("{field}.ip"), ip);
        Ok(match kind {
            KeyKind::User => Key::User(user()?),
            KeyKind::Ip => Key::Ip(ip()?),
            KeyKind::UserIp => Key::UserIp(user()?, ip()?),
            KeyKind::Session => {
                Key::Session(SessionId::parse(&format!("{field}.session_id"), token)?)
            }
            KeyKind::Password => {
                Key::Password(PasswordKey::parse(&format!("{field}.password"), token)?)
            }
        })
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            Key::User(_) => KeyKind::User,
            Key::Ip(_) => KeyKind::Ip,
            Key::UserIp(..) => KeyKind::UserIp,
            Key::Session(_) => KeyKind::Session,
            Key::Password(_) => KeyKind::Password,
        }
    }

    pub fn user(&self) -> Option<&UserId> {
        match self {
            Key::User(u) | Key::UserIp(u, _) => Some(u),
            _ => None,
        }
    }

    pub fn ip(&self) -> Option<IpPrefix> {
        match self {
            Key::Ip(ip) | Key::UserIp(_, ip) => Some(*ip),
            _ => None,
        }
    }

    /// This key as a rule counting addresses by `prefixes` counts it.
    pub fn under(self, prefixes: Prefixes) -> Key {
        match self {
            Key::Ip(ip) => Key::Ip(ip.under(prefixes)),
            Key::UserIp(user, ip) => Key::UserIp(user, ip.under(prefixes)),
            other => other,
        }
    }

    pub fn session(&self) -> Option<&SessionId> {
        match self {
            Key::Session(s) => Some(s),
            _ => None,
        }
    }

    pub fn password(&self) -> Option<&PasswordKey> {
        match self {
            Key::Password(p) => Some(p),
            _ => None,
        }
    }

    /// The identifier that is neither a user nor an address: a session
    /// key's session id or a password key's fingerprint ('' for the other
    /// kinds), which the kind tells apart where keys are stored.
    pub fn token(&self) -> &str {
        match self {
            Key::Session(s) => s.as_str(),
            Key::Password(p) => p.as_str(),
            _ => "",
        }
    }
}

/// Who is acting: any of a user id, an IP address and a session id, at least
/// one of them; and the password tried, when the caller sent its
/// fingerprint: one key per configured secret, so that counts kept under a
/// secret being rotated out still judge until they expire.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    pub user: Option<UserId>,
    pub ip: Option<IpAddress>,
    pub session: Option<SessionId>,
    pub passwords: Vec<PasswordKey>,
}

impl Subject {
    /// Parses the three optional identifiers; an empty string means "not
    /// supplied". `field` is the path of the subject in the request.
    pub fn parse(field: &str, user: &str, ip: &str, session: &str) -> Result<Self, FieldError> {
        Self::parse_with(field, user, ip, session, false)
    }

    /// As `parse`, for a subject that may also carry a password
    /// fingerprint (`fingerprinted`), which is enough on its own: an admin
    /// names a sprayed password by nothing else.
    pub fn parse_with(
        field: &str,
        user: &str,
        ip: &str,
        session: &str,
        fingerprinted: bool,
    ) -> Result<Self, FieldError> {
        fn opt(raw: &str) -> Option<&str> {
            (!raw.is_empty()).then_some(raw)
        }
        let subject = Subject {
            passwords: Vec::new(),
            user: opt(user)
                .map(|u| UserId::parse(&format!("{field}.user_id"), u))
                .transpose()?,
            ip: opt(ip)
                .map(|i| IpAddress::parse(&format!("{field}.ip"), i))
                .transpose()?,
            session: opt(session)
                .map(|s| SessionId::parse(&format!("{field}.session_id"), s))
                .transpose()?,
        };
        if subject.user.is_none()
            && subject.ip.is_none()
            && subject.session.is_none()
            && !fingerprinted
        {
            return Err(FieldError::new(
                field,
                "needs at least one of user_id, ip, session_id, password_fingerprint",
            ));
        }
        Ok(subject)
    }

    /// The keys of `kind` this subject supplies: one at most, except for
    /// passwords during a rotation of their secret.
    pub fn keys(&self, kind: KeyKind) -> Vec<Key> {
        match kind {
            KeyKind::Password => self.passwords.iter().cloned().map(Key::Password).collect(),
            _ => self.key(kind).into_iter().collect(),
        }
    }

    /// The key of `kind` this subject supplies, if it supplies one (for
    /// passwords, under the first secret).
    pub fn key(&self, kind: KeyKind) -> Option<Key> {
        match kind {
            KeyKind::Password => self.passwords.first().cloned().map(Key::Password),
            KeyKind::User => self.user.clone().map(Key::User),
            KeyKind::Ip => self.ip.map(|ip| Key::Ip(ip.into())),
            KeyKind::UserIp => match (&self.user, self.ip) {
                (Some(u), Some(ip)) => Some(Key::UserIp(u.clone(), ip.into())),
                _ => None,
            },
            KeyKind::Session => self.session.clone().map(Key::Session),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_capped_and_named() {
        let long = "a".repeat(MAX_ID_BYTES + 1);
        let err = UserId::parse("subject.user_id", &long).unwrap_err();
        assert_eq!(err.field, "subject.user_id");
        assert!(UserId::parse("f", &"a".repeat(MAX_ID_BYTES)).is_ok());
        assert!(UserId::parse("f", "").is_err());
        assert!(UserId::parse("f", "bad\nid").is_err());
    }

    #[test]
    fn mapped_ipv4_is_one_key_with_ipv4() {
        let a = IpAddress::parse("ip", "::ffff:10.0.0.1").unwrap();
        let b = IpAddress::parse("ip", "10.0.0.1").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "10.0.0.1");
        assert_eq!(
            IpAddress::parse("subject.ip", "10.0.0.256")
                .unwrap_err()
                .field,
            "subject.ip"
        );
    }

    #[test]
    fn password_keys_show_and_print_only_a_prefix() {
        let key = PasswordKey::new("p1", &[0xab; 32]);
        assert_eq!(key.as_str(), format!("p1:{}", "ab".repeat(32)));
        assert_eq!(key.shown(), "p1:abab");
        assert_eq!(format!("{key:?}"), "PasswordKey(p1:abab…)");
        assert_eq!(PasswordKey::parse("k", key.as_str()), Ok(key));
        for bad in [
            "p1:abab",
            "nohex",
            ":".repeat(65).as_str(),
            &format!("p1:{}", "AB".repeat(32)),
        ] {
            assert_eq!(PasswordKey::parse("k", bad).unwrap_err().field, "k");
        }
        assert!(Subject::parse_with("subject", "", "", "", true).is_ok());
        assert!(Subject::parse_with("subject", "", "", "", false).is_err());
    }

    #[test]
    fn subject_needs_an_identifier_and_builds_keys() {
        assert_eq!(
            Subject::parse("subject", "", "", "").unwrap_err().field,
            "subject"
        );
        let s = Subject::parse("subject", "alice", "1.2.3.4", "").unwrap();
        assert!(matches!(s.key(KeyKind::UserIp), Some(Key::UserIp(..))));
        assert_eq!(s.key(KeyKind::Session), None);
    }
}
