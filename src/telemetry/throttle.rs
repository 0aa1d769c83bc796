//! The HTTP/2 stack's warnings, at a rate a peer cannot raise.
//!
//! h2 warns once for each connection it closes with GOAWAY on a peer's
//! account (streams reset faster than they are accepted: rapid reset; too
//! many streams it had to reset itself). A peer that reconnects and does it
//! again would turn that into as many lines as connections it opens, so at
//! most `LINES_PER_WINDOW` of them pass each `WINDOW`; the rest are counted
//! in authgate_http2_warnings_suppressed_total. authgate's own lines, and
//! the stack's debug lines an operator asks for, are never held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

use super::metrics;

/// The window the count of lines starts over in.
const WINDOW: Duration = Duration::from_secs(60);
/// Lines let through in one window: enough to see an attack and its kind.
const LINES_PER_WINDOW: u32 = 10;

/// The crates of the HTTP/2 stack, by their tracing targets.
const STACK: &[&str] = &["h2", "hyper", "hyper_util"];

/// The log filter that holds the HTTP/2 stack's warnings to a rate.
pub struct Http2Warnings {
    limit: Mutex<RateLimit>,
}

impl Http2Warnings {
    pub fn new() -> Self {
        Http2Warnings {
            limit: Mutex::new(RateLimit::new(WINDOW, LINES_PER_WINDOW)),
        }
    }
}

impl Default for Http2Warnings {
    fn default() -> Self {
        Self::new()
    }
}

/// A warning or an error from one of the STACK's crates, by the event's
/// target and level.
fn held_to_a_rate(target: &str, level: Level) -> bool {
    level <= Level::WARN
        && STACK.iter().any(|c| {
            target
                .strip_prefix(c)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

impl<S> Filter<S> for Http2Warnings {
    /// Every callsite: the decision is made for each event.
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if !held_to_a_rate(meta.target(), *meta.level()) {
            return true;
        }
        let passes = self
            .limit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(Instant::now());
        if !passes {
            metrics::http2_warning_suppressed();
        }
        passes
    }
}

/// At most `per_window` admissions in each `window`.
struct RateLimit {
    window: Duration,
    per_window: u32,
    /// When the current window began, and how many it has admitted.
    began: Option<Instant>,
    admitted: u32,
}

impl RateLimit {
    fn new(window: Duration, per_window: u32) -> Self {
        RateLimit {
            window,
            per_window,
            began: None,
            admitted: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> bool {
        if self
            .began
            .is_none_or(|began| now.saturating_duration_since(began) >= self.window)
        {
            self.began = Some(now);
            self.admitted = 0;
        }
        if self.admitted >= self.per_window {
            return false;
        }
        self.admitted += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_passes_in_a_window_then_again() {
        let mut limit = RateLimit::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let passed: Vec<bool> = (0..5).map(|i| limit.admit(at(i))).collect();
        assert_eq!(passed, [true, true, true, false, false]);
        assert!(!limit.admit(at(59)));
        assert!(limit.admit(at(60)), "a new window");
        assert!(limit.admit(at(61)));
    }

    #[test]
    fn only_the_stacks_warnings_are_held_to_a_rate() {
        assert!(held_to_a_rate("h2::proto::streams::recv", Level::WARN));
        assert!(held_to_a_rate("hyper::proto::h2::server", Level::ERROR));
        assert!(held_to_a_rate("h2", Level::WARN));
        assert!(!held_to_a_rate("h2::codec", Level::DEBUG));
        assert!(!held_to_a_rate("h2x", Level::WARN));
        assert!(!held_to_a_rate("authgate::app", Level::WARN));
    }
}
