//! Recovery codes: one-time codes beside TOTP for a user who lost their
//! authenticator, written for humans (`7KQ2-M9XD-4HTP`) and read back
//! however a human types them.

use std::fmt;

use zeroize::Zeroizing;

use super::FieldError;

/// Digits and capitals without the lookalikes 0/O, 1/I/L and U/V (U goes,
/// V stays): 30 symbols.
const ALPHABET: &[u8; 30] = b"23456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 12 symbols of 30: 58.9 bits, past the 50 a code must have.
const SYMBOLS: usize = 12;
/// Shown in groups of this many, dashes between.
const GROUP: usize = 4;

/// The most codes one set may hold.
pub const MAX_RECOVERY_CODES: u32 = 50;

/// A recovery code in canonical form: 12 symbols, upper case, no dashes.
/// Never printed by Debug.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(Zeroizing<String>);

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

impl RecoveryCode {
    /// A code as a user typed it: case, dashes and spaces do not matter.
    pub fn parse(field: &str, raw: &str) -> Result<RecoveryCode, FieldError> {
        let canonical: String = raw
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let canonical = Zeroizing::new(canonical);
        let well_formed =
            canonical.len() == SYMBOLS && canonical.bytes().all(|b| ALPHABET.contains(&b));
        if !well_formed {
            return Err(FieldError::new(
                field,
                format!(
                    "is not a recovery code: {SYMBOLS} letters and digits such as \
                     7KQ2-M9XD-4HTP (dashes and case do not matter)"
                ),
            ));
        }
        Ok(RecoveryCode(canonical))
    }

    /// A fresh code from the random bytes `fill` writes: uniform over the
    /// alphabet (bytes past the last whole multiple of 30 are drawn again).
    pub fn generate(mut fill: impl FnMut(&mut [u8])) -> RecoveryCode {
        const LIMIT: u8 = 240;
        let mut code = Zeroizing::new(String::with_capacity(SYMBOLS));
        let mut byte = [0u8; 1];
        while code.len() < SYMBOLS {
            fill(&mut byte);
            if byte[0] < LIMIT {
                code.push(char::from(ALPHABET[usize::from(byte[0] % 30)]));
            }
        }
        RecoveryCode(code)
    }

    /// The canonical form, what is hashed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// As it is shown to the user, once: `7KQ2-M9XD-4HTP`.
    pub fn shown(&self) -> Zeroizing<String> {
        let groups: Vec<&str> = (0..SYMBOLS)
            .step_by(GROUP)
            .map(|i| &self.0[i..i + GROUP])
            .collect();
        Zeroizing::new(groups.join("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_however_it_is_typed() {
        let mut seed = 7u8;
        let code = RecoveryCode::generate(|b| {
            seed = seed.wrapping_mul(31).wrapping_add(17);
            b[0] = seed;
        });
        let shown = code.shown();
        assert_eq!(shown.len(), 14);
        assert_eq!(shown.matches('-').count(), 2);
        for typed in [
            shown.to_string(),
            shown.to_lowercase(),
            shown.replace('-', ""),
            format!("  {}  ", shown.as_str()),
            shown.replace('-', " "),
        ] {
            assert_eq!(RecoveryCode::parse("recovery_code", &typed).unwrap(), code);
        }
        for bad in [
            "",
            "7KQ2-M9XD-4HT",
            "7KQ2-M9XD-4HTPX",
            "0KQ2-M9XD-4HTP",
            "IKQ2M9XD4HTP",
            "123456",
        ] {
            let err = RecoveryCode::parse("recovery_code", bad).unwrap_err();
            assert_eq!(err.field, "recovery_code", "{bad:?}");
        }
        assert_eq!(format!("{code:?}"), "RecoveryCode(..)");
    }

    #[test]
    fn every_symbol_is_drawn_and_none_beyond_the_alphabet() {
        let mut next = 0u8;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let code = RecoveryCode::generate(|b| {
                b[0] = next;
                next = next.wrapping_add(1);
            });
            seen.extend(code.as_str().bytes());
        }
        assert_eq!(seen.len(), 30);
        assert!(seen.iter().all(|b| ALPHABET.contains(b)));
    }
}
