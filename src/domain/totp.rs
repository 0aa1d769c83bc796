//! RFC 6238 codes: parsing what a user typed and judging it against a
//! secret, a clock and the last step already accepted.

use totp_rs::{Algorithm, Builder};

use super::{FieldError, UnixMillis};

/// The HMAC of a TOTP secret. SHA1 is what every authenticator app
/// supports; the others exist for the apps and tokens that do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl TotpAlgorithm {
    pub const ALL: [TotpAlgorithm; 3] = [Self::Sha1, Self::Sha256, Self::Sha512];

    pub fn as_str(self) -> &'static str {
        match self {
            TotpAlgorithm::Sha1 => "SHA1",
            TotpAlgorithm::Sha256 => "SHA256",
            TotpAlgorithm::Sha512 => "SHA512",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    fn hmac(self) -> Algorithm {
        match self {
            TotpAlgorithm::Sha1 => Algorithm::SHA1,
            TotpAlgorithm::Sha256 => Algorithm::SHA256,
            TotpAlgorithm::Sha512 => Algorithm::SHA512,
        }
    }
}

/// How a user's codes are made. Stored with each secret, so changing the
/// defaults later breaks no enrolled user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotpParams {
    pub algorithm: TotpAlgorithm,
    /// 6 to 8.
    pub digits: u8,
    /// Seconds per step.
    pub period: u32,
}

impl TotpParams {
    /// Checks the bounds; errors name the field as the caller's input
    /// spells it (`digits_field`, `period_field`).
    pub fn validate(&self, digits_field: &str, period_field: &str) -> Result<(), FieldError> {
        if !(6..=8).contains(&self.digits) {
            return Err(FieldError::new(digits_field, "must be 6, 7 or 8"));
        }
        if !(15..=120).contains(&self.period) {
            return Err(FieldError::new(period_field, "must be 15 to 120 seconds"));
        }
        Ok(())
    }

    /// A totp-rs generator for `secret` that checks exactly one step.
    fn generator(&self, secret: &[u8]) -> totp_rs::Totp {
        Builder::new()
            .with_algorithm(self.algorithm.hmac())
            .with_digits(self.digits)
            .with_skew(0)
            .with_step_duration(u64::from(self.period))
            .with_secret(secret.to_vec())
            .build_noncompliant()
    }

    /// The step `now` falls in.
    pub fn step_at(&self, now: UnixMillis) -> u64 {
        u64::try_from(now.0.max(0) / 1000).unwrap_or(0) / u64::from(self.period)
    }
}

/// What an authenticator app needs to add an account.
pub struct Provisioning {
    /// otpauth://totp/ISSUER:ACCOUNT?secret=...
    pub uri: String,
    pub qr_png: Vec<u8>,
}

/// The otpauth URI and its QR code. CPU-bound (the PNG): call it off the
/// async threads. Fails when the issuer or account name holds a ':'.
pub fn provisioning(
    params: &TotpParams,
    secret: &[u8],
    issuer: &str,
    account: &str,
) -> Result<Provisioning, String> {
    let totp = Builder::new()
        .with_algorithm(params.algorithm.hmac())
        .with_digits(params.digits)
        .with_step_duration(u64::from(params.period))
        .with_secret(secret.to_vec())
        .with_issuer(Some(issuer))
        .with_account_name(account)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Provisioning {
        uri: totp.to_url().map_err(|e| e.to_string())?,
        qr_png: totp.to_qr_png().map_err(|e| e.to_string())?,
    })
}

/// What a user typed, checked for shape only: exactly `digits` ASCII
/// digits. No trimming, no separators: Vault's HCSEC-2025-17 came from
/// normalising codes.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code(***)")
    }
}

impl Code {
    pub fn parse(field: &str, raw: &str, digits: u8) -> Result<Code, FieldError> {
        if raw.len() != usize::from(digits) || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(
                field,
                format!("must be exactly {digits} ASCII digits"),
            ));
        }
        Ok(Code(raw.to_owned()))
    }
}

/// The verdict on one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// Matches `step`, which is later than any step accepted before.
    Valid {
        step: u64,
    },
    /// Matches a step at or before the last one accepted.
    Replayed,
    /// Matches a step outside the accepted window but within the probe:
    /// the device clock is `drift_steps` steps off (positive: ahead).
    ClockSkew {
        drift_steps: i64,
    },
    Invalid,
}

/// How far from "now" codes are accepted, and how far they are recognised
/// as a wrong clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Steps either side of the current one that are accepted (RFC 6238
    /// recommends 1).
    pub skew: u32,
    /// Steps either side, beyond `skew`, where a match means "fix the
    /// clock" rather than "wrong code".
    pub probe: u32,
}

