//! A closed-loop HTTP/1.1 load generator for bench/run.sh: `-c` keep-alive connections on one
//! thread (like `wrk -t1`), each sending its next request as soon as the last answer is read.
//! Written because wrk cannot present a TLS client certificate, and one generator for every
//! row keeps the ratios honest. Prints one JSON line: requests/s and latency percentiles.
//!
//!     cargo run --release --example loadgen -- --url http://127.0.0.1:8080/v1/resolve \
//!       --header 'Authorization: Bearer …' --body '{"document": …}' -c 32 -d 10

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

struct Args {
    url: url::Url,
    method: hyper::Method,
    headers: Vec<(String, String)>,
    /// `{i}` is replaced by a request counter modulo `keys` (distinct secrets per request).
    body: String,
    keys: u64,
    /// Added to the request counter before `keys` (a later run naming other secrets).
    offset: u64,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    cacert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    label: String,
    /// Send this absolute URI as the request target (a forward proxy's form), connecting to
    /// `url`'s host and port.
    proxy_uri: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        url: url::Url::parse("http://127.0.0.1:8080/healthz").unwrap(),
        method: hyper::Method::GET,
        headers: Vec::new(),
        body: String::new(),
        keys: 1,
        offset: 0,
        connections: 32,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        cacert: None,
        cert: None,
        key: None,
        label: String::new(),
        proxy_uri: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = url::Url::parse(&value()).expect("--url"),
            "--method" => a.method = value().parse().expect("--method"),
            "--header" => {
                let v = value();
                let (k, v) = v.split_once(':').expect("--header 'Name: value'");
                a.headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            // A file for bodies larger than one argument may be (128 KiB on Linux).
            "--body" | "--body-file" => {
                a.body = value();
                if flag == "--body-file" {
                    a.body = std::fs::read_to_string(&a.body).expect("--body-file");
                }
                if a.method == hyper::Method::GET {
                    a.method = hyper::Method::POST;
                }
            }
            "--keys" => a.keys = value().parse().expect("--keys"),
            "--offset" => a.offset = value().parse().expect("--offset"),
            "-c" => a.connections = value().parse().expect("-c"),
            "-d" => a.duration = Duration::from_secs_f64(value().parse().expect("-d")),
            "--warmup" => a.warmup = Duration::from_secs_f64(value().parse().expect("--warmup")),
            "--cacert" => a.cacert = Some(value()),
            "--cert" => a.cert = Some(value()),
            "--key" => a.key = Some(value()),
            "--label" => a.label = value(),
            "--proxy-uri" => a.proxy_uri = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn tls(a: &Args) -> tokio_rustls::TlsConnector {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    let ca = a.cacert.as_ref().expect("https needs --cacert");
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

async fn connect(a: &Args, connector: Option<&tokio_rustls::TlsConnector>) -> Sender {
    let host = a.url.host_str().unwrap().to_owned();
    let port = a.url.port_or_known_default().unwrap();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    match connector {
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender
        }
        Some(c) => {
            let name = ServerName::try_from(host).unwrap();
            let stream = c.connect(name, tcp).await.unwrap();
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    non_2xx: u64,
    /// Requests sent, warm-up included.
    sent: u64,
}

async fn worker(
    a: Arc<Args>,
    connector: Option<Arc<tokio_rustls::TlsConnector>>,
    id: u64,
    start: Instant,
) -> Tally {
    let mut sender = connect(&a, connector.as_deref()).await;
    let mut t = Tally::default();
    let path = a
        .proxy_uri
        .clone()
        .unwrap_or_else(|| a.url[url::Position::BeforePath..].to_owned());
    let authority = match &a.proxy_uri {
        Some(u) => {
            let u = url::Url::parse(u).expect("--proxy-uri");
            u[url::Position::BeforeHost..url::Position::AfterPort].to_owned()
        }
        None => a.url[url::Position::BeforeHost..url::Position::AfterPort].to_owned(),
    };
    let mut i = id;
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let body = if a.body.contains("{i}") {
            a.body
                .replace("{i}", &((i + a.offset) % a.keys).to_string())
        } else {
            a.body.clone()
        };
        i += a.connections as u64;
        let mut req = Request::builder()
            .method(a.method.clone())
            .uri(path.as_str())
            .header("host", authority.as_str());
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in &a.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Body::from(body)).unwrap();
        if sender.ready().await.is_err() {
            sender = connect(&a, connector.as_deref()).await;
        }
        let sent = Instant::now();
        let result = sender.send_request(req).await;
        let ok = match result {
            Ok(resp) => {
                let status = resp.status();
                let read = axum::body::to_bytes(Body::new(resp.into_body()), 16 << 20).await;
                if read.is_err() {
                    None
                } else {
                    Some(status.is_success())
                }
            }
            Err(_) => None,
        };
        let took = sent.elapsed();
        t.sent += 1;
        if sent < measure_from {
            continue;
        }
        match ok {
            Some(true) => t
                .latencies_us
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
            Some(false) => t.non_2xx += 1,
            None => {
                t.errors += 1;
                sender = connect(&a, connector.as_deref()).await;
            }
        }
    }
    t
}

fn main() {
    let a = Arc::new(args());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connector = (a.url.scheme() == "https").then(|| Arc::new(tls(&a)));
    let tallies = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..a.connections as u64)
            .map(|id| tokio::spawn(worker(Arc::clone(&a), connector.clone(), id, start)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut all: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let non_2xx: u64 = tallies.iter().map(|t| t.non_2xx).sum();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        let idx = ((all.len() as f64 * p).ceil() as usize).saturating_sub(1);
        all[idx.min(all.len() - 1)]
    };
    let rps = all.len() as f64 / a.duration.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "label": a.label,
            "connections": a.connections,
            "seconds": a.duration.as_secs_f64(),
            "requests": all.len(),
            // Every request, warm-up included: what the server's CPU time covers.
            "sent": tallies.iter().map(|t| t.sent).sum::<u64>(),
            "rps": rps.round(),
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
            "max_us": all.last().copied().unwrap_or(0),
            "errors": errors,
            "non_2xx": non_2xx,
        })
    );
}
