//! Forms toward LLM APIs (URL-encoded and multipart): the fields that name the model and
//! the output ceiling, read as strictly as the strictest server reads them.

use super::{checked, checked_others, LlmRequest};
use crate::usage::providers::{self, request::CeilingFields, request::Slot};

/// The `boundary` parameter of a multipart `Content-Type`.
pub(super) fn boundary(headers: &http::HeaderMap) -> Option<String> {
    let value = crate::header_names::sole(headers, http::header::CONTENT_TYPE)
        .ok()??
        .to_str()
        .ok()?;
    // SECURITY: parameters split as parsers split them (a `;` inside quotes is the value's),
    // and a boundary only of RFC 2046's characters: one with a quote, an escape or a `;` is
    // read one way by one parser and another by the next (a part hidden from the proxy).
    crate::part_names::params(value)?
        .into_iter()
        .skip(1)
        .find_map(|param| {
            let (k, v) = param.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .filter(|b| !b.is_empty() && b.len() <= 70 && b.bytes().all(is_boundary_char))
}

/// A character RFC 2046 allows in a boundary (`bchars`).
fn is_boundary_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b)
}

/// The form fields that name the model or the output ceiling (the providers' top-level fields,
/// see [`providers::request::form_field`]), each at most once.
#[derive(Default)]
struct FormFields {
    /// Model names by precedence rank.
    models: Vec<(usize, String)>,
    /// Ceilings by precedence rank.
    ceilings: Vec<(usize, u64)>,
    /// Numbers of completions by rank.
    choices: Vec<(usize, u64)>,
    /// The other models a `session` part names.
    other_models: Vec<String>,
    /// The models of a gateway's fallback lists (also in `other_models`).
    fallback_models: Vec<String>,
}

impl FormFields {
    /// Takes one field; a field that matters given twice is refused (parsers disagree on
    /// which copy wins). Names are compared ignoring case, so no spelling hides one.
    fn take(&mut self, name: &str, value: &str) -> Result<(), String> {
        fn once<T>(
            slots: &mut Vec<(usize, T)>,
            rank: usize,
            value: T,
            name: &str,
        ) -> Result<(), String> {
            if slots.iter().any(|(r, _)| *r == rank) {
                return Err(format!("form field `{name}` is given more than once"));
            }
            slots.push((rank, value));
            Ok(())
        }
        let number = |value: &str| {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("form field `{name}` is not a whole number"))
        };
        match providers::request::form_field(name) {
            Some(Slot::Model(rank)) => once(&mut self.models, rank, value.to_string(), name),
            Some(Slot::Ceiling(rank)) => once(&mut self.ceilings, rank, number(value)?, name),
            // Leniently, as in JSON (see `providers::request`): no count is no refusal.
            Some(Slot::Choices(rank)) => match value.trim().parse::<f64>() {
                Ok(n) if n.is_finite() && n > 0.0 => {
                    once(&mut self.choices, rank, n.ceil() as u64, name)
                }
                _ => Ok(()),
            },
            // A gateway's model list (OpenRouter's `models`, LiteLLM's `fallbacks`): in a form,
            // each value is one more model, decided as the call's is.
            Some(Slot::ModelList) => self.add_other(value, true),
            // Background calls and hosted tools are JSON's (the Responses API's, Gemini's); a
            // form's field is another's. Secondary and other models are nested, never form
            // fields.
            Some(
                Slot::Background
                | Slot::ToolType
                | Slot::BilledTool(..)
                | Slot::SecondaryModel(_)
                | Slot::OtherModel,
            )
            | None => Ok(()),
        }
    }

    /// Takes a `session` field: a Realtime call's session (`/v1/realtime/calls` posts it as a
    /// JSON part beside the SDP offer), whose `model` is the call's; a `model` field beside it
    /// is a model given twice.
    fn take_session(&mut self, value: &str) -> Result<(), String> {
        if !value.trim_start().starts_with('{') {
            return Ok(());
        }
        let session = providers::request::read_json(value.as_bytes())
            .map_err(|e| format!("form field `session` cannot be read as a JSON object: {e}"))?;
        for model in &session.other_models {
            let fallback = session.fallback_models.contains(model);
            self.add_other(model, fallback)?;
        }
        match session.model {
            Some(model) => self.take("model", &model),
            None => Ok(()),
        }
    }

    /// One more model the call may run (a gateway's `fallback` when `fallback`), each distinct
    /// one once. SECURITY: each is a policy decision and a line of the audit record: past
    /// [`providers::request::MAX_MODELS`] the body is refused, as a JSON one is (a form of
    /// 160,000 names took 3 s of a shared worker and 3 MB of record).
    fn add_other(&mut self, model: &str, fallback: bool) -> Result<(), String> {
        if !self.other_models.iter().any(|m| m == model) {
            if self.other_models.len() == providers::request::MAX_MODELS {
                return Err(format!(
                    "the body names more than {} models",
                    providers::request::MAX_MODELS
                ));
            }
            self.other_models.push(model.to_owned());
        }
        if fallback && !self.fallback_models.iter().any(|m| m == model) {
            self.fallback_models.push(model.to_owned());
        }
        Ok(())
    }

    /// The best-ranked model; the largest ceiling and number of completions (see
    /// [`providers::request::Named`]).
    fn finish(self) -> Result<LlmRequest, String> {
        // SECURITY: as in JSON, two fields naming different models leave the choice upstream.
        if let [(_, first), rest @ ..] = self.models.as_slice() {
            if let Some((_, other)) = rest.iter().find(|(_, m)| m != first) {
                return Err(format!(
                    "the form names two models, `{first}` and `{other}`; which one a server \
                     uses is its choice"
                ));
            }
        }
        let mut fields = CeilingFields::default();
        for (rank, _) in &self.ceilings {
            fields.set(*rank);
        }
        let largest = |slots: Vec<(usize, u64)>| slots.into_iter().map(|(_, v)| v).max();
        let mut read = checked(
            first(self.models),
            largest(self.ceilings),
            largest(self.choices),
        )?;
        read.ceiling_fields = fields;
        checked_others(&self.other_models)?;
        let mut others = self.other_models;
        others.retain(|m| Some(m) != read.model.as_ref());
        read.other_models = others;
        let mut fallbacks = self.fallback_models;
        fallbacks.retain(|m| Some(m) != read.model.as_ref());
        read.fallback_models = fallbacks;
        Ok(read)
    }
}

