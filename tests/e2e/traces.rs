//! OpenTelemetry traces end to end: a local OTLP/HTTP receiver, started here, decodes what the
//! proxy exports (protobuf, `opentelemetry-proto`) and keeps the raw bytes. One span per
//! request with its phase events, the tenant as an attribute, the caller's `traceparent`
//! continued (and this span named upstream as the parent), the agent's `baggage` not forwarded
//! to an external host, and no secret, query value, header or body anywhere in the export.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

use crate::support::*;

const SECRET: &str = "sk-acme-live-canary-trace-5f2a";
const QUERY_CANARY: &str = "q-canary-7c1d";
const BODY_CANARY: &str = "body-canary-93be";
const BAGGAGE_CANARY: &str = "baggage-canary-44aa";
const HEADER_CANARY: &str = "header-canary-0b6e";

/// What the receiver got: each export's raw body, and the spans decoded from them (with their
/// resource's `service.name`).
#[derive(Default)]
struct Received {
    raw: Vec<Vec<u8>>,
    paths: Vec<String>,
    spans: Vec<(String, Span)>,
}

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, answered 200.
fn start_receiver() -> (u16, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Received::default()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let got = keep.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    {
                        let mut got = got.lock().unwrap();
                        got.raw.push(body);
                        got.paths.push(path);
                        for rs in request.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .and_then(|a| a.value.as_ref())
                                .and_then(|v| match &v.value {
                                    Some(Value::StringValue(s)) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                for span in ss.spans {
                                    got.spans.push((service.clone(), span));
                                }
                            }
                        }
                    }
                    let mut out = &stream;
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
                    );
                }
            });
        }
    });
    (port, got)
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|a| {
            let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (a.key.clone(), v)
        })
        .collect()
}

