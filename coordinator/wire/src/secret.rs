//! The shared token, kept out of logs.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::Error;

/// The environment variable the command line reads the shared token from, when `--token` is not
/// given.
pub const TOKEN_ENV: &str = "COHORT_TOKEN";

/// A shared token that authenticates both sides of a handshake.
///
/// The token never crosses the wire: each side proves it holds the token with an HMAC-SHA256
/// over the other side's fresh nonce. `Debug` prints `Secret(<redacted>)`, and there is no
/// `Display`, so the token cannot leak into a log line by accident.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// The shortest accepted token, in bytes. A short token could be guessed offline from a
    /// recorded handshake.
    pub const MIN_LEN: usize = 16;

    /// Wraps a token.
    ///
    /// # Errors
    ///
    /// [`Error::WeakToken`] if it is shorter than [`MIN_LEN`](Self::MIN_LEN) bytes.
    pub fn new(token: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let token = token.into();
        if token.len() < Self::MIN_LEN {
            return Err(Error::WeakToken {
                len: token.len(),
                min: Self::MIN_LEN,
            });
        }
        Ok(Self(token.into()))
    }

    /// The token's bytes, for the HMAC key only.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let secret = Secret::new("correct horse battery staple").unwrap();
        let shown = format!("{secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("horse"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn short_tokens_are_refused_with_advice() {
        let err = "hunter2".parse::<Secret>().unwrap_err();
        assert!(matches!(err, Error::WeakToken { len: 7, min: 16 }));
        assert!(err.to_string().contains("openssl rand"), "{err}");
        assert!(Secret::new(vec![7u8; Secret::MIN_LEN]).is_ok());
    }
}
