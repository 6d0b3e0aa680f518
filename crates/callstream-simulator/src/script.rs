//! Seeded call scripts: what a realistic voice-agent call sends, and when.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// A whole call: how to announce it, then its timed steps.
#[derive(Debug, Clone)]
pub struct CallPlan {
    pub phone: String,
    pub direction: &'static str,
    pub transport: &'static str,
    pub external_id: Option<String>,
    pub steps: Vec<Step>,
}

impl CallPlan {
    /// The `POST /v1/calls` body.
    pub fn create_body(&self) -> Value {
        let mut body = json!({ "phone": self.phone, "direction": self.direction, "transport": self.transport });
        if let Some(ext) = &self.external_id {
            body["external_id"] = json!(ext);
        }
        body
    }

    /// Every event of the plan, in order (for counting in tests).
    pub fn events(&self) -> impl Iterator<Item = &Value> {
        self.steps.iter().flat_map(|s| s.events.iter())
    }
}

/// Events sent together after waiting `delay` since the previous step.
#[derive(Debug, Clone)]
pub struct Step {
    pub delay: Duration,
    pub events: Vec<Value>,
}

/// One ingest event, `{event_type, payload}`.
pub fn event(event_type: &str, payload: Value) -> Value {
    json!({ "event_type": event_type, "payload": payload })
}

const DIALOGS: &[&[(&str, &str)]] = &[
    &[
        (
            "Hi, what time do you open tomorrow?",
            "We open at nine in the morning and close at eight in the evening.",
        ),
        (
            "Great, and do I need a reservation for four people?",
            "For four people a reservation is a good idea on weekends. Shall I book one for you?",
        ),
        (
            "Yes please, around seven thirty.",
            "Done. You have a table for four tomorrow at seven thirty. Anything else?",
        ),
        (
            "No, that's all, thanks.",
            "Thank you for calling, see you tomorrow!",
        ),
    ],
    &[
        (
            "I'd like to check the status of my order.",
            "Of course. Could you read me the order number?",
        ),
        (
            "It's four five one two nine.",
            "Thanks. Order four five one two nine shipped yesterday and arrives on Thursday.",
        ),
        (
            "Can I change the delivery address?",
            "The parcel is already with the carrier, so I'll send you a link to redirect it.",
        ),
        ("Perfect, thank you.", "You're welcome. Have a good day."),
    ],
    &[
        (
            "Hello, I need to move my dentist appointment.",
            "Sure. Your appointment is on Monday at ten. When would suit you better?",
        ),
        (
            "Is Wednesday afternoon possible?",
            "Wednesday at three or at four thirty are free. Which do you prefer?",
        ),
        (
            "Three o'clock works.",
            "You're booked for Wednesday at three. I've cancelled Monday.",
        ),
    ],
    &[
        (
            "My internet has been down since this morning.",
            "I'm sorry to hear that. I can see an outage in your area that we're working on.",
        ),
        (
            "Do you know when it will be fixed?",
            "The engineers expect it back by two this afternoon.",
        ),
        (
            "Can I get a credit for today?",
            "Yes, I've added a one-day credit to your next bill.",
        ),
        (
            "Thanks for sorting that out.",
            "No problem. Is there anything else I can help with?",
        ),
    ],
];

struct Clock {
    /// Seconds since the call started, for segment times.
    now: f64,
}

fn hex_id(rng: &mut StdRng, prefix: &str, bytes: usize) -> String {
    let mut out = String::from(prefix);
    for _ in 0..bytes {
        out.push_str(&format!("{:02x}", rng.random::<u8>()));
    }
    out
}

/// A realistic call of 3 to 4 exchanges, chosen and timed by `seed`.
pub fn script(seed: u64) -> CallPlan {
    plan(seed, 1)
}

/// A call that runs through `rounds` dialogs back to back (the demo's long-running call).
pub fn long_script(seed: u64, rounds: usize) -> CallPlan {
    plan(seed, rounds.max(1))
}

