//! Dojo webhook signatures: `sha256=` + HMAC-SHA256 of the raw body, keyed with the
//! secret's UTF-8 bytes as-is, written as uppercase hex byte pairs joined by `-`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `dojo-signature` header value Dojo would send for `body` signed with `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let digest = mac(secret, body);
    let pairs: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256={}", pairs.join("-"))
}

/// Decodes a header value into the 32 digest bytes; `None` if it is not in Dojo's format
/// (`sha256=` then 32 hex byte pairs joined by `-`, dojo-api.md §2b). Hex digits are
/// accepted in either case; the `sha256=` prefix is case-insensitive; surrounding
/// whitespace is ignored.
fn decode(header: &str) -> Option<[u8; 32]> {
    let header = header.trim().as_bytes();
    const PREFIX: &[u8] = b"sha256=";
    // 32 pairs and the 31 dashes between them.
    if header.len() != PREFIX.len() + 32 * 3 - 1
        || !header[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
    {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, chunk) in header[PREFIX.len()..].chunks(3).enumerate() {
        if let [_, _, sep] = chunk {
            if *sep != b'-' {
                return None;
            }
        }
        out[i] = nibble(chunk[0])? << 4 | nibble(chunk[1])?;
    }
    Some(out)
}

/// True if `header` is a valid signature of `body` under any of `secrets` (rotation).
/// Every secret is tried, and each comparison is constant-time.
pub fn verify<S: AsRef<str>>(secrets: &[S], body: &[u8], header: &str) -> bool {
    let Some(given) = decode(header) else {
        return false;
    };
    secrets.iter().fold(false, |ok, secret| {
        let expected = mac(secret.as_ref(), body);
        ok | bool::from(expected.ct_eq(&given))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"id":"evt_hnnHxIKR_Uy6bhZCusCltw","event":"payment_intent.created","accountId":"acc_test","createdAt":"2022-02-01T13:07:41.8667859Z","data":{"paymentIntentId":"pi_vpwd4ooAPEqyNAQe4z89WQ","paymentStatus":"Created","captureMode":"Auto"}}"#;
    const VECTORS: [(&str, &str); 2] = [
        (
            "ws_OYsyzcrH70GpJfs8MMkKpg",
            "sha256=94-AC-93-67-D6-8B-69-6D-15-A2-C2-45-40-98-B5-E7-64-72-38-C5-1F-6D-32-D0-5F-CB-91-20-A9-20-64-F4",
        ),
        (
            "PDYkJQq6sESYHp_zJuTTBQ",
            "sha256=4B-49-F8-FE-25-A7-E6-7D-00-4F-A7-9C-F8-0B-63-00-C7-77-B4-F2-2D-E5-E1-22-84-FA-04-18-50-A1-76-FD",
        ),
    ];

    #[test]
    fn signs_the_published_test_vectors() {
        for (secret, expected) in VECTORS {
            assert_eq!(sign(secret, BODY.as_bytes()), expected);
        }
    }

    #[test]
    fn verifies_the_published_test_vectors() {
        for (secret, header) in VECTORS {
            assert!(verify(&[secret], BODY.as_bytes(), header));
            assert!(verify(&[secret], BODY.as_bytes(), &header.to_lowercase()));
        }
    }

    #[test]
    fn accepts_any_configured_secret_for_rotation() {
        let secrets = ["old-secret", VECTORS[1].0, "newer"];
        assert!(verify(&secrets, BODY.as_bytes(), VECTORS[1].1));
        assert!(!verify(&secrets, BODY.as_bytes(), VECTORS[0].1));
    }

    #[test]
    fn rejects_tampering_and_malformed_headers() {
        let (secret, header) = VECTORS[0];
        let tampered = BODY.replace("Created", "Captured");
        assert!(!verify(&[secret], tampered.as_bytes(), header));
        assert!(!verify(&[secret], format!("{BODY}\n").as_bytes(), header));
        for bad in [
            "",
            "sha256=",
            "sha1=94-AC",
            &header.replace('-', ""),
            &header[..header.len() - 3],
            &format!("{header}-00"),
            "sha256=ZZ-AC-93-67-D6-8B-69-6D-15-A2-C2-45-40-98-B5-E7-64-72-38-C5-1F-6D-32-D0-5F-CB-91-20-A9-20-64-F4",
            // The right length, but a sign, a wrong separator, or a non-ASCII digit.
            &header.replacen("94-", "+9-", 1),
            &header.replacen("94-", "94:", 1),
            &header.replacen("-F4", "-é", 1),
            &header.replacen("sha256=", "sha256:", 1),
        ] {
            assert!(!verify(&[secret], BODY.as_bytes(), bad), "{bad}");
        }
        assert!(!verify::<&str>(&[], BODY.as_bytes(), header));
    }
}
