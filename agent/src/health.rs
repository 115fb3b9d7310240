//! Health checks: an HTTP GET against the app's local port (2xx is healthy)
//! or a command (exit 0 is healthy), retried until a deadline.

use std::time::{Duration, Instant};

use fleet_proto::health_check::Check;
use fleet_proto::{HealthCheck, HealthResult};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Time between attempts.
const RETRY: Duration = Duration::from_millis(500);
/// Deadline of one attempt.
const ATTEMPT: Duration = Duration::from_secs(5);
/// How much of a response body or command output a report keeps.
pub const TAIL: usize = 2048;

/// The last `max` bytes of `s`, on a character boundary.
pub fn tail(s: &str, max: usize) -> String {
    let s = s.trim_end();
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// The health check as the deploy path sees it (a fake in its unit tests).
pub trait Checker: Send + Sync {
    /// Runs `check` until it passes or its timeout passes.
    fn check<'a>(&'a self, check: &'a HealthCheck) -> crate::units::BoxFuture<'a, HealthResult>;
}

/// The real checks: HTTP GET or a command, on this host.
pub struct Probe;

impl Checker for Probe {
    fn check<'a>(&'a self, check: &'a HealthCheck) -> crate::units::BoxFuture<'a, HealthResult> {
        Box::pin(run(check))
    }
}

/// Runs `check` until it passes or its timeout passes; the result carries
/// what was seen last.
pub async fn run(check: &HealthCheck) -> HealthResult {
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let (ok, detail) = match &check.check {
            None => (
                true,
                "no health check configured: the unit being active is enough".to_string(),
            ),
            Some(Check::HttpUrl(url)) => http(url).await,
            Some(Check::Command(cmd)) => command(cmd).await,
        };
        let out_of_time = started.elapsed() + RETRY >= timeout;
        if ok || out_of_time {
            let detail = if ok {
                detail
            } else {
                format!(
                    "still unhealthy after {attempts} attempts in {:.1}s: {detail}",
                    started.elapsed().as_secs_f64()
                )
            };
            return HealthResult {
                ok,
                detail,
                checked_at_ms: fleet_proto::now_ms(),
            };
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn http(url: &str) -> (bool, String) {
    match tokio::time::timeout(ATTEMPT, get(url)).await {
        Ok(Ok((status, body))) => {
            let ok = (200..300).contains(&status);
            (ok, format!("GET {url} → {status}: {}", tail(&body, TAIL)))
        }
        Ok(Err(e)) => (false, format!("GET {url}: {e}")),
        Err(_) => (false, format!("GET {url}: no answer within {}s", ATTEMPT.as_secs())),
    }
}

async fn get(url: &str) -> Result<(u16, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let host = uri.host().ok_or("the URL names no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(
            http::header::USER_AGENT,
            concat!("fleet-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_else(|e| format!("(body unreadable: {e})"));
    driver.abort();
    Ok((status, body))
}

async fn command(cmd: &str) -> (bool, String) {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(ATTEMPT, c.output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (
                out.status.success(),
                format!("`{cmd}` exited {}: {}", out.status, tail(&text, TAIL)),
            )
        }
        Ok(Err(e)) => (false, format!("cannot run `{cmd}`: {e}")),
        Err(_) => (false, format!("`{cmd}` did not finish within {}s", ATTEMPT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end_on_a_char_boundary() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("abcdef", 3), "…def");
        assert_eq!(tail("ééé", 3), "…é");
    }

    #[tokio::test]
    async fn a_command_check_reports_exit_status_and_output() {
        let check = HealthCheck {
            check: Some(Check::Command("echo broken; exit 3".into())),
            timeout_ms: 100,
        };
        let r = run(&check).await;
        assert!(!r.ok);
        assert!(r.detail.contains("broken") && r.detail.contains('3'), "{}", r.detail);
        let check = HealthCheck {
            check: Some(Check::Command("true".into())),
            timeout_ms: 100,
        };
        assert!(run(&check).await.ok);
    }

    #[tokio::test]
    async fn an_http_check_needs_a_2xx() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = if status.starts_with('2') { "ok" } else { "db down" };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.expect("write");
            }
        });
        let url = format!("http://127.0.0.1:{port}/health");
        let (ok, detail) = http(&url).await;
        assert!(!ok && detail.contains("503") && detail.contains("db down"), "{detail}");
        let (ok, detail) = http(&url).await;
        assert!(ok, "{detail}");
    }
}
