//! Reads a process's writable memory (`/proc/<pid>/mem`) and says where given byte strings
//! lie: the memory tests' one instrument (docs/THREATS.md row 29). `MEMSCAN_CONTEXT=1` adds
//! the bytes around each find to its report (a debugging aid: the canaries are the test's own).
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom};

/// For each `(label, needle)`, the places in process `pid`'s writable mappings that hold it,
/// as `"label at mapping+offset"`. Each mapping is read once and searched for every needle.
pub fn scan(pid: u32, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let finders: Vec<(&str, memchr::memmem::Finder<'_>)> = needles
        .iter()
        .map(|(label, n)| {
            assert!(n.len() >= 16, "needle {label} is shorter than 16 bytes");
            (label.as_str(), memchr::memmem::Finder::new(n))
        })
        .collect();
    let mut found = Vec::new();
    let mut buf = Vec::new();
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let name = parts.nth(3).unwrap_or("[anon]");
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        buf.clear();
        buf.resize((end - start) as usize, 0);
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        for (label, finder) in &finders {
            for at in finder.find_iter(&buf) {
                let ctx = if std::env::var_os("MEMSCAN_CONTEXT").is_some() {
                    let a = at.saturating_sub(160);
                    let b = (at + 200).min(buf.len());
                    format!(" [{range}] {:?}", String::from_utf8_lossy(&buf[a..b]))
                } else {
                    String::new()
                };
                found.push(format!("{label} at {name}+{at:#x}{ctx}"));
            }
        }
    }
    found
}

/// How many places in process `pid`'s writable memory hold `needle`.
pub fn occurrences(pid: u32, needle: &[u8]) -> Vec<String> {
    scan(pid, &[("needle".to_owned(), needle.to_vec())])
}

/// Scans until nothing is found or `deadline` has passed; a verdict of "left" comes only from
/// a scan that started after the deadline (the cache's maintenance and idle connections'
/// closing take their time; a test never sleeps a fixed time to wait for them).
pub async fn left_after(
    pid: u32,
    needles: &[(String, Vec<u8>)],
    deadline: std::time::Duration,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + deadline;
    loop {
        let started = std::time::Instant::now();
        let left = scan(pid, needles);
        if left.is_empty() || started >= deadline {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Needles for a PEM private key in each form it passes through, both taken from its private
/// scalar (not the fixed header nor the public key a certificate also carries): the first 16
/// bytes of the scalar as DER holds it (`02 01 01 04 20` opens it in SEC1 and in PKCS#8's
/// embedded SEC1), and 16 characters of the base64 body that encode only scalar bytes, from
/// inside one line (so the flattened form, with spaces for newlines, holds them too).
pub fn key_needles(label: &str, key_pem: &str) -> Vec<(String, Vec<u8>)> {
    let der = pem_der(key_pem);
    let at =
        memchr::memmem::find(&der, &[0x02, 0x01, 0x01, 0x04, 0x20]).expect("an EC private key") + 5;
    let scalar = der[at..at + 16].to_vec();
    // Base64 character 4k encodes from byte 3k on: the first group wholly inside the scalar.
    let first = at.div_ceil(3) * 4;
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert_eq!(first / 64, (first + 15) / 64, "the run crosses a line");
    assert!((first + 16) / 4 * 3 <= at + 32, "the run leaves the scalar");
    let base64 = body.as_bytes()[first..first + 16].to_vec();
    vec![
        (format!("{label} (PEM base64)"), base64),
        (format!("{label} (DER scalar)"), scalar),
    ]
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap()
}
