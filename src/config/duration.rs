//! Durations as people write them: read with humantime (`90days`, `30m`,
//! `1h 30m`), written back in the largest unit that divides them (`90d`,
//! `30m`, `90m`), never as humantime's calendar months.

use std::time::Duration;

use serde::{Deserializer, Serializer};

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    humantime_serde::deserialize(d)
}

pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*value))
}

pub fn format(value: Duration) -> String {
    const UNITS: [(u128, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let ms = value.as_millis();
    if !value.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(value).to_string();
    }
    if ms == 0 {
        return "0s".into();
    }
    let (size, unit) = UNITS
        .iter()
        .find(|(size, _)| ms.is_multiple_of(*size))
        .copied()
        .unwrap_or((1, "ms"));
    format!("{}{unit}", ms / size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn durations_read_as_humans_write_them() {
        let (config, _) = Config::from_toml("[cleanup]\ninterval = \"500ms\"").unwrap();
        assert_eq!(config.cleanup.interval, Duration::from_millis(500));
    }

    #[test]
    fn durations_print_in_the_largest_whole_unit() {
        let (config, _) = Config::from_toml(
            "[cleanup]\naudit_retention = \"90days\"\ninterval = \"1h 30m\"\n\
             [server]\nrequest_timeout = \"1500ms\"",
        )
        .unwrap();
        let text = config.to_toml();
        assert!(text.contains("audit_retention = \"90d\""), "{text}");
        assert!(text.contains("interval = \"90m\""), "{text}");
        assert!(text.contains("request_timeout = \"1500ms\""), "{text}");
        let (again, _) = Config::from_toml(&text).expect("the output reads back");
        assert_eq!(
            again.cleanup.audit_retention,
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