fn plan(seed: u64, rounds: usize) -> CallPlan {
    let mut rng = StdRng::seed_from_u64(seed);
    let transport = match rng.random_range(0..20) {
        0..=8 => "sip",
        9..=15 => "esl",
        _ => "webrtc",
    };
    let phone = format!("+1415555{:04}", rng.random_range(0..10_000));
    let external_id = (transport != "webrtc").then(|| hex_id(&mut rng, "CA", 16));
    let direction = if rng.random_bool(0.7) {
        "inbound"
    } else {
        "outbound"
    };
    let phone_transport = transport != "webrtc";

    let mut steps = Vec::new();
    let mut clock = Clock { now: 0.0 };
    // The screening phase: the runtime vets the other party before the dialog proper (seed 001's
    // `event:end`). No randomness here, so a seed plans the same call it did before screening.
    let screening = if direction == "inbound" {
        "Screening passed: the caller is a person and asked for support"
    } else {
        "Screening passed: a person answered the call"
    };
    steps.push(wait_then(
        400,
        vec![event("call.screening_ended", json!({ "msg": screening }))],
        &mut clock,
    ));
    let mut exchanges = 0usize;
    for round in 0..rounds {
        let dialog = DIALOGS[(seed as usize + round) % DIALOGS.len()];
        for (user, agent) in dialog.iter() {
            exchanges += 1;
            if rng.random_bool(0.1) {
                let ms = rng.random_range(4000..8000);
                steps.push(wait_then(
                    ms,
                    vec![event("call.idle_silence", json!({ "duration_ms": ms }))],
                    &mut clock,
                ));
            }
            if rng.random_bool(0.05) {
                steps.push(wait_then(
                    600,
                    vec![event("call.dtmf", json!({ "digits": "1" }))],
                    &mut clock,
                ));
            }
            user_turn(&mut rng, &mut steps, &mut clock, user);
            let agent_turn_id = agent_turn(&mut rng, &mut steps, &mut clock, agent);
            if phone_transport && rng.random_bool(0.15) {
                let offset = (clock.now - 0.8).max(0.0);
                steps.push(Step {
                    delay: Duration::ZERO,
                    events: vec![event(
                        "call.barge_in",
                        json!({ "interrupted_turn_id": agent_turn_id, "offset": round2(offset) }),
                    )],
                });
            }
            if exchanges.is_multiple_of(2) {
                let mut events = vec![event(
                    "call.metrics",
                    json!({
                        "mos": round2(rng.random_range(3.6..4.4)),
                        "jitter_ms": round2(rng.random_range(2.0..18.0)),
                        "packet_loss_pct": round2(rng.random_range(0.0..1.5)),
                        "rtt_ms": round2(rng.random_range(40.0..160.0)),
                    }),
                )];
                if rng.random_bool(0.1) {
                    events.push(event(
                        "call.quality_degraded",
                        json!({ "metric": "packet_loss_pct", "value": round2(rng.random_range(5.5..9.0)), "threshold": 5.0 }),
                    ));
                }
                steps.push(Step {
                    delay: Duration::ZERO,
                    events,
                });
            }
        }
    }
    let end = if rng.random_bool(0.92) {
        event(
            "call.completed",
            json!({ "reason": "hangup", "duration_s": round2(clock.now + 0.5) }),
        )
    } else {
        event("call.failed", json!({ "reason": "network_error" }))
    };
    steps.push(wait_then(500, vec![end], &mut clock));
    CallPlan {
        phone,
        direction,
        transport,
        external_id,
        steps,
    }
}

