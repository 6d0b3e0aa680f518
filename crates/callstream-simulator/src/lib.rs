//! The simulator: a call runtime that plays realistic scripted calls through the same ingest
//! API a real runtime uses (`POST /v1/calls`, `POST /v1/calls/{id}/events`).
//!
//! A [`script`] is a pure, seeded plan of timed events: partial then final user turns, agent
//! turns with TTS and latency metrics, barge-in (phone transports only), silences, quality dips,
//! and the call's end. [`Runtime`] plays scripts against a server. The simulator knows the
//! ingest API's JSON and nothing of the server's insides.

pub mod audio;
pub mod control;
pub mod script;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use script::{CallPlan, ConversationPlan, Step, conversation_script, script};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("request to {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("runtime socket: {0}")]
    Socket(String),
}

/// The part of the call resource the simulator needs.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedCall {
    pub id: String,
    pub transport: String,
}

/// A runtime connected to one callstream server with one runtime key.
#[derive(Clone)]
pub struct Runtime {
    http: reqwest::Client,
    base: String,
    key: String,
    desk: control::Desk,
    /// Whether calls send audio (over the runtime socket), and the caller's voice.
    audio: Option<audio::Source>,
}

impl Runtime {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, runtime_key: &str) -> Result<Self, SimError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|source| SimError::Http {
                url: base.to_owned(),
                source,
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: runtime_key.to_owned(),
            desk: control::Desk::default(),
            audio: None,
        })
    }

    /// Sends each call's audio in real time over the runtime socket (see [`audio`]), the caller
    /// speaking with `source`, and plays what the gateway sends into the call.
    #[must_use]
    pub fn with_audio(mut self, source: audio::Source) -> Self {
        self.audio = Some(source);
        self
    }

    /// Opens the runtime socket so this runtime obeys commands for the calls it plays.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub async fn serve_commands(&self, stop: CancellationToken) -> Result<(), SimError> {
        self.desk.connect(&self.base, &self.key, stop).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, SimError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .map_err(|source| SimError::Http {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|source| SimError::Http {
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(SimError::Status {
                url,
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Announces a call.
    ///
    /// # Errors
    /// When the server refuses it or cannot be reached.
    pub async fn create_call(&self, plan: &CallPlan) -> Result<CreatedCall, SimError> {
        let body = self.post("/v1/calls", &plan.create_body()).await?;
        serde_json::from_value(body).map_err(|e| SimError::Status {
            url: format!("{}/v1/calls", self.base),
            status: 201,
            body: format!("unexpected body: {e}"),
        })
    }

    /// Opens a conversation and plays it.
    ///
    /// # Errors
    /// The first request that fails.
    pub async fn play_conversation(
        &self,
        plan: &ConversationPlan,
        speed: f64,
        stop: &CancellationToken,
    ) -> Result<String, SimError> {
        let created = self.post("/v1/conversations", &plan.create_body()).await?;
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        for step in &plan.steps {
            tokio::select! {
                () = stop.cancelled() => return Ok(id),
                () = tokio::time::sleep(scaled(step.delay, speed)) => {}
            }
            self.post(
                &format!("/v1/conversations/{id}/events"),
                &Value::Array(step.events.clone()),
            )
            .await?;
        }
        Ok(id)
    }

    /// Sends events for a call (one request, in order).
    ///
    /// # Errors
    /// When the server refuses them or cannot be reached.
    pub async fn send(&self, call_id: &str, events: &[Value]) -> Result<Value, SimError> {
        // Over the runtime socket when it is up, so the gateway routes this call's commands
        // here; over REST otherwise.
        if let Some(answer) = self.desk.send_events(call_id, events).await {
            return answer;
        }
        self.post(
            &format!("/v1/calls/{call_id}/events"),
            &Value::Array(events.to_vec()),
        )
        .await
    }

    /// Plays one call from creation to its end. `speed` divides every delay (2.0 plays twice as
    /// fast as real time; `f64::INFINITY` sends everything at once). Stops early, ending the
    /// call, when `stop` is cancelled.
    ///
    /// # Errors
    /// The first request that fails.
    pub async fn play(
        &self,
        plan: &CallPlan,
        speed: f64,
        stop: &CancellationToken,
    ) -> Result<CreatedCall, SimError> {
        let call = self.create_call(plan).await?;
        self.play_created(&call, plan, speed, stop).await?;
        Ok(call)
    }

    /// Plays the steps of an announced call, obeying commands for it in between (while
    /// [`Runtime::serve_commands`] runs): `end_call` hangs up, `send_dtmf` plays the digits,
    /// `join_call` transfers the call.
    ///
    /// # Errors
    /// The first request that fails.
    pub async fn play_created(
        &self,
        call: &CreatedCall,
        plan: &CallPlan,
        speed: f64,
        stop: &CancellationToken,
    ) -> Result<(), SimError> {
        let mut commands = self.desk.open(&call.id);
        // The call's audio, for as long as the call is played.
        let talking = stop.child_token();
        if let (Some(source), Ok(id)) = (&self.audio, callstream_core::CallId::parse(&call.id)) {
            let playback = self.desk.open_playback(&call.id);
            let seed = plan
                .phone
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            tokio::spawn(audio::play_call(
                id,
                audio::spans(plan, speed),
                source.clone(),
                seed,
                std::sync::Arc::new(self.desk.clone()),
                playback,
                talking.clone(),
            ));
        }
        let result = self
            .play_steps(call, plan, speed, stop, &mut commands)
            .await;
        talking.cancel();
        self.desk.close(&call.id);
        result
    }

    async fn play_steps(
        &self,
        call: &CreatedCall,
        plan: &CallPlan,
        speed: f64,
        stop: &CancellationToken,
        commands: &mut tokio::sync::mpsc::Receiver<control::CallCommand>,
    ) -> Result<(), SimError> {
        for step in &plan.steps {
            let deadline = tokio::time::Instant::now() + scaled(step.delay, speed);
            loop {
                tokio::select! {
                    () = stop.cancelled() => {
                        let end = script::event("call.completed", serde_json::json!({"reason": "simulator_stopped"}));
                        self.send(&call.id, &[end]).await?;
                        return Ok(());
                    }
                    Some(command) = commands.recv() => {
                        if self.obey(&call.id, command).await? {
                            return Ok(());
                        }
                    }
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.send(&call.id, &step.events).await?;
        }
        Ok(())
    }

    /// Carries out one command; `true` when it ended the call.
    async fn obey(&self, call_id: &str, command: control::CallCommand) -> Result<bool, SimError> {
        let (event, ends) = match command.command.as_str() {
            "end_call" => (
                script::event(
                    "call.completed",
                    serde_json::json!({"reason": "ended_by_command"}),
                ),
                true,
            ),
            "send_dtmf" => (
                script::event(
                    "call.dtmf",
                    serde_json::json!({"digits": command.digits.unwrap_or_default()}),
                ),
                false,
            ),
            "join_call" => {
                let user = command.user_id.unwrap_or_default();
                (
                    script::event(
                        "call.transferred",
                        serde_json::json!({"to": user, "user_id": user}),
                    ),
                    false,
                )
            }
            _ => {
                self.desk
                    .answer(
                        &command.command_id,
                        Err(("unsupported", "this runtime cannot do that")),
                    )
                    .await;
                return Ok(false);
            }
        };
        match self.send(call_id, &[event]).await {
            Ok(_) => self.desk.answer(&command.command_id, Ok(())).await,
            Err(err) => {
                self.desk
                    .answer(
                        &command.command_id,
                        Err(("failed", "the event could not be recorded")),
                    )
                    .await;
                return Err(err);
            }
        }
        Ok(ends)
    }
}

/// `delay` played at `speed`; a speed that is not a positive number plays in real time.
pub(crate) fn scaled(delay: Duration, speed: f64) -> Duration {
    if speed > 0.0 {
        Duration::try_from_secs_f64(delay.as_secs_f64() / speed).unwrap_or(delay)
    } else {
        delay
    }
}

/// Options for [`run`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Calls to play in all; `None` plays until stopped.
    pub calls: Option<u64>,
    /// New calls started per second (clamped to 0.001..=1000).
    pub rate: f64,
    /// Playback speed (1.0 = real time).
    pub speed: f64,
    /// Seed for the scripts, so a run can be repeated.
    pub seed: u64,
    /// Also play a messaging conversation for every three calls.
    pub conversations: bool,
}

/// What [`run`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Calls and conversations played to their end.
    pub completed: u64,
    pub failed: u64,
    /// Calls cut short by the stop (each was ended as `simulator_stopped` where the gateway
    /// still answered): not failures.
    pub stopped: u64,
}

/// Starts calls at `rate` per second and plays them concurrently until `calls` have been played
/// or `stop` is cancelled.
pub async fn run(runtime: &Runtime, options: &RunOptions, stop: &CancellationToken) -> RunReport {
    let mut tasks = tokio::task::JoinSet::new();
    let mut report = RunReport::default();
    let rate = if options.rate.is_finite() {
        options.rate.clamp(0.001, 1000.0)
    } else {
        1000.0
    };
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut started = 0u64;
    loop {
        if options.calls.is_some_and(|n| started >= n) {
            break;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let seed = options.seed.wrapping_add(started);
        let (runtime, speed, task_stop) = (runtime.clone(), options.speed, stop.clone());
        if options.conversations && started % 3 == 2 {
            let plan = conversation_script(seed);
            tasks.spawn(async move {
                runtime
                    .play_conversation(&plan, speed, &task_stop)
                    .await
                    .map(|_| ())
            });
        } else {
            let plan = script(seed);
            tasks.spawn(async move { runtime.play(&plan, speed, &task_stop).await.map(|_| ()) });
        }
        started += 1;
        while let Some(done) = tasks.try_join_next() {
            tally(&mut report, done, stop.is_cancelled());
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally(&mut report, done, stop.is_cancelled());
    }
    report
}

fn tally(
    report: &mut RunReport,
    done: Result<Result<(), SimError>, tokio::task::JoinError>,
    stopping: bool,
) {
    match done {
        Ok(Ok(_)) => report.completed += 1,
        // Stopped with the gateway going away: the call's last answer may be lost, which is
        // not a failure worth a warning per call.
        Ok(Err(err)) if stopping => {
            tracing::debug!(error = %err, "simulated call cut short by the stop");
            report.stopped += 1;
        }
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "simulated call failed");
            report.failed += 1;
        }
        Err(err) => {
            tracing::warn!(error = %err, "simulated call task panicked");
            report.failed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_scale_delays_and_never_panic() {
        let d = Duration::from_millis(500);
        let cases = [
            (1.0, d),
            (10.0, Duration::from_millis(50)),
            (f64::INFINITY, Duration::ZERO),
            (0.0, d),
            (-3.0, d),
            (f64::NAN, d),
            (f64::MIN_POSITIVE, d),
        ];
        for (speed, expect) in cases {
            assert_eq!(scaled(d, speed), expect, "{speed}");
        }
    }
}
