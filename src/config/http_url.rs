//! The `http://` or `https://` URL a hardware probe (`[cluster.nodes.hardware]
//! url`) names, as the configuration accepts it: checked when the file is
//! loaded so a typo is refused then, not at the first scrape. The HTTP client
//! that scrapes it takes it already parsed.

use std::fmt;

/// Plain HTTP or HTTP over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An `http[s]://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port; 80 (443 for https) when the URL has none.
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path][?query]`; user info (credentials
    /// have keys of their own) and anything that could break the request line
    /// are refused.
    pub fn parse(s: &str) -> Result<HttpUrl, String> {
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = s.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            return Err("must start with http:// or https://".into());
        };
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if path.chars().any(|c| c.is_control() || c == ' ') {
            return Err("path must not contain spaces or control characters".into());
        }
        let path = match path.strip_prefix('?') {
            Some(_) => format!("/{path}"),
            None if path.is_empty() => "/".into(),
            None => path.into(),
        };
        let (host, port) = split_authority(authority, scheme.default_port())?;
        Ok(HttpUrl {
            scheme,
            host,
            port,
            authority: authority.into(),
            path,
        })
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.path
        )
    }
}

fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = |c: char| c == '@' || c == '/' || c.is_whitespace() || c.is_control();
    if authority.is_empty() || authority.chars().any(bad) {
        return Err("expected http[s]://host:port/path".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed '[' in the host")?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or("expected ':' after ']'")?),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("invalid port {p:?}")),
        },
    };
    Ok((host.into(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let ok = [
            (
                "http://db1.internal:9290/metrics",
                "db1.internal",
                9290,
                "/metrics",
            ),
            ("http://10.0.0.5:9100", "10.0.0.5", 9100, "/"),
            (
                "http://exporter/metrics?module=ipmi",
                "exporter",
                80,
                "/metrics?module=ipmi",
            ),
            ("http://h:1?x=1", "h", 1, "/?x=1"),
            ("http://[::1]:9290/metrics#frag", "::1", 9290, "/metrics"),
            ("http://[fe80::1]", "fe80::1", 80, "/"),
            (
                "https://bmc1/redfish/v1/metrics",
                "bmc1",
                443,
                "/redfish/v1/metrics",
            ),
            (
                "https://10.0.0.5:9290/metrics",
                "10.0.0.5",
                9290,
                "/metrics",
            ),
        ];
        for (s, host, port, path) in ok {
            let u = HttpUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (u.host.as_str(), u.port, u.path.as_str()),
                (host, port, path),
                "{s}"
            );
        }
        assert_eq!(
            HttpUrl::parse("http://h:80/m").unwrap().to_string(),
            "http://h:80/m"
        );
        let https = HttpUrl::parse("https://h/m").unwrap();
        assert_eq!(
            (https.scheme, https.to_string()),
            (Scheme::Https, "https://h/m".into())
        );
        assert_eq!(HttpUrl::parse("http://h/m").unwrap().scheme, Scheme::Http);
        let bad = [
            ("ftp://h/m", "must start with http:// or https://"),
            ("db1:9290/metrics", "must start with http://"),
            ("http://", "expected http[s]://host:port/path"),
            ("http://user:pw@h/m", "expected http[s]://host:port/path"),
            ("https://user:pw@h/m", "expected http[s]://host:port/path"),
            ("http://h:99999/m", "invalid port"),
            ("http://h:0/m", "invalid port"),
            ("http://h:+80/m", "invalid port"),
            ("http://h:/m", "invalid port"),
            ("http://:80/m", "the host is empty"),
            ("http://[::1/m", "unclosed"),
            ("http://[::1]x/m", "expected ':' after ']'"),
            ("http://h/m x", "spaces or control"),
            ("http://h/m\r\nX-Evil: 1", "spaces or control"),
        ];
        for (s, needle) in bad {
            let err = HttpUrl::parse(s).expect_err(s);
            assert!(err.contains(needle), "{s}: {err}");
        }
    }
}
