//! Response scrubbing: if an upstream echoes a substituted secret back (in the status line, a
//! header or the body, streamed or not), the agent never sees it.
//!
//! Each secret is looked for in the forms an echo takes:
//! - as written, ignoring ASCII case (for secrets of 8 bytes or more, where a match by accident
//!   is out of reach), each byte possibly JSON-escaped (`\u0073`, `\/`) or percent-encoded
//!   (`%73`); replaced by its handle text `$CRED{name}`;
//! - base64, standard and URL-safe, at each of the three alignments a secret can have inside a
//!   longer encoded text (a Basic `user:secret`): the characters that encode the secret's bits
//!   alone are matched and replaced by the encoding of as many `*` at the same alignment, so the
//!   text still decodes and the secret is not in it (at most a few bits of its first and last
//!   byte stay).
//!
//! Secrets may straddle two body chunks, so the end of a chunk is held back until the next chunk
//! (or the end of the body) decides. What is held back never depends on the secrets: it is the
//! chunk's trailing run of visible ASCII (`!` to `~`, every byte an echo of a secret can consist
//! of), at most [`HOLD_MIN`] bytes or six times the longest form looked for. Holding back only a
//! tail that begins a match would tell the agent, by where its text is cut, whether that text
//! begins a secret, and so the secret a few characters at a time. SSE events and lines end in a
//! line feed, so a stream of them is not held back at all. An upgraded stream is scrubbed with
//! same-length masks, since its frames carry their own lengths; a WebSocket is read frame by
//! frame, each payload scrubbed whole and never held back past its frame's end.
//!
//! Only bytes the proxy can read are scrubbed: a response whose body is compressed (any content
//! coding but `identity`, any transfer coding but `chunked`) is refused by the caller instead
//! (see [`unreadable_encoding`]); requests carrying a secret ask for `identity`.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use zeroize::Zeroizing;

use super::apply::AccessTokens;
use super::Credential;

/// Shortest secret matched ignoring case, and shortest base64 run matched.
const MIN_FUZZY_LEN: usize = 8;

/// Shortest run of visible ASCII looked for when a secret has other bytes (a PEM key's lines):
/// shorter runs are words, not secrets.
const MIN_RUN_LEN: usize = 16;

/// Least number of trailing bytes a chunk may hold back (see the module's doc).
const HOLD_MIN: usize = 64 * 1024;

/// Whether `b` can be part of an echoed secret: every byte of every form looked for is visible
/// ASCII (a secret's bytes, their JSON and percent escapes, base64).
fn may_be_in_a_match(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// One form of one secret.
#[derive(Clone)]
struct Pattern {
    /// The bytes to find; each may also appear escaped (see [`spellings_at`]). Secret (or its
    /// reversible base64), so wiped when dropped: patterns are rebuilt on every reload and
    /// token refresh, and freed memory would otherwise keep them.
    bytes: Zeroizing<Vec<u8>>,
    /// ASCII case ignored.
    ignore_case: bool,
    /// What replaces a match (the handle text, or a same-length base64 mask).
    replacement: Vec<u8>,
    /// Whether `replacement` keeps the matched length (base64 masks).
    masks: bool,
}

/// The compiled forms of a set of secrets: what a [`Scrubber`] looks for. Compiling costs a few
/// base64 encodings per secret, so a set is built once per tenant and host (see
/// [`super::echoes`]) and shared by every response from there.
pub struct Patterns {
    /// Longest first: of two matches at one place, the longer wins.
    patterns: Vec<Pattern>,
    /// For each byte, the patterns (indices, in order) a match starting with it can be: their
    /// first byte in either case where case is ignored, and every pattern for `\` and `%`,
    /// which can begin an escaped first byte. Empty: nothing starts there.
    by_first: Vec<Vec<usize>>,
    /// Most bytes a chunk holds back: at least the longest match (each byte escaped).
    hold_cap: usize,
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The patterns are secret material.
        f.debug_struct("Patterns")
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl Patterns {
    /// The forms of each secret, each replaced by its credential's handle (`$CRED{name}`).
    pub fn compile<'a>(named: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut patterns: Vec<Pattern> = Vec::new();
        for (name, value) in named {
            if value.is_empty() {
                continue;
            }
            // A secret with a space, a control character or a non-ASCII byte (a PEM key;
            // static values are refused at load) is looked for as its long visible runs, so
            // that a match consists of visible ASCII only (what the hold-back relies on).
            let raw: Vec<&[u8]> = if value.iter().all(|b| may_be_in_a_match(*b)) {
                vec![value]
            } else {
                value
                    .split(|b| !may_be_in_a_match(*b))
                    .filter(|run| run.len() >= MIN_RUN_LEN)
                    .collect()
            };
            for piece in raw {
                if patterns.iter().any(|p| !p.masks && *p.bytes == piece) {
                    continue;
                }
                patterns.push(Pattern {
                    bytes: Zeroizing::new(piece.to_vec()),
                    ignore_case: piece.len() >= MIN_FUZZY_LEN,
                    replacement: format!("$CRED{{{name}}}").into_bytes(),
                    masks: false,
                });
            }
            let stars = vec![b'*'; value.len()];
            for align in 0..3 {
                for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                    let core = base64_core(engine, value, align);
                    if core.len() < MIN_FUZZY_LEN || patterns.iter().any(|p| p.bytes == core) {
                        continue;
                    }
                    patterns.push(Pattern {
                        bytes: core,
                        ignore_case: false,
                        replacement: base64_core(engine, &stars, align).to_vec(),
                        masks: true,
                    });
                }
            }
        }
        Self::indexed(patterns)
    }

    /// The secrets of `secrets` (a static value; a signing or token credential's secret parts)
    /// and the access tokens `tokens` substituted for token credentials, each replaced by its
    /// credential's handle.
    pub fn of(secrets: &[Arc<Credential>], tokens: &AccessTokens) -> Self {
        let mut named: Vec<(&str, &[u8])> = Vec::new();
        for c in secrets {
            named.extend(echoable(c).into_iter().map(|v| (c.name.as_str(), v)));
        }
        named.extend(tokens.iter().map(|(n, t)| (n, t.expose())));
        Self::compile(named)
    }

    /// These patterns and `other`'s together.
    pub fn merged(&self, other: Patterns) -> Self {
        let mut patterns = self.patterns.clone();
        for p in other.patterns {
            if !patterns.iter().any(|q| q.bytes == p.bytes) {
                patterns.push(p);
            }
        }
        Self::indexed(patterns)
    }

    /// Whether a secret of visible ASCII (an access token) is looked for as written.
    pub fn covers(&self, secret: &[u8]) -> bool {
        self.patterns.iter().any(|p| !p.masks && *p.bytes == secret)
    }

    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    fn indexed(mut patterns: Vec<Pattern>) -> Self {
        patterns.sort_by_key(|p| std::cmp::Reverse(p.bytes.len()));
        let mut by_first: Vec<Vec<usize>> = vec![Vec::new(); 256];
        for (k, p) in patterns.iter().enumerate() {
            let first = p.bytes[0];
            let mut starts = vec![first, b'\\', b'%'];
            if p.ignore_case {
                starts.extend([first.to_ascii_lowercase(), first.to_ascii_uppercase()]);
            }
            starts.sort_unstable();
            starts.dedup();
            for b in starts {
                by_first[usize::from(b)].push(k);
            }
        }
        // An escaped byte takes at most six (`\u0073`).
        let longest = patterns.first().map_or(0, |p| p.bytes.len());
        Self {
            patterns,
            by_first,
            hold_cap: HOLD_MIN.max(6 * longest),
        }
    }
}

