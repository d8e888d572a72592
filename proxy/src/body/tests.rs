//! Reading bodies for the decision: what `classify` and `llm_request` make of them.

use super::*;
use std::io::Write;

/// A model name with a comma names several models to gateways that call each (LiteLLM):
/// refused, as `model` and as a fallback.
#[test]
fn a_model_name_with_a_comma_is_refused() {
    for body in [
        &br#"{"model":"gpt-4o-mini,gpt-4o"}"#[..],
        br#"{"model":"gpt-4o-mini","fallbacks":["a,b"]}"#,
    ] {
        let e = llm_request(body).expect_err("refused");
        assert!(e.contains("comma"), "{e}");
    }
    assert!(llm_request(br#"{"model":"gpt-4o-mini"}"#).is_ok());
}

/// A model list, a count and a flag are read without a tree of their value: 8 MiB of
/// `[1,1,…]` in `fallbacks` took 600 MB before the policy was asked. Measured as the growth
/// of the peak resident memory of a process of its own.
#[test]
fn lists_and_flags_are_read_without_a_tree_of_them() {
    if !crate::in_own_process("body::tests::lists_and_flags_are_read_without_a_tree_of_them") {
        return;
    }
    // The first large body read raises the peak by about its size whatever it holds (the
    // allocator's first growth): read one that holds no list before measuring.
    let warm = format!(r#"{{"model":"a","prompt":"{}"}}"#, "a".repeat(8 << 20));
    llm_request(warm.as_bytes()).unwrap();
    drop(warm);
    for (field, item) in [
        ("fallbacks", "1"),
        ("fallbacks", "{}"),
        ("fallbacks", "[]"),
        ("models", "null"),
        ("n", "1"),
        ("background", "[]"),
    ] {
        let mut body = String::with_capacity(9 << 20);
        body.push_str(&format!(r#"{{"model":"gpt-4o-mini","{field}":["#));
        body.push_str(item);
        while body.len() < 8 << 20 {
            body.push(',');
            body.push_str(item);
        }
        body.push_str("]}");
        let before = crate::peak_resident_bytes();
        let read = llm_request(body.as_bytes()).unwrap();
        let grown = crate::peak_resident_bytes() - before;
        assert_eq!(read.model.as_deref(), Some("gpt-4o-mini"));
        assert!(
            read.other_models.is_empty(),
            "{field}: {:?}",
            read.other_models
        );
        assert!(
            grown < body.len() as u64 / 2,
            "{field} of {item}: reading a {}-byte body took {grown} bytes more at its peak",
            body.len()
        );
    }
    // What the lists name is still read, however nested, keys too, and at most 16 models.
    let read = llm_request(
        br#"{"model":"a","fallbacks":[1,"b",{"c":["d",null,{"e":2}]},["b"],true],"n":"3","background":"yes"}"#,
    )
    .unwrap();
    assert_eq!(read.other_models, ["b", "c", "d", "e"]);
    assert_eq!(read.fallback_models, ["b", "c", "d", "e"]);
    assert_eq!(read.choices, Some(3));
    assert!(read.background);
    let many: Vec<String> = (0..17).map(|i| format!("m{i}")).collect();
    let body = serde_json::json!({"model": "a", "models": many}).to_string();
    let e = llm_request(body.as_bytes()).expect_err("refused");
    assert!(e.contains("more than 16 models"), "{e}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn br(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn to_llm(body: Vec<u8>, pairs: &[(&str, &str)]) -> Result<Classified, BodyError> {
    classify(
        Bytes::from(body),
        &headers(pairs),
        BodyDestination::Llm,
        1 << 20,
    )
}

const CHAT: &[u8] = br#"{"model":"gpt-4o","max_tokens":7,"messages":[]}"#;

fn to(to: BodyDestination, body: Vec<u8>, pairs: &[(&str, &str)]) -> Result<Classified, BodyError> {
    classify(Bytes::from(body), &headers(pairs), to, 1 << 20)
}

/// A body the proxy reads, in a charset a server decodes otherwise (UTF-7 turns these bytes
/// into `","name":"wipe`), is refused toward every destination; an ASCII-preserving one, or
/// a body the proxy does not read (a CSV upload), passes.
#[test]
fn a_body_in_a_charset_a_server_reads_otherwise_is_refused() {
    let hidden = br#"{"model":"cheap","x":"+ACIALAAiAG0AbwBkAGUAbAAiADoAIgBkAGUAYQBy-"}"#;
    for dest in [
        BodyDestination::Llm,
        BodyDestination::Mcp,
        BodyDestination::Other,
    ] {
        for content_type in [
            "application/json; charset=utf-7",
            "application/json; charset*=''utf-7",
            "text/plain; charset=iso-2022-jp",
            "application/x-www-form-urlencoded; charset=shift_jis",
        ] {
            let r = to(dest, hidden.to_vec(), &[("content-type", content_type)]);
            assert!(
                matches!(r, Err(BodyError::Unsupported(_))),
                "{dest:?} {content_type}: {r:?}"
            );
        }
        for content_type in [
            "application/json",
            "application/json; charset=UTF-8",
            "application/json; charset=iso-8859-1",
        ] {
            let r = to(dest, CHAT.to_vec(), &[("content-type", content_type)]);
            assert!(r.is_ok(), "{dest:?} {content_type}: {r:?}");
        }
    }
    // UTF-16 or UTF-32 by its bytes, without a charset: Python's servers read it so.
    let utf16: Vec<u8> = br#"{"model":"dear"}"#.iter().flat_map(|b| [*b, 0]).collect();
    let mut bom = vec![0xFF, 0xFE];
    bom.extend(&utf16);
    for body in [utf16.clone(), bom] {
        for content_type in ["application/json", "text/plain"] {
            let r = to(
                BodyDestination::Other,
                body.clone(),
                &[("content-type", content_type)],
            );
            assert!(
                matches!(r, Err(BodyError::Unsupported(_))),
                "{content_type}: {r:?}"
            );
        }
        let r = to(BodyDestination::Other, body.clone(), &[]);
        assert!(matches!(r, Err(BodyError::Unsupported(_))), "{r:?}");
    }
    // A binary upload with NULs is no text body.
    let binary = vec![0x08, 0x00, 0x12, 0x03];
    assert!(to(
        BodyDestination::Other,
        binary,
        &[("content-type", "application/octet-stream")]
    )
    .is_ok());
    let csv = b"name,price\nfoo,1\n".to_vec();
    assert!(to(
        BodyDestination::Other,
        csv,
        &[("content-type", "text/csv; charset=windows-1250")]
    )
    .is_ok());
    // Whatever the type, a charset that does not keep ASCII: an app may parse any type as
    // JSON, in the charset the type names.
    for content_type in [
        "text/plain; charset=utf-7",
        "application/octet-stream; charset=utf-16be",
        "text/csv; charset=shift_jis",
    ] {
        let r = to(
            BodyDestination::Other,
            b"+AHsAIg-x".to_vec(),
            &[("content-type", content_type)],
        );
        assert!(
            matches!(r, Err(BodyError::Unsupported(_))),
            "{content_type}: {r:?}"
        );
    }
    // A compressed body is judged decoded.
    let gz = gzip(br#"{"model":"cheap","x":"+ACIALAAiAG0AbwBkAGUAbAAiADoAIgBkAGUAYQBy-"}"#);
    let r = to(
        BodyDestination::Other,
        gz,
        &[
            ("content-type", "text/plain; charset=utf-7"),
            ("content-encoding", "gzip"),
        ],
    );
    assert!(matches!(r, Err(BodyError::Unsupported(_))), "{r:?}");
    // A part's charset on a folded line, or a transfer encoding a server undoes.
    let multipart = [("content-type", "multipart/form-data; boundary=b")];
    for head in [
        "Content-Type: text/plain;\r\n charset=utf-16le",
        "Content-Type: text/plain;\r\n\tcharset=utf-16le",
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Transfer-Encoding: base64",
    ] {
        let part = format!("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n{head}\r\n\r\nd=65ar\r\n--b--\r\n");
        let r = to_llm(part.into(), &multipart);
        assert!(matches!(r, Err(BodyError::Malformed(_))), "{head}: {r:?}");
    }
    // Multipart spelled so that servers read it differently: headers after a bare LF, a part
    // hidden behind a delimiter after a bare LF or CR, a name continued over `name*0`, a
    // folded line, a space before a colon, a bare CR, headers ended by a bare LF, a header
    // name with other whitespace about it (Werkzeug strips it), quotes with two readings.
    for body in [
        "--b\r\nContent-Disposition: form-data; name=\"model\"\nContent-Transfer-Encoding: quoted-printable\r\n\r\nd=65ar\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; name*0=\"mo\"; name*1=\"del\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data;\r\n name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nContent-Disposition : form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nX-A: 1\rContent-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; name=\"model\"\n\ndear\r\n--b\r\nX-Pad: y\r\n\r\ngpt-4o-mini\r\n--b--\r\n",
        "--b\r\nContent-Disposition\x0b: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\n\u{a0}Content-Disposition: form-data; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; name=\"x; name=model\r\n\r\ndear\r\n--b--\r\n",
        "--b\r\nContent-Disposition: form-data; x=a\"b; name=\"model\"\r\n\r\ndear\r\n--b--\r\n",
    ] {
        let r = to_llm(body.into(), &multipart);
        assert!(matches!(r, Err(BodyError::Malformed(_))), "{body:?}: {r:?}");
    }
    // A quoted boundary with an escape has two readings, and so does one with a `;`
    // (quoted) or hidden in another parameter's quotes.
    let r = to_llm(
        "--a\\\"b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--a\\\"b--\r\n"
            .into(),
        &[("content-type", "multipart/form-data; boundary=\"a\\\"b\"")],
    );
    assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
    for content_type in [
        "multipart/form-data; boundary=\"a;b\"",
        "multipart/form-data; x=\"; boundary=a\"; boundary=b",
    ] {
        let body =
            "--a\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n--a--\r\n";
        let r = to_llm(body.into(), &[("content-type", content_type)]);
        let model = r.as_ref().ok().and_then(|c| c.llm.model.as_deref());
        assert_ne!(model, Some("gpt-4o-mini"), "{content_type}: {r:?}");
    }
    // A filename that spells `name*1` is a filename.
    let upload = "--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"track name*1.png\"\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ndall-e-2\r\n--b--\r\n";
    assert_eq!(
        to_llm(upload.into(), &multipart)
            .unwrap()
            .llm
            .model
            .as_deref(),
        Some("dall-e-2")
    );
    assert!(llm_request(br#"{"model":"m\u2028x"}"#).is_err());
    // A `;` inside a quoted filename is part of it.
    let upload = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"report; name=v2.txt\"\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
    assert_eq!(
        to_llm(upload.into(), &multipart)
            .unwrap()
            .llm
            .model
            .as_deref(),
        Some("whisper-1")
    );
    let part = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\ndear\r\n--b--\r\n";
    assert_eq!(
        to_llm(part.into(), &multipart)
            .unwrap()
            .llm
            .model
            .as_deref(),
        Some("dear")
    );
    // A multipart part's own charset decodes its value too.
    let part = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\nContent-Type: text/plain; charset=iso-2022-jp\r\n\r\nwhisper-1\r\n--b--\r\n";
    let r = to_llm(
        part.into(),
        &[("content-type", "multipart/form-data; boundary=b")],
    );
    assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
    let plain = part.replace("; charset=iso-2022-jp", "; charset=utf-8");
    let r = to_llm(
        plain.into(),
        &[("content-type", "multipart/form-data; boundary=b")],
    );
    assert_eq!(r.unwrap().llm.model.as_deref(), Some("whisper-1"));
}

/// Toward any other destination a compressed body is read as the server will read it,
/// decoded (a method override or a model inside is seen), and forwarded as it came; a
/// coding the proxy does not know passes as it is (no framework undoes it either).
#[test]
fn a_compressed_body_to_another_destination_is_read_decoded_and_sent_as_it_came() {
    let json = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let r = to(
        BodyDestination::Other,
        gzip(br#"{"_method":"DELETE"}"#),
        &json,
    );
    assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-encoding", "deflate"),
    ];
    let r = to(BodyDestination::Other, zlib(b"_method=DELETE"), &form);
    assert!(matches!(r, Err(BodyError::Malformed(_))), "{r:?}");
    let sent = gzip(br#"{"model":"dear"}"#);
    let r = to(BodyDestination::Other, sent.clone(), &json).unwrap();
    assert_eq!(r.llm.model.as_deref(), Some("dear"));
    assert_eq!((&r.body[..], r.decoded), (&sent[..], false));
    // Corrupt or a bomb: refused, as toward an LLM.
    assert!(to(BodyDestination::Other, b"\x1f\x8bnot gzip".to_vec(), &json).is_err());
    let bomb = gzip(&vec![b' '; 2 << 20]);
    assert_eq!(
        to(BodyDestination::Other, bomb, &json).unwrap_err(),
        BodyError::TooLarge
    );
    let unknown = [
        ("content-type", "application/octet-stream"),
        ("content-encoding", "aes128gcm"),
    ];
    let r = to(BodyDestination::Other, b"\x00\x01opaque".to_vec(), &unknown).unwrap();
    assert_eq!(&r.body[..], b"\x00\x01opaque");
}

/// A form's or a multipart body's model list meets a JSON list's checks: at most 16
/// distinct models (each is a decision and a line of the record; repeats are one), none
/// with a comma (a gateway calls each), none longer than a model name may be.
#[test]
fn a_forms_model_list_is_held_to_a_json_lists_checks() {
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let read = |body: String| to_llm(body.into_bytes(), &form);
    let repeated = format!("model=a{}", "&models=b".repeat(100_000));
    let ok = read(repeated).unwrap();
    assert_eq!(ok.llm.other_models, ["b"]);
    assert_eq!(ok.llm.fallback_models, ["b"]);
    let many: String = (0..17).map(|i| format!("&fallbacks=m{i}")).collect();
    let e = read(format!("model=a{many}")).unwrap_err();
    assert!(
        matches!(&e, BodyError::Malformed(m) if m.contains("more than 16 models")),
        "{e:?}"
    );
    let e = read("model=a&fallbacks=gpt-4o-mini%2Cgpt-4o".into()).unwrap_err();
    assert!(
        matches!(&e, BodyError::Malformed(m) if m.contains("comma")),
        "{e:?}"
    );
    let e = read(format!("model=a&models={}", "m".repeat(300))).unwrap_err();
    assert!(
        matches!(&e, BodyError::Malformed(m) if m.contains("longer than")),
        "{e:?}"
    );
    let multi = [("content-type", "multipart/form-data; boundary=XX")];
    let part = |name: &str, value: &str| {
        format!("--XX\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    };
    let body = format!(
        "{}{}--XX--\r\n",
        part("model", "a"),
        part("fallbacks", "x,y")
    );
    let e = to_llm(body.into_bytes(), &multi).unwrap_err();
    assert!(
        matches!(&e, BodyError::Malformed(m) if m.contains("comma")),
        "{e:?}"
    );
}

/// A part that names itself a million times is read one name at a time, and refused at its
/// second distinct name.
#[test]
fn a_part_named_many_times_is_refused_at_its_second_name() {
    let multi = [("content-type", "multipart/form-data; boundary=XX")];
    let names = ";name=a".repeat(200_000);
    let body =
        format!("--XX\r\nContent-Disposition: form-data{names}; name=b\r\n\r\nv\r\n--XX--\r\n");
    let e = to_llm(body.into_bytes(), &multi).unwrap_err();
    assert!(
        matches!(&e, BodyError::Malformed(m) if m.contains("named both `a` and `b`")),
        "{e:?}"
    );
}

/// (case, body, request headers, what is expected: decoded or the refusal code).
type Case<T> = (&'static str, Vec<u8>, Vec<(&'static str, &'static str)>, T);

#[test]
fn bodies_that_hid_the_model_are_read() {
    let with_bom = [BOM, CHAT].concat();
    let stacked = br(&gzip(CHAT));
    let cases: Vec<Case<bool>> = vec![
        (
            "json behind a BOM",
            with_bom.clone(),
            vec![("content-type", "application/json")],
            false,
        ),
        (
            "BOM and text/plain",
            with_bom,
            vec![("content-type", "text/plain")],
            false,
        ),
        ("gzip", gzip(CHAT), vec![("content-encoding", "gzip")], true),
        (
            "x-gzip",
            gzip(CHAT),
            vec![("content-encoding", "X-GZIP")],
            true,
        ),
        (
            "deflate (zlib)",
            zlib(CHAT),
            vec![("content-encoding", "deflate")],
            true,
        ),
        (
            "deflate (raw)",
            raw_deflate(CHAT),
            vec![("content-encoding", "deflate")],
            true,
        ),
        ("br", br(CHAT), vec![("content-encoding", "br")], true),
        ("zstd", zstd(CHAT), vec![("content-encoding", "zstd")], true),
        (
            "gzip then br",
            stacked.clone(),
            vec![("content-encoding", "gzip, br")],
            true,
        ),
        (
            "gzip then br, two lines",
            stacked,
            vec![("content-encoding", "gzip"), ("content-encoding", "br")],
            true,
        ),
        (
            "identity",
            CHAT.to_vec(),
            vec![("content-encoding", "identity")],
            false,
        ),
        (
            "gzip behind a BOM inside",
            gzip(&[BOM, CHAT].concat()),
            vec![("content-encoding", "gzip")],
            true,
        ),
    ];
    for (name, body, pairs, decoded) in cases {
        let read = to_llm(body, &pairs).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(read.llm.model.as_deref(), Some("gpt-4o"), "{name}");
        assert_eq!(read.llm.max_output_tokens, Some(7), "{name}");
        assert_eq!(read.decoded, decoded, "{name}");
        // What is forwarded is what was read: decoded, without the BOM.
        assert_eq!(&read.body[..], CHAT, "{name}");
    }
}

/// A body to a tool that carries `_method` where a framework reads it (Rails, Laravel,
/// Symfony run the request as that method) is refused, however it is typed, framed or
/// escaped; other fields, nested JSON members and text are the application's.
#[test]
fn a_method_override_in_a_form_is_refused() {
    let to_tool = |body: &[u8], ct: &str| {
        let headers: http::HeaderMap = [(http::header::CONTENT_TYPE, ct)]
            .into_iter()
            .filter(|(_, ct)| !ct.is_empty())
            .map(|(name, ct)| (name, ct.parse().unwrap()))
            .collect();
        classify(
            Bytes::copy_from_slice(body),
            &headers,
            BodyDestination::Other,
            1 << 20,
        )
    };
    let form = "application/x-www-form-urlencoded";
    let multi = "multipart/form-data; boundary=b";
    for (body, ct) in [
        (&b"title=x&_method=delete"[..], form),
        (b"%5Fmethod=DELETE", form),
        (b"a=1;_method=PUT", form),
        (
            b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--",
            multi,
        ),
        // Rack reads a body without a type as a form.
        (b"title=x&_method=delete", ""),
        // Other multipart types, and framings the strict reader refuses (bare `\n`,
        // padding after the boundary) that PHP's accepts.
        (
            b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--",
            "multipart/mixed; boundary=b",
        ),
        (
            b"--b  \nContent-Disposition: form-data; NAME=_method\n\nDELETE\n--b--",
            multi,
        ),
        (
            b"--b\r\nContent-Disposition: form-data; name*=utf-8''_method\r\n\r\nDELETE\r\n--b--",
            multi,
        ),
        // Laravel reads JSON input as it reads forms.
        (br#"{"title":"x","_method":"DELETE"}"#, "application/json"),
        (br#"{"_method":"DELETE"}"#, ""),
        // Letters escaped in a form or in JSON; PHP's `.` and `[` for `_`.
        (b"_%6Dethod=DELETE", form),
        (b"%5F%6D%65%74%68%6F%64=DELETE", form),
        (b".method=DELETE", form),
        (b"[method=DELETE", form),
        (
            b"--b\r\nContent-Disposition: form-data; name=\".method\"\r\n\r\nDELETE\r\n--b--",
            multi,
        ),
        (br#"{"\u005fmethod":"DELETE"}"#, "application/json"),
        // ASP.NET Core reads form names ignoring case.
        (b"title=x&_METHOD=DELETE", form),
        (b"_Method=DELETE", form),
        // qs (Express), Rack and PHP read bracketed names as arrays and maps.
        (b"_method[]=DELETE", form),
        (b"a=1&_method%5B0%5D=DELETE", form),
        (
            b"--b\r\nContent-Disposition: form-data; name=\"_method[]\"\r\n\r\nDELETE\r\n--b--",
            multi,
        ),
        (b"_%4DETHOD=DELETE", form),
        (
            b"--b\r\nContent-Disposition: form-data; name=\"_METHOD\"\r\n\r\nDELETE\r\n--b--",
            multi,
        ),
        (br#"{"_METHOD":"DELETE"}"#, "application/json"),
        // A JSON reader with limits gives up where another reads on: not a way past.
        (br#"{"n":1e400,"_method":"DELETE"}"#, "application/json"),
        (
            format!(
                r#"{{"deep":{}{},"_method":"DELETE"}}"#,
                "[".repeat(200),
                "]".repeat(200)
            )
            .as_bytes(),
            "application/json",
        ),
    ] {
        assert!(
            matches!(to_tool(body, ct), Err(BodyError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for (body, ct) in [
        (&b"payment_method=card&title=x"[..], form),
        (
            br#"{"nested":{"_method":"DELETE"},"payment_method":"x"}"#,
            "application/json",
        ),
        (b"the _method field", "text/plain"),
        (
            b"--b\r\nContent-Disposition: form-data; name=\"payment_method\"\r\n\r\ncard\r\n--b--",
            multi,
        ),
        (
            b"--b\r\nContent-Disposition: form-data; name=\"_methods\"\r\n\r\nx\r\n--b--",
            multi,
        ),
        (
            br#"{"a":{"_method":"x"},"b":["_method"],"c":"_method"}"#,
            "application/json",
        ),
        (b"a.method=x&title=100%25", form),
        (b"PAYMENT_METHOD=card&_METHODS=x", form),
    ] {
        assert!(
            to_tool(body, ct).is_ok(),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn forms_name_the_model_too() {
    let form = to_llm(
        b"model=whisper-1&Max_Tokens=5&file=x".to_vec(),
        &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )],
    )
    .unwrap();
    assert_eq!(form.llm.model.as_deref(), Some("whisper-1"));
    assert_eq!(form.llm.max_output_tokens, Some(5));
    let multipart_body = |disposition: &str| {
        format!(
            "preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\r\n--XyZ\r\n\r\n\r\n--XyZ\r\nContent-Disposition: {disposition}\r\n\r\nwhisper-1\r\n--XyZ--\r\n"
        )
        .into_bytes()
    };
    for disposition in [
        "form-data; name=\"model\"",
        "form-data; name=model",
        "form-data; NAME=\"Model\"",
        "form-data; name*=utf-8''model",
        // Percent-encoded, as RFC 2231 readers decode it.
        "form-data; name*=UTF-8''mod%65l",
    ] {
        let read = to_llm(
            multipart_body(disposition),
            &[("content-type", "multipart/form-data; boundary=\"XyZ\"")],
        )
        .unwrap_or_else(|e| panic!("{disposition}: {e:?}"));
        assert_eq!(
            read.llm.model.as_deref(),
            Some("whisper-1"),
            "{disposition}"
        );
    }
    // A part named twice over, differently: which name a server reads is its choice.
    for disposition in [
        "form-data; name=\"file\"; name*=UTF-8''model",
        "form-data; name=\"file\"\r\nContent-Disposition: form-data; name=\"model\"",
    ] {
        let read = to_llm(
            multipart_body(disposition),
            &[("content-type", "multipart/form-data; boundary=\"XyZ\"")],
        );
        assert!(read.is_err(), "{disposition}: {read:?}");
    }
    let upload = to_llm(
        b"--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b--".to_vec(),
        &[("content-type", "multipart/form-data; boundary=b")],
    )
    .unwrap();
    assert_eq!(
        upload.llm,
        LlmRequest::default(),
        "an upload names no model"
    );
    // A Realtime call (`/v1/realtime/calls`): the SDP offer and the session, whose model is
    // the call's; beside a `model` field it is a model given twice.
    let call = |extra: &str| {
        to_llm(
            format!("--b\r\nContent-Disposition: form-data; name=\"sdp\"\r\n\r\nv=0\r\n--b\r\nContent-Disposition: form-data; name=\"session\"\r\nContent-Type: application/json\r\n\r\n{{\"type\":\"realtime\",\"model\":\"gpt-realtime\"}}\r\n{extra}--b--").into_bytes(),
            &[("content-type", "multipart/form-data; boundary=b")],
        )
    };
    assert_eq!(call("").unwrap().llm.model.as_deref(), Some("gpt-realtime"));
    assert!(
        call("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n")
            .is_err()
    );
    let form = to_llm(
        b"session=%7B%22model%22%3A%22gpt-realtime%22%7D".to_vec(),
        &[("content-type", "application/x-www-form-urlencoded")],
    )
    .unwrap();
    assert_eq!(form.llm.model.as_deref(), Some("gpt-realtime"));
    // Two form fields naming different models leave the choice to the upstream: refused.
    let two = to_llm(
        b"model=gpt-4o-mini&foundationModel=anthropic.claude-3-opus".to_vec(),
        &[("content-type", "application/x-www-form-urlencoded")],
    );
    assert!(two.is_err());
}

#[test]
fn bodies_that_cannot_be_read_are_refused() {
    let twice_multipart = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o-mini\r\n--b\r\nContent-Disposition: form-data; name=\"MODEL\"\r\n\r\ngpt-4o\r\n--b--".to_vec();
    let mut corrupt = gzip(CHAT);
    let n = corrupt.len();
    corrupt[n / 2] ^= 0xFF;
    let cases: Vec<Case<&str>> = vec![
        (
            "text",
            b"gpt-4o please".to_vec(),
            vec![("content-type", "text/plain")],
            "unsupported_media_type",
        ),
        (
            "no type",
            b"model: gpt-4o".to_vec(),
            vec![],
            "unsupported_media_type",
        ),
        (
            "octet stream",
            vec![0, 1, 2],
            vec![("content-type", "application/octet-stream")],
            "unsupported_media_type",
        ),
        (
            "not JSON though it says so",
            b"model=gpt-4o".to_vec(),
            vec![("content-type", "application/json")],
            "bad_request",
        ),
        (
            "unknown coding",
            CHAT.to_vec(),
            vec![("content-encoding", "compress")],
            "unsupported_media_type",
        ),
        (
            "too many codings",
            CHAT.to_vec(),
            vec![("content-encoding", "identity, gzip, gzip, gzip, gzip, gzip")],
            "unsupported_media_type",
        ),
        (
            "gzip that is not",
            CHAT.to_vec(),
            vec![("content-encoding", "gzip")],
            "bad_request",
        ),
        (
            "corrupt gzip",
            corrupt,
            vec![("content-encoding", "gzip")],
            "bad_request",
        ),
        (
            "br that is not",
            CHAT.to_vec(),
            vec![("content-encoding", "br")],
            "bad_request",
        ),
        (
            "zstd that is not",
            CHAT.to_vec(),
            vec![("content-encoding", "zstd")],
            "bad_request",
        ),
        (
            "model twice",
            br#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#.to_vec(),
            vec![],
            "bad_request",
        ),
        (
            "gzip hides model twice",
            gzip(br#"{"model":"a","model":"b"}"#),
            vec![("content-encoding", "gzip")],
            "bad_request",
        ),
        (
            "form model twice",
            b"model=gpt-4o-mini&model=gpt-4o".to_vec(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            "bad_request",
        ),
        (
            "form bad ceiling",
            b"model=m&max_tokens=-1".to_vec(),
            vec![("content-type", "application/x-www-form-urlencoded")],
            "bad_request",
        ),
        (
            "multipart model twice",
            twice_multipart,
            vec![("content-type", "multipart/form-data; boundary=b")],
            "bad_request",
        ),
        (
            "multipart without boundary",
            b"--b--".to_vec(),
            vec![("content-type", "multipart/form-data")],
            "bad_request",
        ),
        (
            "multipart unterminated",
            b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\ngpt-4o".to_vec(),
            vec![("content-type", "multipart/form-data; boundary=b")],
            "bad_request",
        ),
        (
            "JSON array that is not",
            b"[1,".to_vec(),
            vec![],
            "bad_request",
        ),
    ];
    for (name, body, pairs, code) in cases {
        match to_llm(body, &pairs) {
            Err(e) => {
                // The codes the proxy answers these with (error.rs converts them).
                let got = match e {
                    BodyError::Malformed(_) => "bad_request",
                    BodyError::Unsupported(_) => "unsupported_media_type",
                    BodyError::TooLarge => "request_body_too_large",
                    ref other => panic!("{name}: {other:?}"),
                };
                assert_eq!(got, code, "{name}: {e:?}");
            }
            Ok(read) => panic!("{name}: read as {:?}", read.llm),
        }
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_cap() {
    let zeros = vec![0u8; 8 << 20];
    for (coding, bomb) in [
        ("gzip", gzip(&zeros)),
        ("br", br(&zeros)),
        ("zstd", zstd(&zeros)),
    ] {
        assert!(bomb.len() < 64 << 10, "{coding}: {}", bomb.len());
        let got = classify(
            Bytes::from(bomb),
            &headers(&[("content-encoding", coding)]),
            BodyDestination::Llm,
            1 << 20,
        );
        assert_eq!(got.err(), Some(BodyError::TooLarge), "{coding}");
    }
    // Exactly at the cap is fine.
    let body = [CHAT, &vec![b' '; 1000][..]].concat();
    let read = classify(
        Bytes::from(gzip(&body)),
        &headers(&[("content-encoding", "gzip")]),
        BodyDestination::Llm,
        body.len(),
    )
    .unwrap();
    assert_eq!(read.body.len(), body.len());
}

#[test]
fn other_destinations_keep_their_bodies() {
    let gz = gzip(CHAT);
    let other = classify(
        Bytes::from(gz.clone()),
        &headers(&[("content-encoding", "gzip")]),
        BodyDestination::Other,
        1 << 20,
    )
    .unwrap();
    assert_eq!(&other.body[..], &gz[..]);
    assert!(!other.decoded);
    let with_bom = [BOM, CHAT].concat();
    let other = classify(
        Bytes::from(with_bom.clone()),
        &headers(&[]),
        BodyDestination::Other,
        1 << 20,
    )
    .unwrap();
    assert_eq!(
        other.llm.model.as_deref(),
        Some("gpt-4o"),
        "a BOM hides no model anywhere"
    );
    assert_eq!(&other.body[..], &with_bom[..]);
    let mcp = classify(
        Bytes::from_static(b"not json"),
        &headers(&[]),
        BodyDestination::Mcp,
        1 << 20,
    )
    .unwrap();
    assert_eq!(mcp.llm, LlmRequest::default());
}

#[test]
fn a_json_object_is_read_whatever_the_content_type_says() {
    // (llm_request is never shown the header: the body's shape decides.)
    let body = br#" {"model":"gpt-4o","max_tokens":5}"#;
    let r = llm_request(body).unwrap();
    assert_eq!(r.model.as_deref(), Some("gpt-4o"));
    assert_eq!(r.max_output_tokens, Some(5));
    // Not shaped like a JSON object: nothing to read, nothing refused.
    for other in [&b"model=gpt-4o"[..], br#"["model"]"#, b"", b"hello world"] {
        assert_eq!(llm_request(other).unwrap(), LlmRequest::default());
    }
}

#[test]
fn ambiguous_json_is_refused_not_forwarded_unchecked() {
    for body in [
        // Upstream JSON parsers keep the last copy; the proxy must not check the first.
        r#"{"model":"gpt-4o-mini","model":"gpt-4o"}"#,
        r#"{"model":"m","max_tokens":1,"max_tokens":100000}"#,
        r#"{"model":5}"#,
        r#"{"model":"m","max_tokens":"100"}"#,
        r#"{"model":"m","max_tokens":-1}"#,
        r#"{"model":"m""#,
    ] {
        assert!(llm_request(body.as_bytes()).is_err(), "{body}");
    }
    // What lenient parsers (JSON5, some Python/JS ones) accept: refused too.
    assert!(llm_request(br#"{"model":"gpt-4o",}"#).is_err());
    let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(257));
    assert!(llm_request(long.as_bytes()).is_err());
}

#[test]
fn output_ceiling_extraction() {
    for (body, want) in [
        (r#"{"model":"m","max_tokens":7}"#, Some(7)),
        (r#"{"model":"m","max_completion_tokens":8}"#, Some(8)),
        (r#"{"model":"m","max_output_tokens":9}"#, Some(9)),
        (r#"{"model":"m"}"#, None),
    ] {
        assert_eq!(
            llm_request(body.as_bytes()).unwrap().max_output_tokens,
            want,
            "{body}"
        );
    }
}

#[test]
fn model_extraction() {
    let cases: &[(&str, Option<&str>)] = &[
        (r#"{"messages":[],"model":"gpt-4o"}"#, Some("gpt-4o")),
        (r#"{"model":"a\"b"}"#, Some("a\"b")),
        (r#"[1,2]"#, None),
        (r#"{"messages":[]}"#, None),
        ("not json", None),
    ];
    for (body, want) in cases {
        assert_eq!(
            llm_request(body.as_bytes()).unwrap().model.as_deref(),
            *want,
            "{body}"
        );
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A JSON object naming `model` and `max_tokens`, keys in any order among filler keys,
    /// with arbitrary whitespace around the tokens.
    fn chat_object() -> impl Strategy<Value = (String, u64, String)> {
        let ws = || prop::sample::select(vec!["", " ", "\n", "\t", "\r\n  "]);
        (
            // Any printable ASCII but a comma (a model name with one is refused).
            "[ -+\\--~]{0,40}",
            any::<u64>(),
            prop::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..4),
            0usize..3,
            ws(),
            ws(),
        )
            .prop_filter(
                "filler keys are not the fields read",
                |(_, _, filler, ..)| {
                    filler.iter().all(|(k, _)| {
                        !k.contains("model")
                            && k != "extra_body"
                            && k != "user_config"
                            && !k.contains("max")
                            && !k.contains("token")
                            && k != "n"
                            && k != "best_of"
                            && k != "background"
                    })
                },
            )
            .prop_map(|(model, max, filler, at, a, b)| {
                let mut members: Vec<String> = filler
                    .iter()
                    .map(|(k, v)| {
                        format!("{}{a}:{b}{}", serde_json::json!(k), serde_json::json!(v))
                    })
                    .collect();
                members.insert(at.min(members.len()), format!("\"max_tokens\"{a}:{b}{max}"));
                members.insert(0, format!("\"model\"{b}:{a}{}", serde_json::json!(model)));
                let body = format!("{a}{{{b}{}{a}}}{b}", members.join(&format!("{a},{b}")));
                (model, max, body)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(256)))]

        /// Whatever the layout and encoding of a JSON chat body, the proxy reads the model
        /// and ceiling the upstream will read, and forwards the JSON it decided on.
        #[test]
        fn fuzz_json_bodies_are_classified_as_the_upstream_reads_them(
            (model, max, body) in chat_object(),
            encoding in 0usize..3,
        ) {
            let (bytes, pairs): (Vec<u8>, &[(&str, &str)]) = match encoding {
                0 => (body.clone().into_bytes(), &[("content-type", "application/json")]),
                1 => (gzip(body.as_bytes()), &[("content-encoding", "gzip")]),
                _ => ([b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat(), &[]),
            };
            let got = to_llm(bytes, pairs).unwrap();
            prop_assert_eq!(got.llm.model.as_deref(), Some(model.as_str()));
            prop_assert_eq!(got.llm.max_output_tokens, Some(max));
            let forwarded: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
            let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
            prop_assert_eq!(forwarded, upstream);
        }

        #[test]
        fn fuzz_hostile_bodies_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            kind in 0usize..6,
        ) {
            let pairs: &[(&str, &str)] = match kind {
                0 => &[("content-type", "multipart/form-data; boundary=b")],
                1 => &[("content-type", "application/x-www-form-urlencoded")],
                2 => &[("content-encoding", "gzip")],
                3 => &[("content-encoding", "br")],
                4 => &[("content-encoding", "zstd")],
                _ => &[("content-encoding", "deflate")],
            };
            let _ = to_llm(bytes.clone(), pairs);
            let mut framed = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = to_llm(framed, &[("content-type", "multipart/form-data; boundary=b")]);
        }
    }
}
