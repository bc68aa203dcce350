//! Any secret, body and header: verification never panics, and what `sign` produces
//! always verifies (and never under another secret's list alone).
#![no_main]

use common::signature::{sign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let (secret, rest) = rest.split_at((split as usize).min(rest.len()));
    let secret = String::from_utf8_lossy(secret);
    let (header, body) = rest.split_at(rest.len() / 2);
    let _ = verify(&[secret.as_ref()], body, &String::from_utf8_lossy(header));
    let signature = sign(&secret, body);
    assert!(verify(&[secret.as_ref()], body, &signature));
    assert!(verify(&["another-secret", secret.as_ref()], body, &signature));
});
