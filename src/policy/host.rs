//! `allowed_hosts`: destination patterns and the hosts matched against them
//! (docs/DESIGN.md §5, docs/THREATS.md rows 1–7).
//!
//! Both sides are normalised the same way before comparing: lower case, no trailing dot,
//! IDNA A-labels, IP literals canonicalised (WHATWG rules, so `0x7f.1`, `2130706433` and
//! `127。0。0。1` are all `127.0.0.1`). Matching is by labels, never by string suffix, so
//! `*.example.com` can never accept `evilexample.com`. Requested hosts are parsed with the
//! `url` crate — the host checked is the host a client would connect to — and anything with
//! userinfo or a backslash is refused rather than guessed at.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// A normalised destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: Host,
    /// The port asked for, or the scheme's default for a URL.
    pub port: Option<u16>,
    /// For a URL: its scheme and path.
    pub scheme: Option<String>,
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// Lower-case A-labels, no trailing dot.
    Dns(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(d) => f.write_str(d),
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The destination as given, normalised: `host`, `host:port`, or for a URL
/// `scheme://host:port/path` (the audit trail records this whole form).
impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = &self.scheme {
            write!(f, "{scheme}://")?;
        }
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host)?,
            None => write!(f, "{}", self.host)?,
        }
        if let Some(path) = &self.path {
            f.write_str(path)?;
        }
        Ok(())
    }
}

/// Why a host or pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error("empty host")]
    Empty,
    /// Userinfo (`user@`), backslashes, or other text whose host is ambiguous.
    #[error("ambiguous host (userinfo or backslash): give a plain host or URL")]
    Ambiguous,
    #[error("not a valid host name or IP address")]
    Invalid,
    #[error("bad port")]
    BadPort,
    /// `*` or `**` alone, or a wildcard over a public suffix (`*.com`, `*.co.uk`).
    #[error("wildcard too wide: it would cover a whole public suffix")]
    TooWide,
    /// `a*.example.com`, `xn--*`, or a wildcard that is not the leftmost label.
    #[error("wildcards must be whole leftmost labels (`*.` or `**.`)")]
    PartialWildcard,
    /// A wildcard on an IP address.
    #[error("IP addresses match exactly or by CIDR, never by wildcard")]
    WildcardIp,
}

impl HostError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty => "empty_host",
            Self::Ambiguous => "ambiguous_host",
            Self::Invalid => "invalid_host",
            Self::BadPort => "bad_port",
            Self::TooWide => "wildcard_too_wide",
            Self::PartialWildcard => "partial_wildcard",
            Self::WildcardIp => "wildcard_ip",
        }
    }
}

