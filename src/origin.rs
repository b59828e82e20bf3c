//! Allowed origins: the patterns of `apps[].allowed_origins` and the check of a WebSocket
//! handshake's `Origin` header against them.
//!
//! Owns: pattern syntax and matching. Must not touch: sockets, config loading.
//!
//! A pattern is `*` (any origin), an exact origin `scheme://host[:port]`, a host without a
//! scheme `host[:port]` (any scheme), or a subdomain wildcard `*.example.com` /
//! `https://*.example.com` (any depth of subdomain, not `example.com` itself). Comparison is
//! case-insensitive (RFC 6454 origins are ASCII-lowercased by browsers anyway).
//!
//! The check guards browsers against cross-site WebSocket hijacking. A client that sends no
//! `Origin` header is not a browser and could claim any origin, so it is not restricted.

/// One parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// Lowercased scheme, if the pattern names one.
    scheme: Option<String>,
    /// Lowercased host (and port), or the suffix `.example.com` for a wildcard.
    host: String,
    /// `*.` patterns match subdomains of `host`.
    wildcard: bool,
    /// The bare `*` pattern.
    any: bool,
}

impl OriginPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<OriginPattern, String> {
        let p = pattern.trim().to_ascii_lowercase();
        if p == "*" {
            return Ok(OriginPattern {
                scheme: None,
                host: String::new(),
                wildcard: false,
                any: true,
            });
        }
        let (scheme, rest) = match p.split_once("://") {
            Some((scheme, rest)) => {
                if scheme.is_empty()
                    || !scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                {
                    return Err(format!("invalid scheme in origin pattern {pattern:?}"));
                }
                (Some(scheme.to_string()), rest)
            }
            None => (None, p.as_str()),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (wildcard, host) = match rest.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, rest),
        };
        let valid_host = !host.is_empty()
            && !host.contains("..")
            && !host.starts_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
        if !valid_host {
            return Err(format!(
                "origin pattern {pattern:?} must be *, scheme://host[:port], host[:port] or *.domain"
            ));
        }
        Ok(OriginPattern {
            scheme,
            host: if wildcard {
                format!(".{host}")
            } else {
                host.to_string()
            },
            wildcard,
            any: false,
        })
    }

    /// Whether `origin` (an `Origin` header value) matches.
    pub fn matches(&self, origin: &str) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        let Some((scheme, host)) = origin.split_once("://") else {
            return false;
        };
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() && host.ends_with(&self.host)
        } else {
            host == self.host
        }
    }
}

/// Whether a handshake with this `Origin` header may connect to an app that allows
/// `patterns` (empty = any origin; no header = not a browser, allowed).
pub fn allowed(patterns: &[OriginPattern], origin: Option<&str>) -> bool {
    match origin {
        _ if patterns.is_empty() => true,
        None => true,
        Some(origin) => patterns.iter().any(|p| p.matches(origin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(patterns: &[&str], origin: &str) -> bool {
        let patterns: Vec<OriginPattern> = patterns
            .iter()
            .map(|p| OriginPattern::parse(p).unwrap())
            .collect();
        allowed(&patterns, Some(origin))
    }

    #[test]
    fn exact_origins_compare_scheme_host_and_port() {
        let p = ["https://app.example.com"];
        assert!(ok(&p, "https://app.example.com"));
        assert!(ok(&p, "HTTPS://App.Example.com"));
        assert!(!ok(&p, "http://app.example.com"));
        assert!(!ok(&p, "https://app.example.com:8443"));
        assert!(!ok(&p, "https://evil-app.example.com"));
        assert!(!ok(&p, "https://app.example.com.evil.com"));
        assert!(!ok(&p, "null"));
    }

    #[test]
    fn hosts_without_scheme_match_any_scheme() {
        let p = ["localhost:3000"];
        assert!(ok(&p, "http://localhost:3000"));
        assert!(ok(&p, "https://localhost:3000"));
        assert!(!ok(&p, "http://localhost:3001"));
        assert!(!ok(&p, "http://localhost"));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = ["*.example.com"];
        assert!(ok(&p, "https://a.example.com"));
        assert!(ok(&p, "http://a.b.example.com"));
        assert!(!ok(&p, "https://example.com"));
        assert!(!ok(&p, "https://badexample.com"));
        assert!(!ok(&p, "https://example.com.evil.org"));
        let p = ["https://*.example.com"];
        assert!(ok(&p, "https://a.example.com"));
        assert!(!ok(&p, "http://a.example.com"));
    }

    #[test]
    fn star_empty_and_missing_origin() {
        assert!(ok(&["*"], "https://anything.test"));
        assert!(allowed(&[], Some("https://x.test")));
        let p = vec![OriginPattern::parse("https://a.test").unwrap()];
        assert!(allowed(&p, None));
        assert!(!allowed(&p, Some("https://b.test")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "://x.com",
            "*.",
            "*..example.com",
            "https://",
            "a b.com",
            "*.*.x.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
