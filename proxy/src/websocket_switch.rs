//! Whether an upstream's `101 Switching Protocols` completes the WebSocket handshake its request
//! opened (RFC 6455 §4.1, the client's checks).
//!
//! SECURITY: after a `101` the client's connection carries bytes no check reads: the proxy
//! relays them both ways unparsed. A server that answers `101` to anything (an endpoint that
//! reflects a status, a backend that does not speak WebSocket behind one that does) leaves the
//! client's next bytes to be read as a plain HTTP request on a path the policy never allowed
//! ("WebSocket smuggling"). The proxy passes a `101` only when it answers a WebSocket upgrade
//! and proves it understood that request: its `Sec-WebSocket-Accept` is the one derived from the
//! request's `Sec-WebSocket-Key`, which only a WebSocket server computes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::HeaderMap;

/// The GUID RFC 6455 appends to the key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether `response` (a `101`) completes the WebSocket handshake `request` opened: the request
/// asked to switch to `websocket` with one key of 16 bytes (base64), and the response switches
/// to `websocket`, nominates `upgrade` in `Connection` and carries the one accept value derived
/// from that key.
pub fn completes_handshake(request: &HeaderMap, response: &HeaderMap) -> bool {
    let Ok(Some(key)) = crate::header_names::sole(request, http::header::SEC_WEBSOCKET_KEY) else {
        return false;
    };
    let key = key.as_bytes().trim_ascii();
    if STANDARD.decode(key).map_or(true, |k| k.len() != 16) {
        return false;
    }
    let accept = matches!(
        crate::header_names::sole(response, http::header::SEC_WEBSOCKET_ACCEPT),
        Ok(Some(v)) if v.as_bytes().trim_ascii() == accept_for(key).as_bytes()
    );
    names_websocket(request) && names_websocket(response) && nominates_upgrade(response) && accept
}

/// Whether `headers` have one `Upgrade` line, naming `websocket` (the one switch the proxy
/// relays).
pub fn names_websocket(headers: &HeaderMap) -> bool {
    matches!(
        crate::header_names::sole(headers, http::header::UPGRADE),
        Ok(Some(v)) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    )
}

/// Whether a line of `Connection` in `headers` nominates `upgrade` (RFC 9110 §7.8).
pub fn nominates_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::CONNECTION).iter().any(|v| {
        crate::front::head::connection_options(v.as_bytes())
            .any(|o| o.eq_ignore_ascii_case(b"upgrade"))
    })
}

/// The `Sec-WebSocket-Accept` a server derives from `key`.
fn accept_for(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    STANDARD.encode(ctx.finish().as_ref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_a_completed_websocket_handshake_switches() {
        // RFC 6455 §1.3's example.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert_eq!(accept_for(key.as_bytes()), accept);
        let request = headers(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", key),
        ]);
        let good = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", accept),
        ];
        assert!(completes_handshake(&request, &headers(&good)));
        assert!(completes_handshake(
            &request,
            &headers(&[
                ("upgrade", "WebSocket"),
                ("connection", "keep-alive, upgrade"),
                ("sec-websocket-accept", accept),
            ])
        ));
        let without = |name: &str| -> Vec<(&str, &str)> {
            good.iter().copied().filter(|(n, _)| *n != name).collect()
        };
        #[rustfmt::skip]
        let refused: Vec<(&str, HeaderMap, HeaderMap)> = vec![
            ("a 101 that reflects a status", request.clone(), headers(&[])),
            ("no accept", request.clone(), headers(&without("sec-websocket-accept"))),
            ("no upgrade", request.clone(), headers(&without("upgrade"))),
            ("no connection", request.clone(), headers(&without("connection"))),
            ("another protocol", request.clone(), headers(&[("upgrade", "h2c"), ("connection", "upgrade"), ("sec-websocket-accept", accept)])),
            ("a wrong accept", request.clone(), headers(&[("upgrade", "websocket"), ("connection", "upgrade"), ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")])),
            ("two accepts", request.clone(), headers(&[("upgrade", "websocket"), ("connection", "upgrade"), ("sec-websocket-accept", accept), ("sec-websocket-accept", accept)])),
            ("a request that asked for no switch", headers(&[]), headers(&good)),
            ("a request with no key", headers(&[("upgrade", "websocket"), ("connection", "upgrade")]), headers(&good)),
            ("a key of another length", headers(&[("upgrade", "websocket"), ("connection", "upgrade"), ("sec-websocket-key", "a2V5")]), headers(&[("upgrade", "websocket"), ("connection", "upgrade"), ("sec-websocket-accept", &accept_for(b"a2V5"))])),
        ];
        for (name, request, response) in refused {
            assert!(!completes_handshake(&request, &response), "{name}");
        }
    }
}