/// One `allowed_hosts` entry, parsed at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
    scheme: Option<String>,
    path_prefix: Option<String>,
    /// As written, for explanations.
    text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostMatch {
    Exact(String),
    /// `*.<rest>`: exactly one extra label.
    OneLabel(String),
    /// `**.<rest>`: one or more extra labels.
    AnyDepth(String),
    Ip(IpAddr),
    Net(IpNet),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, HostError> {
        let raw = unambiguous(text)?;
        let (scheme, rest) = match raw.split_once("://") {
            Some((s, rest)) => (Some(s.to_ascii_lowercase()), rest),
            None => (None, raw),
        };
        // CIDR patterns have a `/` of their own; URL-form patterns a path.
        if scheme.is_none()
            && let Ok(net) = rest.parse::<IpNet>()
        {
            return Ok(Self::new(
                HostMatch::Net(net.trunc()),
                None,
                None,
                None,
                text,
            ));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
            None => (rest, None),
        };
        let (host, port) = split_port(authority)?;
        // A URL pattern pins its scheme's port: `https://api.example/v1` is port 443 only,
        // as the destination `https://api.example:8443/v1` is not the same service.
        let port = port.or_else(|| scheme.as_deref().and_then(default_port));
        let host = host.trim_end_matches('.');
        if host.is_empty() {
            return Err(HostError::Empty);
        }
        let host_match = if let Some(ip) = parse_ip_literal(host) {
            HostMatch::Ip(match ip {
                IpAddr::V6(v6) => canonical_v6(v6),
                v4 => v4,
            })
        } else if let Some(rest) = host.strip_prefix("**.") {
            HostMatch::AnyDepth(wildcard_base(rest)?)
        } else if let Some(rest) = host.strip_prefix("*.") {
            HostMatch::OneLabel(wildcard_base(rest)?)
        } else if host == "*" || host == "**" {
            return Err(HostError::TooWide);
        } else if host.contains('*') {
            return Err(HostError::PartialWildcard);
        } else {
            match normalise_dns(host)? {
                Host::Dns(d) => HostMatch::Exact(d),
                Host::Ip(ip) => HostMatch::Ip(ip),
            }
        };
        Ok(Self::new(host_match, port, scheme, path, text))
    }

    fn new(
        host: HostMatch,
        port: Option<u16>,
        scheme: Option<String>,
        path_prefix: Option<String>,
        text: &str,
    ) -> Self {
        Self {
            host,
            port,
            scheme,
            path_prefix,
            text: text.to_owned(),
        }
    }

    /// Does `dest` match this pattern?
    pub fn matches(&self, dest: &Destination) -> bool {
        let host_ok = match (&self.host, &dest.host) {
            (HostMatch::Exact(p), Host::Dns(h)) => p == h,
            (HostMatch::OneLabel(base), Host::Dns(h)) => strip_label_suffix(h, base)
                .is_some_and(|left| !left.is_empty() && !left.contains('.')),
            (HostMatch::AnyDepth(base), Host::Dns(h)) => {
                strip_label_suffix(h, base).is_some_and(|left| !left.is_empty())
            }
            (HostMatch::Ip(p), Host::Ip(h)) => p == h,
            (HostMatch::Net(n), Host::Ip(h)) => n.contains(h),
            // A DNS pattern never matches an IP and vice versa.
            _ => false,
        };
        if !host_ok {
            return false;
        }
        if self.port.is_some() && self.port != dest.port {
            return false;
        }
        if let Some(scheme) = &self.scheme
            && dest.scheme.as_deref() != Some(scheme)
        {
            return false;
        }
        if let Some(prefix) = &self.path_prefix {
            let path = dest.path.as_deref().unwrap_or("/");
            let within = path == prefix
                || (path.starts_with(prefix.as_str())
                    && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')));
            if !within {
                return false;
            }
        }
        true
    }
}

/// The port a URL of `scheme` uses when it names none (WHATWG's special schemes).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "ftp" => Some(21),
        _ => None,
    }
}

/// `h` without the suffix `.base`, if `h` ends with it on a label boundary.
fn strip_label_suffix<'h>(h: &'h str, base: &str) -> Option<&'h str> {
    let left = h.strip_suffix(base)?;
    left.strip_suffix('.')
}

/// The non-wildcard part of `*.<rest>`: normalised, DNS, and not a public suffix.
fn wildcard_base(rest: &str) -> Result<String, HostError> {
    if rest.contains('*') {
        return Err(HostError::PartialWildcard);
    }
    if parse_ip_literal(rest).is_some() {
        return Err(HostError::WildcardIp);
    }
    let Host::Dns(base) = normalise_dns(rest)? else {
        return Err(HostError::WildcardIp);
    };
    if base.split('.').any(|l| l.starts_with("xn--")) && rest.contains("xn--*") {
        return Err(HostError::PartialWildcard);
    }
    // `psl` applies the implicit `*` rule: an unknown TLD counts as a suffix too.
    let suffix = psl::suffix(base.as_bytes()).map(|s| s.as_bytes().to_vec());
    if suffix.as_deref() == Some(base.as_bytes()) {
        return Err(HostError::TooWide);
    }
    Ok(base)
}

fn split_port(authority: &str) -> Result<(&str, Option<u16>), HostError> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(HostError::Invalid)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| HostError::BadPort)?),
            None if after.is_empty() => None,
            None => return Err(HostError::Invalid),
        };
        // Keep the brackets so the literal is recognised as IPv6.
        let host = &authority[..inside.len() + 2];
        return Ok((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h, Some(p.parse().map_err(|_| HostError::BadPort)?))),
        None => Ok((authority, None)),
    }
}

/// A plain IP literal (`10.0.0.1`, `[::1]`), without WHATWG's legacy forms.
fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    inner.parse().ok()
}

/// Normalises a host name the way a client resolving it would: WHATWG host parsing (IDNA
/// UTS #46 mapping, IPv4 in all its legacy spellings), lower case, no trailing dot.
fn normalise_dns(host: &str) -> Result<Host, HostError> {
    if let Some(plain) = already_normal(host) {
        return Ok(Host::Dns(plain.to_owned()));
    }
    normalise_dns_slowly(host)
}

