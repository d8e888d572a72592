//! A request's `Content-Encoding`: which codings it lists, and undoing them within a bound.

use std::io::Read;

use bytes::Bytes;

use super::BodyError;

/// Content codings decoded one inside another at most (`gzip, br` is two).
const MAX_CODINGS: usize = 4;

/// The codings of a request's `Content-Encoding` (see [`content_codings`]) when the proxy
/// decodes every one of them: `None` without one, or when one is a coding it does not know.
pub(super) fn readable_codings(
    headers: &http::HeaderMap,
) -> Result<Option<Vec<Coding>>, BodyError> {
    match content_codings(headers) {
        Ok(codings) if codings.is_empty() => Ok(None),
        Ok(codings) => Ok(Some(codings)),
        Err(BodyError::Unsupported(_)) if !too_many_codings(headers) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the `Content-Encoding` lists more codings than are decoded ([`MAX_CODINGS`]).
fn too_many_codings(headers: &http::HeaderMap) -> bool {
    let listed: usize = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(',').filter(|t| !t.trim().is_empty()).count())
        .sum();
    listed > MAX_CODINGS
}

/// Undoes `codings` (in the order they were applied: the last first), bounded by `cap`.
pub(super) fn decode_all(body: Bytes, codings: &[Coding], cap: usize) -> Result<Bytes, BodyError> {
    let mut bytes = body;
    for coding in codings.iter().rev() {
        bytes = Bytes::from(decode(&bytes, *coding, cap)?);
    }
    Ok(bytes)
}

/// A content coding the proxy decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

/// The request's `Content-Encoding` codings, in the order they were applied (`identity`
/// dropped). Every header line counts, and every comma-separated entry.
pub(super) fn content_codings(headers: &http::HeaderMap) -> Result<Vec<Coding>, BodyError> {
    let mut codings = Vec::new();
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| BodyError::Unsupported("a `Content-Encoding` that is not text".into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let coding = match token.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                "zstd" => Coding::Zstd,
                _ => {
                    return Err(BodyError::Unsupported(format!(
                        "`Content-Encoding: {token}` (gzip, deflate, br and zstd are decoded)"
                    )))
                }
            };
            codings.push(coding);
        }
    }
    if codings.len() > MAX_CODINGS {
        return Err(BodyError::Unsupported(format!(
            "more than {MAX_CODINGS} content codings"
        )));
    }
    Ok(codings)
}

/// Largest zstd window accepted (8 MiB), so a frame cannot make the decoder allocate more.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decodes `body`, refusing output over `cap` (the decoder stops there: a decompression bomb
/// costs at most `cap` bytes).
fn decode(body: &[u8], coding: Coding, cap: usize) -> Result<Vec<u8>, BodyError> {
    let corrupt = |e: std::io::Error| {
        BodyError::Malformed(format!(
            "the request body's `Content-Encoding` cannot be decoded: {e}"
        ))
    };
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        // HTTP's `deflate` is zlib-wrapped; some clients send raw deflate, which has no header.
        Coding::Deflate if zlib_header(body) => Box::new(flate2::read::ZlibDecoder::new(body)),
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(body)),
        Coding::Brotli => Box::new(brotli::Decompressor::new(body, 4096)),
        Coding::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(body).map_err(corrupt)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(corrupt)?;
            Box::new(d)
        }
    };
    let mut out = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() > cap {
        return Err(BodyError::TooLarge);
    }
    Ok(out)
}

fn zlib_header(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => cmf & 0x0F == 8 && (u16::from(*cmf) * 256 + u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}
