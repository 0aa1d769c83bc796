//! Logging set-up and the masking every log line that names a user, an IP
//! or a session goes through.

pub mod metrics;
mod throttle;

use std::io::IsTerminal;

use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    /// The server's own output: its logs are what it prints.
    Stdout,
    /// Commands whose standard output is their result (check-config), so
    /// that `> file` keeps only the result.
    Stderr,
}

/// Installs the global subscriber. `log.level` is a tracing directive
/// string such as `info` or `authgate=debug`; an invalid one falls back to
/// `info` with a warning rather than losing all logs. The HTTP/2 stack's
/// warnings pass at a bounded rate (see throttle.rs).
pub fn init(log: &LogConfig, to: LogTo) {
    let (filter, bad) = match EnvFilter::try_new(&log.level) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let terminal = match to {
        LogTo::Stdout => std::io::stdout().is_terminal(),
        LogTo::Stderr => std::io::stderr().is_terminal(),
    };
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let writer = match to {
        LogTo::Stdout => BoxMakeWriter::new(std::io::stdout),
        LogTo::Stderr => BoxMakeWriter::new(std::io::stderr),
    };
    // A second init (tests start several servers in one process) keeps the
    // first subscriber.
    let _ = if json {
        // The event's fields at the top level, and under "span" the fields
        // of every span it happened in, innermost winning: so each line of
        // a call carries the call's request_id, however deep the code that
        // logged it, and no span field can clash with an event field.
        let mut layer = json_subscriber::JsonLayer::new(writer);
        layer
            .with_timer("timestamp", SystemTime)
            .with_level("level")
            .with_target("target")
            .with_flattened_event()
            .with_flattened_span_fields("span");
        tracing_subscriber::registry()
            .with(layer.with_filter(filter.and(throttle::Http2Warnings::new())))
            .try_init()
            .is_ok()
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(terminal);
        tracing_subscriber::registry()
            .with(layer.with_filter(filter.and(throttle::Http2Warnings::new())))
            .try_init()
            .is_ok()
    };
    if let Some(e) = bad {
        tracing::warn!(error = %e, "log.level is not a valid filter; using info");
    }
}

/// Masks an identifier for logs: keeps the first two characters, enough to tell
/// entries apart while reading a log, and hides the rest and its length.
pub fn mask(id: &str) -> String {
    let head: String = id.chars().take(2).collect();
    if id.chars().count() <= 2 {
        return "***".into();
    }
    format!("{head}***")
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_keep_only_a_prefix() {
        assert_eq!(mask("123456789"), "12***");
        assert_eq!(mask("192.168.1.20"), "19***");
        assert_eq!(mask("ab"), "***");
        assert_eq!(mask(""), "***");
    }
}