/// `host` itself when WHATWG parsing and the checks of [`normalise_dns_slowly`] would give it
/// back unchanged: lower-case ASCII letters, digits and hyphens in labels of 1–63 bytes not
/// starting or ending with a hyphen, at most 253 bytes, no trailing dot, no `xn--` label (its
/// Punycode is for IDNA to judge), and a last label starting with a letter (WHATWG reads a
/// name whose last label is a number — `1.2`, `a.0x10` — as an IPv4 address). Most
/// destinations are such names; they skip IDNA. `None`: ask the full parser. A differential
/// test holds the two together.
fn already_normal(host: &str) -> Option<&str> {
    let bytes = host.as_bytes();
    if bytes.is_empty() || bytes.len() > 253 {
        return None;
    }
    let mut labels = host.split('.');
    let last_starts_with_letter = host
        .rsplit('.')
        .next()
        .and_then(|l| l.bytes().next())
        .is_some_and(|b| b.is_ascii_lowercase());
    let labels_ok = labels.all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && !l.starts_with("xn--")
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    });
    (labels_ok && last_starts_with_letter).then_some(host)
}

/// [`normalise_dns`] through the `url` crate's WHATWG host parser.
fn normalise_dns_slowly(host: &str) -> Result<Host, HostError> {
    let parsed = url::Host::parse(host).map_err(|_| HostError::Invalid)?;
    match parsed {
        url::Host::Domain(mut d) => {
            let kept = d.trim_end_matches('.').len();
            // Trimming must not change what the name is: `6..` is a domain to WHATWG, but
            // `6` is the address 0.0.0.6 to every URL parser after us (found by the
            // `egress_target` fuzz target). Such a name is refused. (Without a trailing dot
            // there is nothing to check: the parser's output parses as itself.)
            if kept != d.len() {
                d.truncate(kept);
                if !matches!(url::Host::parse(&d), Ok(url::Host::Domain(ref again)) if *again == d)
                {
                    return Err(HostError::Invalid);
                }
            }
            // RFC 1035 after IDNA: at most 253 bytes, labels of 1–63 letters, digits and
            // hyphens, not starting or ending with a hyphen.
            let valid = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if valid {
                Ok(Host::Dns(d))
            } else {
                Err(HostError::Invalid)
            }
        }
        url::Host::Ipv4(ip) => Ok(Host::Ip(IpAddr::V4(ip))),
        url::Host::Ipv6(ip) => Ok(Host::Ip(canonical_v6(ip))),
    }
}

/// `text` trimmed, unless it is empty or holds userinfo (`@`), a backslash or whitespace:
/// strings whose host differs between parsers are refused, not guessed at.
fn unambiguous(text: &str) -> Result<&str, HostError> {
    let raw = text.trim();
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.contains(['@', '\\']) || raw.chars().any(char::is_whitespace) {
        return Err(HostError::Ambiguous);
    }
    Ok(raw)
}

