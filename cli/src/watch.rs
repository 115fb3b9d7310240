//! Following a rollout live from `RolloutService/WatchRollout` (a server
//! stream, never polling): progress bars (indicatif) per batch and overall
//! on a terminal, one plain line per event otherwise, or nothing for --wait.
//! Results go where the command's results go: stdout for tables; with
//! `--output json` stdout is kept for the final record and progress goes to
//! stderr.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use fleet_proto::{Event, EventKind, GetRolloutRequest, HostState, Rollout, RolloutBatch};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::Code;

use crate::client::Client;
use crate::error::Error;
use crate::output::Format;
use crate::rollouts::{has_ended, Counts};

/// How many times in a row a lost stream is opened again before giving up.
const REOPEN_ATTEMPTS: u32 = 10;

/// Follows rollout `id` until it ends and returns its final record. With
/// `show` progress is drawn; without, it only waits (`--wait`).
pub async fn follow(client: &Client, id: &str, show: bool, format: Format) -> Result<Rollout, Error> {
    let to_stdout = format == Format::Table;
    let mut sink = if !show {
        Sink::Quiet
    } else if (to_stdout && std::io::stdout().is_terminal()) || (!to_stdout && std::io::stderr().is_terminal()) {
        Sink::Bars(Bars::new(to_stdout))
    } else {
        Sink::Lines { to_stdout }
    };
    let mut last: Option<Rollout> = None;
    let mut failures = 0u32;
    // After a lost stream: a new connection (another controller of the
    // fleet when this one died).
    let mut fresh: Option<Client> = None;
    loop {
        let client = fresh.as_ref().unwrap_or(client);
        match watch_once(client, id, &mut sink, &mut last).await {
            Ok(Some(ended)) => {
                sink.finish();
                return Ok(ended);
            }
            // The stream ended before the rollout did (a controller restart
            // or a proxy cut it): open it again; the snapshot catches up.
            Ok(None) => {}
            Err(status) if reopenable(&status) => {}
            Err(status) => {
                sink.finish();
                return Err(client.fail(status));
            }
        }
        failures += 1;
        if failures > REOPEN_ATTEMPTS {
            sink.finish();
            return Err(Error::Unreachable(format!(
                "lost the controller at {} while following rollout {id}; the rollout goes on without fleetctl: \
                 see 'fleetctl rollout status {id} --watch'",
                client.addr()
            )));
        }
        sink.note(&format!(
            "the stream of rollout {id} was cut; opening it again (attempt {failures} of {REOPEN_ATTEMPTS})"
        ));
        tokio::time::sleep(Duration::from_secs(u64::from(failures.min(5)))).await;
        if let Ok(next) = client.reconnect().await {
            fresh = Some(next);
        }
    }
}

