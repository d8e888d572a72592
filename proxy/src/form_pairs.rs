//! How servers read a query string or a URL-encoded form: the pairs a lenient reader finds.
//!
//! Readers disagree on the separator (`&` everywhere; `;` too in Rack, older Python and many
//! gateways), so a check that must see every pair a server could see splits on both, and
//! decodes each name and value as `application/x-www-form-urlencoded` does (`%XX`, `+`).

use std::borrow::Cow;

/// Every name and value in `text` (a query without its `?`, or a form body), split on `&` and
/// `;`, percent-decoded.
pub fn lenient(text: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    text.split(|b| *b == b'&' || *b == b';')
        .flat_map(form_urlencoded::parse)
}

/// The query of a request target (after its `?`, before any `#`), if it has one.
pub fn query_of(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    query.split('#').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_a_lenient_reader_finds() {
        let pairs: Vec<(String, String)> = lenient(b"a=1&b=x+y;c=%41&&d")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let want = [("a", "1"), ("b", "x y"), ("c", "A"), ("d", "")];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(query_of("/p?a=1#f"), Some("a=1"));
        assert_eq!(query_of("/p"), None);
    }
}
