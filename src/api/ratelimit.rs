//! Rate limiting of the API routes (`server.rate_limit_per_s`, `server.rate_limit_burst`): a
//! token bucket (`governor`'s GCRA) per client, where a client is a valid API key (each key its
//! own bucket) or, for a request without one, the peer's IP address. Requests over the limit
//! get `429 rate_limited` with `Retry-After`. The limiter runs before the key check, so
//! requests with a wrong key count against their address: guessing keys is limited too. The
//! public routes (demo page, health, OpenAPI) are never limited.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::auth::{required, Access, Keys};
use super::ApiError;
use crate::app::AppState;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A valid API key (by the access it grants: there is one key of each).
    Key(Access),
    /// The peer's address, for requests without a valid key. An IPv6 address is cut to its
    /// /64 network, which one host usually holds whole: otherwise a single host could be any
    /// number of clients (and add as many buckets or spool quotas).
    Ip(IpAddr),
    /// No address known (requests not from a socket, as in unit tests).
    Unknown,
}

impl Client {
    /// The client a request comes from: its valid API key, else its peer's address.
    pub fn of(keys: &Keys, req: &Request) -> Client {
        if let Ok(access) = keys.check(req.headers()) {
            return Client::Key(access);
        }
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(Client::Unknown, |c| Client::Ip(network(c.0.ip())))
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Key(Access::Admin) => f.write_str("key:admin"),
            Client::Key(Access::Read) => f.write_str("key:read"),
            Client::Key(Access::Public) => f.write_str("key:public"),
            Client::Ip(ip) => write!(f, "ip:{ip}"),
            Client::Unknown => f.write_str("unknown"),
        }
    }
}

/// An IPv4 address as it is (an IPv4-mapped IPv6 address as its IPv4 address); an IPv6
/// address as its /64 network.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// The buckets of every client.
pub struct Limiter {
    buckets: DefaultKeyedRateLimiter<Client>,
    keys: Arc<Keys>,
}

impl Limiter {
    /// `per_second` requests per second in bursts of up to `burst`; `None` for 0 (no limit).
    pub fn new(per_second: f64, burst: u32, keys: Arc<Keys>) -> Option<Self> {
        if per_second.is_nan() || per_second <= 0.0 {
            return None;
        }
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_second))?
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("at least 1"));
        Some(Limiter {
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            keys,
        })
    }

    /// The client a request comes from.
    pub fn client(&self, req: &Request) -> Client {
        Client::of(&self.keys, req)
    }

    /// Takes a token from `client`'s bucket, or says how long until one is there.
    pub fn check(&self, client: &Client) -> Result<(), Duration> {
        self.buckets
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(self.buckets.clock().now()))
    }

    /// Forgets the buckets of clients idle long enough to be full again (called now and then,
    /// or the table would grow with every address ever seen).
    pub fn forget_idle(&self) {
        self.buckets.retain_recent();
    }
}

/// `429 rate_limited` with `Retry-After` in whole seconds, at least 1.
fn too_many(wait: Duration) -> Response {
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; retry after the number of seconds in Retry-After",
    );
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    err.retry_after = Some(u32::try_from(secs).unwrap_or(u32::MAX).max(1));
    err.into_response()
}

/// Middleware: lets a request through when no limit is set, the route is public, or its
/// client's bucket has a token; otherwise answers `429`.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limiter) = &state.limiter else {
        return next.run(req).await;
    };
    if required(req.method(), req.uri().path()) == Access::Public {
        return next.run(req).await;
    }
    match limiter.check(&limiter.client(&req)) {
        Ok(()) => next.run(req).await,
        Err(wait) => too_many(wait),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthSettings;
    use axum::body::Body;
    use axum::http::header;

    fn request(key: Option<&str>, peer: Option<&str>) -> Request {
        let mut b = Request::builder().uri("/v1/collections");
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let mut req = b.body(Body::empty()).unwrap();
        if let Some(p) = peer {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(p.parse().unwrap()));
        }
        req
    }

    #[test]
    fn buckets_per_key_and_per_address() {
        let keys = Arc::new(Keys::new(&AuthSettings {
            admin_key: Some("admin-key-0123456789".into()),
            read_key: Some("read-key-0123456789".into()),
            allow_unauthenticated_remote: false,
        }));
        assert!(Limiter::new(0.0, 5, keys.clone()).is_none());
        assert!(Limiter::new(f64::NAN, 5, keys.clone()).is_none());
        // One token per 100 s: only the burst passes within the test.
        let l = Limiter::new(0.01, 2, keys).unwrap();
        let a = l.client(&request(None, Some("10.0.0.1:5000")));
        let a_other_port = l.client(&request(None, Some("10.0.0.1:6000")));
        let wrong_key = l.client(&request(
            Some("wrong-key-0000000000"),
            Some("10.0.0.1:7000"),
        ));
        assert_eq!(a, a_other_port);
        assert_eq!(a, wrong_key, "a wrong key counts against its address");
        assert!(l.check(&a).is_ok() && l.check(&a).is_ok());
        let wait = l.check(&a).unwrap_err();
        assert!(wait > Duration::from_secs(90), "{wait:?}");
        // Other clients have their own buckets.
        let b = l.client(&request(None, Some("10.0.0.2:5000")));
        let admin = l.client(&request(Some("admin-key-0123456789"), Some("10.0.0.1:1")));
        let read = l.client(&request(Some("read-key-0123456789"), Some("10.0.0.1:1")));
        assert_eq!(
            (admin.clone(), read.clone()),
            (Client::Key(Access::Admin), Client::Key(Access::Read))
        );
        for c in [&b, &admin, &read] {
            assert!(l.check(c).is_ok(), "{c:?}");
        }
        assert_eq!(l.client(&request(None, None)), Client::Unknown);
        // One IPv6 host holds a /64: all its addresses are one client.
        let v6 = |p: &str| l.client(&request(None, Some(p)));
        assert_eq!(v6("[2001:db8:1:2::1]:1"), v6("[2001:db8:1:2:ffff::9]:2"));
        assert_ne!(v6("[2001:db8:1:2::1]:1"), v6("[2001:db8:1:3::1]:1"));
        assert_eq!(
            v6("[::ffff:10.0.0.1]:1"),
            a,
            "an IPv4-mapped address is its IPv4 address"
        );
        l.forget_idle();
        assert!(l.check(&a).is_err(), "a drained bucket is not forgotten");
    }

    #[test]
    fn retry_after_is_whole_seconds_and_never_zero() {
        let r = too_many(Duration::from_millis(10));
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            too_many(Duration::from_millis(2100)).headers()[header::RETRY_AFTER],
            "3"
        );
    }
}