/// Judges `code` at `now`. Each candidate step is compared in constant
/// time (totp-rs compares tokens with constant_time_eq).
pub fn check_code(
    params: &TotpParams,
    secret: &[u8],
    code: &Code,
    now: UnixMillis,
    window: Window,
    last_step: Option<u64>,
) -> CodeCheck {
    let generator = params.generator(secret);
    let current = i64::try_from(params.step_at(now)).unwrap_or(i64::MAX);
    let matches = |offset: i64| -> Option<u64> {
        let step = u64::try_from(current.checked_add(offset)?).ok()?;
        let time = step.checked_mul(u64::from(params.period))?;
        generator.check(&code.0, time).map(|_| step)
    };
    let skew = i64::from(window.skew);
    let accepted: Vec<u64> = (-skew..=skew).filter_map(matches).collect();
    if !accepted.is_empty() {
        // Two steps matching one code is a 1-in-10^digits coincidence; the
        // newest unused one is the one to take.
        return match accepted
            .into_iter()
            .filter(|&s| last_step.is_none_or(|l| s > l))
            .max()
        {
            Some(step) => CodeCheck::Valid { step },
            None => CodeCheck::Replayed,
        };
    }
    let reach = skew + i64::from(window.probe);
    (skew + 1..=reach)
        .flat_map(|d| [d, -d])
        .find(|&d| matches(d).is_some())
        .map_or(CodeCheck::Invalid, |drift_steps| CodeCheck::ClockSkew {
            drift_steps,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Window = Window { skew: 1, probe: 10 };

    fn sha1() -> TotpParams {
        TotpParams {
            algorithm: TotpAlgorithm::Sha1,
            digits: 6,
            period: 30,
        }
    }

    fn code_at(params: &TotpParams, secret: &[u8], secs: u64) -> Code {
        Code(params.generator(secret).generate(secs).to_string())
    }

    #[test]
    fn codes_must_be_exactly_digits() {
        assert!(Code::parse("code", "123456", 6).is_ok());
        for bad in [
            "12345",
            "1234567",
            " 123456",
            "123 456",
            "12345a",
            "+12345",
            "１２３４５６",
        ] {
            assert_eq!(
                Code::parse("code", bad, 6).unwrap_err().field,
                "code",
                "{bad:?}"
            );
        }
        assert!(!format!("{:?}", Code::parse("c", "123456", 6).unwrap()).contains("123456"));
    }

    #[test]
    fn accepts_the_current_step_and_one_either_side() {
        let secret = b"12345678901234567890";
        let now = UnixMillis(1_000_000 * 1000);
        let p = sha1();
        let step = p.step_at(now);
        for (offset, expected) in [(-1i64, true), (0, true), (1, true)] {
            let t = (step as i64 + offset) as u64 * 30;
            let check = check_code(&p, secret, &code_at(&p, secret, t), now, WINDOW, None);
            assert_eq!(
                matches!(check, CodeCheck::Valid { .. }),
                expected,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn a_used_step_is_a_replay() {
        let secret = b"12345678901234567890";
        let now = UnixMillis(1_000_000 * 1000);
        let p = sha1();
        let code = code_at(&p, secret, 1_000_000);
        let CodeCheck::Valid { step } = check_code(&p, secret, &code, now, WINDOW, None) else {
            panic!("valid");
        };
        assert_eq!(
            check_code(&p, secret, &code, now, WINDOW, Some(step)),
            CodeCheck::Replayed
        );
        let older = code_at(&p, secret, 1_000_000 - 30);
        assert_eq!(
            check_code(&p, secret, &older, now, WINDOW, Some(step)),
            CodeCheck::Replayed
        );
    }

    #[test]
    fn a_code_minutes_away_is_clock_skew() {
        let secret = b"12345678901234567890";
        let now = UnixMillis(1_000_020 * 1000);
        let p = sha1();
        let ahead = code_at(&p, secret, 1_000_020 + 4 * 30);
        assert_eq!(
            check_code(&p, secret, &ahead, now, WINDOW, None),
            CodeCheck::ClockSkew { drift_steps: 4 }
        );
        let behind = code_at(&p, secret, 1_000_020 - 3 * 30);
        assert_eq!(
            check_code(&p, secret, &behind, now, WINDOW, None),
            CodeCheck::ClockSkew { drift_steps: -3 }
        );
        let far = code_at(&p, secret, 1_000_020 + 40 * 30);
        assert_eq!(
            check_code(&p, secret, &far, now, WINDOW, None),
            CodeCheck::Invalid
        );
    }

    #[test]
    fn provisioning_gives_an_otpauth_uri_and_a_png() {
        let p = provisioning(&sha1(), b"12345678901234567890", "authgate", "alice").unwrap();
        assert!(
            p.uri.starts_with("otpauth://totp/authgate:alice?"),
            "{}",
            p.uri
        );
        assert!(p.uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"));
        assert_eq!(&p.qr_png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(provisioning(&sha1(), b"12345678901234567890", "authgate", "a:b").is_err());
    }

    #[test]
    fn params_are_bounded() {
        let mut p = sha1();
        p.digits = 9;
        assert_eq!(p.validate("d", "p").unwrap_err().field, "d");
        p.digits = 8;
        p.period = 5;
        assert_eq!(p.validate("d", "p").unwrap_err().field, "p");
    }
}
