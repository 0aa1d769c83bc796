//! Alert suppression: an attack yields one alert per
//! subject and kind, and the next one after the window says how many were
//! held back.

use std::collections::HashMap;
use std::time::Duration;

use super::UnixMillis;

pub struct Suppressor {
    window: Duration,
    /// Per (kind, subject): when the last alert went out, and how many were
    /// held back since.
    last: HashMap<(String, String), (UnixMillis, u64)>,
}

impl Suppressor {
    pub fn new(window: Duration) -> Self {
        Suppressor {
            window,
            last: HashMap::new(),
        }
    }

    /// Whether an alert of `kind` about `subject` at `at` goes out; when it
    /// does, how many of its kind about that subject were held back since
    /// the previous one.
    pub fn offer(&mut self, kind: &str, subject: &str, at: UnixMillis) -> Option<u64> {
        let window = self.window;
        // Entries whose window closed with nothing held back are done with;
        // dropping them keeps memory bounded by the subjects of one window.
        self.last
            .retain(|_, (sent, held)| *held > 0 || sent.plus(window) > at);
        let key = (kind.to_owned(), subject.to_owned());
        match self.last.get_mut(&key) {
            Some((sent, held)) if sent.plus(window) > at => {
                *held += 1;
                None
            }
            Some((sent, held)) => {
                let suppressed = *held;
                *sent = at;
                *held = 0;
                Some(suppressed)
            }
            None => {
                self.last.insert(key, (at, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_window_then_the_count() {
        let mut s = Suppressor::new(Duration::from_secs(300));
        let t = |secs: i64| UnixMillis(secs * 1000);
        assert_eq!(s.offer("not_allowed", "u:mallory", t(0)), Some(0));
        assert_eq!(s.offer("not_allowed", "u:mallory", t(10)), None);
        assert_eq!(s.offer("not_allowed", "u:mallory", t(299)), None);
        assert_eq!(
            s.offer("lockout", "u:mallory", t(299)),
            Some(0),
            "another kind"
        );
        assert_eq!(
            s.offer("not_allowed", "u:eve", t(299)),
            Some(0),
            "another subject"
        );
        assert_eq!(s.offer("not_allowed", "u:mallory", t(300)), Some(2));
        assert_eq!(s.offer("not_allowed", "u:mallory", t(301)), None);
    }

    #[test]
    fn quiet_subjects_are_forgotten() {
        let mut s = Suppressor::new(Duration::from_secs(300));
        for i in 0..1000 {
            s.offer("lockout", &format!("u:{i}"), UnixMillis(i));
        }
        s.offer("lockout", "u:late", UnixMillis(1_000_000));
        assert_eq!(s.last.len(), 1);
    }
}