fn reopenable(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// One WatchRollout stream: Some(final record) when the rollout ended,
/// None when the stream ended first.
async fn watch_once(
    client: &Client,
    id: &str,
    sink: &mut Sink,
    last: &mut Option<Rollout>,
) -> Result<Option<Rollout>, tonic::Status> {
    let mut stream = client
        .rollouts()
        .watch_rollout(GetRolloutRequest { id: id.to_string() })
        .await?
        .into_inner();
    let mut places = Places::default();
    while let Some(mut event) = stream.message().await? {
        // The record comes with some events only; a host's events carry
        // that host's entry, applied to the last record.
        match (event.rollout.take(), &event.host) {
            (Some(r), _) => {
                places.index(&r);
                *last = Some(r);
            }
            (None, Some(h)) => {
                if let Some(r) = last.as_mut() {
                    places.apply(r, h);
                }
            }
            (None, None) => {}
        }
        let empty = Rollout::default();
        sink.event(&event, last.as_ref().unwrap_or(&empty));
        if let Some(r) = last.as_ref() {
            if event.kind() == EventKind::RolloutEnded || (event.kind() == EventKind::Snapshot && has_ended(r)) {
                return Ok(Some(r.clone()));
            }
        }
    }
    Ok(last.clone().filter(has_ended))
}

/// Where each host's latest entry is in the last record (its last in batch
/// order), so a host's event is applied without a walk through every host.
#[derive(Default)]
struct Places(std::collections::HashMap<String, (usize, usize)>);

impl Places {
    fn index(&mut self, r: &Rollout) {
        self.0.clear();
        for (b, batch) in r.batches.iter().enumerate() {
            for (i, h) in batch.hosts.iter().enumerate() {
                self.0.insert(h.host_id.clone(), (b, i));
            }
        }
    }

    fn apply(&mut self, r: &mut Rollout, h: &fleet_proto::RolloutHost) {
        let at = self.0.get(&h.host_id).copied();
        if let Some(slot) = at.and_then(|(b, i)| r.batches.get_mut(b)?.hosts.get_mut(i)) {
            *slot = h.clone();
        }
    }
}

/// Where progress goes.
enum Sink {
    /// `--wait` alone: nothing.
    Quiet,
    /// A line per event (stdout not a terminal).
    Lines { to_stdout: bool },
    /// Progress bars on a terminal.
    Bars(Bars),
}

impl Sink {
    /// `r`: the record as of the event.
    fn event(&mut self, event: &Event, r: &Rollout) {
        match self {
            Sink::Quiet => {}
            Sink::Lines { to_stdout } => write_line(*to_stdout, &event_line_of(event, r)),
            Sink::Bars(bars) => bars.event(event, r),
        }
    }

    fn note(&mut self, text: &str) {
        match self {
            Sink::Bars(bars) => {
                let _ = bars.multi.println(text);
            }
            _ => {
                let _ = writeln!(std::io::stderr(), "fleetctl: {text}");
            }
        }
    }

    fn finish(&mut self) {
        if let Sink::Bars(bars) = self {
            bars.finish();
        }
    }
}

fn write_line(to_stdout: bool, line: &str) {
    // A closed pipe (`| head`) must not stop the wait for the outcome.
    if to_stdout {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    } else {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// `HH:MM:SS` (UTC) of a timestamp.
fn clock(at_ms: i64) -> String {
    let ts = crate::output::timestamp(at_ms);
    ts.get(11..19).map(str::to_string).unwrap_or(ts)
}

fn batch_label(r: &Rollout) -> String {
    let i = r.current_batch as usize;
    let canary = r.batches.get(i).is_some_and(|b| b.canary);
    format!(
        "batch {}/{}{}",
        i + 1,
        r.batches.len(),
        if canary { " (canary)" } else { "" }
    )
}

fn with_detail(text: String, detail: &str) -> String {
    let detail = detail.lines().next().unwrap_or_default().trim();
    if detail.is_empty() {
        text
    } else {
        format!("{text}: {detail}")
    }
}

/// One event as a line for logs and pipes: `HH:MM:SS what happened`. The
/// counts and states come from the snapshot the event carries.
pub fn event_line(e: &Event) -> String {
    let empty = Rollout::default();
    event_line_of(e, e.rollout.as_ref().unwrap_or(&empty))
}

/// [`event_line`] with the record as of the event (the last one the stream
/// sent, with the hosts' entries applied since).
fn event_line_of(e: &Event, r: &Rollout) -> String {
    let counts = Counts::of(r.batches.iter());
    let who = || {
        if e.hostname.is_empty() {
            crate::rollouts::host_label(&e.host_id, "")
        } else {
            crate::rollouts::host_label(&e.host_id, &e.hostname)
        }
    };
    let text = match e.kind() {
        EventKind::Snapshot => format!(
            "{} {} of {} to {}: {}, {}",
            r.kind().word(),
            r.id,
            r.app,
            if r.version.is_empty() { "desired" } else { &r.version },
            r.state().word().replace('_', " "),
            counts.summary()
        ),
        EventKind::RolloutStarted => format!(
            "started: {} hosts in {} batches, failure budget {}",
            counts.total(),
            r.batches.len(),
            r.failure_budget
        ),
        EventKind::BatchStarted => {
            let hosts: Vec<String> = r
                .batches
                .get(r.current_batch as usize)
                .map(|b| {
                    b.hosts
                        .iter()
                        .map(|h| crate::rollouts::host_label(&h.host_id, &h.hostname))
                        .collect()
                })
                .unwrap_or_default();
            format!("{} started: {}", batch_label(r), hosts.join(", "))
        }
        EventKind::HostPhase => format!("{} {}", who(), e.detail.trim()),
        EventKind::HostDone => {
            let host = e.host.as_ref().or_else(|| {
                r.batches
                    .iter()
                    .flat_map(|b| &b.hosts)
                    .rfind(|h| h.host_id == e.host_id)
            });
            match host {
                Some(h) if h.state() == HostState::Succeeded => format!("{} done", who()),
                Some(h) => {
                    let cause = crate::deploy::cause_name(h.cause());
                    let why = if h.detail.is_empty() {
                        e.detail.as_str()
                    } else {
                        &h.detail
                    };
                    let state = h.state().word().replace('_', " ");
                    let text = if cause.is_empty() {
                        format!("{} {state}", who())
                    } else {
                        format!("{} {state}, {cause}", who())
                    };
                    with_detail(text, why)
                }
                None => with_detail(format!("{} done", who()), &e.detail),
            }
        }
        EventKind::BatchDone => {
            let batch = r.batches.get(r.current_batch as usize);
            let state = batch.map(|b| b.state().word()).unwrap_or("done");
            let in_batch = Counts::of(batch.into_iter());
            format!("{} {state}: {}", batch_label(r), in_batch.summary())
        }
        // The detail may repeat the kind or the state ("resumed",
        // "succeeded"): only a reason is worth adding.
        kind @ (EventKind::Paused | EventKind::Resumed) => {
            with_detail(kind.word().into(), e.detail.trim_start_matches(kind.word()))
        }
        EventKind::RollingBack => with_detail("rolling back the changed hosts".into(), &e.detail),
        EventKind::RolloutEnded => {
            let why = if r.reason.is_empty() {
                e.detail.trim_start_matches(r.state().word()).trim_start_matches(':')
            } else {
                &r.reason
            };
            with_detail(
                format!("ended {}, {}", r.state().word().replace('_', " "), counts.summary()),
                why,
            )
        }
        other => {
            let mut text = other.word().to_string();
            if !e.host_id.is_empty() {
                text = format!("{text} {}", e.host_id);
            }
            with_detail(text, &e.detail)
        }
    };
    format!("{} {text}", clock(e.at_ms))
}

/// The overall bar's message: "3 done, 1 failed, 4 pending · running".
pub fn overall_message(r: &Rollout) -> String {
    format!(
        "{} · {}",
        Counts::of(r.batches.iter()).summary(),
        r.state().word().replace('_', " ")
    )
}

/// A batch bar's message: its state, counts, and each running host's phase.
pub fn batch_message(b: &RolloutBatch) -> String {
    let c = Counts::of(std::iter::once(b));
    let mut text = format!("{} · {} done, {} failed", b.state().word(), c.done, c.failed);
    if c.rolled_back > 0 {
        text.push_str(&format!(", {} rolled back", c.rolled_back));
    }
    if c.skipped > 0 {
        text.push_str(&format!(", {} skipped", c.skipped));
    }
    let running = crate::rollouts::running_phases(b);
    if !running.is_empty() {
        text.push_str(&format!(" · {running}"));
    }
    text
}

/// Bars: overall first, then one per batch.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    batches: Vec<ProgressBar>,
    /// When the bars were last redrawn from a record.
    drawn_at: Option<std::time::Instant>,
}

impl Bars {
    fn new(to_stdout: bool) -> Bars {
        let target = if to_stdout {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new(0).with_style(style()).with_prefix("overall"));
        Bars {
            multi,
            overall,
            batches: Vec::new(),
            drawn_at: None,
        }
    }

    fn event(&mut self, e: &Event, r: &Rollout) {
        // Host phases show on the bars; everything else is also worth a line.
        let of_host = matches!(e.kind(), EventKind::HostPhase | EventKind::HostDone);
        if e.kind() != EventKind::HostPhase {
            let _ = self.multi.println(event_line_of(e, r));
        }
        // Redrawing walks every host: for a host's event, ten times a second at most.
        if of_host
            && self
                .drawn_at
                .is_some_and(|at| at.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.drawn_at = Some(std::time::Instant::now());
        let c = Counts::of(r.batches.iter());
        self.overall.set_length(c.total() as u64);
        self.overall.set_position(c.finished() as u64);
        self.overall.set_message(overall_message(r));
        for (i, b) in r.batches.iter().enumerate() {
            if self.batches.len() <= i {
                let label = format!("batch {}{}", i + 1, if b.canary { " canary" } else { "" });
                let bar = self.multi.add(
                    ProgressBar::new(b.hosts.len() as u64)
                        .with_style(style())
                        .with_prefix(label),
                );
                self.batches.push(bar);
            }
            let c = Counts::of(std::iter::once(b));
            let bar = &self.batches[i];
            bar.set_length(c.total() as u64);
            bar.set_position(c.finished() as u64);
            bar.set_message(batch_message(b));
        }
    }

    fn finish(&mut self) {
        for bar in std::iter::once(&self.overall).chain(&self.batches) {
            bar.finish();
        }
    }
}

fn style() -> ProgressStyle {
    // The template is a constant that parses; fall back to the default
    // style rather than fail a rollout over a drawing detail.
    ProgressStyle::with_template("{prefix:>14} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollouts::tests::sample;

    fn event(kind: &str, host: &str, detail: &str, r: Rollout) -> Event {
        let mut e = Event {
            at_ms: 1_700_000_000_000,
            rollout_id: r.id.clone(),
            host_id: host.into(),
            detail: detail.into(),
            rollout: Some(r),
            ..Default::default()
        };
        e.set_kind(EventKind::from_str_name(&format!("EVENT_KIND_{}", kind.to_uppercase())).unwrap_or_default());
        e
    }

    #[test]
    fn a_hosts_event_without_the_record_is_told_from_its_entry_and_counted() {
        let mut r = sample();
        let mut places = Places::default();
        places.index(&r);
        let before = Counts::of(r.batches.iter()).summary();
        assert_eq!(before, "1 done, 1 failed, 2 pending");
        // web-2 (pending in the record) ends failed: only its entry comes.
        let mut entry = r.batches[1].hosts[0].clone();
        assert_eq!(entry.host_id, "web-2");
        entry.set_state(HostState::Failed);
        entry.detail = "unit failed to start".into();
        let mut e = event("host_done", "web-2", "", Rollout::default());
        e.rollout = None;
        e.host = Some(entry.clone());
        places.apply(&mut r, &entry);
        assert_eq!(event_line_of(&e, &r), "22:13:20 web-2 failed: unit failed to start");
        assert_eq!(Counts::of(r.batches.iter()).summary(), "1 done, 2 failed, 1 pending");
        // An entry of a host the record does not have changes nothing.
        let stranger = fleet_proto::RolloutHost {
            host_id: "web-9".into(),
            ..Default::default()
        };
        places.apply(&mut r, &stranger);
        assert_eq!(Counts::of(r.batches.iter()).summary(), "1 done, 2 failed, 1 pending");
    }

    #[test]
    fn events_render_as_one_line_each() {
        let r = sample();
        let line = |kind: &str, host: &str, detail: &str| event_line(&event(kind, host, detail, r.clone()));
        assert_eq!(
            line("snapshot", "", ""),
            "22:13:20 rollout r-42 of api to 2.0: running, 1 done, 1 failed, 2 pending"
        );
        assert_eq!(
            line("rollout_started", "", ""),
            "22:13:20 started: 4 hosts in 3 batches, failure budget 1"
        );
        assert_eq!(
            line("batch_started", "", ""),
            "22:13:20 batch 2/3 started: web-2, web-3"
        );
        assert_eq!(
            line("host_phase", "web-2", "health running"),
            "22:13:20 web-2 health running"
        );
        assert_eq!(line("host_done", "web-1", ""), "22:13:20 web-1 done");
        assert_eq!(
            line("host_done", "web-3", ""),
            "22:13:20 web-3 failed, health check failed: HTTP 500 from /health"
        );
        assert_eq!(
            line("batch_done", "", ""),
            "22:13:20 batch 2/3 running: 0 done, 1 failed, 1 pending"
        );
        assert_eq!(line("paused", "", "by admin"), "22:13:20 paused: by admin");
        assert_eq!(line("resumed", "", "resumed"), "22:13:20 resumed");
        assert_eq!(line("something_new", "web-4", "x"), "22:13:20 unknown web-4: x");
        let mut ended = sample();
        ended.set_state(fleet_proto::RolloutState::RolledBack);
        ended.reason = "2 hosts failed, budget 1".into();
        assert_eq!(
            event_line(&event("rollout_ended", "", "", ended)),
            "22:13:20 ended rolled back, 1 done, 1 failed, 2 pending: 2 hosts failed, budget 1"
        );
        let mut done = sample();
        done.set_state(fleet_proto::RolloutState::Succeeded);
        assert_eq!(
            event_line(&event("rollout_ended", "", "succeeded", done)),
            "22:13:20 ended succeeded, 1 done, 1 failed, 2 pending"
        );
        let first = sample().batches[0].clone();
        let mut canary = sample();
        canary.current_batch = 0;
        canary.batches[0] = first;
        assert_eq!(
            event_line(&event("batch_started", "", "", canary)),
            "22:13:20 batch 1/3 (canary) started: web-1"
        );
    }

    #[test]
    fn bar_messages_show_counts_and_phases() {
        let r = sample();
        assert_eq!(overall_message(&r), "1 done, 1 failed, 2 pending · running");
        assert_eq!(
            batch_message(&r.batches[1]),
            "running · 0 done, 1 failed · web-2 health"
        );
        assert_eq!(batch_message(&r.batches[0]), "done · 1 done, 0 failed");
    }
}
