//! AWS Signature Version 4 for `aws_sigv4` credentials: the proxy signs the request exactly as it
//! leaves (after every rewrite: substitutions, the usage request, the real `Content-Length`),
//! body included (`x-amz-content-sha256`), with the upstream's `Host`. The canonicalisation and
//! key derivation are the `aws-sigv4` crate's (the AWS SDK's own signer), not hand-written.
//!
//! The signed headers are `host`, `content-type` and every `x-amz-*` header: the ones the
//! service needs and that nothing after the signature changes (pingora may add hop-by-hop
//! headers on the way out, which a signature over every header would break).

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign as sign_request, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use pingora::http::RequestHeader;
use serde::Deserialize;
use zeroize::Zeroizing;

/// An AWS access key with the region and service it signs for. `Debug` shows the access key id,
/// region and service only.
pub struct AwsKey {
    /// `AKIA…` / `ASIA…` (not secret: it appears in every signed request).
    pub access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
    /// The signing region (`us-east-1`).
    pub region: String,
    /// The signing service name (`bedrock`).
    pub service: String,
}

impl std::fmt::Debug for AwsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKey")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("session_token", &self.session_token.is_some())
            .finish()
    }
}

/// The value of an `aws_sigv4` credential, as stored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
    region: Option<String>,
    #[serde(default)]
    service: Option<String>,
}

