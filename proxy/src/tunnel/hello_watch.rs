//! An opaque tunnel's TLS handshake after its first ClientHello: a server may answer it with a
//! HelloRetryRequest (TLS 1.3), and the client then sends a second ClientHello, whose server
//! name the server reads anew (OpenSSL calls its SNI callback again). That second hello is held
//! to the tunnel's host as the first was ([`super::EgressApp::opaque_start`]).
//!
//! SECURITY: the client's bytes are held from its first hello until the server's first
//! handshake message tells whether it asks for a retry, so a second hello sent ahead of the
//! server's answer cannot slip past either.

use bytes::Bytes;

use crate::tls::ca::TunnelCertResolver;
use crate::transparent::sniff;

/// The `random` of a ServerHello that is a HelloRetryRequest (RFC 8446 §4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// The most bytes held of either side before the handshake is given up on as unreadable.
const MAX_HELD: usize = 64 * 1024;

const CHANGE_CIPHER_SPEC: u8 = 0x14;
const HANDSHAKE: u8 = 0x16;

/// What the relay does with the bytes it gave the watch.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Keep holding the client's bytes.
    Hold,
    /// Send these held client bytes up (the watch is done).
    Pass(Vec<u8>),
    /// End the tunnel, for this reason.
    Cut(Refusal),
}

/// Why a watched handshake ended its tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The second hello named another host than the first (or one when the first named none).
    OtherName,
    /// The handshake cannot be read: more than [`MAX_HELD`] held before the server's first
    /// answer, another record than a hello after a retry, a hello this proxy cannot read.
    Unreadable,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the server's first handshake message.
    ServerHello,
    /// The server asked for a retry: the client's second ClientHello is checked.
    SecondHello,
    /// Nothing more to check.
    Done,
}

/// Watches one opaque tunnel's handshake (see the module).
#[derive(Debug)]
pub struct HelloWatch {
    /// The server name the first hello gave (normalized), or none.
    name: Option<String>,
    server: Vec<u8>,
    client: Vec<u8>,
    state: State,
}

impl HelloWatch {
    /// Splits a tunnel's first bytes (`early`, starting with a ClientHello the tunnel was
    /// decided on) into that hello, which goes up now, and a watch holding what followed it
    /// (a second hello sent ahead of the server's answer among it). `None` when the hello
    /// cannot be read.
    pub fn after_first_hello(early: &Bytes) -> Option<(Bytes, Self)> {
        let hello = whole_hello(early)?;
        let name = sniff::hello_name(hello)?;
        let at = hello.len();
        let watch = Self {
            name,
            server: Vec::new(),
            client: early[at..].to_vec(),
            state: State::ServerHello,
        };
        Some((early.slice(..at), watch))
    }

    /// Whether the watch has nothing more to check (bytes pass straight through).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The server's bytes (they go down as they come): until its first handshake message tells
    /// whether it asks for a retry.
    pub fn server_sent(&mut self, bytes: &[u8]) -> Verdict {
        if self.state != State::ServerHello {
            return Verdict::Hold;
        }
        self.server.extend_from_slice(bytes);
        match retry_asked(&self.server) {
            None if self.server.len() <= MAX_HELD => Verdict::Hold,
            Some(true) => {
                self.server = Vec::new();
                self.state = State::SecondHello;
                self.judge()
            }
            // Any other answer (a ServerHello, an alert, something unreadable, which the
            // client then fails on): no second hello can follow.
            _ => {
                self.server = Vec::new();
                self.state = State::Done;
                Verdict::Pass(std::mem::take(&mut self.client))
            }
        }
    }

    /// The client's bytes: held until the watch is done.
    pub fn client_sent(&mut self, bytes: &[u8]) -> Verdict {
        if self.state == State::Done {
            return Verdict::Pass(bytes.to_vec());
        }
        self.client.extend_from_slice(bytes);
        match self.state {
            State::SecondHello => self.judge(),
            _ if self.client.len() > MAX_HELD => Verdict::Cut(Refusal::Unreadable),
            _ => Verdict::Hold,
        }
    }

