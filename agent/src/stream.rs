//! The session: one mTLS stream to the controller. Hello first, then wait
//! for welcome; from then on heartbeats on a timer, answers to tasks, and
//! certificate renewal at half-life, until the stream breaks or the agent
//! is told to stop.

use std::time::{Duration, Instant};

use fleet_proto::agent_message::Body as Out;
use fleet_proto::agent_service_client::AgentServiceClient;
use fleet_proto::controller_message::Body as In;
use fleet_proto::transport;
use fleet_proto::{AgentMessage, ControllerMessage, Heartbeat, Hello, Welcome};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};

use crate::config::Config;
use crate::facts::Sampler;
use crate::identity::{Identity, IdentityError, StateDir};
use crate::inventory::Taken;
use crate::renew::Renewal;

/// Messages the agent may have queued for the controller. Small: a
/// controller that stops reading makes heartbeats drop, not memory grow.
const OUTBOX: usize = 64;
/// How long connecting, sending hello and receiving welcome may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat interval when the controller's welcome names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// The shortest heartbeat interval the agent accepts, so a bad value from
/// the controller cannot make it spin.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);
/// How long to wait, when stopping or after a failed send, for the
/// controller to end the stream and say why.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a session ended, other than by being told to stop.
#[derive(Debug)]
pub enum SessionError {
    /// The controller refuses this host; only an operator can change that.
    Refused(String),
    /// The connection failed or the stream broke; worth reconnecting.
    Lost {
        /// What happened, in operator terms.
        reason: String,
        /// Whether the controller had accepted the stream (welcome).
        welcomed: bool,
    },
    /// The identity on disk cannot be used to connect.
    Identity(IdentityError),
}

/// A stream the controller has welcomed.
struct Opened {
    /// Our side of the stream; dropping it half-closes the stream.
    tx: mpsc::Sender<AgentMessage>,
    /// The controller's side.
    inbound: Streaming<ControllerMessage>,
    /// The controller's answer to hello.
    welcome: Welcome,
}

/// One connection's worth of state; lives as long as the stream.
pub struct Session<'a> {
    /// The controller this session dials (one of the configured ones).
    pub addr: &'a str,
    /// The agent configuration.
    pub config: &'a Config,
    /// Where a renewed identity is written.
    pub state: &'a StateDir,
    /// The identity to connect with; replaced in place on renewal.
    pub identity: &'a mut Identity,
    /// Facts and metrics.
    pub sampler: &'a mut Sampler,
    /// Stops the session.
    pub cancel: &'a CancellationToken,
    /// The deploy worker: tasks go in, reports come out.
    pub worker: &'a mut crate::deploy::WorkerHandle,
}

