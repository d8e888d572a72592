//! Text from others made safe to show on a terminal or to put in a shell comment: what a
//! terminal or a reader would act on instead of show is written as a `\u{…}` escape.
//!
//! SECURITY: an agent names what an approver sees (a held request's path), a server answers what
//! the CLI prints (an error's message), a path goes into a line a shell evaluates (`ca env`'s
//! comments). Raw, a control character (C0, DEL, C1 such as the CSI `U+009B`) drives the
//! terminal (colours, a cleared screen, a rewritten line), a line or paragraph separator ends a
//! shell comment (the rest of the line runs under `eval`), and a bidirectional control (`U+202E`)
//! shows the approver another order of the same characters.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` is written escaped (see the module's text).
fn escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every character a terminal or a reader would act on written as `\u{…}`.
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` (lines for a terminal: a table, a report) with each line [`shown`]; its own line
/// breaks stay.
pub fn lines_shown(text: &str) -> String {
    text.split('\n').map(shown).collect::<Vec<_>>().join("\n")
}

/// `json` (serialized JSON, pretty or not) with the same characters written as JSON's own
/// `\uXXXX` escapes: still the same JSON, shown safely (serde escapes only C0 controls). Its
/// line breaks between members stay.
pub fn json_shown(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| c != '\n' && escaped(c)) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if c != '\n' && escaped(c) {
            // Every escaped character is in the Basic Multilingual Plane.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_terminal_or_a_reader_acts_on_is_escaped() {
        assert_eq!(shown("/pay/invoice 12"), "/pay/invoice 12");
        assert!(matches!(shown("plain"), Cow::Borrowed(_)));
        assert_eq!(
            shown("/hold/x\u{9b}2J\u{202e}evil"),
            "/hold/x\\u{009b}2J\\u{202e}evil"
        );
        assert_eq!(
            shown("a\nb\rc\u{1b}[31m"),
            "a\\u{000a}b\\u{000d}c\\u{001b}[31m"
        );
        assert_eq!(shown("x\u{2028}y\u{7f}"), "x\\u{2028}y\\u{007f}");
        // Letters of every script stay as they are.
        assert_eq!(shown("café 東京 שלום"), "café 東京 שלום");
    }

    #[test]
    fn a_tables_lines_stay_lines() {
        assert_eq!(
            lines_shown("acme ok\nglobex \u{1b}[2J\n"),
            "acme ok\nglobex \\u{001b}[2J\n"
        );
    }

    #[test]
    fn json_stays_the_same_json() {
        let value = serde_json::json!({"path": "/pay\u{202e}evil\u{9b}2J", "n": 1});
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        let shown = json_shown(&pretty);
        assert!(
            !shown.contains('\u{202e}') && !shown.contains('\u{9b}'),
            "{shown}"
        );
        assert!(shown.contains("\\u202e"), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, value);
        assert_eq!(shown.lines().count(), pretty.lines().count());
    }
}