    /// Judges the held client bytes once a retry was asked: ChangeCipherSpec records (TLS 1.3's
    /// middlebox compatibility), then a whole ClientHello naming the tunnel's host.
    fn judge(&mut self) -> Verdict {
        let mut rest = &self.client[..];
        while rest.len() >= 5 && rest[0] == CHANGE_CIPHER_SPEC {
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            match rest.get(5 + len..) {
                Some(after) => rest = after,
                None => return self.hold_or_cut(),
            }
        }
        if rest.len() < 5 {
            return self.hold_or_cut();
        }
        if rest[0] != HANDSHAKE {
            return Verdict::Cut(Refusal::Unreadable);
        }
        match whole_hello(rest) {
            None => self.hold_or_cut(),
            // The same name as the first hello's (RFC 8446 §4.1.2: the second hello repeats
            // the first but for its key shares), or none when that had none.
            Some(records) => match (sniff::hello_name(records), &self.name) {
                (Some(Some(second)), Some(first))
                    if TunnelCertResolver::same_name(&second, first) =>
                {
                    self.pass()
                }
                (Some(None), None) => self.pass(),
                (None, _) => Verdict::Cut(Refusal::Unreadable),
                _ => Verdict::Cut(Refusal::OtherName),
            },
        }
    }

    fn pass(&mut self) -> Verdict {
        self.state = State::Done;
        Verdict::Pass(std::mem::take(&mut self.client))
    }

    fn hold_or_cut(&self) -> Verdict {
        if self.client.len() > MAX_HELD {
            Verdict::Cut(Refusal::Unreadable)
        } else {
            Verdict::Hold
        }
    }
}

