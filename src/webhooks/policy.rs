//! Where webhooks may go (server-side request forgery guard).
//!
//! A URL passes when its scheme is http/https, its host is allowed by `--webhook-allow` (a
//! name entry, a `*.suffix` entry, `*`, or an IP/CIDR entry covering an IP literal), and
//! **every address the host resolves to** is public or covered by an IP/CIDR entry. The name
//! check runs at submission (a clear 422); the address check runs before every attempt, and the
//! sender then connects to exactly the address it checked, so a DNS answer that changes between
//! check and connect (rebinding) cannot reach an internal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use reqwest::Url;

/// Longest accepted webhook URL.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("webhooks are off on this server (the operator allows no host: --webhook-allow)")]
    Disabled,
    #[error("not a valid absolute URL: {0}")]
    BadUrl(String),
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("host '{0}' is not in the operator's webhook allow-list (--webhook-allow)")]
    HostNotAllowed(String),
    #[error("host '{host}' resolves to {addr}, a loopback, private or reserved address the operator does not allow")]
    AddressNotAllowed { host: String, addr: IpAddr },
    #[error("cannot resolve host '{0}'")]
    Unresolvable(String),
}

/// The parsed `--webhook-allow` list.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    any_public: bool,
    /// Lower-case names; entries starting with `.` match any subdomain (from `*.example.com`).
    names: Vec<String>,
    nets: Vec<IpNet>,
}

impl AllowList {
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if e == "*" {
                list.any_public = true;
            } else if let Ok(net) = e.parse::<IpNet>() {
                list.nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                list.nets.push(IpNet::from(ip));
            } else if let Some(suffix) = e.strip_prefix("*.") {
                list.names.push(format!(".{}", valid_name(suffix)?));
            } else {
                list.names.push(valid_name(e)?);
            }
        }
        Ok(list)
    }

    /// False when nothing is allowed (webhooks are off).
    pub fn is_enabled(&self) -> bool {
        self.any_public || !self.names.is_empty() || !self.nets.is_empty()
    }

    /// The submission-time check: URL shape, scheme, host by name. No DNS.
    pub fn check_url(&self, url: &str) -> Result<Url, PolicyError> {
        if !self.is_enabled() {
            return Err(PolicyError::Disabled);
        }
        if url.len() > MAX_URL_LEN {
            return Err(PolicyError::BadUrl(format!("longer than {MAX_URL_LEN} characters")));
        }
        let u = Url::parse(url).map_err(|e| PolicyError::BadUrl(e.to_string()))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(PolicyError::Scheme);
        }
        match u.host() {
            None => Err(PolicyError::BadUrl("no host".into())),
            Some(url::Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip)).map(|_| u),
            Some(url::Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip)).map(|_| u),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if self.any_public || self.name_allowed(&d) {
                    Ok(u)
                } else {
                    Err(PolicyError::HostNotAllowed(d))
                }
            }
        }
    }

    /// The attempt-time check: resolves the host and checks every address; returns the
    /// address to connect to.
    pub async fn resolve(&self, u: &Url) -> Result<SocketAddr, PolicyError> {
        let host = u.host_str().ok_or_else(|| PolicyError::BadUrl("no host".into()))?;
        let port = u.port_or_known_default().ok_or_else(|| PolicyError::BadUrl("no port".into()))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| PolicyError::Unresolvable(host.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(PolicyError::Unresolvable(host.to_string()));
        }
        for a in &addrs {
            if !self.address_allowed(a.ip()) {
                return Err(PolicyError::AddressNotAllowed { host: host.to_string(), addr: a.ip() });
            }
        }
        Ok(addrs[0])
    }

    fn check_literal(&self, ip: IpAddr) -> Result<(), PolicyError> {
        let covered = self.nets.iter().any(|n| n.contains(&ip));
        if covered || (self.any_public && is_public(ip)) {
            Ok(())
        } else if self.any_public {
            Err(PolicyError::AddressNotAllowed { host: ip.to_string(), addr: ip })
        } else {
            Err(PolicyError::HostNotAllowed(ip.to_string()))
        }
    }

    fn name_allowed(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix('.') {
            Some(suffix) => host.len() > suffix.len() && host.ends_with(n.as_str()),
            None => n == host,
        })
    }

    /// A resolved address may be used when an IP/CIDR entry covers it or it is public.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }
}