/// Waits (20 s at most) until a span with `request_id` arrived.
fn span_for(got: &Mutex<Received>, request_id: &str) -> (String, Span) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = got.lock().unwrap().spans.iter().find(|(_, s)| {
            attributes(s)
                .get("tenant_proxy.request_id")
                .map(String::as_str)
                == Some(request_id)
        }) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no span for request {request_id} arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_request_is_one_span_continuing_the_callers_trace_with_no_secret_in_it() {
    let origin = Origin::start();
    let (receiver, got) = start_receiver();
    let mut spec = ProxySpec::default();
    spec.config.tracing = Some(config::Tracing {
        otlp_endpoint: format!("http://127.0.0.1:{receiver}/v1/traces"),
        service_name: Some("tp-e2e".into()),
    });
    // Export batches every 100 ms instead of every 5 s.
    spec.env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let credentials = spec.tenants.credentials();
    credentials.files_dir = Some("secrets".into());
    credentials.files.push(config::FileCredential::header(
        "acme",
        "openai",
        &["127.0.0.1"],
    ));
    let proxy = Proxy::start_prepared(spec, |dir| {
        std::fs::create_dir_all(dir.join("secrets/acme")).unwrap();
        std::fs::write(dir.join("secrets/acme/openai"), SECRET).unwrap();
    });

    // acme, continuing the caller's trace, with a secret substituted, a query value, a body,
    // a custom header and baggage: none of them may reach the span.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let body = format!(r#"{{"note":"{BODY_CANARY}"}}"#);
    let r = raw_request(
        proxy.sidecar_port,
        &format!(
            "POST http://127.0.0.1:{port}/acme/x?token={QUERY_CANARY}&b=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\ntraceparent: 00-{trace_id}-{parent}-01\r\nbaggage: user={BAGGAGE_CANARY}\r\nAuthorization: Bearer $CRED{{openai}}\r\nX-Note: {HEADER_CANARY}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
            port = origin.port,
            len = body.len()
        ),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = &origin.matching("/acme/x")[0];
    assert_eq!(seen.headers["authorization"], format!("Bearer {SECRET}"));
    assert!(
        !seen.headers.contains_key("baggage"),
        "the agent's baggage reached an external host: {:?}",
        seen.headers
    );
    let upstream_tp = seen.headers["traceparent"].clone();
    let (_, upstream_trace, upstream_parent, _) = {
        let p: Vec<&str> = upstream_tp.split('-').collect();
        (p[0], p[1].to_string(), p[2].to_string(), p[3])
    };
    assert_eq!(
        upstream_trace, trace_id,
        "the trace was not continued upstream"
    );

    // A refusal (policy) is a span too, and so is globex's request on the shared listener.
    let denied = raw_request(
        proxy.sidecar_port,
        &format!(
            "GET http://127.0.0.1:{}/elsewhere HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            origin.port, origin.port
        ),
    )
    .unwrap();
    denied.assert_refused(403, "policy_denied");
    let globex = forward_get(
        proxy.shared_port,
        &format!("http://127.0.0.1:{}/globex/y", origin.port),
        Some(&token_for("globex", "agent")),
        "",
    );

    // The collector is a service the proxy uses: no tenant's request reaches it (it would write
    // spans in another tenant's name), though the exceptions cover its address.
    proxy.assert_refused_as_itself(&format!("http://127.0.0.1:{receiver}/acme/v1/traces"));

    let (service, span) = span_for(&got, &r.request_id());
    assert_eq!(service, "tp-e2e");
    assert_eq!(hex::encode(&span.trace_id), trace_id);
    assert_eq!(
        hex::encode(&span.parent_span_id),
        parent,
        "the caller's span is the parent"
    );
    assert_eq!(
        hex::encode(&span.span_id),
        upstream_parent,
        "the traceparent sent upstream names this span"
    );
    let a = attributes(&span);
    for (k, v) in [
        ("tenant_proxy.tenant", "acme"),
        ("tenant_proxy.workload", "bot"),
        ("tenant_proxy.listener", "sidecar"),
        ("http.request.method", "POST"),
        ("url.scheme", "http"),
        ("server.address", "127.0.0.1"),
        ("url.path", "/acme/x?token&b"),
        ("tenant_proxy.decision", "allow"),
        ("tenant_proxy.reason", "allowed"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k}: {a:?}");
    }
    let events: Vec<&str> = span.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        events,
        ["identity", "policy", "credentials", "limits", "upstream"],
        "{events:?}"
    );
    assert!(span.start_time_unix_nano <= span.events[0].time_unix_nano);
    assert!(span.events[4].time_unix_nano <= span.end_time_unix_nano);

    let (_, refused) = span_for(&got, &denied.request_id());
    let a = attributes(&refused);
    assert_eq!(a["tenant_proxy.reason"], "policy_denied", "{a:?}");
    assert_eq!(a["tenant_proxy.tenant"], "acme", "{a:?}");
    assert_eq!(
        refused.status.as_ref().map(|s| s.code),
        Some(2),
        "an error status"
    );
    let events: Vec<&str> = refused.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        events,
        ["identity", "policy"],
        "refused at policy: {events:?}"
    );
    assert_ne!(
        hex::encode(&refused.trace_id),
        trace_id,
        "a request without traceparent starts a trace"
    );

    let (_, g) = span_for(&got, &globex.request_id());
    assert_eq!(attributes(&g)["tenant_proxy.tenant"], "globex");

    let got = got.lock().unwrap();
    assert!(
        got.paths.iter().all(|p| p == "/v1/traces"),
        "{:?}",
        got.paths
    );
    for raw in &got.raw {
        let text = String::from_utf8_lossy(raw);
        for canary in [
            SECRET,
            QUERY_CANARY,
            BODY_CANARY,
            BAGGAGE_CANARY,
            HEADER_CANARY,
            "$CRED",
        ] {
            assert!(!text.contains(canary), "`{canary}` was exported in a span");
        }
    }
}

