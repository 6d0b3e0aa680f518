//! Which URLs the gateway may call out to: one policy for webhook endpoints, audio stream
//! services (`service_url`) and status callbacks.
//!
//! A workspace names these URLs, and the gateway then connects to them from inside the
//! operator's network. Left unchecked, any tenant could reach the gateway's own loopback, the
//! private network behind it, or a cloud metadata service (169.254.169.254), and read what
//! answers through delivery logs and status callbacks. So an address that is loopback, private,
//! link-local, unique-local, shared (CGNAT), multicast, reserved or unspecified is refused,
//! unless the operator allows private targets (`allow_private_webhook_targets`; tests and the
//! local demo turn it on).
//!
//! The check runs twice: on the URL when it is given (an IP literal, and the name's addresses
//! when it resolves), and on the resolved addresses every time the gateway connects, because DNS
//! can change between the two. The gateway then connects to the addresses it checked, never
//! resolving again in between ([`connect_addrs`], and [`PolicyResolver`] inside the HTTP client).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

/// The longest URL accepted.
pub const MAX_URL: usize = 2048;

/// Which schemes a URL may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `http` or `https` (webhooks, status callbacks).
    Http,
    /// `ws` or `wss` (audio stream services).
    WebSocket,
}

/// Why a target was refused. The message is for the client that named the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("not a valid URL: {0}")]
    Malformed(String),
    #[error("expected {0}")]
    Scheme(&'static str),
    #[error("longer than {MAX_URL} characters")]
    TooLong,
    #[error("contains control characters or spaces")]
    Control,
    #[error("has no host")]
    NoHost,
    #[error("must not carry credentials (user:password@)")]
    Credentials,
    #[error("port 0 is not a port")]
    PortZero,
    #[error(
        "{0} is a {1} address, which the gateway does not connect to (the server's operator can allow private targets)"
    )]
    Private(IpAddr, &'static str),
    #[error("{0} does not resolve: {1}")]
    Unresolved(String, String),
}

/// The outbound-address policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Allow loopback, private and every other non-public address.
    pub allow_private: bool,
}

impl Policy {
    /// Checks a URL's form and, if its host is an address, the address.
    ///
    /// # Errors
    /// [`TargetError`] saying what is wrong.
    pub fn check_url(&self, text: &str, kind: Kind) -> Result<Url, TargetError> {
        if text.len() > MAX_URL {
            return Err(TargetError::TooLong);
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(TargetError::Control);
        }
        let url = Url::parse(text).map_err(|e| TargetError::Malformed(e.to_string()))?;
        let scheme_ok = match kind {
            Kind::Http => matches!(url.scheme(), "http" | "https"),
            Kind::WebSocket => matches!(url.scheme(), "ws" | "wss"),
        };
        if !scheme_ok {
            return Err(TargetError::Scheme(match kind {
                Kind::Http => "an http or https URL",
                Kind::WebSocket => "a ws or wss URL",
            }));
        }
        let host = url.host().ok_or(TargetError::NoHost)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        if url.port() == Some(0) {
            return Err(TargetError::PortZero);
        }
        match host {
            url::Host::Ipv4(ip) => self.check_ip(IpAddr::V4(ip))?,
            url::Host::Ipv6(ip) => self.check_ip(IpAddr::V6(ip))?,
            url::Host::Domain(name) => {
                if name.is_empty() {
                    return Err(TargetError::NoHost);
                }
            }
        }
        Ok(url)
    }

    /// Checks one address.
    ///
    /// # Errors
    /// [`TargetError::Private`] naming the address's class.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), TargetError> {
        if self.allow_private {
            return Ok(());
        }
        match class(ip) {
            None => Ok(()),
            Some(class) => Err(TargetError::Private(ip, class)),
        }
    }

    /// Resolves a URL's host and checks every address it resolves to; returns them with the
    /// URL's port (or the scheme's default).
    ///
    /// # Errors
    /// [`TargetError::Unresolved`] when it does not resolve, [`TargetError::Private`] when any
    /// address is refused (an attacker controls which of several addresses a client would use).
    pub async fn connect_addrs(&self, url: &Url) -> Result<Vec<SocketAddr>, TargetError> {
        let port = url.port_or_known_default().unwrap_or(match url.scheme() {
            "wss" | "https" => 443,
            _ => 80,
        });
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| TargetError::Unresolved(name.to_owned(), e.to_string()))?
                .collect(),
            None => return Err(TargetError::NoHost),
        };
        if addrs.is_empty() {
            return Err(TargetError::Unresolved(
                url.host_str().unwrap_or_default().to_owned(),
                "no addresses".into(),
            ));
        }
        for addr in &addrs {
            self.check_ip(addr.ip())?;
        }
        Ok(addrs)
    }
}

/// The check a URL gets when a client names it: its form, its address if it is one, and the
/// addresses its name resolves to now. A name that does not resolve yet is accepted (DNS may be
/// catching up); it is checked again, and refused then if need be, at every connection.
///
/// # Errors
/// [`TargetError`] saying what is wrong.
pub async fn check_target(policy: Policy, text: &str, kind: Kind) -> Result<Url, TargetError> {
    let url = policy.check_url(text, kind)?;
    match policy.connect_addrs(&url).await {
        Ok(_) | Err(TargetError::Unresolved(..)) => Ok(url),
        Err(err) => Err(err),
    }
}

