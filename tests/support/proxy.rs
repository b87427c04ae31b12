//! A TCP proxy in front of a real server (OpenBao) that counts what passes: occurrences of a
//! request line, and the most connections open at once. Nothing is answered by the proxy.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy has seen so far.
#[derive(Default)]
pub struct Seen {
    /// Occurrences of the needle in client-to-server bytes.
    pub matches: AtomicUsize,
    open: AtomicUsize,
    /// The most connections that were open at the same time.
    pub max_open: AtomicUsize,
    in_flight: AtomicUsize,
    /// The most matching requests awaiting their answer at the same time (HTTP/1.1: one per
    /// connection, from the request line until the first byte of the answer).
    pub max_in_flight: AtomicUsize,
}

impl Seen {
    pub fn matches(&self) -> usize {
        self.matches.load(Ordering::SeqCst)
    }

    pub fn max_open(&self) -> usize {
        self.max_open.load(Ordering::SeqCst)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Starts the proxy towards `upstream` (`host:port`); returns its `http://` address.
pub async fn counting_proxy(upstream: String, needle: &'static [u8]) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let seen = Arc::clone(&counter);
            let now = seen.open.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max_open.fetch_max(now, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&upstream).await {
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let awaiting = std::sync::atomic::AtomicBool::new(false);
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let hits = buf[..n]
                                .windows(needle.len())
                                .filter(|w| *w == needle)
                                .count();
                            seen.matches.fetch_add(hits, Ordering::SeqCst);
                            if hits > 0 && !awaiting.swap(true, Ordering::SeqCst) {
                                let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                                seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
                            }
                            if sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = sw.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if awaiting.swap(false, Ordering::SeqCst) {
                                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = cw.shutdown().await;
                    };
                    let _ = tokio::join!(up, down);
                    if awaiting.swap(false, Ordering::SeqCst) {
                        seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                seen.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{addr}"), seen)
}
