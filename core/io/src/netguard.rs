//! The guard against server-side request forgery: image URLs from users must not make the
//! fleet talk to itself, to the cloud's metadata service or to a private network.
//!
//! A URL is allowed only when every address its host resolves to is public, or lies in a
//! range the operator allowed explicitly. The check runs on resolved addresses, before any
//! connection, in the scheduler (when a job is created) and again in the worker (right
//! before fetching), so a name that changes its answer in between gains nothing. What
//! counts as public, IPv6 translation prefixes included, is [`ranges`]'s to say.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use ranges::Class;

mod ranges;

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

    /// Why `ip` may not be contacted, or `None` when it may. An IPv6 address that carries
    /// an IPv4 address for a translator (NAT64, 6to4, IPv4-mapped) is judged by the IPv4
    /// address, which an allowed range may admit in either form.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if self.allows(ip) {
            return None;
        }
        match ranges::classify(ip) {
            Class::Public => None,
            Class::Special(kind) => Some(kind),
            Class::Embeds(targets) => targets
                .into_iter()
                .find_map(|v4| ranges::classify_v4(v4).filter(|_| !self.allows(IpAddr::V4(v4)))),
        }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|net| net.contains(&ip))
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

/// The kind of non-public address `ip` is, or `None` for a public one (no range allowed).
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    UrlPolicy::default().refusal(ip)
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

    /// Each IPv6 prefix that carries an IPv4 address, with a private and a public one.
    #[test]
    fn ipv6_addresses_that_carry_ipv4_are_judged_by_the_ipv4_address() {
        let policy = UrlPolicy::default();
        for (prefix, private, public) in [
            ("NAT64 64:ff9b::/96", "64:ff9b::a00:1", "64:ff9b::808:808"),
            ("NAT64 to loopback", "64:ff9b::7f00:1", "64:ff9b::5db8:d822"),
            (
                "NAT64 to metadata",
                "64:ff9b::a9fe:a9fe",
                "64:ff9b::101:101",
            ),
            (
                "local-use NAT64 /96",
                "64:ff9b:1::a00:1",
                "64:ff9b:1::808:808",
            ),
            (
                "local-use NAT64 /96 under an operator's subnet",
                "64:ff9b:1:ab::c0a8:101",
                "64:ff9b:1:ab::808:808",
            ),
            // 10.0.0.1 and 8.8.8.8 in bits 72..104 (the /64 layout).
            (
                "local-use NAT64 /64",
                "64:ff9b:1:0:a:0:100:0",
                "64:ff9b:1:0:8:808:800:0",
            ),
            // In bits 48..64 and 72..88 (the /48 layout).
            (
                "local-use NAT64 /48",
                "64:ff9b:1:a00:0:100::",
                "64:ff9b:1:808:8:800::",
            ),
            (
                "IPv4-mapped ::ffff:0:0/96",
                "::ffff:a00:1",
                "::ffff:808:808",
            ),
            (
                "IPv4-translated ::ffff:0:0:0/96",
                "::ffff:0:a00:1",
                "::ffff:0:808:808",
            ),
            ("6to4 2002::/16", "2002:a00:1::1", "2002:808:808::1"),
            ("6to4 to loopback", "2002:7f00:1::", "2002:5db8:d822::"),
        ] {
            assert!(
                policy.refusal(ip(private)).is_some(),
                "{prefix}: {private} must be refused"
            );
            assert_eq!(policy.refusal(ip(public)), None, "{prefix}: {public}");
        }
        assert_eq!(policy.refusal(ip("64:ff9b::a00:1")), Some("private"));
        assert_eq!(policy.refusal(ip("64:ff9b:1::5")), Some("unspecified"));
    }

    #[test]
    fn special_purpose_ipv6_ranges_are_refused_outright() {
        let policy = UrlPolicy::default();
        for (bad, kind) in [
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001::808:808", "Teredo"),
            ("fec0::1", "site-local (deprecated)"),
            ("fefe::1", "site-local (deprecated)"),
            ("::808:808", "IPv4-compatible (deprecated)"),
            ("::a00:1", "IPv4-compatible (deprecated)"),
            ("100::1", "discard-only"),
            ("2001:2::1", "IETF protocol"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("5f00::1", "reserved"),
            ("64:ff9b:2::808:808", "reserved"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "unique local (private)"),
        ] {
            assert_eq!(policy.refusal(ip(bad)), Some(kind), "{bad}");
        }
        for (bad, kind) in [
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("192.88.99.1", "6to4 relay"),
            ("255.255.255.255", "multicast or reserved"),
        ] {
            assert_eq!(policy.refusal(ip(bad)), Some(kind), "{bad}");
        }
        for good in [
            "2001:4860:4860::8888",
            "2a00:1450:4001:81b::200e",
            "2606:4700:4700::1111",
            "3fff:1000::1",
            "192.0.3.1",
            "203.0.114.1",
        ] {
            assert_eq!(policy.refusal(ip(good)), None, "{good} is public");
        }
    }

    #[test]
    fn an_allowed_ipv4_range_is_reachable_through_nat64_too() {
        let policy = UrlPolicy::new(&["10.1.0.0/16".into()]).unwrap();
        for good in [
            "10.1.2.3",
            "64:ff9b::a01:203",
            "::ffff:10.1.2.3",
            "2002:a01:203::",
        ] {
            assert_eq!(policy.refusal(ip(good)), None, "{good}");
        }
        for bad in ["64:ff9b::a02:1", "::ffff:10.2.0.1", "64:ff9b::7f00:1"] {
            assert!(policy.refusal(ip(bad)).is_some(), "{bad}");
        }
        let prefix = UrlPolicy::new(&["64:ff9b::/96".into(), "fec0::/10".into()]).unwrap();
        for good in ["64:ff9b::a00:1", "fec0::1"] {
            assert_eq!(prefix.refusal(ip(good)), None, "{good}");
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
            "https://[64:ff9b::a00:1]/x.png",
            "https://[2002:a9fe:a9fe::]/latest/meta-data/",
            "https://[fec0::1]/x.png",
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