/// The secret bytes of `c` a response could echo: a static value itself; a signing or token
/// credential's value is a document, and its secret parts are what could echo.
pub fn echoable(c: &Credential) -> Vec<&[u8]> {
    match &c.kind {
        crate::credentials::kind::Kind::Static => vec![c.value.expose()],
        other => other.echoable_secrets(),
    }
}

/// Scrubs one response.
pub struct Scrubber {
    patterns: Arc<Patterns>,
    carry: BytesMut,
    same_length: bool,
    /// On a WebSocket: where in its frames the stream is.
    frames: Option<Frames>,
    /// How many occurrences were replaced.
    pub replaced: u64,
}

/// Position in a WebSocket stream: a frame head being read, or a payload with this much left.
#[derive(Debug, Default)]
struct Frames {
    head: Vec<u8>,
    /// The frame's reserved bits are set: an extension (none was agreed) encodes its payload,
    /// so it cannot be read for secrets and is blanked whole.
    reserved: bool,
    payload_left: u64,
    mask: Option<[u8; 4]>,
    unmasked_in: usize,
    masked_out: usize,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The patterns are secret material.
        f.debug_struct("Scrubber")
            .field("patterns", &self.patterns.patterns.len())
            .field("held_back", &self.carry.len())
            .field("same_length", &self.same_length)
            .field("replaced", &self.replaced)
            .finish()
    }
}

impl Scrubber {
    /// A scrubber of one response for `patterns`.
    pub fn new(patterns: Arc<Patterns>) -> Self {
        Self {
            patterns,
            carry: BytesMut::new(),
            same_length: false,
            frames: None,
            replaced: 0,
        }
    }

    /// Matches are masked with as many bytes as they had: for a response whose length is
    /// already announced (a scrubber that starts part-way, see `Stages::look_for_secrets`).
    pub fn keeping_length(mut self) -> Self {
        self.same_length = true;
        self
    }

    /// Looks for `more` too, from the next chunk on.
    pub fn look_for(&mut self, more: &Patterns) {
        let mut patterns = self.patterns.patterns.clone();
        for p in &more.patterns {
            if !patterns.iter().any(|q| q.bytes == p.bytes) {
                patterns.push(p.clone());
            }
        }
        self.patterns = Arc::new(Patterns::indexed(patterns));
    }

    /// The response upgraded the connection (`101`, with its headers): from now on matches are
    /// masked with as many bytes as they had, since the new protocol frames its own lengths. A
    /// WebSocket is read frame by frame: each frame's payload is scrubbed whole (a frame is
    /// never held back once complete, so an interactive stream never stalls), unmasked and
    /// masked again when the upstream masks.
    pub fn upgraded(&mut self, headers: &HeaderMap) {
        self.same_length = true;
        // Read frame by frame only when it is a WebSocket and nothing else: a stream of
        // another protocol read as frames would pass its "heads" unscrubbed.
        let websocket = crate::header_names::sole(headers, http::header::UPGRADE)
            .ok()
            .flatten()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        if websocket {
            self.frames = Some(Frames::default());
        }
    }

    /// Replaces secrets in a complete value (a header, the status reason).
    pub fn scrub_value(&mut self, value: &[u8]) -> Option<Vec<u8>> {
        let scan = self.scan(value, true, 0);
        if scan.matches.is_empty() {
            return None;
        }
        Some(self.render(value, &scan.matches, value.len()))
    }

    /// Scrubs one body chunk; at `end` everything held back is released.
    pub fn scrub_chunk(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        if self.patterns.is_empty() {
            return chunk;
        }
        if let Some(mut frames) = self.frames.take() {
            let out = self.scrub_frames(&mut frames, chunk.as_deref().unwrap_or_default(), end);
            self.frames = Some(frames);
            return Some(out);
        }
        self.scrub_stream(chunk, end)
    }

