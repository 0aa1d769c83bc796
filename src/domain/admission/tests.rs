use super::*;

const SEC: Duration = Duration::from_secs(1);
const T0: UnixMillis = UnixMillis(1_000_000);

fn kind(name: &str, class: KindClass, limit: Option<u32>) -> UpdateKind {
    UpdateKind {
        name: name.into(),
        class,
        limit,
    }
}

/// The shipped bot context: the reference middleware's defaults.
fn bot() -> AdmissionPolicy {
    AdmissionPolicy {
        window: 10 * SEC,
        kinds: vec![
            kind("text", KindClass::Text, Some(8)),
            kind("forward", KindClass::Text, Some(20)),
            kind("callback", KindClass::Callback, Some(10)),
            kind("media", KindClass::Media, Some(10)),
            kind("command", KindClass::Command, None),
        ],
        rate_limits: true,
        reputation: true,
        patterns: Some(Patterns::default()),
        warning_limit: 3,
        block: 120 * SEC,
        max_block: 3600 * SEC,
        progressive: true,
        exempt_admins: true,
    }
}

/// Sends `n` updates of `kind` with distinct fingerprints, 10 ms apart
/// from `at`; returns the last admission.
fn send(
    p: &AdmissionPolicy,
    s: &mut AdmissionState,
    kind_name: &str,
    n: usize,
    at: UnixMillis,
    same_print: bool,
) -> Admission {
    let k = p.kind(kind_name).unwrap().clone();
    let mut last = None;
    for i in 0..n {
        let print = if same_print { 7 } else { i as u64 + 1000 };
        let (next, a) = admit(p, s, &k, Some(print), UnixMillis(at.0 + 10 * i as i64));
        *s = next;
        last = Some(a);
    }
    last.unwrap()
}

#[test]
fn eight_texts_pass_the_ninth_draws_a_warning_and_is_not_counted() {
    let p = bot();
    let mut s = AdmissionState::default();
    let eighth = send(&p, &mut s, "text", 8, T0, false);
    assert!(eighth.admitted);
    assert_eq!((eighth.limit, eighth.used), (Some(8), 8));
    let ninth = send(&p, &mut s, "text", 1, UnixMillis(T0.0 + 100), false);
    assert!(!ninth.admitted);
    assert_eq!(ninth.warning, Some(Cause::RateLimit));
    assert_eq!((ninth.warnings, ninth.used), (1, 8));
    assert_eq!(s.recent.len(), 8, "the refused update is not counted");
    assert_eq!(s.reputation, 90);
    // Room returns when the first text leaves the window.
    assert_eq!(ninth.retry_at, Some(T0.plus(10 * SEC)));
}

#[test]
fn each_kind_counts_against_its_own_limit() {
    let p = bot();
    let mut s = AdmissionState::default();
    send(&p, &mut s, "text", 8, T0, false);
    let forward = send(&p, &mut s, "forward", 1, UnixMillis(T0.0 + 200), false);
    assert!(forward.admitted);
    assert_eq!((forward.limit, forward.used), (Some(20), 1));
    let command = send(&p, &mut s, "command", 50, UnixMillis(T0.0 + 300), false);
    assert!(command.admitted, "commands are never limited");
    assert_eq!(command.limit, None);
}

#[test]
fn three_rate_limit_warnings_block_for_two_minutes_then_warnings_drop_by_one() {
    let p = bot();
    let mut s = AdmissionState::default();
    send(&p, &mut s, "text", 8, T0, false);
    let at = UnixMillis(T0.0 + 1000);
    let second = send(&p, &mut s, "text", 2, at, false);
    assert_eq!((second.warnings, second.block), (2, None));
    let third = send(&p, &mut s, "text", 1, UnixMillis(at.0 + 500), false);
    let block = third.block.expect("the third warning blocks");
    assert!(block.started);
    assert_eq!(block.cause, Cause::RateLimit);
    assert_eq!(block.number, 1);
    // 120 s × 2^(3 ÷ 3).
    assert_eq!(block.until, UnixMillis(at.0 + 500).plus(240 * SEC));
    // Three warnings (−0.3) and a block (−0.3), floored at 0.5.
    assert_eq!(s.reputation, 50);

    let during = send(
        &p,
        &mut s,
        "command",
        1,
        UnixMillis(block.until.0 - 1),
        false,
    );
    assert!(!during.admitted);
    assert!(!during.block.unwrap().started);
    assert_eq!(s.refused_total, 4);

    let after = send(&p, &mut s, "text", 1, block.until, false);
    assert!(after.admitted);
    assert_eq!(after.warnings, 2, "kept minus one, not reset");
}

