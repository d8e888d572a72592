//! Header names as servers read them.

/// Whether header names `a` and `b` are the same once `_` is read as `-` (both are lowercase):
/// a server that reads headers CGI-style (`HTTP_X_TENANT_ID`) takes `x_tenant_id` for
/// `x-tenant-id`.
pub fn same_but_underscores(a: &http::HeaderName, b: &http::HeaderName) -> bool {
    let (a, b) = (a.as_str().as_bytes(), b.as_str().as_bytes());
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            let dash = |c: u8| if c == b'_' { b'-' } else { c };
            dash(*x) == dash(*y)
        })
}
