//! One HTTP POST of a webhook delivery: HTTP/1.1 over TCP, or over TLS
//! (rustls, the system's CA certificates) for `https://`. hyper's client
//! connection; nothing is pooled (a delivery is one request).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long one delivery may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an answer's body is kept (for the error a person reads).
const BODY_KEPT: usize = 512;

/// How an endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The start of the body.
    pub body: String,
}

/// The TLS client settings of webhooks: the system's CA certificates
/// (`/etc/ssl/certs`; `SSL_CERT_FILE` names another bundle).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    for cert in found.certs {
        // A certificate the store cannot use is skipped; others still work.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!(
            errors = ?found.errors,
            "no CA certificates found for https webhooks (install the ca-certificates package, or set SSL_CERT_FILE)"
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(fleet_proto::transport::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Checks that `url` is one a webhook can use: http or https, a host, no
/// user info. Returns the parsed URL.
pub fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("'{url}' is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("'{url}' is not an http:// or https:// URL")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("'{url}' names no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "'{url}' carries a user name or password; put secrets in the path or use a json webhook's signature"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("'{url}' names no host"));
    }
    Ok(uri)
}

/// The URL without its path and query, which often carry a secret (Slack's
/// do): what lists and logs show.
pub fn redacted(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(u) => match (u.scheme_str(), u.authority()) {
            (Some(s), Some(a)) if u.path_and_query().is_some_and(|p| p.as_str() != "/") => format!("{s}://{a}/…"),
            (Some(s), Some(a)) => format!("{s}://{a}/"),
            _ => "(unreadable URL)".into(),
        },
        Err(_) => "(unreadable URL)".into(),
    }
}

/// POSTs `body` to `url` with `headers`, within [`TIMEOUT`].
pub async fn post(
    url: &Uri,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Answer, String> {
    tokio::time::timeout(TIMEOUT, post_inner(url, headers, body, tls))
        .await
        .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))?
}

async fn post_inner(
    url: &Uri,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Answer, String> {
    let authority = url.authority().ok_or("the URL names no host")?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let https = url.scheme_str() == Some("https");
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("fleet-controller/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if https {
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("'{host}' is not a name TLS can check: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}:{port} failed: {e}"))?;
        send(stream, req).await
    } else {
        send(tcp, req).await
    }
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("the request failed: {e}"))?;
        let status = resp.status().as_u16();
        // The body only for a person to read: at most BODY_KEPT bytes.
        let body = match Limited::new(resp.into_body(), 64 * 1024).collect().await {
            Ok(b) => {
                let bytes = b.to_bytes();
                String::from_utf8_lossy(&bytes[..bytes.len().min(BODY_KEPT)]).into_owned()
            }
            Err(_) => String::new(),
        };
        Ok(Answer { status, body })
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_with_a_host_and_no_credentials() {
        assert!(check_url("https://hooks.slack.com/services/T0/B0/secret").is_ok());
        assert!(check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(check_url("ftp://x/").expect_err("scheme").contains("http"));
        assert!(check_url("hooks.example.com/x").is_err());
        assert!(check_url("https://user:pw@example.com/")
            .expect_err("creds")
            .contains("password"));
    }

    #[test]
    fn lists_show_scheme_and_host_only() {
        assert_eq!(
            redacted("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(redacted("http://127.0.0.1:8080"), "http://127.0.0.1:8080/");
    }

    #[tokio::test]
    async fn a_post_reaches_a_real_listener_with_its_headers() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("\"ok\":1") {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 4\r\nconnection: close\r\n\r\nthx!")
                .await
                .expect("write");
            String::from_utf8_lossy(&got).into_owned()
        });
        let url = check_url(&format!("http://{addr}/hook?x=1")).expect("url");
        let tls = tls_config().expect("tls");
        let answer = post(&url, &[("x-fleet-event", "test".into())], br#"{"ok":1}"#.to_vec(), &tls)
            .await
            .expect("post");
        assert_eq!(
            answer,
            Answer {
                status: 202,
                body: "thx!".into()
            }
        );
        let request = server.await.expect("server").to_ascii_lowercase();
        assert!(request.starts_with("post /hook?x=1 http/1.1\r\n"), "{request}");
        assert!(request.contains("x-fleet-event: test\r\n"), "{request}");
        assert!(request.contains("content-type: application/json\r\n"), "{request}");
    }

    #[tokio::test]
    async fn nobody_listening_is_an_error_naming_the_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url = check_url(&format!("http://{addr}/")).expect("url");
        let e = post(&url, &[], Vec::new(), &tls_config().expect("tls"))
            .await
            .expect_err("refused");
        assert!(e.contains(&addr.port().to_string()), "{e}");
    }
}