/// Service names and regions are short lowercase tokens (`bedrock`, `eu-west-3`).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl AwsKey {
    /// Reads a stored value: JSON `{"access_key_id", "secret_access_key", "session_token"?,
    /// "region", "service"? (default "bedrock")}`. Errors never quote the value.
    pub fn parse(value: &[u8]) -> Result<Self, String> {
        let s: Stored = serde_json::from_slice(value).map_err(|e| {
            // serde's message may quote input; keep only its category and position.
            format!(
                "an `aws_sigv4` value is JSON with `access_key_id`, `secret_access_key`, `region` (and optionally `session_token`, `service`): {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let secret_access_key = Zeroizing::new(s.secret_access_key);
        let session_token = s.session_token.map(Zeroizing::new);
        let region = s.region.ok_or("an `aws_sigv4` value needs `region`")?;
        let service = s.service.unwrap_or_else(|| "bedrock".into());
        if !is_token(&region) || !is_token(&service) {
            return Err(
                "`region` and `service` are lowercase names such as `us-east-1`, `bedrock`".into(),
            );
        }
        let id_ok = !s.access_key_id.is_empty()
            && s.access_key_id.len() <= 128
            && s.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok || secret_access_key.is_empty() {
            return Err(
                "`access_key_id` (letters and digits) and `secret_access_key` must be set".into(),
            );
        }
        Ok(Self {
            access_key_id: s.access_key_id,
            secret_access_key,
            session_token: session_token.filter(|t| !t.is_empty()),
            region,
            service,
        })
    }

    /// The secret parts (scrubbed from responses that echo them).
    pub fn secrets(&self) -> Vec<&[u8]> {
        let mut out = vec![self.secret_access_key.as_bytes()];
        if let Some(t) = &self.session_token {
            out.push(t.as_bytes());
        }
        out
    }
}

/// Why a request could not be signed (never carries secret material).
#[derive(Debug, thiserror::Error)]
#[error("request could not be signed: {0}")]
pub struct SignError(String);

/// Headers the agent may have set that the signature sets (or that an old signature left):
/// removed before signing, so the upstream sees exactly one of each, the proxy's.
const SIGNATURE_HEADERS: &[&str] = &[
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Signs `upstream` (its method, origin-form target and headers as they leave, `Host`
/// included) and `body` for `scheme` with `key` at `now`: sets `Authorization`, `X-Amz-Date`,
/// `X-Amz-Content-Sha256` and, for temporary keys, `X-Amz-Security-Token`.
pub fn sign(
    key: &AwsKey,
    upstream: &mut RequestHeader,
    scheme: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<(), SignError> {
    sign_with(
        key,
        upstream,
        scheme,
        body,
        now,
        PayloadChecksumKind::XAmzSha256,
    )
}

fn sign_with(
    key: &AwsKey,
    upstream: &mut RequestHeader,
    scheme: &str,
    body: &[u8],
    now: SystemTime,
    checksum: PayloadChecksumKind,
) -> Result<(), SignError> {
    for name in SIGNATURE_HEADERS {
        upstream.remove_header(*name);
    }
    let host = upstream
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| SignError("no host".into()))?
        .to_string();
    let path = upstream
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("{scheme}://{host}{path}");
    let signed: Vec<(&str, &str)> = upstream
        .headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n == "host" || n == "content-type" || n.starts_with("x-amz-")
        })
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = checksum;
    let identity = Credentials::new(
        key.access_key_id.as_str(),
        key.secret_access_key.as_str(),
        key.session_token.as_ref().map(|t| t.to_string()),
        None,
        "tenant-proxy",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&key.region)
        .name(&key.service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| SignError(e.to_string()))?
        .into();
    let request = SignableRequest::new(
        upstream.method.as_str(),
        url,
        signed.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| SignError(e.to_string()))?;
    let (instructions, _signature) = sign_request(request, &params)
        .map_err(|e| SignError(e.to_string()))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    for h in headers {
        let mut value = http::HeaderValue::from_str(h.value())
            .map_err(|_| SignError(format!("header `{}`", h.name())))?;
        // SECURITY: the session token is a secret and the signature authorizes a replay for
        // minutes: marked sensitive, HTTP/2 keeps them out of its HPACK table, and `Debug`
        // prints them redacted.
        if ["authorization", "x-amz-security-token"]
            .iter()
            .any(|n| h.name().eq_ignore_ascii_case(n))
        {
            value.set_sensitive(true);
        }
        upstream
            .insert_header(h.name(), value)
            .map_err(|_| SignError(format!("header `{}`", h.name())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn key(token: Option<&str>) -> AwsKey {
        let mut v = serde_json::json!({
            "access_key_id": "AKIDEXAMPLE",
            "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "region": "us-east-1",
            "service": "service",
        });
        if let Some(t) = token {
            v["session_token"] = t.into();
        }
        AwsKey::parse(&serde_json::to_vec(&v).expect("json")).expect("key")
    }

    /// 2015-08-30T12:36:00Z, the AWS SigV4 test suite's date.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn header(method: &str, path: &str, host: &str) -> RequestHeader {
        let mut h = RequestHeader::build(method, path.as_bytes(), None).expect("header");
        h.insert_header("host", host).expect("host");
        h
    }

    fn auth(h: &RequestHeader) -> String {
        h.headers["authorization"]
            .to_str()
            .expect("ascii")
            .to_string()
    }

    /// The AWS SigV4 test suite's `get-vanilla` and `post-vanilla` (signed as published,
    /// without the payload hash header), then the same requests as the proxy signs them (with
    /// `x-amz-content-sha256`, a body, a session token, Bedrock's encoded model id in the path),
    /// each signature computed independently by botocore's `SigV4Auth`.
    #[test]
    fn signatures_match_the_aws_test_suite_and_botocore() {
        let sha_of = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        use sha2::Digest as _;
        // (method, path, body, session token, payload hash, signed headers, signature)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            PayloadChecksumKind,
            &'a str,
            &'a str,
        );
        let cases: [Case<'_>; 6] = [
            (
                "GET",
                "/",
                "",
                None,
                PayloadChecksumKind::NoHeader,
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "/",
                "",
                None,
                PayloadChecksumKind::NoHeader,
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "GET",
                "/",
                "",
                None,
                PayloadChecksumKind::XAmzSha256,
                "host;x-amz-content-sha256;x-amz-date",
                "726c5c4879a6b4ccbbd3b24edbd6b8826d34f87450fbbf4e85546fc7ba9c1642",
            ),
            (
                "POST",
                "/",
                "{\"a\":1}",
                None,
                PayloadChecksumKind::XAmzSha256,
                "host;x-amz-content-sha256;x-amz-date",
                "5e2fc22b3c3744d4e2511ad09e4469be915067e53b1c023b16cb3b4b67af3239",
            ),
            (
                "POST",
                "/",
                "{\"a\":1}",
                Some("FQoGZXIvYXdzEXAMPLETOKEN"),
                PayloadChecksumKind::XAmzSha256,
                "host;x-amz-content-sha256;x-amz-date;x-amz-security-token",
                "a6fcc8c1d57b311086c5698c796d4c18fad4319d834b792697f97787565eb6af",
            ),
            (
                "POST",
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                "{\"a\":1}",
                None,
                PayloadChecksumKind::XAmzSha256,
                "host;x-amz-content-sha256;x-amz-date",
                "49996b0ca724f5d0581e4b25cd3a7e43f7a268a06557b37f9f924eb28be852e0",
            ),
        ];
        for (method, path, body, token, checksum, signed_headers, signature) in cases {
            let mut h = header(method, path, "example.amazonaws.com");
            // What an agent may have set: replaced, not signed along.
            h.insert_header("authorization", "AWS4-HMAC-SHA256 agent")
                .expect("h");
            h.insert_header("x-amz-date", "19990101T000000Z")
                .expect("h");
            sign_with(
                &key(token),
                &mut h,
                "https",
                body.as_bytes(),
                suite_time(),
                checksum,
            )
            .expect("signed");
            let want = format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed_headers}, Signature={signature}"
            );
            assert_eq!(auth(&h), want, "{method} {path} {body}");
            assert_eq!(h.headers.get_all("x-amz-date").iter().count(), 1);
            assert_eq!(h.headers["x-amz-date"], "20150830T123600Z");
            if checksum == PayloadChecksumKind::XAmzSha256 {
                assert_eq!(
                    h.headers["x-amz-content-sha256"],
                    sha_of(body.as_bytes()).as_str()
                );
            }
        }
        // `sign` is the proxy's setting: the payload hash is always signed.
        let mut h = header("GET", "/", "example.amazonaws.com");
        sign(&key(None), &mut h, "https", b"", suite_time()).expect("signed");
        assert!(
            auth(&h).ends_with("726c5c4879a6b4ccbbd3b24edbd6b8826d34f87450fbbf4e85546fc7ba9c1642")
        );
    }

    /// The signature and the session token are marked sensitive (kept out of HTTP/2's HPACK
    /// table, redacted in `Debug`); the rest of the signature's headers are not secret.
    #[test]
    fn signature_headers_that_are_secret_are_sensitive() {
        let mut h = header(
            "POST",
            "/model/m/converse",
            "bedrock-runtime.us-east-1.amazonaws.com",
        );
        sign(
            &key(Some("SESSION-TOKEN-1234")),
            &mut h,
            "https",
            b"{}",
            suite_time(),
        )
        .expect("signed");
        assert!(h.headers["authorization"].is_sensitive());
        assert!(h.headers["x-amz-security-token"].is_sensitive());
        assert!(!h.headers["x-amz-date"].is_sensitive());
        assert!(!format!("{:?}", h.headers).contains("SESSION-TOKEN-1234"));
    }

    #[test]
    fn keys_never_print_their_secrets() {
        let k = key(Some("canary-token"));
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("EXAMPLEKEY") && !shown.contains("canary"),
            "{shown}"
        );
        assert_eq!(k.secrets().len(), 2);
        for bad in [
            &b"{\"access_key_id\":\"A\",\"secret_access_key\":\"s\"}"[..],
            b"{\"access_key_id\":\"A\",\"secret_access_key\":\"\",\"region\":\"us-east-1\"}",
            b"{\"access_key_id\":\"A/B\",\"secret_access_key\":\"s\",\"region\":\"us-east-1\"}",
            b"{\"access_key_id\":\"A\",\"secret_access_key\":\"s\",\"region\":\"US EAST\"}",
            b"{\"access_key_id\":\"A\",\"secret_access_key\":\"s\",\"region\":\"r\",\"extra\":1}",
        ] {
            assert!(
                AwsKey::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
