//! fleet-sample-app: the app the end-to-end tests deploy. A tiny HTTP server
//! (std only) that reads its release from its working directory:
//!
//! - `VERSION`: served at `/` and `/version`, and in `/health`.
//! - `HEALTH`: when it holds `fail`, `/health` answers 503 (a release whose
//!   health check fails).
//! - `CRASH`: when present, the process exits 1 at start (a unit that fails).
//! - `FAIL_PORTS`: ports (one per line) on which this release is unhealthy,
//!   so one release can fail on some hosts of a test fleet only.
//!
//! Usage: `fleet-sample-app PORT`, or `fleet-sample-app check` to GET
//! `/health` on `$SAMPLE_PORT` (exit 0 on 200): the health command of test
//! fleets whose hosts all share one loopback, each app on its own port.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn check() -> ! {
    use std::io::Read;
    let port = std::env::var("SAMPLE_PORT").unwrap_or_default();
    let Ok(mut s) = std::net::TcpStream::connect(format!("127.0.0.1:{port}")) else {
        eprintln!("nothing listens on 127.0.0.1:{port}");
        std::process::exit(1);
    };
    let _ = write!(s, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    print!("{resp}");
    std::process::exit(if resp.starts_with("HTTP/1.1 200") { 0 } else { 1 })
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("check") {
        check();
    }
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: fleet-sample-app PORT");
        std::process::exit(2)
    });
    let read = |name: &str| std::fs::read_to_string(name).map(|s| s.trim().to_string());
    if std::path::Path::new("CRASH").exists() {
        eprintln!("CRASH present: exiting at start");
        std::process::exit(1);
    }
    let version = read("VERSION").unwrap_or_else(|_| "unknown".into());
    let failing_here = read("FAIL_PORTS")
        .map(|ports| ports.lines().any(|p| p.trim() == port.to_string()))
        .unwrap_or(false);
    let healthy = read("HEALTH").map(|h| h != "fail").unwrap_or(true) && !failing_here;
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1)
    });
    eprintln!("sample app {version} listening on 127.0.0.1:{port} (healthy: {healthy})");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match path {
            "/health" if healthy => ("200 OK", format!("ok {version}\n")),
            "/health" => (
                "503 Service Unavailable",
                format!("unhealthy {version}: HEALTH says fail\n"),
            ),
            "/" | "/version" => ("200 OK", format!("{version}\n")),
            _ => ("404 Not Found", "not found\n".to_string()),
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
