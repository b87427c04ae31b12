//! Subject patterns of issuer ACLs, matched against a certificate's *parsed* subject
//! attributes (OID + decoded value), never against a rendered `CN=…, O=…` string: a rendering
//! does not escape values, so a value holding `, CN=x` would read as an extra attribute
//! (THREATS row 19).

/// Attribute names a pattern may use, with their OIDs (RFC 4519 / RFC 5280 short names).
const ATTRIBUTES: &[(&str, &str)] = &[
    ("CN", "2.5.4.3"),
    ("SERIALNUMBER", "2.5.4.5"),
    ("C", "2.5.4.6"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("STREET", "2.5.4.9"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1"),
];

/// A subject pattern: `ATTR=value` pairs separated by commas. Each named attribute must occur
/// in the certificate's subject **exactly once** (a subject with two `CN`s matches no pattern
/// naming `CN`: which one would count is a matter of rendering), and its value must match.
/// In a value, `*` matches any run of characters; comparison ignores ASCII case. Pairs may
/// come in any order. `CN=gw-*.payments.example, O=Example`.
///
/// Parsed once, when the policy is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectPattern {
    /// (attribute OID in dotted form, lower-cased glob), in the pattern's order.
    pairs: Vec<(&'static str, String)>,
}

impl SubjectPattern {
    /// The pattern as parsed (attribute OIDs and lower-cased globs, in order): what two
    /// patterns that claim the same certificates have in common.
    pub fn canonical(&self) -> String {
        self.pairs
            .iter()
            .map(|(oid, glob)| format!("{oid}={glob}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut pairs: Vec<(&'static str, String)> = Vec::new();
        for part in text.split(',') {
            let (attr, value) = part
                .split_once('=')
                .ok_or("write attribute=value pairs, e.g. CN=gw-*.example")?;
            let attr = attr.trim().to_ascii_uppercase();
            let value = value.trim().to_ascii_lowercase();
            if attr.is_empty() || value.is_empty() {
                return Err("an attribute or a value is empty");
            }
            let oid = ATTRIBUTES
                .iter()
                .find(|(name, _)| *name == attr)
                .map(|(_, oid)| *oid)
                .ok_or("unknown attribute (CN, O, OU, C, L, ST, STREET, DC, UID, SERIALNUMBER, EMAILADDRESS)")?;
            if value.chars().all(|c| c == '*') {
                return Err("a value of only `*` would match any certificate of the CA");
            }
            if pairs.iter().any(|(o, _)| *o == oid) {
                return Err("an attribute is named twice");
            }
            pairs.push((oid, value));
        }
        Ok(Self { pairs })
    }

    /// Whether a subject, given as its attributes in certificate order — (dotted OID, decoded
    /// value; `None` when the value is not a string) — satisfies every pair.
    pub fn matches<'a>(&self, attributes: &[(&'a str, Option<&'a str>)]) -> bool {
        self.pairs.iter().all(|(oid, pattern)| {
            let mut values = attributes.iter().filter(|(o, _)| o == oid);
            match (values.next(), values.next()) {
                (Some((_, Some(value))), None) => glob(pattern, &value.to_ascii_lowercase()),
                _ => false,
            }
        })
    }

    /// Whether every subject this pattern matches has a CN in `domain` (the domain itself or
    /// a name under it): the pattern names `CN`, and its glob is the domain, or ends with `.`
    /// and the domain as literal text (no `*` there).
    pub fn within_domain(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.pairs.iter().any(|(oid, glob)| {
            *oid == "2.5.4.3" && (*glob == domain || glob.ends_with(&format!(".{domain}")))
        })
    }

    /// Whether some subject could satisfy both patterns (for `check`'s overlap warning):
    /// every attribute both name must admit a common value.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.pairs.iter().all(|(oid, a)| {
            other
                .pairs
                .iter()
                .find(|(o, _)| o == oid)
                .is_none_or(|(_, b)| globs_intersect(a.as_bytes(), b.as_bytes()))
        })
    }
}