#[test]
fn progressive_blocks_double_and_stop_at_an_hour() {
    let p = bot();
    assert_eq!(p.block_duration(2), 120 * SEC);
    assert_eq!(p.block_duration(3), 240 * SEC);
    assert_eq!(p.block_duration(6), 480 * SEC);
    assert_eq!(p.block_duration(15), 3600 * SEC);
    assert_eq!(p.block_duration(300), 3600 * SEC);
    let flat = AdmissionPolicy {
        progressive: false,
        ..bot()
    };
    assert_eq!(flat.block_duration(9), 120 * SEC);
}

#[test]
fn reputation_scales_limits_within_its_bounds_and_never_below_three() {
    let p = bot();
    let text = p.kind("text").unwrap();
    assert_eq!(p.effective_limit(text, 100), Some(8));
    assert_eq!(p.effective_limit(text, 90), Some(7));
    assert_eq!(p.effective_limit(text, 50), Some(4));
    assert_eq!(p.effective_limit(text, 200), Some(16));
    let tiny = kind("tiny", KindClass::Text, Some(2));
    assert_eq!(p.effective_limit(&tiny, 100), Some(3));
    let off = AdmissionPolicy {
        reputation: false,
        ..bot()
    };
    assert_eq!(off.effective_limit(text, 50), Some(8));
    let unlimited = AdmissionPolicy {
        rate_limits: false,
        ..bot()
    };
    assert_eq!(unlimited.effective_limit(text, 100), None);

    let mut s = AdmissionState {
        reputation: 195,
        ..AdmissionState::default()
    };
    // Ten admitted updates earn +0.05, capped at 2.0.
    for minute in 0..2 {
        send(
            &p,
            &mut s,
            "text",
            5,
            UnixMillis(T0.0 + minute * 60_000),
            false,
        );
    }
    assert_eq!((s.updates_total, s.reputation), (10, 200));
    let mut low = AdmissionState {
        reputation: 55,
        ..AdmissionState::default()
    };
    low.warn();
    low.warn();
    assert_eq!(low.reputation, 50, "never below 0.5");
}

#[test]
fn five_identical_texts_or_captions_pass_and_the_sixth_is_blocked_at_once() {
    let p = bot();
    // A media update's fingerprint is its caption's: the reference
    // compares `text or caption`.
    for kind in ["text", "media"] {
        let mut s = AdmissionState::default();
        let fifth = send(&p, &mut s, kind, 5, T0, true);
        assert!(
            fifth.admitted,
            "{kind}: patterns look at admitted updates only"
        );
        let sixth = send(&p, &mut s, kind, 1, UnixMillis(T0.0 + 100), true);
        assert!(!sixth.admitted, "{kind}");
        assert_eq!(sixth.warning, Some(Cause::IdenticalMessages), "{kind}");
        let block = sixth.block.unwrap();
        assert_eq!(block.cause, Cause::IdenticalMessages);
        // One warning: 120 s × 2^(1 ÷ 3).
        assert_eq!(block.until, UnixMillis(T0.0 + 100).plus(120 * SEC));
    }
}

#[test]
fn photos_without_a_caption_are_no_identical_messages() {
    let p = bot();
    let photo = p.kind("media").unwrap();
    let mut s = AdmissionState::default();
    // No fingerprint: only the flood pattern, at seven, sees them.
    for i in 0..7 {
        let (next, a) = admit(&p, &s, photo, None, UnixMillis(T0.0 + 10 * i));
        assert!(a.admitted && a.warning.is_none(), "photo {i}");
        s = next;
    }
}