fn wait_then(ms: u64, events: Vec<Value>, clock: &mut Clock) -> Step {
    clock.now += ms as f64 / 1000.0;
    Step {
        delay: Duration::from_millis(ms),
        events,
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The caller speaks: partials every couple of words, then the final with confidence.
fn user_turn(rng: &mut StdRng, steps: &mut Vec<Step>, clock: &mut Clock, text: &str) {
    let turn_id = hex_id(rng, "trn_", 8);
    let words: Vec<&str> = text.split(' ').collect();
    let start = clock.now + 0.3;
    let mut shown = 0;
    while shown + 2 < words.len() {
        shown += rng.random_range(2..=3).min(words.len() - shown);
        let partial = words[..shown].join(" ");
        steps.push(wait_then(
            350,
            vec![event(
                "call.transcription",
                json!({ "role": "user", "text": partial, "is_final": false, "turn_id": turn_id }),
            )],
            clock,
        ));
    }
    let stt_ms = rng.random_range(120..320);
    steps.push(wait_then(
        stt_ms,
        vec![event(
            "call.transcription",
            json!({
                "role": "user", "text": text, "is_final": true, "turn_id": turn_id,
                "confidence": round2(rng.random_range(0.82..0.99)),
                "segment_start": round2(start), "segment_end": round2(clock.now),
            }),
        )],
        clock,
    ));
}

/// The agent answers: latency metrics, its transcript turn, and TTS completion. Returns its id.
fn agent_turn(rng: &mut StdRng, steps: &mut Vec<Step>, clock: &mut Clock, text: &str) -> String {
    let turn_id = hex_id(rng, "trn_", 8);
    let (stt, llm, tts) = (
        rng.random_range(80..200),
        rng.random_range(250..700),
        rng.random_range(90..260),
    );
    let total = stt + llm + tts;
    steps.push(wait_then(
        total,
        vec![
            event("call.turn_latency", json!({ "turn_id": turn_id, "stt_ms": stt, "llm_ms": llm, "tts_ms": tts, "total_ms": total })),
            event(
                "call.transcription",
                json!({ "role": "agent", "text": text, "is_final": true, "turn_id": turn_id,
                        "segment_start": round2(clock.now), "segment_end": round2(clock.now + 0.07 * text.len() as f64) }),
            ),
        ],
        clock,
    ));
    let speaking_ms = (text.len() as u64) * 60;
    steps.push(wait_then(
        speaking_ms,
        vec![event(
            "call.tts_completed",
            json!({ "text": text, "turn_id": turn_id, "latency_ms": tts }),
        )],
        clock,
    ));
    turn_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_deterministic_per_seed() {
        let a = script(7);
        let b = script(7);
        assert_eq!(a.phone, b.phone);
        assert_eq!(
            a.events().collect::<Vec<_>>(),
            b.events().collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_call_has_partials_finals_and_one_end_last() {
        for seed in 0..50 {
            let plan = script(seed);
            let types: Vec<&str> = plan
                .events()
                .map(|e| e["event_type"].as_str().unwrap_or(""))
                .collect();
            let last = *types.last().unwrap();
            assert!(
                last == "call.completed" || last == "call.failed",
                "seed {seed}: {last}"
            );
            assert_eq!(
                types
                    .iter()
                    .filter(|t| **t == "call.completed" || **t == "call.failed")
                    .count(),
                1
            );
            let screening = types.iter().position(|t| *t == "call.screening_ended");
            let first_turn = types.iter().position(|t| *t == "call.transcription");
            assert!(
                screening.is_some() && screening < first_turn,
                "seed {seed}: screening must end once, before the dialog"
            );
            assert_eq!(
                types
                    .iter()
                    .filter(|t| **t == "call.screening_ended")
                    .count(),
                1
            );
            let finals = plan
                .events()
                .filter(|e| e["payload"]["is_final"] == json!(true))
                .count();
            let partials = plan
                .events()
                .filter(|e| e["payload"]["is_final"] == json!(false))
                .count();
            assert!(
                finals >= 6 && partials >= 3,
                "seed {seed}: {finals} finals, {partials} partials"
            );
            if plan.transport == "webrtc" {
                assert!(
                    !types.contains(&"call.barge_in"),
                    "seed {seed}: barge-in on webrtc"
                );
            }
        }
    }

    #[test]
    fn conversations_have_messages_with_statuses_and_valid_handoffs() {
        let mut handoffs = 0;
        for seed in 0..40 {
            let plan = conversation_script(seed);
            let types: Vec<&str> = plan
                .events()
                .map(|e| e["event_type"].as_str().unwrap_or(""))
                .collect();
            for ty in ["message.received", "message.delivered", "message.read"] {
                assert!(types.contains(&ty), "seed {seed}: no {ty}");
            }
            let changes: Vec<&Value> = plan
                .events()
                .filter(|e| e["event_type"] == "conversation.mode_changed")
                .collect();
            assert!(changes.len() <= 1);
            for c in changes {
                handoffs += 1;
                assert_eq!(
                    (
                        c["payload"]["from_mode"].as_str(),
                        c["payload"]["to_mode"].as_str()
                    ),
                    (Some("ai"), Some("human"))
                );
            }
        }
        assert!(handoffs > 0, "some conversations are handed off");
    }

    #[test]
    fn partials_grow_toward_their_final() {
        let plan = script(3);
        let mut last_text: std::collections::HashMap<String, String> = Default::default();
        for e in plan
            .events()
            .filter(|e| e["event_type"] == "call.transcription")
        {
            let id = e["payload"]["turn_id"].as_str().unwrap().to_owned();
            let text = e["payload"]["text"].as_str().unwrap().to_owned();
            if let Some(prev) = last_text.get(&id) {
                assert!(text.starts_with(prev.as_str()), "{prev:?} -> {text:?}");
            }
            last_text.insert(id, text);
        }
    }
}

/// A messaging conversation: how to open it, then its timed steps.
#[derive(Debug, Clone)]
pub struct ConversationPlan {
    pub channel: &'static str,
    pub participants: Vec<String>,
    pub steps: Vec<Step>,
}

impl ConversationPlan {
    /// The `POST /v1/conversations` body.
    pub fn create_body(&self) -> Value {
        json!({ "channel": self.channel, "participants": self.participants })
    }

    pub fn events(&self) -> impl Iterator<Item = &Value> {
        self.steps.iter().flat_map(|s| s.events.iter())
    }
}

const THREADS: &[&[(&str, &str)]] = &[
    &[
        (
            "Hi, has my order 45129 shipped?",
            "Yes! It left our warehouse yesterday and arrives Thursday.",
        ),
        (
            "Can I change the delivery address?",
            "I'll pass you to a colleague who can do that.",
        ),
    ],
    &[
        (
            "Do you have a table for two tonight?",
            "We do at 7:30 or 9:00. Which would you like?",
        ),
        (
            "7:30 please",
            "Booked: two people tonight at 7:30. See you then!",
        ),
    ],
];

fn message(id: &str, direction: &str, status: &str, text: Option<&str>) -> Value {
    let mut payload = json!({ "message_id": id, "direction": direction, "status": status });
    if let Some(text) = text {
        payload["text"] = json!(text);
    }
    payload
}

/// A short SMS or WhatsApp thread, sometimes handed off from the AI to a human operator.
pub fn conversation_script(seed: u64) -> ConversationPlan {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc0_ffee);
    let channel = if rng.random_bool(0.5) {
        "sms"
    } else {
        "whatsapp"
    };
    let participants = vec![format!("+1415555{:04}", rng.random_range(0..10_000))];
    let handoff = rng.random_bool(0.3);
    let thread = THREADS[(seed as usize) % THREADS.len()];
    let mut steps = Vec::new();
    let mut clock = Clock { now: 0.0 };
    for (i, (inbound, outbound)) in thread.iter().enumerate() {
        let (in_id, out_id) = (hex_id(&mut rng, "msg_", 6), hex_id(&mut rng, "msg_", 6));
        steps.push(wait_then(
            1500,
            vec![event(
                "message.received",
                message(&in_id, "inbound", "received", Some(inbound)),
            )],
            &mut clock,
        ));
        if handoff && i + 1 == thread.len() {
            steps.push(wait_then(
                400,
                vec![event(
                    "conversation.mode_changed",
                    json!({ "from_mode": "ai", "to_mode": "human", "actor_user_id": "usr_operator_1" }),
                )],
                &mut clock,
            ));
        }
        steps.push(wait_then(
            900,
            vec![event(
                "message.delivered",
                message(&out_id, "outbound", "delivered", Some(outbound)),
            )],
            &mut clock,
        ));
        steps.push(wait_then(
            1200,
            vec![event(
                "message.read",
                message(&out_id, "outbound", "read", None),
            )],
            &mut clock,
        ));
    }
    ConversationPlan {
        channel,
        participants,
        steps,
    }
}
