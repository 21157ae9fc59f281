//! Which hosts may receive the API key. The key goes to `api.base_url`'s host and to the
//! patterns in `api.trusted_hosts`, and nowhere else: an item whose `url` names another host is
//! never fetched, so a tampered or buggy list response cannot exfiltrate the key.

use std::net::IpAddr;

use url::Url;

/// One entry of `api.trusted_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `host` (any port) or `host:port`.
    Exact { host: String, port: Option<u16> },
    /// `*.example.com`: any host ending in `.example.com` (not `example.com` itself).
    Suffix(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let t = text.trim().to_ascii_lowercase();
        if t.is_empty() {
            return Err("empty host pattern".into());
        }
        if t.contains("://") || t.contains('/') || t.contains('@') {
            return Err(format!(
                "{text:?} must be a bare host such as \"data.api.dmdata.jp\", \"*.api.dmdata.jp\" or \"127.0.0.1:8080\", without scheme or path"
            ));
        }
        if let Some(rest) = t.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') || !rest.contains('.') {
                return Err(format!(
                    "{text:?}: a wildcard needs a domain with at least two labels, e.g. \"*.api.dmdata.jp\""
                ));
            }
            return Ok(HostPattern::Suffix(format!(".{rest}")));
        }
        if t.contains('*') {
            return Err(format!("{text:?}: '*' is only allowed as a leading \"*.\""));
        }
        // IPv6 literals come bracketed: "[::1]:8080".
        let (host, port) = match t.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("{text:?}: {p:?} is not a port number"))?;
                (h.to_owned(), Some(port))
            }
            _ => (t.clone(), None),
        };
        Ok(HostPattern::Exact {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        match self {
            HostPattern::Exact { host: h, port: p } => h == host && (p.is_none() || *p == port),
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
        }
    }
}

/// The set of hosts the key may be sent to.
#[derive(Debug, Clone)]
pub struct TrustedHosts {
    patterns: Vec<HostPattern>,
}

impl TrustedHosts {
    /// `base_url`'s host is always trusted; with an explicit port, only that port.
    pub fn new(base_url: &Url, extra: &[String]) -> Result<TrustedHosts, String> {
        let host = base_url
            .host_str()
            .ok_or_else(|| "api.base_url has no host".to_owned())?;
        let mut patterns = vec![HostPattern::Exact {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase(),
            port: base_url.port(),
        }];
        for p in extra {
            patterns.push(HostPattern::parse(p)?);
        }
        Ok(TrustedHosts { patterns })
    }

    /// True if `url` may be requested with the key: a trusted host, over https (plain http
    /// only on loopback, where the simulator runs).
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let secure = match url.scheme() {
            "https" => true,
            "http" => {
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
            _ => false,
        };
        secure
            && self
                .patterns
                .iter()
                .any(|p| p.matches(&host, url.port_or_known_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(base: &str, extra: &[&str]) -> TrustedHosts {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        TrustedHosts::new(&Url::parse(base).unwrap(), &extra).unwrap()
    }

    fn ok(t: &TrustedHosts, url: &str) -> bool {
        t.allows(&Url::parse(url).unwrap())
    }

    #[test]
    fn default_production_hosts() {
        let t = trusted("https://api.dmdata.jp", &["*.api.dmdata.jp"]);
        assert!(ok(&t, "https://api.dmdata.jp/v2/jmafile"));
        assert!(ok(&t, "https://jmafiledata.api.dmdata.jp/v1/abc"));
        assert!(ok(&t, "https://data.api.dmdata.jp/v1/archive/abc"));
        assert!(
            !ok(&t, "http://jmafiledata.api.dmdata.jp/v1/abc"),
            "no plain http"
        );
        assert!(!ok(&t, "https://evil.example/v1/abc"));
        assert!(!ok(&t, "https://api.dmdata.jp.evil.example/v1/abc"));
        assert!(!ok(&t, "https://xapi.dmdata.jp/v1/abc"));
    }

    #[test]
    fn explicit_port_is_exact() {
        let t = trusted("http://127.0.0.1:4000", &[]);
        assert!(ok(&t, "http://127.0.0.1:4000/v1/x"));
        assert!(!ok(&t, "http://127.0.0.1:4001/v1/x"));
        assert!(!ok(&t, "http://localhost:4000/v1/x"));
    }

    #[test]
    fn patterns_are_validated() {
        assert!(HostPattern::parse("https://x.com").is_err());
        assert!(HostPattern::parse("*.com").is_err());
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("x.com:http").is_err());
        assert_eq!(
            HostPattern::parse("[::1]:80").unwrap(),
            HostPattern::Exact {
                host: "::1".into(),
                port: Some(80)
            }
        );
    }
}
