//! Kinds the file names by a word (`key = "user+ip"`, `algorithm = "SHA1"`):
//! read straight into the domain's enum and written back as the same word,
//! which the domain spells in one place.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

use crate::domain::{KeyKind, KindClass, TotpAlgorithm};

/// A domain enum whose every value has a name.
pub trait Named: Copy + 'static {
    /// Every value, in the order an error lists them.
    const ALL: &'static [Self];

    fn name(self) -> &'static str;
}

impl Named for KeyKind {
    const ALL: &'static [Self] = &KeyKind::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Named for KindClass {
    const ALL: &'static [Self] = &KindClass::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Named for TotpAlgorithm {
    const ALL: &'static [Self] = &TotpAlgorithm::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }
}

pub fn deserialize<'de, D: Deserializer<'de>, T: Named>(d: D) -> Result<T, D::Error> {
    let word = String::deserialize(d)?;
    T::ALL
        .iter()
        .copied()
        .find(|value| value.name() == word)
        .ok_or_else(|| {
            let names: Vec<_> = T::ALL.iter().map(|value| value.name()).collect();
            D::Error::custom(format!("{word:?} is not one of {}", names.join(", ")))
        })
}

pub fn serialize<S: Serializer, T: Named>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value.name())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::domain::{KeyKind, TotpAlgorithm};

    #[test]
    fn names_read_into_the_domain_and_print_back_as_written() {
        let (config, _) = Config::from_toml("[totp]\nalgorithm = \"SHA256\"").unwrap();
        assert_eq!(config.totp.algorithm, TotpAlgorithm::Sha256);
        assert_eq!(config.contexts["login"].rules[0].key, KeyKind::UserIp);
        let text = config.to_toml();
        assert!(text.contains("algorithm = \"SHA256\""), "{text}");
        assert!(text.contains("key = \"user+ip\""), "{text}");
        let (again, _) = Config::from_toml(&text).expect("the output reads back");
        assert_eq!(again.totp.algorithm, TotpAlgorithm::Sha256);
    }

    #[test]
    fn an_unknown_name_is_refused_naming_the_key_and_the_names() {
        let err = Config::from_toml("[totp]\nalgorithm = \"MD5\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("totp.algorithm"), "{err}");
        assert!(err.contains("SHA1, SHA256, SHA512"), "{err}");
    }
}
