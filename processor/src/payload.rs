//! The stored payload of an event: any valid JSON text, kept losslessly.
//!
//! `dojo_events.payload` is `jsonb`, which cannot hold every valid JSON text: it refuses
//! the escape `\u0000` and unpaired surrogate escapes (`\ud800`), refuses numbers beyond
//! its `numeric` range (`1e131072`) and expands huge exponents digit by digit, and keeps
//! only the last of duplicate object keys. Ingress accepts such bodies (they are valid
//! JSON, and an odd unknown field must never cost a real payment), so here each event
//! gets:
//! - `payload`: the body itself when `jsonb` holds it exactly (nearly always), else a
//!   copy `jsonb` can hold: those escapes replaced by U+FFFD, such numbers written as
//!   strings;
//! - `payload_text`: `NULL` when `payload` is exact, else the body exactly as received.

use std::borrow::Cow;
use std::collections::HashSet;

/// A number token longer than this, or with an exponent beyond ±[`MAX_EXPONENT`], is
/// kept as a string in the `jsonb` copy (no `f64` reaches either).
const MAX_NUMBER_LEN: usize = 100;
const MAX_EXPONENT: u32 = 308;

/// The two payload columns of one event.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    /// What goes into `payload` (`jsonb`).
    pub jsonb: Cow<'a, str>,
    /// What goes into `payload_text`: the exact body when `jsonb` is not an exact copy.
    pub exact: Option<&'a str>,
}

/// Splits a valid JSON text (the processor only stores bodies that parsed) into the
/// payload columns.
pub fn storable(raw: &str) -> Payload<'_> {
    let mut scan = Scan {
        raw: raw.as_bytes(),
        at: 0,
        copied: 0,
        out: String::new(),
        lossy: false,
        objects: Vec::new(),
    };
    scan.run();
    if scan.out.is_empty() && !scan.lossy {
        return Payload {
            jsonb: Cow::Borrowed(raw),
            exact: None,
        };
    }
    let jsonb = if scan.out.is_empty() {
        Cow::Borrowed(raw)
    } else {
        scan.out.push_str(&raw[scan.copied..]);
        Cow::Owned(scan.out)
    };
    Payload {
        jsonb,
        exact: Some(raw),
    }
}

/// One pass over the text, copying it lazily into `out` only once something must change.
struct Scan<'a> {
    raw: &'a [u8],
    at: usize,
    /// `raw[..copied]` is already in `out` (when `out` is in use).
    copied: usize,
    out: String,
    /// Set when `jsonb` would lose something without the text changing (duplicate keys).
    lossy: bool,
    /// Per open container: `Some(keys seen, expecting a key)` for an object, `None` for an array.
    objects: Vec<Option<(HashSet<String>, bool)>>,
}