    /// WebSocket bytes: heads pass as they are, each payload goes through the stream scrubber,
    /// which is flushed at the payload's end.
    fn scrub_frames(&mut self, f: &mut Frames, input: &[u8], end: bool) -> Bytes {
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            if f.payload_left == 0 {
                f.head.push(input[i]);
                i += 1;
                if let Some((len, mask)) = frame_head(&f.head) {
                    f.reserved = f.head[0] & 0x70 != 0;
                    out.append(&mut f.head);
                    f.payload_left = len;
                    f.mask = mask;
                    f.unmasked_in = 0;
                    f.masked_out = 0;
                }
                continue;
            }
            let take = usize::try_from(f.payload_left)
                .unwrap_or(usize::MAX)
                .min(input.len() - i);
            if f.reserved {
                // SECURITY: bytes no one here can decode pass as zeros, never as they are.
                out.resize(out.len() + take, 0);
                f.payload_left -= take as u64;
                i += take;
                if f.payload_left == 0 {
                    self.replaced += 1;
                }
                continue;
            }
            let mut part = input[i..i + take].to_vec();
            apply_mask(&mut part, f.mask, f.unmasked_in);
            f.unmasked_in += take;
            f.payload_left -= take as u64;
            i += take;
            let frame_done = f.payload_left == 0;
            let scrubbed = self
                .scrub_stream(Some(Bytes::from(part)), frame_done)
                .unwrap_or_default();
            let mut scrubbed = scrubbed.to_vec();
            apply_mask(&mut scrubbed, f.mask, f.masked_out);
            f.masked_out += scrubbed.len();
            out.extend_from_slice(&scrubbed);
        }
        if end && !self.carry.is_empty() {
            let rest = self.scrub_stream(None, true).unwrap_or_default();
            let mut rest = rest.to_vec();
            apply_mask(&mut rest, f.mask, f.masked_out);
            out.extend_from_slice(&rest);
        }
        Bytes::from(out)
    }

    fn scrub_stream(&mut self, chunk: Option<Bytes>, end: bool) -> Option<Bytes> {
        if self.carry.is_empty() {
            let data = match chunk {
                Some(c) => c,
                None if end => return None,
                None => return Some(Bytes::new()),
            };
            let scan = self.scan(&data, end, 0);
            if scan.emit < data.len() {
                self.carry.extend_from_slice(&data[scan.emit..]);
            }
            if scan.matches.is_empty() {
                return Some(data.slice(..scan.emit));
            }
            return Some(Bytes::from(self.render(&data, &scan.matches, scan.emit)));
        }
        // PERF (SECURITY: a hostile upstream's one-byte chunks): what was held back stays where
        // it is; the chunk is appended after it and only what is released is split off. Room
        // for the chunk and for a held run after it, so the held bytes (at most `hold_cap`)
        // move at most once every `hold_cap` bytes appended. Copying them out again, and
        // looking back over them, at every chunk cost 23 µs a byte.
        let held = self.carry.len();
        if let Some(c) = &chunk {
            self.carry.reserve(c.len() + self.patterns.hold_cap);
            self.carry.extend_from_slice(c);
        }
        let mut data = std::mem::take(&mut self.carry);
        let scan = self.scan(&data, end, held);
        let released = data.split_to(scan.emit).freeze();
        self.carry = data;
        if scan.matches.is_empty() {
            return Some(released);
        }
        Some(Bytes::from(self.render(
            &released,
            &scan.matches,
            scan.emit,
        )))
    }

    /// Scrubs the status reason and every header of a response head: a value that echoes a
    /// secret is rewritten, a header whose name does is dropped.
    pub fn scrub_response_header(
        &mut self,
        resp: &mut pingora::http::ResponseHeader,
    ) -> pingora::Result<()> {
        let reason = resp.get_reason_phrase().map(|r| r.as_bytes().to_vec());
        if let Some(clean) = reason.and_then(|r| self.scrub_value(&r)) {
            resp.set_reason_phrase(Some(&String::from_utf8_lossy(&clean)))?;
        }
        let mut names: Vec<http::HeaderName> = Vec::new();
        for name in resp.headers.keys() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        for name in names {
            if self.scrub_value(name.as_str().as_bytes()).is_some() {
                resp.remove_header(&name);
                continue;
            }
            let values: Vec<(Vec<u8>, bool)> = resp
                .headers
                .get_all(&name)
                .iter()
                .map(|v| match self.scrub_value(v.as_bytes()) {
                    Some(clean) => (clean, true),
                    None => (v.as_bytes().to_vec(), false),
                })
                .collect();
            if !values.iter().any(|(_, changed)| *changed) {
                continue;
            }
            // Every value of the name is written back, in order.
            resp.remove_header(&name);
            for (v, _) in values {
                let value = http::HeaderValue::from_bytes(&v).map_err(|_| {
                    pingora::Error::explain(
                        pingora::ErrorType::InternalError,
                        "scrubbed header is not a valid value",
                    )
                })?;
                resp.append_header(name.clone(), value)?;
            }
        }
        Ok(())
    }

    fn render(&self, input: &[u8], matches: &[(usize, usize, usize)], emit: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(emit + 32);
        let mut from = 0;
        for &(start, end, k) in matches {
            out.extend_from_slice(&input[from..start]);
            let p = &self.patterns.patterns[k];
            let len = end - start;
            if self.same_length && !p.masks {
                out.resize(out.len() + len, b'*');
            } else {
                out.extend_from_slice(&p.replacement);
                if self.same_length && len > p.replacement.len() {
                    out.resize(out.len() + len - p.replacement.len(), b'*');
                }
            }
            from = end;
        }
        out.extend_from_slice(&input[from..emit]);
        out
    }

    /// Finds every match in `input`. Without `end`, the bytes from [`Self::hold_from`] on are
    /// left for the next chunk, except what a match that begins before them covers. `held`:
    /// how many bytes at `input`'s start were held back from before (see [`Self::hold_from`]).
    fn scan(&mut self, input: &[u8], end: bool, held: usize) -> Scan {
        let hold = if end {
            input.len()
        } else {
            self.hold_from(input, held)
        };
        let mut matches = Vec::new();
        let mut emit = hold;
        let mut i = 0;
        let patterns = &*self.patterns;
        while i < hold {
            let candidates = &patterns.by_first[usize::from(input[i])];
            if candidates.is_empty() {
                i += 1;
                continue;
            }
            // A match that begins before `hold` is complete in `input`: its bytes are visible,
            // and the byte before `hold` is not, or the run held back is longer than any match.
            let mut best: Option<(usize, usize)> = None;
            for &k in candidates {
                if let Some(e) = match_at(input, i, &patterns.patterns[k]) {
                    if best.is_none_or(|(be, _)| e > be) {
                        best = Some((e, k));
                    }
                }
            }
            match best {
                Some((e, k)) => {
                    matches.push((i, e, k));
                    self.replaced += 1;
                    emit = emit.max(e);
                    i = e;
                }
                None => i += 1,
            }
        }
        Scan { matches, emit }
    }

    /// Where the bytes held back for the next chunk begin: the trailing run of bytes that can be
    /// part of a match, up to `hold_cap`. It depends on `input` alone, never on the secrets.
    /// The first `held` bytes of `input` are what was held back before, every one of which can
    /// be part of a match (it was such a run): they are not looked at again.
    fn hold_from(&self, input: &[u8], held: usize) -> usize {
        let cap = self.patterns.hold_cap;
        let fresh = &input[held.min(input.len())..];
        let run = fresh
            .iter()
            .rev()
            .take(cap)
            .take_while(|b| may_be_in_a_match(**b))
            .count();
        let run = if run == fresh.len() {
            input.len().min(cap)
        } else {
            run
        };
        input.len() - run
    }
}

