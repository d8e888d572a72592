//! The JSON of a chained line's own fields, written member by member.
//!
//! A line is `{"seq":N,"prev":"<hex>"` followed by its record's members. A request record is
//! written on every request, and serde_json spends most of its time there scanning each key and
//! value for characters to escape, byte by byte: [`Members`] writes the keys (fixed, never
//! escaped) as they are and checks a value's bytes in one pass before copying it, falling back
//! to serde_json only for a value that needs escaping. The bytes are exactly serde_json's, so
//! the chain, `audit verify` and every reader see the same lines as before; other records go
//! through serde as a whole ([`Members::serde_members`]).

use serde::Serialize;

/// A record whose fields make the rest of a chained line.
pub trait Fields {
    /// Appends the record's members to `out`, each preceded by a comma, in field order.
    fn write_fields(&self, out: &mut Members<'_>) -> serde_json::Result<()>;
}

/// Appends JSON object members (`,"key":value`) to a line. Keys are the record's field names:
/// plain ASCII that needs no escaping.
#[derive(Debug)]
pub struct Members<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Members<'a> {
    /// Members appended to `out`, after a first member already there.
    pub fn after(out: &'a mut Vec<u8>) -> Self {
        Members { out }
    }

    fn key(&mut self, key: &'static str) {
        debug_assert!(!needs_escape(key.as_bytes()), "{key}");
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A string member.
    pub fn str(&mut self, key: &'static str, value: &str) -> serde_json::Result<()> {
        self.key(key);
        push_string(self.out, value)
    }

    /// A string member, `null` when absent.
    pub fn opt_str(&mut self, key: &'static str, value: Option<&str>) -> serde_json::Result<()> {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
                Ok(())
            }
        }
    }

    /// An array of strings.
    pub fn strs(&mut self, key: &'static str, values: &[String]) -> serde_json::Result<()> {
        self.key(key);
        self.out.push(b'[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            push_string(self.out, v)?;
        }
        self.out.push(b']');
        Ok(())
    }

    /// An unsigned integer.
    pub fn uint(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// `true` or `false`.
    pub fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// Any other value (numbers with a fraction, nested objects), as serde_json writes it.
    pub fn value<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        self.key(key);
        serde_json::to_writer(&mut *self.out, value)
    }

    /// Appends the members of `record`, whatever it is, as serde writes it (an object) as
    /// `,…`: the object's opening brace becomes the comma, and its closing brace is dropped;
    /// an empty object adds nothing.
    pub fn serde_members<T: Serialize>(&mut self, record: &T) -> serde_json::Result<()> {
        let out = &mut *self.out;
        let start = out.len();
        serde_json::to_writer(&mut *out, record)?;
        match out.get(start..) {
            Some(b"{}") => out.truncate(start),
            Some([b'{', .., b'}']) => {
                out[start] = b',';
                out.pop();
            }
            _ => {
                out.truncate(start);
                return Err(serde::ser::Error::custom(
                    "a chained line's record must be a JSON object",
                ));
            }
        }
        Ok(())
    }
}

/// Appends `value` as a JSON string, as serde_json writes it.
pub fn push_string(out: &mut Vec<u8>, value: &str) -> serde_json::Result<()> {
    if needs_escape(value.as_bytes()) {
        return serde_json::to_writer(&mut *out, value);
    }
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether serde_json escapes any of `bytes`: control characters, `"` and `\` (nothing else,
/// not even DEL or non-ASCII). One pass without early exit, which the compiler vectorizes.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every byte value and the awkward characters, in short and long strings.
    fn samples() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            "plain",
            "quote\"inside",
            "back\\slash",
            "new\nline\ttab\r\u{0}\u{1f}",
            "del\u{7f}",
            "é ü 中文 🦀",
            "\u{2028}\u{2029}",
            "</script>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push((0u8..128).map(char::from).collect());
        v.push("x".repeat(300) + "\"" + &"y".repeat(300));
        v
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for s in samples() {
            let mut ours = Vec::new();
            push_string(&mut ours, &s).unwrap();
            assert_eq!(ours, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn members_are_written_as_serde_json_writes_an_object() {
        #[derive(Serialize)]
        struct Reference<'a> {
            a: &'a str,
            b: Option<&'a str>,
            c: Option<&'a str>,
            d: &'a [String],
            e: u64,
            f: bool,
            g: f64,
        }
        let strings = samples();
        for s in &strings {
            let reference = Reference {
                a: s,
                b: Some(s),
                c: None,
                d: &strings,
                e: u64::MAX,
                f: true,
                g: 0.1 + 0.2,
            };
            let mut line = b"{\"first\":1".to_vec();
            let mut m = Members::after(&mut line);
            m.str("a", s).unwrap();
            m.opt_str("b", Some(s)).unwrap();
            m.opt_str("c", None).unwrap();
            m.strs("d", &strings).unwrap();
            m.uint("e", u64::MAX);
            m.bool("f", true);
            m.value("g", &(0.1 + 0.2)).unwrap();
            line.push(b'}');
            let mut expected = b"{\"first\":1".to_vec();
            Members::after(&mut expected)
                .serde_members(&reference)
                .unwrap();
            expected.push(b'}');
            assert_eq!(
                String::from_utf8(line).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn serde_members_drop_the_braces_and_refuse_what_is_not_an_object() {
        #[derive(Serialize)]
        struct Empty {}
        #[derive(Serialize)]
        struct One {
            k: u8,
        }
        let mut out = b"{\"s\":1".to_vec();
        Members::after(&mut out).serde_members(&Empty {}).unwrap();
        assert_eq!(out, b"{\"s\":1");
        Members::after(&mut out)
            .serde_members(&One { k: 7 })
            .unwrap();
        assert_eq!(out, b"{\"s\":1,\"k\":7");
        for not_an_object in [
            serde_json::json!([1]),
            serde_json::json!("x"),
            serde_json::json!(3),
        ] {
            let err = Members::after(&mut out)
                .serde_members(&not_an_object)
                .unwrap_err();
            assert!(err.to_string().contains("JSON object"), "{err}");
            assert_eq!(out, b"{\"s\":1,\"k\":7", "nothing is left behind");
        }
    }
}