/// `::ffff:a.b.c.d` is the IPv4 address it maps.
fn canonical_v6(ip: std::net::Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

impl Destination {
    /// Parses what a caller says it will connect to: `host`, `host:port`, `[v6]:port`, or a
    /// URL. Userinfo and backslashes are refused: their host differs between parsers.
    pub fn parse(text: &str) -> Result<Self, HostError> {
        let raw = unambiguous(text)?;
        if !raw.contains("://") {
            let (host, port) = split_port(raw)?;
            let host = match parse_ip_literal(host) {
                Some(IpAddr::V6(v6)) => Host::Ip(canonical_v6(v6)),
                Some(ip) => Host::Ip(ip),
                None => normalise_dns(host)?,
            };
            return Ok(Self {
                host,
                port,
                scheme: None,
                path: None,
            });
        }
        let url = url::Url::parse(raw).map_err(|_| HostError::Invalid)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HostError::Ambiguous);
        }
        let host = match url.host() {
            None => return Err(HostError::Empty),
            // A non-special scheme leaves the host opaque: normalise it ourselves.
            Some(url::Host::Domain(d)) => normalise_dns(d)?,
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(canonical_v6(ip)),
        };
        Ok(Self {
            host,
            port: url.port_or_known_default(),
            scheme: Some(url.scheme().to_owned()),
            path: Some(url.path().to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod fast_path {
        use super::super::{already_normal, normalise_dns_slowly};
        use proptest::prelude::*;

        /// Names made of the pieces where the two paths could part: case, digits, hyphens,
        /// `xn--`, `0x`, empty labels, trailing dots, non-ASCII, over-long labels.
        fn name() -> impl Strategy<Value = String> {
            let label = prop_oneof![
                "[a-z][a-z0-9-]{0,10}",
                "[a-zA-Z0-9-]{0,8}",
                "[0-9]{1,4}",
                "0x[0-9a-f]{1,3}",
                "xn--[a-z0-9-]{0,8}",
                "[a-zé-]{1,6}",
                "[a-z]{60,66}",
                Just(String::new()),
            ];
            (prop::collection::vec(label, 1..6), prop::bool::ANY).prop_map(|(l, dot)| {
                let mut n = l.join(".");
                if dot {
                    n.push('.');
                }
                n
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]
            /// Whenever the fast path answers, the WHATWG parser agrees byte for byte.
            #[test]
            fn the_fast_path_agrees_with_the_parser(n in name()) {
                if let Some(fast) = already_normal(&n) {
                    prop_assert_eq!(
                        normalise_dns_slowly(&n),
                        Ok(super::super::Host::Dns(fast.to_owned()))
                    );
                }
            }
        }

        #[test]
        fn common_names_take_the_fast_path_and_numbers_do_not() {
            for n in ["api.partner.example", "a-1.b2.example", "localhost"] {
                assert_eq!(already_normal(n), Some(n), "{n}");
            }
            for n in [
                "1.2.3.4",
                "a.0x10",
                "a.1",
                "API.example",
                "xn--bcher-kva.example",
                "a..b",
                "a.",
                "-a.example",
                "",
            ] {
                assert_eq!(already_normal(n), None, "{n}");
            }
        }
    }

    fn pat(p: &str) -> HostPattern {
        HostPattern::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn hits(p: &str, host: &str) -> bool {
        let dest = Destination::parse(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        pat(p).matches(&dest)
    }

    fn refused(host: &str) -> HostError {
        Destination::parse(host).unwrap_err()
    }

    /// A name whose trailing dots hide a number is refused: without them every URL parser
    /// reads it as an IPv4 address (`6..` → `6` → 0.0.0.6), so the policy and the connection
    /// would see different hosts.
    #[test]
    fn trailing_dots_cannot_turn_a_name_into_an_address() {
        assert_eq!(refused("6.."), HostError::Invalid);
        assert_eq!(refused("10.0.0.1..:443"), HostError::Invalid);
        assert!(Destination::parse("example.com.").is_ok());
        assert!(matches!(
            Destination::parse("6.").map(|d| d.host),
            Ok(Host::Ip(IpAddr::V4(_)))
        ));
    }

    #[test]
    fn threat_1_wildcard_is_exactly_one_label() {
        assert!(hits("*.example.com", "a.example.com"));
        assert!(!hits("*.example.com", "a.b.example.com"));
        assert!(!hits("*.example.com", "example.com"));
        assert_eq!(refused(".example.com"), HostError::Invalid);
        assert!(hits("**.example.com", "a.b.example.com"));
        assert!(hits("**.example.com", "a.example.com"));
        assert!(!hits("**.example.com", "example.com"));
    }

    #[test]
    fn threat_2_suffixes_need_a_label_boundary() {
        for p in ["example.com", "*.example.com", "**.example.com"] {
            assert!(!hits(p, "evilexample.com"), "{p}");
            assert!(!hits(p, "example.com.evil.com"), "{p}");
            assert!(!hits(p, "a.evilexample.com"), "{p}");
        }
        // `%2e` is not a dot to a resolver: the name is invalid, not a subdomain.
        assert!(
            Destination::parse("a.example.com%2eevil.com")
                .map_or(true, |d| !pat("*.example.com").matches(&d))
        );
    }

    #[test]
    fn threat_3_case_and_trailing_dot() {
        assert!(hits("api.example.com", "API.Example.COM."));
        assert!(hits("API.EXAMPLE.com.", "api.example.com"));
        let once = Destination::parse("API.Example.COM.").unwrap();
        let twice = Destination::parse(&once.host.to_string()).unwrap();
        assert_eq!(once, twice, "normalising twice changes nothing");
    }

    #[test]
    fn threat_4_idn_and_unicode_dots() {
        assert!(hits("bücher.example", "xn--bcher-kva.example"));
        assert!(hits("xn--bcher-kva.example", "BÜCHER.example"));
        assert_eq!(
            HostPattern::parse("xn--*.example.com").unwrap_err(),
            HostError::PartialWildcard
        );
        assert_eq!(
            HostPattern::parse("a*.example.com").unwrap_err(),
            HostError::PartialWildcard
        );
        assert_eq!(
            HostPattern::parse("api.*.example.com").unwrap_err(),
            HostError::PartialWildcard
        );
        // Ideographic full stops make an IP address, not a DNS name.
        let d = Destination::parse("127。0。0。1").unwrap();
        assert_eq!(d.host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(
            HostPattern::parse("*.0.0.1").unwrap_err(),
            HostError::WildcardIp
        );
        assert!(!pat("**.localhost.example").matches(&d));
    }

    #[test]
    fn threat_5_userinfo_and_backslashes_are_refused() {
        for h in [
            "https://allowed.com@evil.com",
            "allowed.com:pw@evil.com",
            "allowed.com\\@evil.com",
            "https://allowed.com\\@evil.com/",
            "https://user:pw@allowed.com/",
        ] {
            assert_eq!(refused(h), HostError::Ambiguous, "{h}");
        }
        // Without userinfo the URL's host is the one checked.
        let d = Destination::parse("https://evil.com/allowed.com").unwrap();
        assert_eq!(d.host, Host::Dns("evil.com".into()));
    }

    /// URL patterns pin their scheme's default port; DNS names are checked for length and
    /// label syntax after IDNA.
    #[test]
    fn url_patterns_pin_the_default_port_and_names_are_ldh() {
        assert!(hits(
            "https://api.example.com/v1",
            "https://api.example.com/v1/x"
        ));
        assert!(hits(
            "https://api.example.com/v1",
            "https://api.example.com:443/v1"
        ));
        assert!(!hits(
            "https://api.example.com/v1",
            "https://api.example.com:8443/v1"
        ));
        assert!(hits(
            "https://api.example.com:8443/v1",
            "https://api.example.com:8443/v1"
        ));
        let long = format!("{}.example.com", vec!["a"; 125].join("."));
        assert!(long.len() > 253);
        assert_eq!(refused(&long), HostError::Invalid);
        assert_eq!(refused("a_b.example.com"), HostError::Invalid);
        assert_eq!(refused("-a.example.com"), HostError::Invalid);
        assert_eq!(refused("a-.example.com"), HostError::Invalid);
        assert_eq!(
            Destination::parse("https://API.example.com/v1/x")
                .unwrap()
                .to_string(),
            "https://api.example.com:443/v1/x"
        );
        assert_eq!(
            Destination::parse("api.example.com:8443")
                .unwrap()
                .to_string(),
            "api.example.com:8443"
        );
    }

    #[test]
    fn threat_6_ip_literals_and_ports() {
        assert_eq!(
            HostPattern::parse("*.0.0.1").unwrap_err(),
            HostError::WildcardIp
        );
        assert!(!hits("**.example.com", "127.0.0.1"));
        for spelled in ["0x7f.1", "2130706433", "[::ffff:127.0.0.1]", "127.0.0.1"] {
            assert!(hits("127.0.0.1", spelled), "{spelled}");
        }
        assert!(hits("10.0.0.0/8", "10.1.2.3"));
        assert!(!hits("10.0.0.0/8", "11.0.0.1"));
        assert!(hits("[2001:db8::1]", "[2001:db8::1]:8443"));
        assert!(hits("api.example.com:443", "api.example.com:443"));
        assert!(!hits("api.example.com:443", "api.example.com:8443"));
        assert!(!hits("api.example.com:443", "api.example.com"));
        assert!(hits("api.example.com:443", "https://api.example.com/x"));
        assert_eq!(
            HostPattern::parse("*.10.0.0.1").unwrap_err(),
            HostError::WildcardIp
        );
    }

    #[test]
    fn threat_7_too_wide_wildcards_are_refused_at_load() {
        for p in ["*", "**", "*.com", "**.com", "*.co.uk", "*.internal"] {
            assert_eq!(
                HostPattern::parse(p).unwrap_err(),
                HostError::TooWide,
                "{p}"
            );
        }
        pat("*.example.co.uk");
        pat("*.svc.cluster.local");
    }

    #[test]
    fn url_patterns_with_scheme_and_path_prefix() {
        let p = "https://api.partner.example/v1";
        assert!(hits(p, "https://api.partner.example/v1"));
        assert!(hits(p, "https://api.partner.example/v1/payments"));
        assert!(!hits(p, "https://api.partner.example/v10"));
        assert!(!hits(p, "http://api.partner.example/v1"));
        assert!(!hits(p, "api.partner.example"));
    }
}
