//! The guard against server-side request forgery: image URLs from users must not make the
//! fleet talk to itself, to the cloud's metadata service or to a private network.
//!
//! A URL is allowed only when every address its host resolves to is public, or lies in a
//! range the operator allowed explicitly. The check runs on resolved addresses, before any
//! connection, in the scheduler (when a job is created) and again in the worker (right
//! before fetching), so a name that changes its answer in between gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// Ranges the operator allows although they are not public (e.g. an in-cluster image
/// server). Empty by default.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    pub allowed: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a valid URL: {0}")]
    Invalid(String),
    #[error("only https URLs are fetched, not {0}:")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("the host resolves to {0}, a {1} address")]
    Forbidden(IpAddr, &'static str),
    #[error("the host does not resolve: {0}")]
    Resolve(String),
}

impl UrlPolicy {
    /// Parses `CIDR` ranges (`10.1.0.0/16`, `fd00::/8`).
    pub fn new(allowed: &[String]) -> Result<Self, String> {
        let allowed = allowed
            .iter()
            .map(|r| r.parse::<IpNet>().map_err(|e| format!("{r:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Why `ip` may not be contacted, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let class = classify(ip)?;
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        Some(class)
    }

    /// Checks the form of a URL without resolving it: https, a host, and when the host is
    /// an address literal, an allowed one. Returns the host and port to resolve.
    pub fn check_form(&self, raw: &str) -> Result<(String, u16), UrlError> {
        let url = url::Url::parse(raw).map_err(|e| UrlError::Invalid(e.to_string()))?;
        if url.scheme() != "https" {
            return Err(UrlError::Scheme(url.scheme().to_owned()));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let host = match url.host() {
            None => return Err(UrlError::NoHost),
            Some(url::Host::Ipv4(ip)) => return self.literal(IpAddr::V4(ip), port),
            Some(url::Host::Ipv6(ip)) => return self.literal(IpAddr::V6(ip), port),
            Some(url::Host::Domain(name)) => name.to_owned(),
        };
        Ok((host, port))
    }

    fn literal(&self, ip: IpAddr, port: u16) -> Result<(String, u16), UrlError> {
        match self.refusal(ip) {
            Some(class) => Err(UrlError::Forbidden(ip, class)),
            None => Ok((ip.to_string(), port)),
        }
    }

    /// Resolves the URL's host and checks every address; returns the addresses to connect to.
    pub async fn resolve(&self, raw: &str) -> Result<Vec<SocketAddr>, UrlError> {
        let (host, port) = self.check_form(raw)?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| UrlError::Resolve(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(UrlError::Resolve("no addresses".into()));
        }
        for addr in &addrs {
            if let Some(class) = self.refusal(addr.ip()) {
                return Err(UrlError::Forbidden(addr.ip(), class));
            }
        }
        Ok(addrs)
    }
}

/// The kind of non-public address `ip` is, or `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify_v4(v4);
            }
            classify_v6(v6)
        }
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        // 169.254.169.254 is the metadata service of the big clouds.
        Some("link-local (metadata)")
    } else if ip.is_private() {
        Some("private")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("multicast or reserved")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("IETF protocol")
    } else if a == 198 && (b & 0xfe) == 18 {
        Some("benchmarking")
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if (first & 0xffc0) == 0xfe80 {
        Some("link-local")
    } else if (first & 0xfe00) == 0xfc00 {
        // fd00:ec2::254 (the AWS metadata service over IPv6) is in here.
        Some("unique local (private)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.to_ipv4().is_some() && first == 0 {
        Some("IPv4-compatible")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_refused() {
        let policy = UrlPolicy::default();
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(policy.refusal(ip(bad)).is_some(), "{bad} must be refused");
        }
        for good in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert_eq!(policy.refusal(ip(good)), None, "{good} is public");
        }
    }

    #[test]
    fn an_allowed_range_admits_only_its_addresses() {
        let policy = UrlPolicy::new(&["10.1.0.0/16".into()]).unwrap();
        assert_eq!(policy.refusal(ip("10.1.2.3")), None);
        assert!(policy.refusal(ip("10.2.0.1")).is_some());
        assert!(UrlPolicy::new(&["10.1.0.0/99".into()]).is_err());
    }

    #[test]
    fn literal_urls_are_refused_without_resolving() {
        let policy = UrlPolicy::default();
        for url in [
            "https://127.0.0.1/a.jpg",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1:8443/x.png",
            "https://[::1]/x.png",
            "https://2130706433/x.jpg", // 127.0.0.1 written as one number
        ] {
            assert!(
                matches!(policy.check_form(url), Err(UrlError::Forbidden(..))),
                "{url}"
            );
        }
        assert!(matches!(
            policy.check_form("http://example.com/a.jpg"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            policy.check_form("not a url"),
            Err(UrlError::Invalid(_))
        ));
        assert_eq!(
            policy
                .check_form("https://images.example.com/a.jpg")
                .unwrap(),
            ("images.example.com".into(), 443)
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        let err = UrlPolicy::default()
            .resolve("https://localhost/a.jpg")
            .await
            .unwrap_err();
        assert!(matches!(err, UrlError::Forbidden(..)), "{err}");
    }
}