impl Session<'_> {
    /// Runs the stream until it breaks (`Err`) or the agent stops (`Ok`).
    pub async fn run(self) -> Result<(), SessionError> {
        let cancel = self.cancel.clone();
        let opened = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = tokio::time::timeout(OPEN_TIMEOUT, self.open()) => match r {
                Ok(r) => r?,
                Err(_) => return Err(SessionError::Lost {
                    reason: format!("the controller at {} did not welcome this host within {OPEN_TIMEOUT:?}", self.addr),
                    welcomed: false,
                }),
            },
        };
        self.serve(opened).await
    }

    /// Connects with a TLS configuration built from the identity as it is
    /// now (so a renewed certificate is used), sends hello, waits for welcome.
    async fn open(&self) -> Result<Opened, SessionError> {
        let addr = self.addr;
        let trust = self.identity.trust().map_err(SessionError::Identity)?;
        let client_id = self.identity.client_identity().map_err(SessionError::Identity)?;
        let tls = transport::client_config(trust, Some(client_id)).map_err(|e| {
            SessionError::Identity(IdentityError::Corrupt {
                path: "identity.pem".into(),
                detail: e.to_string(),
            })
        })?;
        let channel = transport::connect(addr, tls).await.map_err(|e| match e {
            transport::TransportError::Connect { message, cause } if transport::is_certificate_refusal(&cause) => {
                SessionError::Refused(message)
            }
            other => SessionError::Lost {
                reason: other.to_string(),
                welcomed: false,
            },
        })?;

        let (tx, rx) = mpsc::channel(OUTBOX);
        let hello = Hello {
            host_id: self.identity.host.host_id.clone(),
            facts: Some(self.sampler.facts()),
            labels: self.config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            inventory: Some(self.worker.state.inventory().await),
        };
        // Invariant: the receiver is alive and the queue empty, so this
        // cannot fail; hello is queued before the stream opens and so is first.
        let _ = tx.try_send(AgentMessage {
            body: Some(Out::Hello(hello)),
        });

        // Downloads share this connection; a new session publishes its own.
        self.worker.channel.send_replace(Some(channel.clone()));
        let mut client = AgentServiceClient::new(channel);
        let mut inbound = client
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(|s| classify(&s, addr, false))?
            .into_inner();
        let welcome = match inbound.message().await.map_err(|s| classify(&s, addr, false))? {
            Some(ControllerMessage {
                body: Some(In::Welcome(w)),
            }) => w,
            Some(other) => {
                return Err(SessionError::Lost {
                    reason: format!("the controller at {addr} answered hello with {other:?} instead of welcome"),
                    welcomed: false,
                })
            }
            None => {
                return Err(SessionError::Lost {
                    reason: format!("the controller at {addr} ended the stream without a welcome"),
                    welcomed: false,
                })
            }
        };
        Ok(Opened { tx, inbound, welcome })
    }

    async fn serve(mut self, opened: Opened) -> Result<(), SessionError> {
        let Opened {
            tx,
            mut inbound,
            welcome,
        } = opened;
        let addr = self.addr;
        let interval = match welcome.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms).max(MIN_HEARTBEAT),
        };
        tracing::info!(controller = %addr, heartbeat_interval = ?interval, labels = ?welcome.labels, "stream open");
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut renewal = Renewal::default();
        let mut watchdog = crate::watchdog::ticker();

        loop {
            tokio::select! {
                _ = watchdog.tick() => crate::watchdog::alive(),
                _ = self.cancel.cancelled() => {
                    // Half-close: the controller sees our side end cleanly.
                    drop(tx);
                    let _ = tokio::time::timeout(CLOSE_GRACE, async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    return Ok(());
                }
                _ = ticks.tick() => {
                    let heartbeat = Heartbeat { sampled_at_ms: fleet_proto::now_ms(), metrics: Some(self.sampler.sample()) };
                    match tx.try_send(AgentMessage { body: Some(Out::Heartbeat(heartbeat)) }) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            tracing::warn!(controller = %addr, "the controller is not reading the stream; heartbeat dropped");
                        }
                        Err(TrySendError::Closed(_)) => return Err(ended(&mut inbound, addr).await),
                    }
                    let hostname = self.sampler.hostname();
                    match renewal.request_if_due(self.identity, &hostname, fleet_proto::now_ms(), Instant::now()) {
                        Ok(None) => {}
                        Ok(Some(request)) => {
                            tracing::info!(
                                not_after = %crate::utc(self.identity.host.not_after_ms),
                                "certificate past half-life; asking for a new one"
                            );
                            if tx.send(AgentMessage { body: Some(Out::Renew(request)) }).await.is_err() {
                                return Err(ended(&mut inbound, addr).await);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot ask for a new certificate; trying again at the next heartbeat"),
                    }
                }
                Some(report) = self.worker.outbox.recv() => {
                    if tx.send(report).await.is_err() {
                        return Err(ended(&mut inbound, addr).await);
                    }
                }
                message = inbound.message() => {
                    let body = match message {
                        Ok(Some(ControllerMessage { body: Some(body) })) => body,
                        Ok(Some(ControllerMessage { body: None })) => continue,
                        Ok(None) => return Err(SessionError::Lost {
                            reason: format!("the controller at {addr} ended the stream"),
                            welcomed: true,
                        }),
                        Err(status) => return Err(classify(&status, addr, true)),
                    };
                    match body {
                        In::Welcome(_) => tracing::debug!("ignoring a second welcome"),
                        In::Task(task) => {
                            let answer = match self.worker.state.accept(&task.task_id) {
                                Taken::New => {
                                    tracing::info!(task_id = %task.task_id, rollout_id = %task.rollout_id, "task received");
                                    match self.worker.tasks.try_send(task) {
                                        Ok(()) => None,
                                        Err(e) => {
                                            let task = e.into_inner();
                                            self.worker.state.forget(&task.task_id);
                                            Some(busy(&task))
                                        }
                                    }
                                }
                                Taken::Running => {
                                    tracing::info!(task_id = %task.task_id, "task sent again while it runs (a controller took over); it runs once, its reports follow");
                                    None
                                }
                                Taken::Ended(end) => {
                                    tracing::info!(task_id = %task.task_id, "task sent again after it ended (a controller took over); it ran once, its end is reported again");
                                    Some(end)
                                }
                            };
                            if let Some(p) = answer {
                                if tx.send(AgentMessage { body: Some(Out::TaskProgress(p)) }).await.is_err() {
                                    return Err(ended(&mut inbound, addr).await);
                                }
                            }
                        }
                        In::Renewed(answer) => self.take_renewal(&mut renewal, answer),
                        In::RenewNow(now) => {
                            if renewal.renew_now(self.identity, now.issued_before_ms) {
                                tracing::info!("the controller's CA is being rotated: renewing onto the new one");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Stores a renewed identity; the current stream stays as it is.
    fn take_renewal(&mut self, renewal: &mut Renewal, answer: fleet_proto::RenewResponse) {
        let renewed = match renewal.complete(self.identity, answer, fleet_proto::now_ms()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "renewed certificate not taken");
                return;
            }
        };
        match self.state.store(&renewed) {
            Ok(()) => {
                tracing::info!(
                    host_id = %renewed.host.host_id,
                    not_after = %crate::utc(renewed.host.not_after_ms),
                    "certificate renewed; the next connection uses it"
                );
                *self.identity = renewed;
            }
            // The old identity stays valid; renew_at has passed, so the
            // next heartbeat asks again.
            Err(e) => tracing::error!(error = %e, "cannot store the renewed certificate"),
        }
    }
}

/// The answer to a task when the worker's queue is full.
fn busy(task: &fleet_proto::Task) -> fleet_proto::TaskProgress {
    fleet_proto::TaskProgress {
        task_id: task.task_id.clone(),
        phase: "done".into(),
        state: fleet_proto::TaskState::Failed.into(),
        detail: "this agent has too many tasks queued; send it again when the running ones finish".into(),
        cause: fleet_proto::FailureCause::Agent.into(),
        ..Default::default()
    }
}

/// Why the stream ended, once our side can no longer send on it.
async fn ended(inbound: &mut Streaming<ControllerMessage>, addr: &str) -> SessionError {
    let lost = SessionError::Lost {
        reason: format!("the stream to the controller at {addr} closed"),
        welcomed: true,
    };
    loop {
        match tokio::time::timeout(CLOSE_GRACE, inbound.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(status)) => return classify(&status, addr, true),
            Ok(Ok(None)) | Err(_) => return lost,
        }
    }
}

/// Sorts a failed stream into "refused for good" and "try again".
fn classify(status: &Status, addr: &str, welcomed: bool) -> SessionError {
    if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) {
        let message = match status.message() {
            "" => crate::describe(status, addr),
            m => m.to_string(),
        };
        return SessionError::Refused(message);
    }
    // The controller refusing our certificate in the handshake.
    if transport::is_certificate_refusal(&transport::cause_of(status)) {
        return SessionError::Refused(transport::explain(status, addr));
    }
    SessionError::Lost {
        reason: crate::describe(status, addr),
        welcomed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_is_a_refusal_and_outages_are_not() {
        let removed = Status::permission_denied("host h-1 was removed by alice");
        assert!(
            matches!(classify(&removed, "c:1", true), SessionError::Refused(m) if m == "host h-1 was removed by alice")
        );
        assert!(matches!(
            classify(&Status::unauthenticated(""), "c:1", true),
            SessionError::Refused(_)
        ));
        for s in [
            Status::unavailable("restarting"),
            Status::internal("boom"),
            Status::cancelled("reset"),
        ] {
            assert!(matches!(
                classify(&s, "c:1", true),
                SessionError::Lost { welcomed: true, .. }
            ));
        }
    }

    #[test]
    fn certificate_alerts_are_refusals() {
        // h2 leaves only rustls' wording of the alert.
        let status = Status::unknown("h2 protocol error: received fatal alert: BadCertificate");
        assert!(matches!(classify(&status, "c:1", false), SessionError::Refused(_)));
        let status = Status::unknown("h2 protocol error: received fatal alert: InternalError");
        assert!(matches!(classify(&status, "c:1", false), SessionError::Lost { .. }));
    }
}