/// The value of the best-ranked field.
fn first<T>(slots: Vec<(usize, T)>) -> Option<T> {
    slots.into_iter().min_by_key(|(r, _)| *r).map(|(_, v)| v)
}

pub(super) fn url_encoded(body: &[u8]) -> Result<LlmRequest, String> {
    let mut fields = FormFields::default();
    for (k, v) in form_urlencoded::parse(body) {
        if k.eq_ignore_ascii_case("session") {
            fields.take_session(&v)?;
        }
        fields.take(&k, &v)?;
    }
    fields.finish()
}

/// Reads the fields of a `multipart/form-data` body (RFC 7578) that name the model or the
/// output ceiling. File parts are skipped; the body must be well formed to its closing
/// delimiter.
pub(super) fn multipart(body: &[u8], boundary: &str) -> Result<LlmRequest, String> {
    let mut fields = FormFields::default();
    each_part(body, boundary, &mut |name, content| {
        let session = name.eq_ignore_ascii_case("session");
        if session || providers::request::form_field(name).is_some() {
            let value = std::str::from_utf8(content).map_err(|_| {
                "the multipart body cannot be read: a field value that is not UTF-8"
            })?;
            if session {
                fields.take_session(value)?;
            }
            fields.take(name, value)?;
        }
        Ok(())
    })?;
    fields.finish()
}

/// What [`each_part`] calls with each named part: its name and content.
type PartVisitor<'v> = dyn FnMut(&str, &[u8]) -> Result<(), String> + 'v;

