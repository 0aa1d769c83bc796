//! Logging set-up and the masking every log line that names a user, an IP
//! or a session goes through.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

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
/// `info` with a warning rather than losing all logs.
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal);
    // A second init (tests start several servers in one process) keeps the
    // first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if let Some(e) = bad {
        tracing::warn!(error = %e, "log.level is not a valid filter; using info");
    }
}

/// pyTMBot's mask_user_id: keeps the first two characters, enough to tell
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
