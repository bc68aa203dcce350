//! HTTP Basic authentication of Dojo's REST deliveries.
//!
//! Dojo's docs do not say whether the credentials are base64-encoded (RFC 7617) or sent
//! literally (as Dojo's own API keys are), so both forms are accepted. Comparison is on
//! SHA-256 digests in constant time, so neither content nor length leaks through timing.

use crate::error::ApiError;
use crate::settings::RestCredentials;
use actix_web::http::header::HeaderValue;
use base64::Engine;
use common::locations::{Location, Locations};
use sha2::{Digest, Sha256};
use std::sync::Arc;
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

/// The location whose REST credentials the `Authorization` header carries (the routes
/// without a location in their path). The username picks the candidate location, its
/// password is then checked as [`check_basic`] does; both header forms are tried.
pub fn identify_basic(
    header: Option<&HeaderValue>,
    locations: &Locations,
) -> Result<Arc<Location>, ApiError> {
    let header = header.ok_or(ApiError::Unauthorized("missing credentials"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, token)| token.trim())
        .ok_or(ApiError::Unauthorized("invalid credentials"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|d| String::from_utf8(d).ok());
    for candidate in [decoded.as_deref(), Some(token)].into_iter().flatten() {
        let Some((username, _)) = candidate.split_once(':') else {
            continue;
        };
        let Some(location) = locations.by_rest_username(username) else {
            continue;
        };
        let credentials = location
            .rest
            .as_ref()
            .expect("indexed by its REST username");
        if check_basic(Some(header), credentials).is_ok() {
            return Ok(location.clone());
        }
    }
    Err(ApiError::Unauthorized("invalid credentials"))
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
    fn the_username_picks_the_location_and_its_password_must_match() {
        let locations = Locations::from_toml(
            "[[location]]\nid = \"a\"\naccount_id = \"acc_a\"\nrest_username = \"dojo-a\"\nrest_password = \"pa\"\n\
             [[location]]\nid = \"b\"\naccount_id = \"acc_b\"\nrest_username = \"dojo-b\"\nrest_password = \"pb\"",
        )
        .unwrap();
        let who = |value: &str| {
            identify_basic(Some(&HeaderValue::from_str(value).unwrap()), &locations)
                .map(|l| l.id.clone())
                .ok()
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            who(&format!("Basic {}", b64("dojo-a:pa"))).as_deref(),
            Some("a")
        );
        assert_eq!(who("Basic dojo-b:pb").as_deref(), Some("b"));
        assert_eq!(who("Basic dojo-a:pb"), None, "b's password does not open a");
        assert_eq!(who(&format!("Basic {}", b64("nobody:pa"))), None);
        assert!(identify_basic(None, &locations).is_err());
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