/// `*` matches any run of characters (also none). Greedy with one backtrack point — the last
/// star — so the cost is O(pattern × text) at worst, never exponential, whatever the number of
/// stars (the text comes from a caller's certificate).
fn glob(pattern: &str, text: &str) -> bool {
    glob_counting(pattern, text).0
}

/// [`glob`] and the number of steps it took (what the worst-case tests bound).
fn glob_counting(pattern: &str, text: &str) -> (bool, usize) {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0usize;
    while j < t.len() {
        steps += 1;
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            // Let the last star swallow one more byte and try again from there.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return (false, steps);
        }
    }
    (p[i..].iter().all(|&b| b == b'*'), steps)
}

/// Whether two globs (`*` = any run) share a matching string: reachability in the product of
/// their automata, O(|a| × |b|).
fn globs_intersect(a: &[u8], b: &[u8]) -> bool {
    let mut seen = vec![false; (a.len() + 1) * (b.len() + 1)];
    let mut todo = vec![(0usize, 0usize)];
    while let Some((i, j)) = todo.pop() {
        let cell = i * (b.len() + 1) + j;
        if std::mem::replace(&mut seen[cell], true) {
            continue;
        }
        if a[i..].iter().all(|&c| c == b'*') && b[j..].iter().all(|&c| c == b'*') {
            return true;
        }
        let (sa, sb) = (a.get(i) == Some(&b'*'), b.get(j) == Some(&b'*'));
        // A star may match nothing …
        if sa {
            todo.push((i + 1, j));
        }
        if sb {
            todo.push((i, j + 1));
        }
        // … or one more character, which the other side must accept.
        match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) if !sa && !sb && x == y => todo.push((i + 1, j + 1)),
            (Some(_), Some(_)) if sa && !sb => todo.push((i, j + 1)),
            (Some(_), Some(_)) if sb && !sa => todo.push((i + 1, j)),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {

    /// An API-made ACL claims only inside its team's identity domain: the CN's glob must end
    /// with `.` and the domain as literal text.
    #[test]
    fn a_pattern_is_within_a_domain_only_by_a_literal_suffix() {
        let within = |p: &str| {
            SubjectPattern::parse(p)
                .unwrap()
                .within_domain("payments.example")
        };
        assert!(within("CN=worker-*.payments.example"));
        assert!(within("CN=payments.example, O=Example"));
        assert!(within("cn=*.PAYMENTS.example"));
        assert!(
            !within("CN=*payments.example"),
            "evilpayments.example would match"
        );
        assert!(!within("CN=worker-*"));
        assert!(!within("O=Example"), "no CN");
        assert!(!within("CN=*.payments.example.*"));
        assert!(!within("CN=x.payments.exampl*"));
    }

    use super::*;

    const CN: &str = "2.5.4.3";
    const O: &str = "2.5.4.10";
    const OU: &str = "2.5.4.11";

    #[test]
    fn patterns_match_parsed_attributes() {
        let p = SubjectPattern::parse("CN=gw-*.payments.example").unwrap();
        assert!(p.matches(&[(CN, Some("gw-1.payments.example"))]));
        assert!(p.matches(&[(O, Some("Example")), (CN, Some("GW-eu.payments.example"))]));
        assert!(!p.matches(&[(CN, Some("gw-1.payments.example.evil"))]));
        assert!(!p.matches(&[(CN, Some("api.payments.example"))]));
        assert!(!p.matches(&[(O, Some("gw-1.payments.example"))]));
        assert!(!p.matches(&[(CN, None)]), "a value that is not a string");
        let two = SubjectPattern::parse("CN=gw-*, O=Example").unwrap();
        assert!(two.matches(&[(O, Some("Example")), (CN, Some("gw-a"))]));
        assert!(!two.matches(&[(O, Some("Other")), (CN, Some("gw-a"))]));
        assert!(SubjectPattern::parse("CN=*").is_err());
        assert!(SubjectPattern::parse("gw").is_err());
        assert!(SubjectPattern::parse("CN=").is_err());
        assert!(SubjectPattern::parse("XX=a").is_err());
        assert!(SubjectPattern::parse("CN=a, cn=b").is_err());
    }

    /// THREATS row 19: a value that *renders* like extra attributes is one value.
    #[test]
    fn threat_19_injected_attributes_are_one_value() {
        let workers = SubjectPattern::parse("CN=worker-*").unwrap();
        assert!(!workers.matches(&[(CN, Some("gateway-9, CN=worker-1"))]));
        let gw = SubjectPattern::parse("CN=gw-*, O=Payments").unwrap();
        assert!(!gw.matches(&[
            (OU, Some("x, CN=gw-1.example, O=Payments")),
            (CN, Some("worker-1")),
        ]));
        // Two values of a named attribute: no match, whichever comes first.
        assert!(!workers.matches(&[(CN, Some("gateway-9")), (CN, Some("worker-1"))]));
        assert!(!workers.matches(&[(CN, Some("worker-1")), (CN, Some("gateway-9"))]));
    }

    /// The worst cases a caller can build — many stars, a 64 KiB subject value, the input
    /// that hung the old matcher for 14.7 s — in at most (pattern + 1) × (text + 1) steps.
    #[test]
    fn glob_work_is_bounded_by_pattern_times_text() {
        let text = "a".repeat(64 * 1024);
        for pattern in [
            "*a*a*a*a*a*a*a*a*a*a*b",
            "*a*a*a*a*a*a*a*a*a*a*",
            "****b",
            "a*",
        ] {
            let (_, steps) = glob_counting(pattern, &text);
            let bound = (pattern.len() + 1) * (text.len() + 1);
            assert!(steps <= bound, "{pattern}: {steps} steps > {bound}");
        }
        // The pattern and subject value of the hanging fuzz input (issue 22).
        let hang = include_bytes!("../../fuzz/regressions/client_identity/issue-22-hang");
        let hang = String::from_utf8_lossy(hang);
        let (pattern, subject) = hang.split_once('|').unwrap();
        let value = subject
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("C=")
            .to_ascii_lowercase();
        for part in pattern.split(',') {
            let glob_part = part
                .split_once('=')
                .map_or(part, |(_, v)| v)
                .to_ascii_lowercase();
            let (_, steps) = glob_counting(&glob_part, &value);
            assert!(steps <= (glob_part.len() + 1) * (value.len() + 1));
        }
        // Linear in practice on the common shape: a star, then a literal suffix.
        let (matched, steps) = glob_counting("*.example", &format!("{}.example", "x".repeat(1000)));
        assert!(matched);
        assert!(steps <= 2 * 1009, "{steps}");
    }

    #[test]
    fn glob_is_not_exponential() {
        let pattern = "c=*a*a*a*a*a*a*a*a*a*a*b";
        let p = SubjectPattern::parse(pattern).unwrap();
        // The old backtracking glob did not return from this within the test timeout.
        let text = "a".repeat(100_000);
        assert!(!p.matches(&[("2.5.4.6", Some(&text))]));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "a"));
        assert!(glob("*ab", "aab"));
    }

    #[test]
    fn overlaps() {
        let o = |a: &str, b: &str| {
            SubjectPattern::parse(a)
                .unwrap()
                .overlaps(&SubjectPattern::parse(b).unwrap())
        };
        assert!(o("CN=gw-*", "CN=*-1"));
        assert!(
            o("CN=gw-*", "O=Payments"),
            "different attributes can co-occur"
        );
        assert!(!o("CN=gw-*", "CN=worker-*"));
        assert!(!o("CN=a*b", "CN=*c"));
        assert!(o("CN=a*", "CN=*b"));
        assert!(!o("CN=gw-*, O=Payments", "CN=gw-*, O=Fraud"));
    }
}