/// A complete WebSocket frame head: the payload length and the masking key, if any.
fn frame_head(head: &[u8]) -> Option<(u64, Option<[u8; 4]>)> {
    let second = *head.get(1)?;
    let masked = second & 0x80 != 0;
    let (len, at) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*head.get(2)?, *head.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = head.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        Some(head.get(at..at + 4)?.try_into().ok()?)
    } else {
        None
    };
    let need = at + if masked { 4 } else { 0 };
    (head.len() == need).then_some((len, mask))
}

/// XORs `data` with the frame's masking key, `offset` bytes into the payload.
fn apply_mask(data: &mut [u8], mask: Option<[u8; 4]>, offset: usize) {
    if let Some(key) = mask {
        for (k, b) in data.iter_mut().enumerate() {
            *b ^= key[(offset + k) % 4];
        }
    }
}

struct Scan {
    /// (start, end, pattern) of each match, in order.
    matches: Vec<(usize, usize, usize)>,
    /// How many bytes of the input are released now; the rest is held back.
    emit: usize,
}

/// Where a whole match of `p` starting at `at` ends (the longest, when several spellings
/// match); `None` when there is none in `input` (an input that ends inside one holds none: what
/// is held back is decided apart, see [`Scrubber::scan`]).
///
/// SECURITY: a byte of the secret may be spelled several ways at one place, and taking the
/// first that fits loses the others: `%` is both itself and the start of `%25`, `\` both itself
/// and the start of `\\` or `\u005c`. So every spelling is followed. One way through is the rule
/// (this runs at every place a pattern's first byte is seen, on every scrubbed response): only
/// where both spellings of a byte fit does the match go on from a set of ends
/// ([`match_from`]), and only then is anything allocated.
fn match_at(input: &[u8], at: usize, p: &Pattern) -> Option<usize> {
    let mut i = at;
    for (k, &want) in p.bytes.iter().enumerate() {
        match spellings_at(input, i, want, p.ignore_case) {
            [None, None] => return None,
            [Some(n), None] | [None, Some(n)] => i += n,
            [Some(a), Some(b)] => {
                let rest = p.bytes.get(k + 1..).unwrap_or_default();
                return match_from(input, vec![i + a, i + b], rest, p.ignore_case);
            }
        }
    }
    (!p.bytes.is_empty()).then_some(i)
}

/// Where a match whose next bytes are `rest` ends, going on from every place in `ends` (the
/// longest, when several do): the positions the pattern's bytes so far can end at are kept as a
/// set (at most a few: each spelling of a byte takes 1 to 6 input bytes, and most fail at once).
fn match_from(input: &[u8], mut ends: Vec<usize>, rest: &[u8], ignore_case: bool) -> Option<usize> {
    let mut next: Vec<usize> = Vec::with_capacity(ends.len());
    for &want in rest {
        if ends.is_empty() {
            return None;
        }
        next.clear();
        for &i in &ends {
            for n in spellings_at(input, i, want, ignore_case)
                .into_iter()
                .flatten()
            {
                if !next.contains(&(i + n)) {
                    next.push(i + n);
                }
            }
        }
        std::mem::swap(&mut ends, &mut next);
    }
    ends.into_iter().max()
}

/// The lengths of the spellings of `want` that begin at `i`: the byte itself, and a JSON escape
/// of it (`\u0073`, `\/`, `\n`, …) or its percent-encoding (`%73`), which can both fit when
/// `want` is `\` or `%`. An input that ends inside a spelling holds none of it.
fn spellings_at(input: &[u8], i: usize, want: u8, ignore_case: bool) -> [Option<usize>; 2] {
    let same = |b: u8| b == want || (ignore_case && b.eq_ignore_ascii_case(&want));
    let Some(&b) = input.get(i) else {
        return [None, None];
    };
    let literal = same(b).then_some(1);
    let decoded = match b {
        b'\\' => match input.get(i + 1) {
            Some(b'u') => hex(input, i + 2, 4)
                .filter(|cp| *cp < 0x80)
                .map(|cp| (cp as u8, 6)),
            Some(c) => match c {
                b'/' | b'\\' | b'"' => Some((*c, 2)),
                b'b' => Some((0x08, 2)),
                b'f' => Some((0x0c, 2)),
                b'n' => Some((b'\n', 2)),
                b'r' => Some((b'\r', 2)),
                b't' => Some((b'\t', 2)),
                _ => None,
            },
            None => None,
        },
        b'%' => hex(input, i + 1, 2).map(|v| (v as u8, 3)),
        _ => None,
    };
    let escaped = decoded.and_then(|(d, len)| same(d).then_some(len));
    [literal, escaped]
}