#[test]
fn an_unsampled_callers_trace_is_continued_but_not_exported() {
    let origin = Origin::start();
    let (receiver, got) = start_receiver();
    let mut spec = ProxySpec::default();
    spec.config.tracing = Some(config::Tracing {
        otlp_endpoint: format!("http://127.0.0.1:{receiver}/v1/traces"),
        service_name: None,
    });
    spec.env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let proxy = Proxy::start(spec);
    let get = |traceparent: &str| {
        let r = raw_request(
            proxy.sidecar_port,
            &format!(
                "GET http://127.0.0.1:{p}/acme/s HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\ntraceparent: {traceparent}\r\nConnection: close\r\n\r\n",
                p = origin.port
            ),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        r.request_id()
    };
    let unsampled = get("00-11111111111111111111111111111111-2222222222222222-00");
    let sampled = get("00-33333333333333333333333333333333-4444444444444444-01");
    let (service, _) = span_for(&got, &sampled);
    assert_eq!(service, "tenant-proxy", "the default service name");
    // Exported in order: once the later span is in, the earlier one would be too.
    let got = got.lock().unwrap();
    assert!(
        !got.spans.iter().any(|(_, s)| attributes(s)
            .get("tenant_proxy.request_id")
            .is_some_and(|id| *id == unsampled)),
        "an unsampled trace was exported"
    );
    assert!(origin.matching("/acme/s")[0].headers["traceparent"]
        .starts_with("00-11111111111111111111111111111111-"));
}

/// W3C trace context as a caller sends it, with no collector: a valid `traceparent` is
/// continued with its `tracestate`; an invalid one (or two of them) starts a new trace, and the
/// caller's `tracestate`, which belonged to it, is not sent on.
#[test]
fn a_trace_started_anew_drops_the_callers_tracestate() {
    let origin = Origin::start();
    let proxy = Proxy::start(ProxySpec::default());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let valid = format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\n");
    let cases = [
        ("valid", valid.clone(), true),
        (
            "upper case",
            "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\n".into(),
            false,
        ),
        ("garbage", "traceparent: not-a-trace\r\n".into(), false),
        ("two of them", format!("{valid}{valid}"), false),
    ];
    for (i, (name, traceparent, continued)) in cases.into_iter().enumerate() {
        let path = format!("/acme/trace-{i}");
        let r = raw_request(
            proxy.sidecar_port,
            &format!(
                "GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{traceparent}tracestate: vendor=opaque\r\nConnection: close\r\n\r\n",
                port = origin.port
            ),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{name}: {}", r.body_text());
        let seen = &origin.matching(&path)[0];
        let sent = seen.headers["traceparent"].clone();
        assert_eq!(
            sent.split('-').nth(1) == Some(trace_id),
            continued,
            "{name}: {sent}"
        );
        assert_eq!(
            seen.headers.get("tracestate").map(String::as_str),
            continued.then_some("vendor=opaque"),
            "{name}"
        );
    }
}

/// A collector that cannot be reached loses spans, and says so: counted in
/// `tenant_proxy_trace_spans_unexported_total` and logged once (by kind and address, never the
/// endpoint's URL), while requests are served as before.
#[test]
fn spans_a_collector_does_not_take_are_counted_and_logged() {
    let origin = Origin::start();
    let nothing_there = HeldPort::closed().unwrap();
    let mut spec = ProxySpec::default();
    spec.config.tracing = Some(config::Tracing {
        otlp_endpoint: format!("http://127.0.0.1:{}/v1/traces", nothing_there.port),
        service_name: None,
    });
    spec.env
        .push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let proxy = Proxy::start(spec);
    for i in 0..3 {
        let r = raw_request(
            proxy.sidecar_port,
            &format!(
                "GET http://127.0.0.1:{port}/acme/lost-{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
                port = origin.port
            ),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let unexported = loop {
        let metrics = proxy.metrics();
        let n = metrics
            .lines()
            .find_map(|l| l.strip_prefix("tenant_proxy_trace_spans_unexported_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if n >= 3 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(unexported >= 3, "{unexported} spans counted as unexported");
    let metrics = proxy.metrics();
    let count = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    assert!(
        count("tenant_proxy_trace_spans_ended_total ").is_some_and(|n| n >= 3),
        "{metrics}"
    );
    assert_eq!(
        count("tenant_proxy_trace_spans_exported_total "),
        Some(0),
        "{metrics}"
    );
    let log = proxy.log();
    assert_eq!(
        log.matches("cannot export traces").count(),
        1,
        "logged once while it fails: {log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{}", nothing_there.port)),
        "{log}"
    );
    assert!(
        !log.contains("/v1/traces"),
        "the error's kind, not its text: {log}"
    );
}