/// The class of a non-public address, or `None` for a public one.
pub fn class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => class_v4(ip),
        IpAddr::V6(ip) => class_v6(ip),
    }
}

fn class_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified (0.0.0.0/8)",
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => "private",
        (127, ..) => "loopback",
        (169, 254, _) => "link-local (cloud metadata)",
        (100, 64..=127, _) => "shared (CGNAT)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved",
        _ => return None,
    })
}

fn class_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return class_v4(v4);
    }
    let segments = ip.segments();
    Some(match segments {
        [0, 0, 0, 0, 0, 0, 0, 0] => "unspecified",
        [0, 0, 0, 0, 0, 0, 0, 1] => "loopback",
        // NAT64: the embedded IPv4 address decides.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            let [a, b] = hi.to_be_bytes();
            let [c, d] = lo.to_be_bytes();
            return class_v4(Ipv4Addr::new(a, b, c, d));
        }
        [s, ..] if s & 0xfe00 == 0xfc00 => "unique-local",
        [s, ..] if s & 0xffc0 == 0xfe80 => "link-local",
        [s, ..] if s & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0x0db8, ..] => "documentation",
        [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible (deprecated)",
        _ => return None,
    })
}

/// A resolver for the HTTP client that refuses names resolving to refused addresses, so that a
/// delivery connects only to addresses the policy checked (a plain resolver would let DNS answer
/// a private address after the URL was accepted).
pub struct PolicyResolver {
    pub policy: Policy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                policy.check_ip(addr.ip())?;
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

impl PolicyResolver {
    pub fn shared(policy: Policy) -> Arc<Self> {
        Arc::new(Self { policy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Policy = Policy {
        allow_private: false,
    };
    const LAX: Policy = Policy {
        allow_private: true,
    };

    #[test]
    fn addresses_by_class() {
        for (ip, expect) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local (cloud metadata)")),
            ("100.64.0.1", Some("shared (CGNAT)")),
            ("100.128.0.1", None),
            ("0.0.0.0", Some("unspecified (0.0.0.0/8)")),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("reserved")),
            ("198.18.0.1", Some("benchmarking")),
            ("8.8.8.8", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fd00:ec2::254", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::a9fe:a9fe", Some("link-local (cloud metadata)")),
            ("2001:db8::1", Some("documentation")),
            ("2606:4700::1111", None),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(class(ip), expect, "{ip}");
            assert_eq!(STRICT.check_ip(ip).is_ok(), expect.is_none(), "{ip}");
            assert!(LAX.check_ip(ip).is_ok());
        }
    }

    #[test]
    fn urls() {
        use Kind::{Http, WebSocket};
        assert!(
            STRICT
                .check_url("wss://example.com/audio", WebSocket)
                .is_ok()
        );
        assert!(STRICT.check_url("https://example.com/hook", Http).is_ok());
        for (url, kind, expect) in [
            (
                "https://example.com/",
                WebSocket,
                TargetError::Scheme("a ws or wss URL"),
            ),
            (
                "ws://example.com/",
                Http,
                TargetError::Scheme("an http or https URL"),
            ),
            (
                "ws://user:pw@example.com/",
                WebSocket,
                TargetError::Credentials,
            ),
            (
                "ws://user@example.com/",
                WebSocket,
                TargetError::Credentials,
            ),
            ("ws://example.com:0/", WebSocket, TargetError::PortZero),
            ("ws://exa mple.com/", WebSocket, TargetError::Control),
            ("ws://example.com/\n", WebSocket, TargetError::Control),
        ] {
            assert_eq!(STRICT.check_url(url, kind), Err(expect), "{url}");
        }
        assert!(matches!(
            STRICT.check_url("ws://127.0.0.1:9/", WebSocket),
            Err(TargetError::Private(_, "loopback"))
        ));
        assert!(matches!(
            STRICT.check_url("ws://[::1]:9/", WebSocket),
            Err(TargetError::Private(_, "loopback"))
        ));
        assert!(matches!(
            STRICT.check_url("http://169.254.169.254/latest/meta-data", Http),
            Err(TargetError::Private(_, "link-local (cloud metadata)"))
        ));
        assert!(LAX.check_url("ws://127.0.0.1:9/", WebSocket).is_ok());
        assert!(matches!(
            STRICT.check_url("not a url", WebSocket),
            Err(TargetError::Control)
        ));
        assert!(matches!(
            STRICT.check_url("nope", WebSocket),
            Err(TargetError::Malformed(_))
        ));
        assert_eq!(
            STRICT.check_url(
                &format!("ws://example.com/{}", "a".repeat(MAX_URL)),
                WebSocket
            ),
            Err(TargetError::TooLong)
        );
    }

    #[tokio::test]
    async fn names_are_checked_by_what_they_resolve_to() {
        let url = Url::parse("ws://localhost:9/").unwrap();
        assert!(matches!(
            STRICT.connect_addrs(&url).await,
            Err(TargetError::Private(..))
        ));
        let addrs = LAX.connect_addrs(&url).await.unwrap();
        assert!(addrs.iter().all(|a| a.port() == 9 && a.ip().is_loopback()));
        let literal = Url::parse("wss://127.0.0.1/").unwrap();
        assert_eq!(
            LAX.connect_addrs(&literal).await.unwrap(),
            vec!["127.0.0.1:443".parse::<SocketAddr>().unwrap()]
        );
    }
}