/// Whether the server's first handshake message (in `bytes`, its records as they came) is a
/// HelloRetryRequest; `None` while it is not whole enough to tell. Another record first is no
/// retry.
fn retry_asked(bytes: &[u8]) -> Option<bool> {
    let mut message = Vec::new();
    let mut rest = bytes;
    // type (1) + length (3) + legacy_version (2) + random (32)
    while message.len() < 38 {
        if rest.len() < 5 {
            return None;
        }
        if rest[0] != HANDSHAKE {
            return Some(false);
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let payload = &rest[5..rest.len().min(5 + len)];
        message.extend_from_slice(payload);
        if payload.len() < len {
            break;
        }
        rest = &rest[5 + len..];
    }
    if message.len() < 38 {
        return None;
    }
    Some(message[0] == 0x02 && message[6..38] == HRR_RANDOM)
}

/// The records of `bytes` (handshake records first) that hold one whole handshake message,
/// `None` while it is not whole.
fn whole_hello(bytes: &[u8]) -> Option<&[u8]> {
    let mut have = 0usize;
    let mut need: Option<usize> = None;
    let mut at = 0usize;
    let mut header = Vec::with_capacity(4);
    while need.is_none_or(|n| have < n) {
        let record = bytes.get(at..at + 5)?;
        if record[0] != HANDSHAKE {
            // Another record before the message is whole: never a hello a server reads.
            return Some(&bytes[..at.max(5)]);
        }
        let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
        let payload = bytes.get(at + 5..at + 5 + len)?;
        for b in payload.iter().take(4usize.saturating_sub(header.len())) {
            header.push(*b);
        }
        if need.is_none() && header.len() == 4 {
            need = Some(
                4 + (usize::from(header[1]) << 16
                    | usize::from(header[2]) << 8
                    | usize::from(header[3])),
            );
        }
        have += len;
        at += 5 + len;
    }
    Some(&bytes[..at])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 0x03, 0x03];
        r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        r.extend_from_slice(payload);
        r
    }

    fn server_hello(random: [u8; 32]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&random);
        body.extend_from_slice(&[0, 0x13, 0x01, 0, 0, 0]);
        let mut message = vec![0x02, 0, 0, body.len() as u8];
        message.extend_from_slice(&body);
        record(HANDSHAKE, &message)
    }

    fn hello(name: &str) -> Vec<u8> {
        crate::transparent::sniff::client_hello_for(name)
    }

    /// A watch after a first hello for `name`, and what that hello's write carried after it.
    fn watch(name: &str, after: &[u8]) -> HelloWatch {
        let mut early = hello(name);
        let first = early.len();
        early.extend_from_slice(after);
        let (sent, watch) = HelloWatch::after_first_hello(&Bytes::from(early)).unwrap();
        assert_eq!(sent.len(), first, "only the first hello goes up at once");
        watch
    }

    /// After a retry, a second hello for another host is cut, one for the tunnel's host (behind
    /// a ChangeCipherSpec) passes; without a retry the held bytes pass as they are.
    #[test]
    fn a_second_hello_after_a_retry_is_held_to_the_host() {
        let ccs = record(CHANGE_CIPHER_SPEC, &[1]);
        for (second, verdict_is_pass) in [("forbidden.test", false), ("pinned.test", true)] {
            let mut w = watch("pinned.test", b"");
            let mut bytes = ccs.clone();
            bytes.extend(hello(second));
            // Sent ahead of the server's answer: held.
            assert_eq!(w.client_sent(&bytes[..10]), Verdict::Hold);
            let hrr = server_hello(HRR_RANDOM);
            assert_eq!(w.server_sent(&hrr[..20]), Verdict::Hold);
            assert_eq!(w.server_sent(&hrr[20..]), Verdict::Hold);
            match w.client_sent(&bytes[10..]) {
                Verdict::Pass(held) => {
                    assert!(verdict_is_pass, "{second}");
                    assert_eq!(held, bytes);
                }
                other => assert!(
                    !verdict_is_pass && other == Verdict::Cut(Refusal::OtherName),
                    "{second}: {other:?}"
                ),
            }
        }
        // A second hello sent in the same write as the first is held all the same, and cut
        // once the server asks for a retry.
        let mut w = watch("pinned.test", &hello("forbidden.test"));
        assert_eq!(
            w.server_sent(&server_hello(HRR_RANDOM)),
            Verdict::Cut(Refusal::OtherName)
        );
        // A first hello without a name (an IP address): a second without one passes, one
        // with a name is cut.
        for (second, passes) in [("192.0.2.1", true), ("forbidden.test", false)] {
            let mut w = watch("192.0.2.1", b"");
            assert_eq!(w.server_sent(&server_hello(HRR_RANDOM)), Verdict::Hold);
            let verdict = w.client_sent(&hello(second));
            assert_eq!(
                matches!(verdict, Verdict::Pass(_)),
                passes,
                "{second}: {verdict:?}"
            );
        }
        // A plain ServerHello: the held bytes go up, and nothing more is watched.
        let mut w = watch("pinned.test", b"");
        assert_eq!(w.client_sent(b"\x17\x03\x03\x00\x01x"), Verdict::Hold);
        assert_eq!(
            w.server_sent(&server_hello([7; 32])),
            Verdict::Pass(b"\x17\x03\x03\x00\x01x".to_vec())
        );
        assert!(w.done());
        assert_eq!(w.client_sent(b"more"), Verdict::Pass(b"more".to_vec()));
        // After a retry, an alert (which some servers skip) or data instead of a hello: cut.
        for first in [record(0x15, &[1, 0x5a]), record(0x17, b"x")] {
            let mut w = watch("pinned.test", b"");
            assert_eq!(w.server_sent(&server_hello(HRR_RANDOM)), Verdict::Hold);
            assert_eq!(w.client_sent(&first), Verdict::Cut(Refusal::Unreadable));
        }
    }
}
