//! Ports for the servers a test starts, without picking a number and hoping it stays free:
//! servers listen on port 0 and the test reads where (keybroker's `--ready-file`, the
//! kernel's socket table for OpenBao), or the server binds a candidate port and the test tries
//! again when it could not (nginx). A port that must refuse connections is held bound, never listening.
#![allow(dead_code)]

use std::collections::BTreeSet;

/// A loopback port where nothing listens, held for as long as the returned socket lives:
/// bound and not listening, so a connection to it is refused and no other process can take it.
pub fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// The TCP ports process `pid` listens on: its socket inodes (`/proc/<pid>/fd`) matched with
/// the listening rows of its network namespace's table (`/proc/<pid>/net/tcp`).
pub fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    let inodes: BTreeSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?.to_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let cols: Vec<&str> = row.split_whitespace().collect();
            // local_address is cols[1] ("0100007F:1F90"), st is cols[3] (0A = LISTEN),
            // inode is cols[9].
            if cols.len() < 10 || cols[3] != "0A" || !inodes.contains(cols[9]) {
                return None;
            }
            u16::from_str_radix(cols[1].rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// A port for a server that must be told its address before it starts (nginx, a Raft node's
/// `api_addr`): below Linux's ephemeral range (32768–60999), so no client socket of this
/// machine is given it meanwhile. Not checked here — the server's bind is the check, and its
/// caller starts it again on other candidates when the bind failed.
pub fn candidate_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    20_000 + (h.finish() % 12_000) as u16
}