impl Scan<'_> {
    fn run(&mut self) {
        while self.at < self.raw.len() {
            match self.raw[self.at] {
                b'"' => self.string(),
                b'-' | b'0'..=b'9' => self.number(),
                b'{' => self.open(Some((HashSet::new(), true))),
                b'[' => self.open(None),
                b'}' | b']' => {
                    self.objects.pop();
                    self.at += 1;
                }
                b',' => {
                    if let Some(Some((_, expecting))) = self.objects.last_mut() {
                        *expecting = true;
                    }
                    self.at += 1;
                }
                _ => self.at += 1,
            }
        }
    }

    fn open(&mut self, container: Option<(HashSet<String>, bool)>) {
        self.objects.push(container);
        self.at += 1;
    }

    /// Replaces `raw[from..to]` by `with` in the output.
    fn replace(&mut self, from: usize, to: usize, with: &str) {
        let raw = std::str::from_utf8(self.raw).expect("valid UTF-8");
        self.out.push_str(&raw[self.copied..from]);
        self.out.push_str(with);
        self.copied = to;
    }

    fn hex_at(&self, i: usize) -> Option<u16> {
        let digits = self.raw.get(i..i + 4)?;
        u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    }

    fn low_surrogate_at(&self, i: usize) -> bool {
        self.raw.get(i..i + 2) == Some(b"\\u".as_slice())
            && self
                .hex_at(i + 2)
                .is_some_and(|c| (0xDC00..=0xDFFF).contains(&c))
    }

    fn string(&mut self) {
        let start = self.at;
        self.at += 1;
        while self.at < self.raw.len() && self.raw[self.at] != b'"' {
            if self.raw[self.at] != b'\\' {
                self.at += 1;
                continue;
            }
            if self.raw.get(self.at + 1) != Some(&b'u') {
                self.at += 2;
                continue;
            }
            let code = self.hex_at(self.at + 2).unwrap_or(0xFFFD);
            let paired_high =
                (0xD800..=0xDBFF).contains(&code) && self.low_surrogate_at(self.at + 6);
            if paired_high {
                self.at += 12;
            } else if code == 0 || (0xD800..=0xDFFF).contains(&code) {
                self.replace(self.at, self.at + 6, "\\ufffd");
                self.at += 6;
            } else {
                self.at += 6;
            }
        }
        self.at += 1;
        let end = self.at.min(self.raw.len());
        self.key(start, end);
    }

    /// Notes the string at `raw[start..end]` if it is an object key.
    fn key(&mut self, start: usize, end: usize) {
        let Some(Some((keys, expecting))) = self.objects.last_mut() else {
            return;
        };
        if !*expecting {
            return;
        }
        *expecting = false;
        let text = &self.raw[start..end];
        let key = serde_json::from_slice::<String>(text)
            .unwrap_or_else(|_| String::from_utf8_lossy(text).into_owned());
        if !keys.insert(key) {
            self.lossy = true;
        }
    }

    fn number(&mut self) {
        let start = self.at;
        while self.at < self.raw.len()
            && matches!(
                self.raw[self.at],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.at += 1;
        }
        let token = std::str::from_utf8(&self.raw[start..self.at]).expect("ASCII");
        let exponent_too_big = token
            .split(['e', 'E'])
            .nth(1)
            .map(|e| e.trim_start_matches(['+', '-']).trim_start_matches('0'))
            .is_some_and(|e| e.len() > 3 || e.parse::<u32>().unwrap_or(0) > MAX_EXPONENT);
        if token.len() > MAX_NUMBER_LEN || exponent_too_big {
            let quoted = format!("\"{token}\"");
            self.replace(start, self.at, &quoted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_bodies_are_stored_as_they_are() {
        for body in [
            r#"{"id":"e","data":{"a":[1,2.5,-3e10,"x\"y\\\\u0000z"],"b":null}}"#,
            r#"{"emoji":"\ud83d\ude00","text":"caf\u00e9 \u0001","n":1e308}"#,
            r#"{"a":{"k":1},"b":{"k":2},"k":[{"k":3}]}"#,
        ] {
            assert_eq!(
                storable(body),
                Payload {
                    jsonb: Cow::Borrowed(body),
                    exact: None
                },
                "{body}"
            );
        }
    }

    #[test]
    fn what_jsonb_refuses_is_replaced_in_the_copy_and_kept_exactly() {
        let cases = [
            (r#"{"note":"a\u0000b"}"#, r#"{"note":"a\ufffdb"}"#),
            (r#"{"\u0000":1}"#, r#"{"\ufffd":1}"#),
            (r#"{"a":"\ud800"}"#, r#"{"a":"\ufffd"}"#),
            (r#"{"a":"\uDBFFx\udc00"}"#, r#"{"a":"\ufffdx\ufffd"}"#),
            (
                r#"{"a":"\ud800\ud800\udc00"}"#,
                r#"{"a":"\ufffd\ud800\udc00"}"#,
            ),
            (r#"{"a":1e999999}"#, r#"{"a":"1e999999"}"#),
            (r#"{"a":[0.0e-20000,2]}"#, r#"{"a":["0.0e-20000",2]}"#),
        ];
        for (body, copy) in cases {
            let p = storable(body);
            assert_eq!(p.jsonb, copy, "{body}");
            assert_eq!(p.exact, Some(body));
            serde_json::from_str::<serde_json::Value>(&p.jsonb).expect("the copy is JSON");
        }
        let long = format!(r#"{{"a":0.{}1}}"#, "0".repeat(200));
        assert!(storable(&long).exact.is_some());
    }

    #[test]
    fn duplicate_keys_keep_the_exact_text() {
        for body in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"x":{"k":[1,{"k":1}],"k":2}}"#,
        ] {
            let p = storable(body);
            assert_eq!(p.jsonb, body);
            assert_eq!(p.exact, Some(body), "{body}");
        }
    }
}
