//! A rule's `lockout`: a list of tiers (`["30m", "permanent"]`) read
//! straight into the domain's lock durations, or a progressive table.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration;
use crate::domain::LockDuration;

/// Either a list of tiers (`["30m", "permanent"]`, the last repeating) or a
/// progressive ladder.
#[derive(Debug, Clone)]
pub enum LockoutConfig {
    Tiers(Vec<LockDuration>),
    Progressive(ProgressiveConfig),
}

/// fail2ban's bantime.increment: the n-th lockout of a run lasts
/// `base × factor^(n−1)`, capped at `max`, and is permanent from the
/// `permanent_after`-th on when that is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressiveConfig {
    #[serde(with = "duration")]
    pub base: Duration,
    pub factor: f64,
    #[serde(with = "duration")]
    pub max: Duration,
    #[serde(default)]
    pub permanent_after: Option<u32>,
}

/// The tier that lasts until an admin unlocks.
const PERMANENT: &str = "permanent";

/// One tier as the file writes it.
struct Tier(LockDuration);

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == PERMANENT {
            return Ok(Tier(LockDuration::Permanent));
        }
        match humantime::parse_duration(&text) {
            Ok(length) if !length.is_zero() => Ok(Tier(LockDuration::For(length))),
            _ => Err(de::Error::custom(format!(
                "{text:?} is neither a duration like 30m nor \"{PERMANENT}\""
            ))),
        }
    }
}

impl Serialize for Tier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            LockDuration::For(d) => duration::serialize(&d, s),
            LockDuration::Permanent => s.serialize_str(PERMANENT),
        }
    }
}

/// Tells the two forms apart by their shape. An untagged enum would too, but
/// it replaces the error of the form that was meant (which tier is wrong, and
/// why) with "data did not match any variant".
struct LockoutVisitor;

impl<'de> Visitor<'de> for LockoutVisitor {
    type Value = LockoutConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a list of tiers like [\"30m\", \"permanent\"] or a table with base, factor and max",
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LockoutConfig, A::Error> {
        let mut tiers = Vec::new();
        while let Some(Tier(tier)) = seq.next_element()? {
            tiers.push(tier);
        }
        Ok(LockoutConfig::Tiers(tiers))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LockoutConfig, A::Error> {
        ProgressiveConfig::deserialize(de::value::MapAccessDeserializer::new(map))
            .map(LockoutConfig::Progressive)
    }
}

impl<'de> Deserialize<'de> for LockoutConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LockoutVisitor)
    }
}

impl Serialize for LockoutConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LockoutConfig::Tiers(tiers) => s.collect_seq(tiers.iter().copied().map(Tier)),
            LockoutConfig::Progressive(p) => p.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, LockoutConfig};
    use crate::domain::LockDuration;

    fn lockout(toml: &str) -> LockoutConfig {
        let (config, _) = Config::from_toml(toml).unwrap();
        let lockout = config.contexts["login"].rules[0].lockout.clone();
        lockout.expect("the rule has a lockout")
    }

    const RULE: &str = r#"
        [[contexts.login.rules]]
        name = "r"
        key = "ip"
        window = "1m"
        lock_after = 1
    "#;

    /// The first login rule's lockout as `to_toml` prints it.
    fn printed(config: &Config) -> toml::Value {
        let text = config.to_toml();
        let table: toml::Table = toml::from_str(&text).expect("the output reads back");
        table["contexts"]["login"]["rules"][0]["lockout"].clone()
    }

    #[test]
    fn tiers_read_into_lock_durations_and_print_back_as_written() {
        let toml = format!("{RULE}lockout = [\"1h 30m\", \"permanent\"]");
        let LockoutConfig::Tiers(tiers) = lockout(&toml) else {
            panic!("tiers are tiers");
        };
        assert_eq!(
            tiers,
            [
                LockDuration::For(Duration::from_secs(90 * 60)),
                LockDuration::Permanent
            ]
        );
        assert_eq!(
            printed(&Config::default()),
            toml::Value::from(vec!["30m", "permanent"])
        );
        let (config, _) = Config::from_toml(&toml).unwrap();
        assert_eq!(
            printed(&config),
            toml::Value::from(vec!["90m", "permanent"])
        );
        Config::from_toml(&config.to_toml()).expect("the output reads back");
    }

    #[test]
    fn a_table_is_a_progressive_ladder() {
        let toml = format!("{RULE}lockout = {{ base = \"1m\", factor = 2.0, max = \"1h\" }}");
        let LockoutConfig::Progressive(p) = lockout(&toml) else {
            panic!("a table is progressive");
        };
        assert_eq!(
            (p.base, p.max),
            (Duration::from_secs(60), Duration::from_secs(3600))
        );
        let err = Config::from_toml(&toml.replace("max", "most"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("contexts.login.rules[0].lockout"), "{err}");
        assert!(err.contains("most"), "{err}");
    }
}
