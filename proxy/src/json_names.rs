//! How lenient JSON decoders match object member names.
//!
//! Go's `encoding/json` (behind many MCP servers and OpenAI-compatible servers: Ollama, LocalAI,
//! one-api) matches a member to a struct field ignoring case, with Unicode's simple case folding,
//! and the last match wins: `{"name":"a","Name":"b"}` is `b` to it, `ſ` (U+017F) is `s` and `K`
//! (U+212A, the Kelvin sign) is `k`. The proxy reads names exactly, so a member it reads must not
//! also be spelt another way in the same object, nor only another way: either would let the
//! upstream act on a value the proxy never checked.

/// Whether `a` and `b` name the same member to a decoder that folds case as Go's does (ASCII
/// case, and the two non-ASCII letters that fold to ASCII ones).
pub fn same_folded(a: &str, b: &str) -> bool {
    let mut a = a.chars().map(fold);
    let mut b = b.chars().map(fold);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

fn fold(c: char) -> char {
    match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// The first member of `names` that spells `known` otherwise than exactly (`Name`, `NAME` or
/// `ſ`-spelt for `name`), if any.
pub fn misspelt<'n>(names: impl IntoIterator<Item = &'n str>, known: &str) -> Option<&'n str> {
    names
        .into_iter()
        .find(|n| *n != known && same_folded(n, known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_as_go_folds_them() {
        for (a, b) in [
            ("name", "Name"),
            ("method", "METHOD"),
            ("params", "param\u{17f}"),
            ("tokens", "to\u{212a}ens"),
            ("model", "model"),
        ] {
            assert!(same_folded(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("name", "names"),
            ("name", "nam"),
            ("model", "modél"),
            ("id", "\u{130}d"),
            ("ss", "\u{df}"),
        ] {
            assert!(!same_folded(a, b), "{a} {b}");
        }
        assert_eq!(misspelt(["name", "Name"], "name"), Some("Name"));
        assert_eq!(misspelt(["name", "arguments"], "name"), None);
    }
}
