//! Rendering for people (aligned tables, relative times, byte sizes) and for
//! scripts (JSON). Commands build a [`Report`]; `run` writes it, so nothing
//! here touches stdout and all of it is testable.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

/// `--output`: how results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and `key: value` blocks for people.
    Table,
    /// JSON on stdout for scripts; field names are stable.
    Json,
}

/// What a command prints: results on stdout, notes for people on stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// The result; what a script captures.
    pub stdout: String,
    /// Details for the person at the terminal.
    pub stderr: String,
}

impl Report {
    /// A report with only stdout, a newline added when missing.
    pub fn out(text: impl Into<String>) -> Report {
        let mut stdout = text.into();
        if !stdout.is_empty() && !stdout.ends_with('\n') {
            stdout.push('\n');
        }
        Report {
            stdout,
            stderr: String::new(),
        }
    }

    /// Pretty JSON of `value` on stdout, with [`with_times`].
    pub fn json(value: &serde_json::Value) -> Report {
        let mut value = value.clone();
        with_times(&mut value);
        // Serializing a `Value` cannot fail: its map keys are strings.
        Report::out(serde_json::to_string_pretty(&value).unwrap_or_default())
    }
}

/// Whether a JSON key holds a point in time in ms (not a duration):
/// `at_ms`, `*_at_ms`, `last_seen_ms`, `*_not_after_ms`.
fn is_time_key(key: &str) -> bool {
    key == "at_ms" || key.ends_with("_at_ms") || key == "last_seen_ms" || key.ends_with("not_after_ms")
}

/// Beside every point in time in ms, the same time in RFC 3339 (UTC, ms),
/// under the key without `_ms` (`created_at_ms` → `created_at`), for
/// people and for tools that read dates; 0 (never, unset) gets none.
/// Every depth of objects and arrays; a key already there is kept.
pub fn with_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let mut add = Vec::new();
            for (k, val) in map.iter_mut() {
                match val.as_i64() {
                    Some(ms) if ms > 0 && is_time_key(k) => {
                        let name = k.trim_end_matches("_ms").to_string();
                        add.push((name, serde_json::Value::String(rfc3339_ms(ms))));
                    }
                    _ => with_times(val),
                }
            }
            for (k, val) in add {
                map.entry(k).or_insert(val);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(with_times),
        _ => {}
    }
}

/// `2023-11-14T22:13:20.123Z`.
pub fn rfc3339_ms(at_ms: i64) -> String {
    match u64::try_from(at_ms) {
        Ok(ms) => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        Err(_) => at_ms.to_string(),
    }
}

/// Widest table cell, in characters; a longer one is cut and ends in "…".
pub const MAX_CELL: usize = 80;
/// Longest value in a `key: value` block, in characters.
pub const MAX_VALUE: usize = 4096;

/// `s` made safe to print on a terminal: control characters (C0, DEL, C1),
/// Unicode line and paragraph separators, bidi controls and zero-width
/// characters are shown escaped (`\n`, `\t`, `\x1b`, `\u{202e}`), and a
/// backslash is doubled so an escape can always be told from the text
/// `\n`. Strings from hosts and requests (hostnames, labels, details) go
/// through it before they reach a table, so they cannot forge rows, move the
/// cursor or recolour the screen. `-o json` prints them whole instead.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}' => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `s` cut to at most `max` characters, the last one "…" when it was cut.
pub fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A table cell: escaped, then cut to [`MAX_CELL`].
pub fn cell(s: &str) -> String {
    fit(&escape(s), MAX_CELL)
}

/// A table with a header row, columns padded to the widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    /// Appends a row; it should have one cell per column. Every cell is
    /// escaped and cut here (see [`cell`]), whatever its origin.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    /// Renders the table; the last column is not padded, so no line ends in spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < row.len() {
                    let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                    let _ = write!(line, "{cell}{:pad$}  ", "");
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned.
#[derive(Debug, Default, Clone)]
pub struct Block {
    lines: Vec<(String, String)>,
}

impl Block {
    /// Adds a line; key and value are escaped and cut here (see [`escape`]).
    pub fn line(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.lines
            .push((cell(&key.into()), fit(&escape(&value.into()), MAX_VALUE)));
    }

