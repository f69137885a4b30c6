//! Tencent's callback authentication: `Sign` = lower-case hex SHA-256 of the token immediately followed
//! by `RequestTime` (unix seconds). The scheme covers neither the body nor the rest of the query; see
//! docs/security.md for what that means.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Refusal;

/// The callback token set in Tencent's console. Its `Debug` never shows the value, so a settings dump
/// or an error chain cannot leak it.
#[derive(Clone)]
pub struct CallbackToken(String);

impl CallbackToken {
    /// `None` for an empty token: an empty secret authenticates nothing.
    pub fn new(token: String) -> Option<Self> {
        (!token.is_empty()).then_some(Self(token))
    }
}

impl std::fmt::Debug for CallbackToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackToken([redacted])")
    }
}

/// The `Sign` Tencent computes for `token` at `request_time`.
pub fn sign(token: &CallbackToken, request_time: &str) -> String {
    let mut h = Sha256::new();
    h.update(token.0.as_bytes());
    h.update(request_time.as_bytes());
    hex::encode(h.finalize())
}

pub(super) fn verify(
    token: &CallbackToken,
    request_time: Option<&str>,
    given: Option<&str>,
    now_secs: u64,
    max_skew_secs: u64,
) -> Result<(), Refusal> {
    let (Some(request_time), Some(given)) = (request_time, given) else {
        return Err(Refusal::MissingSign);
    };
    if request_time.is_empty() || request_time.len() > 12 || !request_time.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Refusal::BadRequestTime);
    }
    let t: u64 = request_time.parse().map_err(|_| Refusal::BadRequestTime)?;
    let skew_secs = t.abs_diff(now_secs);
    if skew_secs > max_skew_secs {
        return Err(Refusal::StaleRequestTime { skew_secs, max_skew_secs });
    }
    let expected = sign(token, request_time);
    // Constant time, so the answer's timing says nothing about how much of a guessed Sign was right.
    // Tencent sends lower case; upper-case hex of the same digest is the same signature.
    let given = given.to_ascii_lowercase();
    if expected.as_bytes().ct_eq(given.as_bytes()).into() {
        Ok(())
    } else {
        Err(Refusal::BadSign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> CallbackToken {
        CallbackToken::new("xxxxyyyy".into()).unwrap()
    }

    #[test]
    fn tencents_published_example_signs_as_documented() {
        assert_eq!(
            sign(&token(), "1669872112"),
            "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061"
        );
    }

    #[test]
    fn a_correct_sign_within_the_window_passes() {
        let s = sign(&token(), "1669872112");
        assert_eq!(verify(&token(), Some("1669872112"), Some(&s), 1669872112 + 60, 60), Ok(()));
        assert_eq!(verify(&token(), Some("1669872112"), Some(&s.to_uppercase()), 1669872112, 60), Ok(()));
    }

    #[test]
    fn a_request_time_older_than_the_window_is_a_replay() {
        let s = sign(&token(), "1669872112");
        assert_eq!(
            verify(&token(), Some("1669872112"), Some(&s), 1669872112 + 61, 60),
            Err(Refusal::StaleRequestTime { skew_secs: 61, max_skew_secs: 60 })
        );
    }

    #[test]
    fn a_wrong_sign_or_a_missing_one_is_refused() {
        assert_eq!(verify(&token(), Some("1669872112"), Some("00"), 1669872112, 60), Err(Refusal::BadSign));
        assert_eq!(verify(&token(), Some("1669872112"), None, 1669872112, 60), Err(Refusal::MissingSign));
        assert_eq!(verify(&token(), None, Some("00"), 1669872112, 60), Err(Refusal::MissingSign));
        assert_eq!(verify(&token(), Some("-5"), Some("00"), 1669872112, 60), Err(Refusal::BadRequestTime));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        assert!(!format!("{:?}", token()).contains("xxxxyyyy"));
    }
}