#[test]
fn captions_and_texts_are_one_pattern() {
    let p = bot();
    let mut s = AdmissionState::default();
    send(&p, &mut s, "text", 2, T0, true);
    send(&p, &mut s, "media", 2, UnixMillis(T0.0 + 100), true);
    let fifth = send(&p, &mut s, "forward", 1, UnixMillis(T0.0 + 200), true);
    assert!(fifth.admitted);
    let next = send(&p, &mut s, "command", 1, UnixMillis(T0.0 + 300), false);
    assert!(!next.admitted);
    assert_eq!(next.block.unwrap().cause, Cause::IdenticalMessages);
}

#[test]
fn commands_are_not_identical_messages() {
    let p = bot();
    let mut s = AdmissionState::default();
    let a = send(&p, &mut s, "command", 9, T0, true);
    assert!(a.admitted);
    assert_eq!(a.warning, None);
}

#[test]
fn a_milder_pattern_warns_but_admits_and_blocks_only_with_a_rate_limit_warning() {
    let p = bot();
    let mut s = AdmissionState::default();
    send(&p, &mut s, "media", 7, T0, false);
    // Seven media among the latest: severity 0.6 warns, below the
    // blocking 0.9, so the update is still judged by its limit (9 at
    // reputation 0.9) and admitted.
    let eighth = send(&p, &mut s, "media", 1, UnixMillis(T0.0 + 100), false);
    assert!(eighth.admitted);
    assert_eq!(eighth.warning, Some(Cause::MediaFlood));
    assert_eq!(eighth.warnings, 1);
    // The pattern warns again (2, reputation 0.8: limit 8), the limit is
    // reached, and that warning, the third, blocks.
    let ninth = send(&p, &mut s, "media", 1, UnixMillis(T0.0 + 200), false);
    assert!(!ninth.admitted);
    assert_eq!(ninth.warnings, 3);
    let block = ninth.block.unwrap();
    assert_eq!(block.cause, Cause::RateLimit);
    assert_eq!(ninth.warning, Some(Cause::RateLimit));
}

#[test]
fn eight_identical_callbacks_are_callback_spam() {
    let p = bot();
    let mut s = AdmissionState::default();
    send(&p, &mut s, "callback", 8, T0, true);
    let ninth = send(&p, &mut s, "callback", 1, UnixMillis(T0.0 + 100), true);
    assert_eq!(ninth.warning, Some(Cause::CallbackSpam));
    assert!(ninth.block.is_none(), "0.8 is below the blocking severity");
}

#[test]
fn patterns_look_at_the_latest_ten_and_need_three() {
    let p = bot();
    let mut s = AdmissionState::default();
    // Four identical texts, then six distinct ones: the ten latest hold
    // four identical, no pattern.
    send(&p, &mut s, "text", 4, T0, true);
    send(&p, &mut s, "forward", 6, UnixMillis(T0.0 + 100), false);
    let next = send(&p, &mut s, "text", 1, UnixMillis(T0.0 + 200), true);
    assert_eq!(next.warning, None);
    let mut few = AdmissionState::default();
    let quiet = Patterns {
        min_updates: 3,
        identical_text: PatternRule {
            count: 2,
            severity: 1.0,
        },
        ..Patterns::default()
    };
    let p2 = AdmissionPolicy {
        patterns: Some(quiet),
        ..bot()
    };
    let two = send(&p2, &mut few, "text", 3, T0, true);
    assert!(two.admitted, "two updates show no pattern yet");
}

#[test]
fn the_window_slides() {
    let p = bot();
    let mut s = AdmissionState::default();
    send(&p, &mut s, "text", 8, T0, false);
    let later = send(&p, &mut s, "text", 1, T0.plus(11 * SEC), false);
    assert!(later.admitted);
    assert_eq!(later.used, 1);
}

#[test]
fn the_remembered_updates_are_capped() {
    let p = bot();
    let mut s = AdmissionState::default();
    send(&p, &mut s, "command", RECENT_CAP + 10, T0, false);
    assert_eq!(s.recent.len(), RECENT_CAP);
}