    /// Renders the block.
    pub fn render(&self) -> String {
        let width = self.lines.iter().map(|(k, _)| k.chars().count() + 1).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.lines {
            let key = format!("{key}:");
            let _ = writeln!(out, "{key:width$} {value}");
        }
        out
    }
}

/// Time from `now_ms` to `at_ms` in words: "3s ago", "in 59m", "2d ago".
/// Units are truncated, so a token made a moment ago with a 1 h TTL reads "in 59m".
pub fn relative(at_ms: i64, now_ms: i64) -> String {
    let delta = at_ms.saturating_sub(now_ms);
    let secs = delta.unsigned_abs() / 1000;
    if secs == 0 {
        return "now".into();
    }
    let amount = match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 60 * 60 => format!("{}m", s / 60),
        s if s < 48 * 60 * 60 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if delta > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// `relative`, or `never` for a zero timestamp (the wire's "not set").
pub fn relative_or(at_ms: i64, now_ms: i64, unset: &str) -> String {
    if at_ms == 0 {
        unset.into()
    } else {
        relative(at_ms, now_ms)
    }
}

/// A timestamp as RFC 3339 UTC, to the second.
pub fn timestamp(at_ms: i64) -> String {
    let Ok(ms) = u64::try_from(at_ms) else {
        return at_ms.to_string();
    };
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `timestamp (relative)`, or `unset` for zero.
pub fn when(at_ms: i64, now_ms: i64, unset: &str) -> String {
    if at_ms == 0 {
        unset.into()
    } else {
        format!("{} ({})", timestamp(at_ms), relative(at_ms, now_ms))
    }
}

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// The binary unit that fits `bytes`, as (index into UNITS, divisor).
fn unit_for(bytes: u64) -> (usize, f64) {
    let mut unit = 0;
    let mut divisor = 1u64;
    while unit + 1 < UNITS.len() && bytes >= divisor * 1024 {
        unit += 1;
        divisor *= 1024;
    }
    (unit, divisor as f64)
}

fn scaled(bytes: u64, unit: usize, divisor: f64) -> String {
    if unit == 0 {
        bytes.to_string()
    } else {
        format!("{:.1}", bytes as f64 / divisor)
    }
}

/// A byte count in binary units: "512 B", "1.5 KiB", "3.8 GiB".
pub fn bytes(n: u64) -> String {
    let (unit, divisor) = unit_for(n);
    format!("{} {}", scaled(n, unit, divisor), UNITS[unit])
}

/// A used/total pair in the total's unit: "1.2/3.8 GiB".
pub fn bytes_of(used: u64, total: u64) -> String {
    let (unit, divisor) = unit_for(total.max(used));
    format!(
        "{}/{} {}",
        scaled(used, unit, divisor),
        scaled(total, unit, divisor),
        UNITS[unit]
    )
}

/// Labels sorted by key, as a map that serializes in order.
pub fn sorted(labels: &HashMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Labels as `k=v,k2=v2`, sorted by key; `-` when there are none.
pub fn labels(labels: &HashMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    sorted(labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = 1_700_000_000_000;
        assert_eq!(relative(now - 3_000, now), "3s ago");
        assert_eq!(relative(now - 3 * 60_000 - 10, now), "3m ago");
        assert_eq!(relative(now + 3_600_000 - 2_000, now), "in 59m");
        assert_eq!(relative(now + 3_600_000, now), "in 1h");
        assert_eq!(relative(now - 47 * 3_600_000, now), "47h ago");
        assert_eq!(relative(now + 7 * 86_400_000, now), "in 7d");
        assert_eq!(relative(now + 400, now), "now");
        assert_eq!(relative_or(0, now, "never"), "never");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(bytes(3_800_000_000), "3.5 GiB");
        let gib = 1024 * 1024 * 1024;
        assert_eq!(bytes_of(gib * 12 / 10, gib * 38 / 10), "1.2/3.8 GiB");
        assert_eq!(bytes_of(512 * 1024 * 1024, 16 * gib), "0.5/16.0 GiB");
        assert_eq!(bytes_of(0, 0), "0/0 B");
    }

    #[test]
    fn json_times_get_an_rfc3339_twin_and_durations_do_not() {
        let mut v = serde_json::json!({
            "created_at_ms": 1_700_000_000_123i64,
            "expires_at_ms": 0,
            "duration_ms": 5000,
            "hosts": [{"last_seen_ms": 1_700_000_000_000i64, "cert_not_after_ms": 1_700_000_000_000i64}],
            "at_ms": 1_700_000_000_000i64,
            "at": "kept",
        });
        with_times(&mut v);
        assert_eq!(v["created_at"], "2023-11-14T22:13:20.123Z");
        assert!(v.get("expires_at").is_none(), "0 means never: no time");
        assert!(v.get("duration").is_none(), "a duration is no time");
        assert_eq!(v["hosts"][0]["last_seen"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["hosts"][0]["cert_not_after"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["at"], "kept");
        assert_eq!(v["created_at_ms"], 1_700_000_000_123i64, "the ms stay");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn table_aligns_without_trailing_spaces() {
        let mut t = Table::new(vec!["ID", "USES", "NOTE"]);
        t.row(vec!["a".into(), "2/∞".into(), String::new()]);
        t.row(vec!["bbbb".into(), "10/20".into(), "x".into()]);
        assert_eq!(t.render(), "ID    USES   NOTE\na     2/∞\nbbbb  10/20  x\n");
    }

    #[test]
    fn escape_shows_control_and_invisible_characters() {
        assert_eq!(escape("web-1"), "web-1");
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\r\t"), "\\r\\t");
        assert_eq!(escape("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(escape("\u{7f}\u{9b}"), "\\x7f\\x9b");
        assert_eq!(escape("\0"), "\\x00");
        assert_eq!(escape("evil\u{202e}txt"), "evil\\u{202e}txt");
        assert_eq!(escape("zero\u{200b}width\u{feff}"), "zero\\u{200b}width\\u{feff}");
        assert_eq!(escape("line\u{2028}sep"), "line\\u{2028}sep");
        assert_eq!(
            escape("a\\nb"),
            "a\\\\nb",
            "a literal backslash-n stays distinguishable"
        );
        assert_eq!(escape("größe 日本"), "größe 日本", "printable text is untouched");
    }

    #[test]
    fn fit_cuts_on_characters_with_an_ellipsis() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcd", 3), "ab…");
        assert_eq!(fit("日本語です", 4), "日本語…");
        assert_eq!(fit("", 0), "");
        assert_eq!(cell(&"x".repeat(1000)).chars().count(), MAX_CELL);
    }

    #[test]
    fn hostile_cells_cannot_forge_rows_nor_panic() {
        let mut t = Table::new(vec!["ID", "HOSTNAME", "LABELS"]);
        t.row(vec![
            "h1".into(),
            "web-1\nh2  fake-host  role=admin".into(),
            "x".repeat(70_000),
        ]);
        t.row(vec!["h3".into(), "\x1b[2J\x1b[Hcleared".into(), "y".repeat(70_000)]);
        let out = t.render();
        assert_eq!(out.lines().count(), 3, "one line per row:\n{out}");
        assert!(!out.contains('\x1b'), "{out}");
        assert!(out.contains("web-1\\nh2"), "{out}");
        assert!(out.lines().all(|l| l.chars().count() < 3 * MAX_CELL), "{out}");

        let mut b = Block::default();
        b.line("hostname", "a\nlabels: forged");
        b.line("x".repeat(70_000), "z".repeat(70_000));
        let out = b.render();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("a\\nlabels: forged"), "{out}");
    }

    #[test]
    fn block_aligns_values() {
        let mut b = Block::default();
        b.line("id", "x");
        b.line("hostname", "web-1");
        assert_eq!(b.render(), "id:       x\nhostname: web-1\n");
    }

    #[test]
    fn labels_sorted() {
        let l: HashMap<String, String> = [("role", "api"), ("env", "prod")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels(&l), "env=prod,role=api");
        assert_eq!(labels(&HashMap::new()), "-");
    }
}
