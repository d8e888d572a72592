//! What a wrapper around a pingora stream passes straight to the stream it wraps.
//!
//! pingora's `IO` trait asks every stream for its identity, TLS state (which carries the mTLS
//! identity) and timing and socket digests. The proxy's wrappers (the front's checked
//! connection, a connection with bytes put back, a connection the drain can cut) change only
//! how bytes move; these answers are the inner stream's, written once here.

/// Implements `UniqueID`, `Ssl`, `GetTimingDigest`, `GetProxyDigest` and `GetSocketDigest` for
/// a wrapper whose field `inner` is the stream it wraps:
/// `forward_stream_digests!(impl for Wrapper)` or `forward_stream_digests!(impl<C> for Wrapper<C>)`.
macro_rules! forward_stream_digests {
    (impl $(<$g:ident>)? for $ty:ty) => {
        impl$(<$g>)? pingora::protocols::UniqueID for $ty {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                self.inner.id()
            }
        }

        impl$(<$g>)? pingora::protocols::Ssl for $ty {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                self.inner.get_ssl()
            }

            fn get_ssl_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
                self.inner.get_ssl_digest()
            }

            fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
                self.inner.selected_alpn_proto()
            }
        }

        impl$(<$g>)? pingora::protocols::GetTimingDigest for $ty {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                self.inner.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                self.inner.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                self.inner.get_write_pending_time()
            }
        }

        impl$(<$g>)? pingora::protocols::GetProxyDigest for $ty {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                self.inner.get_proxy_digest()
            }
        }

        impl$(<$g>)? pingora::protocols::GetSocketDigest for $ty {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                self.inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, socket_digest: pingora::protocols::SocketDigest) {
                self.inner.set_socket_digest(socket_digest)
            }
        }
    };
}

pub(crate) use forward_stream_digests;
