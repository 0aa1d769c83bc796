//! Anti-spam admission for bots: each incoming update is judged, and
//! recorded when admitted, against per-kind rate limits over a sliding
//! window, spam patterns among the user's latest admitted updates, and the
//! user's warnings, blocks and reputation. The numbers and the order of the
//! checks are those of the aiogram anti-spam middleware bots use (see the
//! README), made a pure function of the stored state and `now`.

use std::time::Duration;

use super::UnixMillis;

/// How the pattern detector sees a kind of update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindClass {
    /// Messages with text (plain, replies, forwards): identical
    /// fingerprints among them are the identical-messages pattern.
    Text,
    /// Button presses: identical fingerprints are callback spam.
    Callback,
    /// Photos, videos, documents, audio, voice, stickers: many of them are
    /// a media flood, and their fingerprints (of the caption) count with
    /// texts' toward identical messages.
    Media,
    /// Commands: never limited, and left out of the text pattern.
    Command,
}

impl KindClass {
    pub const ALL: [KindClass; 4] = [
        KindClass::Text,
        KindClass::Callback,
        KindClass::Media,
        KindClass::Command,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KindClass::Text => "text",
            KindClass::Callback => "callback",
            KindClass::Media => "media",
            KindClass::Command => "command",
        }
    }

    /// Whether the identical-messages pattern compares this class's
    /// fingerprints: the reference reads a message's `text or caption`, so
    /// five photos with one caption are five identical messages.
    fn has_text(self) -> bool {
        matches!(self, KindClass::Text | KindClass::Media)
    }
}

/// One kind of update a context admits.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateKind {
    pub name: String,
    pub class: KindClass,
    /// Updates of this kind allowed per window, before reputation; `None`:
    /// never limited.
    pub limit: Option<u32>,
}

/// Why a user was blocked (or warned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// More updates of a kind than its effective limit, the warning limit
    /// reached.
    RateLimit,
    IdenticalMessages,
    CallbackSpam,
    MediaFlood,
}

impl Cause {
    pub const ALL: [Cause; 4] = [
        Cause::RateLimit,
        Cause::IdenticalMessages,
        Cause::CallbackSpam,
        Cause::MediaFlood,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::RateLimit => "rate_limit",
            Cause::IdenticalMessages => "identical_messages",
            Cause::CallbackSpam => "callback_spam",
            Cause::MediaFlood => "media_flood",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A pattern's threshold and how severe it is when met.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatternRule {
    /// How many of the looked-at updates make the pattern.
    pub count: usize,
    /// 0.0 to 1.0; at or above `Patterns::blocking_severity` the update
    /// that finds the pattern blocks the user at once.
    pub severity: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Patterns {
    /// How many of the latest admitted updates in the window are looked at.
    pub lookback: usize,
    /// Fewer admitted updates than this in the window show no pattern.
    pub min_updates: usize,
    pub identical_text: PatternRule,
    pub identical_callback: PatternRule,
    pub media_flood: PatternRule,
    pub blocking_severity: f64,
}

impl Default for Patterns {
    fn default() -> Self {
        Patterns {
            lookback: 10,
            min_updates: 3,
            identical_text: PatternRule {
                count: 5,
                severity: 1.0,
            },
            identical_callback: PatternRule {
                count: 8,
                severity: 0.8,
            },
            media_flood: PatternRule {
                count: 7,
                severity: 0.6,
            },
            blocking_severity: 0.9,
        }
    }
}

/// Reputation in hundredths, so its steps add up exactly.
pub const REPUTATION_START: u32 = 100;
const REPUTATION_MIN: u32 = 50;
const REPUTATION_MAX: u32 = 200;
const REPUTATION_PER_WARNING: u32 = 10;
const REPUTATION_PER_BLOCK: u32 = 30;
const REPUTATION_REWARD: u32 = 5;
/// Every this many admitted updates earn the reward.
const REWARD_EVERY: u64 = 10;
/// However low the reputation, a limited kind allows at least this many.
const LIMIT_FLOOR: u32 = 3;
/// The admitted updates kept per user, newest last. A window holds at most
/// the kinds' limits (doubled by the best reputation) plus commands, which
/// are never limited: the cap bounds a user who sends nothing but commands.
pub const RECENT_CAP: usize = 256;

/// A context's admission rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionPolicy {
    pub window: Duration,
    pub kinds: Vec<UpdateKind>,
    /// Off: no kind is limited (patterns and blocks still apply).
    pub rate_limits: bool,
    /// Off: limits stay as configured.
    pub reputation: bool,
    /// `None`: no pattern detection.
    pub patterns: Option<Patterns>,
    /// Warnings that block, on a rate-limit warning.
    pub warning_limit: u32,
    pub block: Duration,
    pub max_block: Duration,
    /// Each block `block × 2^(warnings ÷ warning_limit)`, up to `max_block`;
    /// off, always `block`.
    pub progressive: bool,
    /// Users on the admin list are admitted without being counted.
    pub exempt_admins: bool,
}

impl AdmissionPolicy {
    pub fn kind(&self, name: &str) -> Option<&UpdateKind> {
        self.kinds.iter().find(|k| k.name == name)
    }