fn valid_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("--webhook-allow: '{s}' is not a host name, IP address, CIDR range or '*'"))
    }
}

/// Globally routable: not loopback, private, link-local, shared (CGNAT), multicast,
/// documentation, benchmarking or otherwise reserved. IPv4-mapped and NAT64 IPv6 addresses are
/// judged by the IPv4 address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[0] == 0x2002 // 6to4: carries an arbitrary IPv4 address
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || v6 == Ipv6Addr::from([0, 0, 0, 0, 0, 0, 0, 1]))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_unspecified()
        || o[0] == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] >= 240 // reserved
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space (CGNAT)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18)) // benchmarking
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(e: &[&str]) -> AllowList {
        AllowList::parse(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn empty_list_disables_webhooks() {
        assert_eq!(list(&[]).check_url("https://example.com/h").unwrap_err(), PolicyError::Disabled);
    }

    #[test]
    fn scheme_and_shape() {
        let l = list(&["*"]);
        assert_eq!(l.check_url("ftp://example.com/").unwrap_err(), PolicyError::Scheme);
        assert_eq!(l.check_url("file:///etc/passwd").unwrap_err(), PolicyError::Scheme);
        assert!(matches!(l.check_url("not a url").unwrap_err(), PolicyError::BadUrl(_)));
        assert!(l.check_url("https://hooks.example.com/x?y=1").is_ok());
    }

    #[test]
    fn names_and_wildcards() {
        let l = list(&["hooks.example.com", "*.ci.example.org"]);
        assert!(l.check_url("https://hooks.example.com/a").is_ok());
        assert!(l.check_url("https://HOOKS.example.com./a").is_ok());
        assert!(l.check_url("https://a.ci.example.org/a").is_ok());
        assert!(matches!(l.check_url("https://ci.example.org/").unwrap_err(), PolicyError::HostNotAllowed(_)));
        assert!(matches!(l.check_url("https://evil-example.com/").unwrap_err(), PolicyError::HostNotAllowed(_)));
        assert!(matches!(l.check_url("https://xci.example.org/").unwrap_err(), PolicyError::HostNotAllowed(_)));
        // IP literals need an IP/CIDR entry (or '*' for public ones).
        assert!(matches!(l.check_url("http://93.184.216.34/").unwrap_err(), PolicyError::HostNotAllowed(_)));
    }

    #[test]
    fn loopback_and_private_literals_need_an_ip_entry() {
        let any = list(&["*"]);
        for u in [
            "http://127.0.0.1:8080/",
            "http://10.0.0.5/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://100.64.1.1/",
        ] {
            assert!(matches!(any.check_url(u).unwrap_err(), PolicyError::AddressNotAllowed { .. }), "{u}");
        }
        assert!(any.check_url("http://93.184.216.34/").is_ok());
        let lo = list(&["127.0.0.1", "10.1.0.0/16"]);
        assert!(lo.check_url("http://127.0.0.1:9/").is_ok());
        assert!(lo.check_url("http://10.1.2.3/").is_ok());
        assert!(lo.check_url("http://10.2.0.1/").is_err());
    }

    #[test]
    fn resolved_addresses_must_be_public_or_covered() {
        let l = list(&["localhost"]);
        assert!(!l.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(!l.address_allowed("::1".parse().unwrap()));
        assert!(!l.address_allowed("192.168.1.1".parse().unwrap()));
        assert!(!l.address_allowed("64:ff9b::a00:1".parse().unwrap()), "NAT64 of 10.0.0.1");
        assert!(l.address_allowed("93.184.216.34".parse().unwrap()));
        assert!(l.address_allowed("2606:2800:220:1:248:1893:25c8:1946".parse().unwrap()));
        let with_net = list(&["localhost", "127.0.0.0/8"]);
        assert!(with_net.address_allowed("127.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn localhost_name_is_refused_after_resolution() {
        let l = list(&["localhost"]);
        let u = l.check_url("http://localhost:9/").expect("the name itself is allowed");
        assert!(matches!(l.resolve(&u).await.unwrap_err(), PolicyError::AddressNotAllowed { .. }));
        let ok = list(&["localhost", "127.0.0.0/8", "::1"]);
        assert!(ok.resolve(&u).await.unwrap().ip().is_loopback());
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(AllowList::parse(&["exa mple.com".into()]).is_err());
        assert!(AllowList::parse(&["*.".into()]).is_err());
    }
}
