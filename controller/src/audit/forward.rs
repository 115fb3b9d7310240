//! Forwarding each audit record off the store as one JSON line, so it can
//! be shipped off the host: appended to a file (`[audit] forward_file`,
//! opened for each record, so a log rotation is followed at once), and/or
//! sent to the local syslog (`[audit] forward_syslog`, RFC 3164 datagrams
//! on `/dev/log`, facility authpriv). A sink that fails is logged and the
//! call goes on: the store holds the record either way.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Record;

/// Where records go besides the store.
#[derive(Default)]
pub struct Forward {
    file: Option<(PathBuf, Mutex<()>)>,
    syslog: Option<(PathBuf, UnixDatagram)>,
}

/// A sink that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {what} {path} to forward the audit log: {source}; fix the path or the permissions, or remove the key from [audit] in controller.toml")]
pub struct ForwardError {
    what: &'static str,
    path: String,
    source: std::io::Error,
}

/// The forward file, opened for appending (created 0640 if missing).
fn append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// syslog priority: facility authpriv (10) × 8 + severity info (6).
const PRIORITY: u8 = 86;

impl Forward {
    /// Opens the sinks (the file for appending, created 0640 if missing).
    pub fn open(file: Option<&Path>, syslog: Option<&Path>) -> Result<Forward, ForwardError> {
        let file = match file {
            None => None,
            Some(path) => {
                // Opened once here to fail at start, not at the first record.
                append(path).map_err(|source| ForwardError {
                    what: "the file",
                    path: path.display().to_string(),
                    source,
                })?;
                Some((path.to_path_buf(), Mutex::new(())))
            }
        };
        let syslog = match syslog {
            None => None,
            Some(path) => {
                let sock = UnixDatagram::unbound().map_err(|source| ForwardError {
                    what: "a socket for syslog",
                    path: path.display().to_string(),
                    source,
                })?;
                Some((path.to_path_buf(), sock))
            }
        };
        Ok(Forward { file, syslog })
    }

    /// Sends one record to every sink.
    pub fn send(&self, r: &Record) {
        if self.file.is_none() && self.syslog.is_none() {
            return;
        }
        let line = match serde_json::to_string(r) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit record to forward");
                return;
            }
        };
        if let Some((path, one)) = &self.file {
            // One writer at a time, so lines never interleave.
            let _one = one.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = append(path).and_then(|mut f| writeln!(f, "{line}")) {
                tracing::error!(error = %e, path = %path.display(), "cannot append an audit record to the forward file");
            }
        }
        if let Some((path, sock)) = &self.syslog {
            let msg = format!("<{PRIORITY}>fleet-controller[{}]: {line}", std::process::id());
            if let Err(e) = sock.send_to(msg.as_bytes(), path) {
                tracing::error!(error = %e, socket = %path.display(), "cannot send an audit record to syslog");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_is_one_json_line_in_the_file_and_one_syslog_datagram() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("audit.jsonl");
        let sock_path = dir.path().join("log.sock");
        let listener = UnixDatagram::bind(&sock_path).expect("bind");
        let fwd = Forward::open(Some(&file), Some(&sock_path)).expect("open");
        let r = Record {
            at_ms: 5,
            who: "ci".into(),
            what: "AppService/Deploy".into(),
            outcome: "ok".into(),
            app: "web".into(),
            ..Default::default()
        };
        fwd.send(&r);
        // Rotated away (logrotate's rename): the next record starts a new file.
        std::fs::rename(&file, dir.path().join("audit.jsonl.1")).expect("rotate");
        fwd.send(&r);
        fwd.send(&r);
        let text = std::fs::read_to_string(&file).expect("file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let back: Record = serde_json::from_str(lines[0]).expect("a record per line");
        assert_eq!(back, r);
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).expect("datagram");
        let msg = std::str::from_utf8(&buf[..n]).expect("utf-8");
        assert!(msg.starts_with("<86>fleet-controller["), "{msg}");
        assert!(msg.contains("\"who\":\"ci\""), "{msg}");
        let e = Forward::open(Some(&dir.path().join("no/such/dir/a.jsonl")), None)
            .err()
            .expect("missing dir");
        assert!(
            e.to_string().contains("no/such/dir") && e.to_string().contains("[audit]"),
            "{e}"
        );
    }
}