    /// How long a block started with `warnings` warnings lasts.
    pub fn block_duration(&self, warnings: u32) -> Duration {
        if !self.progressive {
            return self.block;
        }
        let doublings = warnings / self.warning_limit.max(1);
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.block
            .checked_mul(factor)
            .unwrap_or(self.max_block)
            .min(self.max_block)
    }

    /// The limit `kind` has at `reputation`; `None` when never limited.
    pub fn effective_limit(&self, kind: &UpdateKind, reputation: u32) -> Option<u32> {
        if !self.rate_limits || kind.class == KindClass::Command {
            return None;
        }
        let limit = kind.limit?;
        let limit = if self.reputation {
            let scaled = u64::from(limit) * u64::from(reputation) / 100;
            u32::try_from(scaled).unwrap_or(u32::MAX)
        } else {
            limit
        };
        Some(limit.max(LIMIT_FLOOR))
    }
}

/// An admitted update, as remembered for the window and the patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub at: UnixMillis,
    pub kind: String,
    pub class: KindClass,
    /// A digest of the client's fingerprint; `None` when it sent none.
    pub fingerprint: Option<u64>,
}

/// One user's admission state in one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionState {
    /// Admitted updates still in the window, oldest first.
    pub recent: Vec<Admitted>,
    pub warnings: u32,
    /// Hundredths: 100 is 1.0.
    pub reputation: u32,
    pub blocked_until: Option<UnixMillis>,
    /// Why the current (or last) block began.
    pub block_cause: Option<Cause>,
    pub updates_total: u64,
    pub blocks_total: u64,
    pub warnings_total: u64,
    /// Updates refused: over a limit, or while blocked.
    pub refused_total: u64,
    pub first_seen: Option<UnixMillis>,
    /// The last admitted update.
    pub last_seen: Option<UnixMillis>,
}

impl Default for AdmissionState {
    fn default() -> Self {
        AdmissionState {
            recent: Vec::new(),
            warnings: 0,
            reputation: REPUTATION_START,
            blocked_until: None,
            block_cause: None,
            updates_total: 0,
            blocks_total: 0,
            warnings_total: 0,
            refused_total: 0,
            first_seen: None,
            last_seen: None,
        }
    }
}

/// What one update met.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// The bot may handle the update; it was recorded.
    pub admitted: bool,
    /// This update drew a warning, and why.
    pub warning: Option<Cause>,
    /// The user is blocked (by this update or before it).
    pub block: Option<Block>,
    pub warnings: u32,
    pub warning_limit: u32,
    /// The kind's effective limit now; `None` when never limited.
    pub limit: Option<u32>,
    /// Updates of the kind admitted in the window, this one included.
    pub used: u32,
    pub reputation: u32,
    /// A refused update: when the window will have room for one more of
    /// its kind (a block's end is in `block`).
    pub retry_at: Option<UnixMillis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub until: UnixMillis,
    /// 1 for the user's first block, and so on.
    pub number: u64,
    pub cause: Cause,
    /// This update started the block.
    pub started: bool,
}

impl AdmissionState {
    /// The state as of `now`: a block that ended is lifted, and the user
    /// keeps their warnings minus one.
    pub fn settled(&self, now: UnixMillis) -> AdmissionState {
        let mut s = self.clone();
        if s.blocked_until.is_some_and(|until| now >= until) {
            s.blocked_until = None;
            s.warnings = s.warnings.saturating_sub(1);
        }
        s
    }

    pub fn active_block(&self, now: UnixMillis) -> Option<UnixMillis> {
        self.blocked_until.filter(|until| now < *until)
    }

    fn warn(&mut self) {
        self.warnings += 1;
        self.warnings_total += 1;
        self.reputation = self
            .reputation
            .saturating_sub(REPUTATION_PER_WARNING)
            .max(REPUTATION_MIN);
    }

    fn block(&mut self, policy: &AdmissionPolicy, cause: Cause, now: UnixMillis) -> Block {
        let until = now.plus(policy.block_duration(self.warnings));
        self.blocked_until = Some(until);
        self.block_cause = Some(cause);
        self.blocks_total += 1;
        self.reputation = self
            .reputation
            .saturating_sub(REPUTATION_PER_BLOCK)
            .max(REPUTATION_MIN);
        Block {
            until,
            number: self.blocks_total,
            cause,
            started: true,
        }
    }