/// Calls `part` with the name and content of each named part of a `multipart/form-data` body,
/// which must be well formed to its closing delimiter.
fn each_part(body: &[u8], boundary: &str, part: &mut PartVisitor<'_>) -> Result<(), String> {
    let malformed = |why: &str| format!("the multipart body cannot be read: {why}");
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // SECURITY: a delimiter after a bare LF or CR (not CRLF) is a part boundary to some parsers
    // (Werkzeug, hence Flask; PHP) and part of the previous part's value to others: a part
    // hidden there names a model one server reads and the proxy does not.
    let loose = memchr::memmem::find_iter(body, delimiter)
        .any(|at| at > 0 && !body[..at].ends_with(b"\r\n"));
    if loose {
        return Err(malformed(
            "a boundary delimiter after a bare LF or CR, which servers split parts at differently",
        ));
    }
    let mut rest = body;
    // Anything before the first delimiter is a preamble.
    let start = find(rest, delimiter).ok_or_else(|| malformed("no boundary delimiter"))?;
    rest = &rest[start + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Ok(());
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or_else(|| malformed("a delimiter not followed by a line break"))?;
        // The part's headers end with an empty line (at once, for a part without headers).
        let (head, content) = match rest.strip_prefix(b"\r\n") {
            Some(content) => (&b""[..], content),
            None => {
                let end = find(rest, b"\r\n\r\n")
                    .ok_or_else(|| malformed("unterminated part headers"))?;
                (&rest[..end], &rest[end + 4..])
            }
        };
        let head =
            std::str::from_utf8(head).map_err(|_| malformed("part headers that are not UTF-8"))?;
        // SECURITY: part headers in their one plain spelling, since parsers read every other
        // differently (where a header ends, which line is which, what names a part): CRLF line
        // ends only (Go ends headers at a bare LF, Werkzeug splits lines at a bare CR), no line
        // folded onto the next (busboy and Go unfold it), no space before a colon (Werkzeug
        // takes it), no RFC 2231 continuation of a name (`name*0`, which Go and Werkzeug join).
        // (A header's name is a token: Werkzeug strips any whitespace around it, a vertical
        // tab or a no-break space too.)
        let plain = head.split("\r\n").all(|line| {
            !line.contains(['\r', '\n'])
                && line.split_once(':').is_some_and(|(name, _)| {
                    !name.is_empty() && name.bytes().all(crate::header_names::is_tchar)
                })
        }) || head.is_empty();
        let disposition = |line: &&str| {
            line.get(..20)
                .is_some_and(|p| p.eq_ignore_ascii_case("content-disposition:"))
        };
        let continued = head.split("\r\n").filter(disposition).any(|line| {
            crate::part_names::params(line).is_none_or(|params| {
                params.iter().any(|p| {
                    let key = p.split_once('=').map_or(*p, |(k, _)| k).trim();
                    key.len() > 5
                        && key[..5].eq_ignore_ascii_case("name*")
                        && key[5..].starts_with(|c: char| c.is_ascii_digit())
                })
            })
        });
        if !plain || continued {
            return Err(malformed(
                "part headers spelled other than plainly (a bare CR or LF, a folded line, a space \
                 before a colon, a name continued over `name*0`…): servers read such headers \
                 differently",
            ));
        }
        // SECURITY: a part's own charset decodes its value (busboy, hence multer, does), and so
        // does its transfer encoding (Go's `mime/multipart` undoes quoted-printable): a `model`
        // in ISO-2022-JP or `d=65ar` names another model than the bytes the proxy reads. Header
        // lines folded onto the next (busboy reads them) are read unfolded.
        // Line ends as lenient parsers take them (Go's and the part names' reader take a bare
        // LF).
        let unfolded = head
            .replace("\r\n", "\n")
            .replace("\n ", " ")
            .replace("\n\t", " ");
        let recoded = unfolded.split('\n').any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                let name = name.trim();
                let value = value.trim();
                (name.eq_ignore_ascii_case("content-type")
                    && !crate::charset::names_none_but(
                        value.as_bytes(),
                        crate::charset::ASCII_PRESERVING,
                    ))
                    || (name.eq_ignore_ascii_case("content-transfer-encoding")
                        && !["7bit", "8bit", "binary"]
                            .iter()
                            .any(|plain| value.eq_ignore_ascii_case(plain)))
            })
        });
        if recoded {
            return Err(malformed(
                "a part whose `Content-Type` names a charset other than UTF-8, or whose \
                 `Content-Transfer-Encoding` is not `7bit`, `8bit` or `binary`: a server would \
                 decode its value to other text than the proxy reads",
            ));
        }
        let mut next = Vec::with_capacity(delimiter.len() + 2);
        next.extend_from_slice(b"\r\n");
        next.extend_from_slice(delimiter);
        let end = find(content, &next).ok_or_else(|| malformed("no closing delimiter"))?;
        // SECURITY: a part that names itself twice over, differently (`name` beside a `name*`
        // that decodes to `model`, two `Content-Disposition` lines), is read as one field by one
        // server and as another by the next: which one is not the proxy's guess to make.
        // The first name, and the first other one (no more are read).
        let mut names: Vec<String> = Vec::new();
        crate::part_names::each(head.as_bytes(), |name| {
            if !names.contains(&name) {
                names.push(name);
            }
            names.len() < 2
        });
        match names.as_slice() {
            [] => {}
            [name] => part(name, &content[..end])?,
            [first, second, ..] => {
                return Err(malformed(&format!(
                    "a part is named both `{first}` and `{second}`; which name a server reads is \
                     its choice"
                )))
            }
        }
        rest = &content[end + next.len()..];
    }
}

/// Where `needle` first occurs in `haystack`, in linear time (see `credentials::raw`'s).
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}
