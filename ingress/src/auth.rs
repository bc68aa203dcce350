//! HTTP Basic authentication of Dojo's REST deliveries.
//!
//! Dojo's docs do not say whether the credentials are base64-encoded (RFC 7617) or sent
//! literally (as Dojo's own API keys are), so both forms are accepted. Comparison is on
//! SHA-256 digests in constant time, so neither content nor length leaks through timing.

use crate::error::ApiError;
use crate::settings::RestCredentials;
use actix_web::http::header::HeaderValue;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Checks an `Authorization` header against the configured credentials.
pub fn check_basic(
    header: Option<&HeaderValue>,
    expected: &RestCredentials,
) -> Result<(), ApiError> {
    let header = header.ok_or(ApiError::Unauthorized("missing credentials"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::Unauthorized("invalid credentials"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(ApiError::Unauthorized("invalid credentials"))?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ApiError::Unauthorized("invalid credentials"));
    }
    let token = token.trim();
    let want = digest(format!("{}:{}", expected.username, expected.password.expose()).as_bytes());
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .unwrap_or_default();
    // Both candidates are always compared, so timing does not tell which form matched.
    let as_base64 = want.ct_eq(&digest(&decoded));
    let as_literal = want.ct_eq(&digest(token.as_bytes()));
    let non_empty = subtle::Choice::from(u8::from(!decoded.is_empty()));
    if bool::from((as_base64 & non_empty) | as_literal) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("invalid credentials"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::settings::Secret;

    fn creds() -> RestCredentials {
        RestCredentials {
            username: "dojo".into(),
            password: Secret::new("s3cr3t:with:colons"),
        }
    }

    fn check(value: &str) -> bool {
        check_basic(Some(&HeaderValue::from_str(value).unwrap()), &creds()).is_ok()
    }

    #[test]
    fn accepts_rfc7617_base64() {
        let token = base64::engine::general_purpose::STANDARD.encode("dojo:s3cr3t:with:colons");
        assert!(check(&format!("Basic {token}")));
        assert!(check(&format!("basic  {token}")));
    }

    #[test]
    fn accepts_the_literal_form() {
        assert!(check("Basic dojo:s3cr3t:with:colons"));
    }

    #[test]
    fn rejects_everything_else() {
        let wrong = base64::engine::general_purpose::STANDARD.encode("dojo:nope");
        for value in [
            format!("Basic {wrong}"),
            "Basic dojo:nope".into(),
            "Bearer dojo:s3cr3t:with:colons".into(),
            "Basic".into(),
            "Basic ".into(),
            "dojo:s3cr3t:with:colons".into(),
        ] {
            assert!(!check(&value), "{value}");
        }
        assert!(check_basic(None, &creds()).is_err());
    }
}