    /// The pattern among the latest admitted updates, most severe check
    /// first, as the reference orders them.
    fn pattern(&self, patterns: &Patterns) -> Option<(Cause, f64)> {
        if self.recent.len() < patterns.min_updates {
            return None;
        }
        let latest = &self.recent[self.recent.len().saturating_sub(patterns.lookback)..];
        let most_repeated = |compared: fn(KindClass) -> bool| {
            let prints: Vec<u64> = latest
                .iter()
                .filter(|u| compared(u.class))
                .filter_map(|u| u.fingerprint)
                .collect();
            prints
                .iter()
                .map(|p| prints.iter().filter(|q| *q == p).count())
                .max()
                .unwrap_or(0)
        };
        let media = latest
            .iter()
            .filter(|u| u.class == KindClass::Media)
            .count();
        [
            (
                Cause::IdenticalMessages,
                patterns.identical_text,
                most_repeated(KindClass::has_text),
            ),
            (
                Cause::CallbackSpam,
                patterns.identical_callback,
                most_repeated(|class| class == KindClass::Callback),
            ),
            (Cause::MediaFlood, patterns.media_flood, media),
        ]
        .into_iter()
        .find(|(_, rule, seen)| *seen >= rule.count)
        .map(|(cause, rule, _)| (cause, rule.severity))
    }
}

/// Judges one update of `kind` (with its fingerprint digest) from a user in
/// `state`, at `now`: the new state and what the update met.
pub fn admit(
    policy: &AdmissionPolicy,
    state: &AdmissionState,
    kind: &UpdateKind,
    fingerprint: Option<u64>,
    now: UnixMillis,
) -> (AdmissionState, Admission) {
    let mut s = state.settled(now);
    let answer = |s: &AdmissionState, limit, used, warning, block, retry_at| Admission {
        admitted: false,
        warning,
        block,
        warnings: s.warnings,
        warning_limit: policy.warning_limit,
        limit,
        used,
        reputation: s.reputation,
        retry_at,
    };
    if let Some(until) = s.active_block(now) {
        s.refused_total += 1;
        let block = Block {
            until,
            number: s.blocks_total,
            cause: s.block_cause.unwrap_or(Cause::RateLimit),
            started: false,
        };
        let limit = policy.effective_limit(kind, s.reputation);
        let used = used_by(&s, kind);
        let refused = answer(&s, limit, used, None, Some(block), None);
        return (s, refused);
    }
    let horizon = now.0 - i64::try_from(policy.window.as_millis()).unwrap_or(i64::MAX);
    s.recent.retain(|u| u.at.0 > horizon);

    let mut warning = None;
    if let Some((cause, severity)) = policy.patterns.as_ref().and_then(|p| s.pattern(p)) {
        s.warn();
        warning = Some(cause);
        let blocking = policy
            .patterns
            .as_ref()
            .is_some_and(|p| severity >= p.blocking_severity);
        if blocking {
            s.refused_total += 1;
            let block = s.block(policy, cause, now);
            let limit = policy.effective_limit(kind, s.reputation);
            let used = used_by(&s, kind);
            let refused = answer(&s, limit, used, warning, Some(block), None);
            return (s, refused);
        }
    }

    let limit = policy.effective_limit(kind, s.reputation);
    let used = used_by(&s, kind);
    if let Some(limit) = limit
        && used >= limit
    {
        s.warn();
        s.refused_total += 1;
        if s.warnings >= policy.warning_limit {
            let block = s.block(policy, Cause::RateLimit, now);
            let refused = answer(
                &s,
                Some(limit),
                used,
                Some(Cause::RateLimit),
                Some(block),
                None,
            );
            return (s, refused);
        }
        // Room comes back when the oldest counted update leaves the window.
        let retry_at = s
            .recent
            .iter()
            .find(|u| u.kind == kind.name)
            .map(|u| u.at.plus(policy.window));
        let refused = answer(
            &s,
            Some(limit),
            used,
            Some(Cause::RateLimit),
            None,
            retry_at,
        );
        return (s, refused);
    }

    s.recent.push(Admitted {
        at: now,
        kind: kind.name.clone(),
        class: kind.class,
        fingerprint,
    });
    if s.recent.len() > RECENT_CAP {
        let excess = s.recent.len() - RECENT_CAP;
        s.recent.drain(..excess);
    }
    s.updates_total += 1;
    s.last_seen = Some(now);
    s.first_seen.get_or_insert(now);
    if policy.reputation && s.updates_total.is_multiple_of(REWARD_EVERY) {
        s.reputation = (s.reputation + REPUTATION_REWARD).min(REPUTATION_MAX);
    }
    let admitted = Admission {
        admitted: true,
        warning,
        block: None,
        warnings: s.warnings,
        warning_limit: policy.warning_limit,
        limit,
        used: used + 1,
        reputation: s.reputation,
        retry_at: None,
    };
    (s, admitted)
}

/// Admitted updates of `kind` in the window.
fn used_by(s: &AdmissionState, kind: &UpdateKind) -> u32 {
    let n = s.recent.iter().filter(|u| u.kind == kind.name).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