/// `digits` hex digits at `at`: their value, or `None` when one is not hex or the input ends.
fn hex(input: &[u8], at: usize, digits: usize) -> Option<u32> {
    let mut v = 0u32;
    for k in 0..digits {
        let d = match input.get(at + k)? {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u32::from(d);
    }
    Some(v)
}

/// The base64 characters that encode `value`'s bits alone when it starts `align` bytes into a
/// 3-byte group: characters mixing in neighbouring bytes are left out.
/// The copies made on the way hold the secret (or its reversible encoding): wiped when dropped.
fn base64_core(
    engine: &base64::engine::GeneralPurpose,
    value: &[u8],
    align: usize,
) -> Zeroizing<Vec<u8>> {
    let mut padded = Zeroizing::new(Vec::with_capacity(align + value.len() + 2));
    padded.resize(align, 0);
    padded.extend_from_slice(value);
    padded.extend_from_slice(&[0, 0]);
    let encoded = Zeroizing::new(engine.encode(&*padded));
    let first = (8 * align).div_ceil(6);
    let last = (8 * (align + value.len())) / 6;
    Zeroizing::new(
        encoded
            .as_bytes()
            .get(first..last)
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
    )
}

/// Whether a response's body reaches the client in a form the scrubber cannot read: a content
/// coding other than `identity` or a transfer coding other than `chunked`, or a switch to a
/// WebSocket with an extension (none was offered: `permessage-deflate` would compress frames
/// past the scrubber). A response that cannot have a body (to `HEAD`, other 1xx, 204, 304)
/// carries nothing to scrub.
pub fn unreadable_encoding(status: u16, head_request: bool, headers: &HeaderMap) -> bool {
    if status == 101 {
        return headers
            .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .any(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
    }
    if crate::header_names::bodyless_answer(head_request, status) {
        return false;
    }
    crate::header_names::content_coded(headers) || crate::header_names::foreign_charset(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::secret::SecretValue;
    use crate::ids::TenantId;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    fn cred(name: &str, value: &str) -> Arc<Credential> {
        Arc::new(Credential {
            tenant: TenantId::new("acme").expect("id"),
            name: name.into(),
            value: SecretValue::new(value.as_bytes().to_vec()),
            bindings: vec![],
            positions: vec![],
            expires_at: None,
            kind: crate::credentials::kind::Kind::Static,
        })
    }

    /// A scrubber for `secrets`.
    fn scrubber(secrets: Vec<Arc<Credential>>) -> Scrubber {
        Scrubber::new(Arc::new(Patterns::of(&secrets, &AccessTokens::default())))
    }

    /// Scrubs `body` cut at every split point (and byte by byte); every way must agree.
    fn scrub_split(secrets: &[(&str, &str)], body: &[u8]) -> (Vec<u8>, u64) {
        let make = || scrubber(secrets.iter().map(|(n, v)| cred(n, v)).collect());
        let mut first: Option<(Vec<u8>, u64)> = None;
        let mut ways: Vec<Vec<usize>> = (0..=body.len()).map(|s| vec![s]).collect();
        ways.push((1..body.len()).collect());
        for cuts in ways {
            let mut s = make();
            let mut out = Vec::new();
            let mut from = 0;
            for &c in &cuts {
                out.extend_from_slice(
                    &s.scrub_chunk(Some(Bytes::copy_from_slice(&body[from..c])), false)
                        .unwrap_or_default(),
                );
                from = c;
            }
            out.extend_from_slice(
                &s.scrub_chunk(Some(Bytes::copy_from_slice(&body[from..])), false)
                    .unwrap_or_default(),
            );
            out.extend_from_slice(&s.scrub_chunk(None, true).unwrap_or_default());
            match &first {
                None => first = Some((out, s.replaced)),
                Some((o, n)) => {
                    assert_eq!(
                        (String::from_utf8_lossy(&out), s.replaced),
                        (String::from_utf8_lossy(o), *n),
                        "cuts {cuts:?}"
                    );
                }
            }
        }
        first.unwrap_or_default()
    }

    const SECRET: &str = "sk-CANARY-0123456789abcdef";

    #[test]
    fn scrubs_across_chunk_boundaries() {
        let body = "echo: sk-secret-123 and again sk-secret-123!";
        let (out, n) = scrub_split(&[("openai", "sk-secret-123")], body.as_bytes());
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "echo: $CRED{openai} and again $CRED{openai}!"
        );
        assert_eq!(n, 2);
    }

    /// What the agent receives of a first chunk `data: X`, before the next chunk comes.
    fn released_before_the_next_chunk(secrets: &[(&str, &str)], chunk: &str) -> String {
        let mut s = scrubber(secrets.iter().map(|(n, v)| cred(n, v)).collect());
        let out = s
            .scrub_chunk(Some(Bytes::copy_from_slice(chunk.as_bytes())), false)
            .unwrap_or_default();
        String::from_utf8(out.to_vec()).expect("utf8")
    }

    /// A hostile upstream's one-byte chunks: past a held run of `hold_cap` bytes each byte in
    /// releases one byte out, the held bytes are never looked at or copied again chunk by chunk
    /// (23 µs a byte before), and what comes out is what one whole chunk gives, echoes
    /// replaced however they are cut.
    #[test]
    fn byte_by_byte_after_a_long_held_run_releases_byte_by_byte() {
        let body = format!(
            "{}{SECRET}{}\n{}",
            "a".repeat(HOLD_MIN + 300),
            "b".repeat(200),
            "c".repeat(50)
        );
        let mut whole = scrubber(vec![cred("openai", SECRET)]);
        let mut expected = whole
            .scrub_chunk(Some(Bytes::copy_from_slice(body.as_bytes())), false)
            .unwrap_or_default()
            .to_vec();
        expected.extend_from_slice(&whole.scrub_chunk(None, true).unwrap_or_default());
        let mut s = scrubber(vec![cred("openai", SECRET)]);
        let mut out = Vec::new();
        for (i, b) in body.bytes().enumerate() {
            let released = s
                .scrub_chunk(Some(Bytes::copy_from_slice(&[b])), false)
                .unwrap_or_default();
            if i < HOLD_MIN {
                assert!(released.is_empty(), "byte {i}");
            } else if i < HOLD_MIN + 300 {
                // The run is longer than the hold-back: one byte in, one byte out.
                assert_eq!(released.len(), 1, "byte {i}");
            }
            assert!(s.carry.len() <= HOLD_MIN, "byte {i}: {}", s.carry.len());
            out.extend_from_slice(&released);
        }
        out.extend_from_slice(&s.scrub_chunk(None, true).unwrap_or_default());
        assert_eq!(out, expected);
        assert!(!String::from_utf8_lossy(&out).contains(SECRET));
        assert_eq!(s.replaced, 1);
        assert!(String::from_utf8_lossy(&out).ends_with(&format!("\n{}", "c".repeat(50))));
    }

    #[test]
    fn where_a_chunk_is_cut_never_depends_on_the_secret() {
        // An upstream that streams text the agent chose: were only a tail that begins a
        // secret held back, the cut would answer "does X begin the secret?" one guess at a time.
        let short = ("short", "short1");
        let long = ("openai", SECRET);
        for probe in [
            "s",
            "sk",
            "sk-",
            "sk-C",
            "sk-CA",
            "SK-ca",
            "sk-cAN",
            "sk-CANARY-0123456789abcde",
            "sk-CB",
            "sk-X",
            "q",
            "hello",
            "sh",
            "shor",
            "SHORT",
            "sk-N",
            "\\u0073k",
            "%73k-",
        ] {
            for secrets in [&[long][..], &[short], &[long, short]] {
                let chunk = format!("data: {probe}");
                // The trailing word is held back whatever it is; what comes before it is not.
                assert_eq!(
                    released_before_the_next_chunk(secrets, &chunk),
                    "data: ",
                    "{probe} {secrets:?}"
                );
                // A line's end releases the line at once, whatever it holds.
                let line = format!("data: {probe}\n");
                assert_eq!(released_before_the_next_chunk(secrets, &line), line);
            }
        }
        // A run longer than the hold-back is released but for its last `hold_cap` bytes.
        let run = "a".repeat(HOLD_MIN + 100);
        assert_eq!(released_before_the_next_chunk(&[long], &run).len(), 100);
        // A whole echo before the held tail is replaced at once.
        assert_eq!(
            released_before_the_next_chunk(&[long], &format!("x {SECRET} sk-CA")),
            "x $CRED{openai} "
        );
    }

    #[test]
    fn a_secret_with_spaces_or_line_breaks_is_looked_for_as_its_long_runs() {
        // A PEM key: its armour lines and short last line are not secret, its body lines are.
        let line = "VGVzdE9ubHlOb3RBS2V5VGVzdE9ubHlOb3RBS2V5VGVzdE9ubHk";
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{line}\nAg==\n-----END PRIVATE KEY-----\n");
        let body = format!("{{\"echo\":\"{line}\"}} BEGIN PRIVATE KEY Ag==");
        let (out, n) = scrub_split(&[("sa", &pem)], body.as_bytes());
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "{\"echo\":\"$CRED{sa}\"} BEGIN PRIVATE KEY Ag=="
        );
        assert_eq!(n, 1);
        // Its base64 (a Basic header of the whole value) is still looked for.
        let b64 = STANDARD.encode(pem.as_bytes());
        let (out, _) = scrub_split(&[("sa", &pem)], format!("[{b64}]").as_bytes());
        assert!(!String::from_utf8_lossy(&out).contains(&b64[4..40]));
    }

    #[test]
    fn escaped_encoded_and_cased_echoes() {
        let escaped_all: String = SECRET
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let escaped_some = SECRET.replace('-', "\\u002D").replace('C', "\\u0043");
        let percent: String = SECRET.bytes().map(|b| format!("%{b:02X}")).collect();
        for (name, echo) in [
            ("raw", SECRET.to_string()),
            ("every char \\u-escaped", escaped_all),
            ("some chars escaped", escaped_some),
            ("percent-encoded", percent),
            ("lower case", SECRET.to_lowercase()),
            ("upper case", SECRET.to_uppercase()),
        ] {
            let body = format!("{{\"you_sent\":\"Bearer {echo}\"}}");
            let (out, n) = scrub_split(&[("canary", SECRET)], body.as_bytes());
            assert_eq!(
                String::from_utf8(out).expect("utf8"),
                "{\"you_sent\":\"Bearer $CRED{canary}\"}",
                "{name}"
            );
            assert_eq!(n, 1, "{name}");
        }
    }

    /// Every spelling of a byte the echo of a secret can use in place of it.
    fn spellings(b: u8) -> Vec<String> {
        let mut all = vec![
            char::from(b).to_string(),
            format!("%{b:02X}"),
            format!("%{b:02x}"),
            format!("\\u{b:04X}"),
            format!("\\u{b:04x}"),
        ];
        if let Some(short) = match b {
            b'/' | b'\\' | b'"' => Some(format!("\\{}", char::from(b))),
            _ => None,
        } {
            all.push(short);
        }
        all
    }

    #[test]
    fn every_escaped_spelling_of_an_escape_character_is_found() {
        // `%` and `\` are both bytes of a secret and the first byte of an escape: an echo that
        // escapes them (`%25` in a query or form, `\\` in JSON) must be found like the others.
        for secret in [
            "PCTab%cdEF12gh",
            "BSLab\\cdEF12gh",
            "SLSab/cdEF12gh",
            "DQTab\"cdEF12gh",
            "%%front-and-back12\\\\",
            "%25-literal-looking%2F",
        ] {
            let specials: Vec<u8> = b"%\\/\"".to_vec();
            for &b in &specials {
                if !secret.as_bytes().contains(&b) {
                    continue;
                }
                for spelling in spellings(b) {
                    let echo = secret.replace(char::from(b), &spelling);
                    for (before, after) in [("[", "]"), ("q=", "&x=1"), ("", "")] {
                        let body = format!("{before}{echo}{after}");
                        let (out, n) = scrub_split(&[("s", secret)], body.as_bytes());
                        assert_eq!(
                            String::from_utf8(out).expect("utf8"),
                            format!("{before}$CRED{{s}}{after}"),
                            "{secret} echoed as {echo}"
                        );
                        assert_eq!(n, 1, "{secret} echoed as {echo}");
                    }
                }
            }
        }
    }

    #[test]
    fn base64_echoes_at_every_alignment_are_masked() {
        for prefix in ["", "u", "us", "user:", "user:x", "a-longer-user:"] {
            for suffix in ["", "!", "\n", "xyz"] {
                let plain = format!("{prefix}{SECRET}{suffix}");
                for engine in [&STANDARD, &URL_SAFE] {
                    let encoded = engine.encode(plain.as_bytes());
                    let body = format!("Authorization: Basic {encoded}\r\n");
                    let (out, n) = scrub_split(&[("canary", SECRET)], body.as_bytes());
                    assert_eq!(n, 1, "{plain} as {encoded}");
                    let out = String::from_utf8(out).expect("utf8");
                    let masked = out.trim_start_matches("Authorization: Basic ").trim_end();
                    assert_eq!(masked.len(), encoded.len(), "same length");
                    let decoded = engine.decode(masked).expect("still base64");
                    let text = String::from_utf8_lossy(&decoded);
                    assert!(!text.contains("CANARY"), "{text}");
                    assert!(text.contains("**********"), "{text}");
                    assert!(text.starts_with(&prefix[..prefix.len().saturating_sub(1)]));
                }
            }
        }
    }

    fn upgrade(websocket: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        if websocket {
            h.insert(
                http::header::UPGRADE,
                http::HeaderValue::from_static("websocket"),
            );
        }
        h
    }

    fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![0x81];
        let bit = if mask.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            f.push(bit | payload.len() as u8);
        } else {
            f.push(bit | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mut p = payload.to_vec();
        if let Some(key) = mask {
            f.extend_from_slice(&key);
            apply_mask(&mut p, mask, 0);
        }
        f.extend_from_slice(&p);
        f
    }

    /// `stream` scrubbed as a WebSocket's bytes read in two chunks, cut at `cut`.
    fn websocket_in_two(stream: &[u8], cut: usize) -> Vec<u8> {
        let mut s = scrubber(vec![cred("canary", SECRET)]);
        s.upgraded(&upgrade(true));
        let mut out = s
            .scrub_chunk(Some(Bytes::copy_from_slice(&stream[..cut])), false)
            .expect("out")
            .to_vec();
        out.extend_from_slice(
            &s.scrub_chunk(Some(Bytes::copy_from_slice(&stream[cut..])), false)
                .expect("out"),
        );
        out
    }

    #[test]
    fn websocket_frames_are_scrubbed_whole_and_never_held() {
        for mask in [None, Some([7u8, 1, 200, 33])] {
            let echo = format!("{{\"auth\":\"Bearer {SECRET}\"}}");
            let long = format!("{}{SECRET}", "x".repeat(300));
            let mut stream = frame(echo.as_bytes(), mask);
            stream.extend(frame(long.as_bytes(), mask));
            // A frame ending in what could begin an echo is still released whole.
            stream.extend(frame(b"ends with sk-CAN", mask));
            // Any cut of the stream gives back the same frames, same lengths, no secret.
            for cut in 0..stream.len() {
                let out = websocket_in_two(&stream, cut);
                assert_eq!(out.len(), stream.len(), "cut {cut}");
                let mut rest = &out[..];
                let mut payloads = Vec::new();
                while !rest.is_empty() {
                    let head_len = (2..=14)
                        .find(|n| frame_head(&rest[..*n]).is_some())
                        .expect("a frame head");
                    let (len, key) = frame_head(&rest[..head_len]).expect("head");
                    let mut p = rest[head_len..head_len + len as usize].to_vec();
                    apply_mask(&mut p, key, 0);
                    payloads.push(String::from_utf8(p).expect("utf8"));
                    rest = &rest[head_len + len as usize..];
                }
                assert_eq!(payloads.len(), 3, "cut {cut}");
                assert!(!payloads.iter().any(|p| p.contains("CANARY")), "cut {cut}");
                assert!(payloads[0].starts_with("{\"auth\":\"Bearer ****"));
                assert_eq!(payloads[2], "ends with sk-CAN");
            }
            // Whole frames in one read come out at once.
            let mut s = scrubber(vec![cred("canary", SECRET)]);
            s.upgraded(&upgrade(true));
            let tail = frame(b"ends with sk-CAN", mask);
            assert_eq!(
                s.scrub_chunk(Some(Bytes::from(tail.clone())), false)
                    .expect("out")
                    .len(),
                tail.len()
            );
        }
        // A frame whose reserved bits say an extension encoded it (RSV1: compressed) cannot be
        // read, so its payload passes as zeros, whatever it holds; the frames around it as ever.
        for mask in [None, Some([7u8, 1, 200, 33])] {
            let mut compressed = frame(format!("deflated {SECRET}").as_bytes(), mask);
            compressed[0] |= 0x40;
            let mut stream = frame(b"plain", mask);
            stream.extend_from_slice(&compressed);
            stream.extend(frame(b"after", mask));
            for cut in 0..stream.len() {
                let out = websocket_in_two(&stream, cut);
                assert_eq!(out.len(), stream.len(), "cut {cut}");
                let plain = frame(b"plain", mask).len();
                let head = if mask.is_some() { 6 } else { 2 };
                assert_eq!(out[..plain + head], stream[..plain + head], "cut {cut}");
                let blanked = &out[plain + head..plain + compressed.len()];
                assert!(blanked.iter().all(|b| *b == 0), "cut {cut}");
                assert_eq!(out[plain + compressed.len()..], frame(b"after", mask)[..]);
            }
        }
        // An `Upgrade` named twice is no WebSocket: scrubbed as a stream (a stream of another
        // protocol read as frames would pass its "heads" as they are).
        let mut twice = upgrade(true);
        twice.append(http::header::UPGRADE, http::HeaderValue::from_static("h2c"));
        let mut s = scrubber(vec![cred("canary", SECRET)]);
        s.upgraded(&twice);
        // Read as frames, `\x81\x7e` and the secret's first two bytes would be a head, passed
        // as it is, and the rest a payload that no longer holds the whole secret.
        let mut raw = vec![0x81, 0x7e];
        raw.extend_from_slice(SECRET.as_bytes());
        let out = s
            .scrub_chunk(Some(Bytes::from(raw.clone())), true)
            .expect("out");
        assert_eq!(out.len(), raw.len());
        assert!(!String::from_utf8_lossy(&out).contains("CANARY"));
        // Another upgraded protocol keeps its lengths too.
        let mut s = scrubber(vec![cred("canary", SECRET)]);
        s.upgraded(&upgrade(false));
        let raw = format!("Bearer {SECRET}");
        let out = s
            .scrub_chunk(Some(Bytes::from(raw.clone())), true)
            .expect("out");
        assert_eq!(out.len(), raw.len());
        assert!(!String::from_utf8_lossy(&out).contains("CANARY"));
    }

    #[test]
    fn headers_no_secrets_and_no_false_alarms() {
        let mut s = scrubber(vec![cred("k", "abc")]);
        assert_eq!(
            s.scrub_value(b"Bearer abc").as_deref(),
            Some(&b"Bearer $CRED{k}"[..])
        );
        assert_eq!(s.scrub_value(b"nothing"), None);
        // Short secrets are matched exactly: `ABC` is not `abc`.
        assert_eq!(s.scrub_value(b"ABC"), None);
        let mut none = scrubber(vec![]);
        assert_eq!(
            none.scrub_chunk(Some(Bytes::from_static(b"x")), false),
            Some(Bytes::from_static(b"x"))
        );
        // Escapes, percent signs and ordinary text pass unchanged (and uncopied).
        let mut s = scrubber(vec![cred("canary", SECRET)]);
        let text = Bytes::from_static(b"{\"a\":\"line\\nbreak 100% \\u00e9 sk-other\"}");
        assert_eq!(s.scrub_chunk(Some(text.clone()), true), Some(text));
        assert_eq!(s.replaced, 0);
        // A tail that could begin an echo is held back, then released when it does not.
        let mut s = scrubber(vec![cred("canary", SECRET)]);
        assert_eq!(
            s.scrub_chunk(Some(Bytes::from_static(b"data: sk-CAN")), false),
            Some(Bytes::from_static(b"data: "))
        );
        assert_eq!(
            s.scrub_chunk(Some(Bytes::from_static(b"DLE\n")), false),
            Some(Bytes::from_static(b"sk-CANDLE\n"))
        );
    }

    #[test]
    fn encodings_the_scrubber_cannot_read() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).expect("n"),
                    http::HeaderValue::from_str(v).expect("v"),
                );
            }
            m
        };
        assert!(!unreadable_encoding(200, false, &h(&[])));
        assert!(!unreadable_encoding(
            200,
            false,
            &h(&[("content-encoding", "identity")])
        ));
        assert!(!unreadable_encoding(
            200,
            false,
            &h(&[("transfer-encoding", "chunked")])
        ));
        for (k, v) in [
            ("content-encoding", "gzip"),
            ("content-encoding", "identity, br"),
            ("content-encoding", "x-custom"),
            ("transfer-encoding", "gzip, chunked"),
        ] {
            assert!(unreadable_encoding(200, false, &h(&[(k, v)])), "{k}: {v}");
            assert!(unreadable_encoding(500, false, &h(&[(k, v)])), "{k}: {v}");
        }
        // A charset a client decodes into other text than its bytes spell: a secret echoed in
        // UTF-16, UTF-7 or Python's `unicode_escape` (`\x73k-…`) has none of its bytes.
        for v in [
            "text/plain; charset=utf-16",
            "application/json; charset=utf-7",
            "text/plain; charset=unicode_escape",
            "text/plain; charset*=''utf-7",
        ] {
            assert!(
                unreadable_encoding(200, false, &h(&[("content-type", v)])),
                "{v}"
            );
        }
        for v in [
            "application/json",
            "text/html; charset=UTF-8",
            "text/plain; charset=iso-8859-1",
        ] {
            assert!(
                !unreadable_encoding(200, false, &h(&[("content-type", v)])),
                "{v}"
            );
        }
        let gz = h(&[("content-encoding", "gzip")]);
        assert!(!unreadable_encoding(200, true, &gz));
        assert!(!unreadable_encoding(304, false, &gz));
        assert!(!unreadable_encoding(101, false, &gz));
        // A WebSocket that switched on an extension anyway (none was offered) is unreadable.
        for v in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "x-foo",
        ] {
            let ws = h(&[("upgrade", "websocket"), ("sec-websocket-extensions", v)]);
            assert!(unreadable_encoding(101, false, &ws), "{v}");
        }
        assert!(!unreadable_encoding(
            101,
            false,
            &h(&[("upgrade", "websocket")])
        ));
    }
}
