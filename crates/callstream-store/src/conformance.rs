//! The contract every store backend keeps, as checks each backend's tests run: SQLite's in
//! `sqlite.rs`, PostgreSQL's in `postgres.rs`. A check is given a [`Backend`] on a new, empty
//! database; [`Backend::open`] may be called again to open the same database anew (what a
//! restart does), so durability is checked too.
//!
//! Public only for the backends' tests (`#[doc(hidden)]`); a check panics on a broken promise.
//! [`conformance_tests!`](crate::conformance_tests) writes one test per check.
#![allow(
    clippy::unwrap_used,
    clippy::missing_panics_doc,
    clippy::too_many_lines
)]

use std::sync::Arc;

use async_trait::async_trait;
use callstream_core::audio::{AudioTrack, StreamStatus};
use callstream_core::id::KeyId;
use callstream_core::{
    Call, CallId, CallStatus, Channel, Conversation, ConversationId, ConversationMode, Direction,
    Envelope, KeyKind, Payload, Phone, Subject, Transport, TurnId, WorkspaceId, time,
};
use serde_json::json;

use crate::{
    AttemptLog, Attempted, AudioStreamRecord, CallFilter, CallbackMessage, CallbackMethod,
    DeliveryResult, DeliveryTarget, EndpointChange, KeyRecord, MessageFilter, MessageState,
    NewEvent, Requeue, Store, StoreError, WebhookEndpoint,
};

/// `append_call_events` with nothing to publish.
#[async_trait]
trait AppendNoPublish {
    async fn append_call_events_np(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        events: Vec<NewEvent>,
    ) -> crate::Result<crate::Appended>;
}

#[async_trait]
impl<S: Store + ?Sized> AppendNoPublish for S {
    async fn append_call_events_np(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        events: Vec<NewEvent>,
    ) -> crate::Result<crate::Appended> {
        self.append_call_events(workspace, call, events, &crate::NoPublish)
            .await
    }
}

/// A database for one check.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Opens the check's database (again: the same data each time).
    async fn open(&self) -> Arc<dyn Store>;
}

/// One `#[tokio::test]` per check, each on a fresh backend from `$fresh().await`; with
/// `optional`, `$fresh().await` is an `Option` and a check whose backend is `None` (a service
/// this machine lacks, said in one line) returns at once. Every backend runs this one list.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:path) => {
        $crate::conformance_tests!(@list $fresh; always);
    };
    (optional $fresh:path) => {
        $crate::conformance_tests!(@list $fresh; optional);
    };
    (@list $fresh:path; $how:ident) => {
        $crate::conformance_tests!(@each $fresh; $how;
            seqs_are_gap_free_and_finals_are_kept_across_reopen,
            another_workspace_sees_nothing,
            terminal_must_be_last_and_concurrent_appends_never_share_a_seq,
            keys_resolve_by_hash_and_filters_apply,
            conversation_events_keep_message_history_and_mode,
            audio_streams_are_one_active_per_url_end_once_and_survive_reopen,
            callbacks_are_queued_signed_by_the_workspace_and_claimed_like_webhooks,
            webhooks_are_queued_with_the_events_and_survive_reopen,
            reserved_seqs_are_never_reused_and_settling_returns_the_rest,
            reservations_in_a_rush_never_overlap_and_refusals_stay_alone,
            an_ended_call_keeps_its_reason_and_its_terminal_event,
            conversations_survive_reopen,
            appends_publish_in_seq_order_and_a_failed_publish_records_nothing,
            conversation_appends_publish_in_seq_order,
            connection_places_are_limited_per_call_and_come_back,
            group_appends_number_each_call_and_refuse_alone,
            concurrent_claims_never_share_a_delivery_and_lapsed_leases_come_back,
            endpoints_change_pause_while_disabled_and_rotate_with_an_overlap,
            idle_live_calls_of_every_workspace_are_found_and_touches_keep_them,
            outcomes_recorded_together_each_land_in_their_own_workspace,
            two_nodes_record_batches_over_the_same_endpoints_in_opposite_orders,
            appends_say_whether_they_queued_webhooks_and_queue_only_their_workspaces,
            a_batch_on_seqs_the_bus_held_is_numbered_after_them
        );
    };
    (@each $fresh:path; always; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let backend = $fresh().await;
                $crate::conformance::$check(&backend).await;
            }
        )*
    };
    (@each $fresh:path; optional; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let Some(backend) = $fresh().await else {
                    return;
                };
                $crate::conformance::$check(&backend).await;
            }
        )*
    };
}

/// An enabled endpoint on a local URL with a fixed secret, for `event_types` (all with `None`).
pub fn endpoint(ws: &WorkspaceId, id: &str, event_types: Option<&[&str]>) -> WebhookEndpoint {
    WebhookEndpoint {
        id: id.into(),
        workspace_id: ws.clone(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
        event_types: event_types.map(|types| types.iter().map(|&t| t.to_owned()).collect()),
        description: String::new(),
        created_at: time::now(),
        disabled_at: None,
        disabled_reason: None,
        previous_secret: None,
        previous_secret_until: None,
        failing_since: None,
    }
}

pub fn new_call(ws: &WorkspaceId) -> Call {
    Call {
        id: CallId::new(),
        workspace_id: ws.clone(),
        phone: Phone::parse("+14155550123").unwrap(),
        direction: Direction::Inbound,
        transport: Transport::Sip,
        // Unique: a workspace may have one live call per external id.
        external_id: Some(format!("CA{}", CallId::new().as_str())),
        status: CallStatus::InProgress,
        live_conversation_token: Call::new_live_conversation_token(),
        screening: None,
        started_at: time::now(),
        ended_at: None,
        end_reason: None,
        last_seq: 0,
    }
}

fn ev(ty: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent::new(time::now(), Payload::parse(ty, payload).unwrap())
}

pub fn turn(id: &TurnId, text: &str, is_final: bool) -> NewEvent {
    ev(
        "call.transcription",
        json!({"role": "user", "text": text, "is_final": is_final, "turn_id": id}),
    )
}

pub async fn seqs_are_gap_free_and_finals_are_kept_across_reopen(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("acme").await.unwrap();
    assert_eq!(store.ensure_workspace("acme").await.unwrap(), ws);
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let t1 = TurnId::new();
    let a = store
        .append_call_events_np(
            &ws.id,
            &call.id,
            vec![turn(&t1, "hel", false), turn(&t1, "hello", true)],
        )
        .await
        .unwrap();
    assert_eq!(
        a.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    let b = store
        .append_call_events_np(
            &ws.id,
            &call.id,
            vec![ev("call.completed", json!({"reason": "hangup"}))],
        )
        .await
        .unwrap();
    assert_eq!(b.envelopes[0].seq, 3);
    assert_eq!(b.call.status, CallStatus::Completed);
    assert!(b.call.ended_at.is_some());
    drop(store);

    let store = backend.open().await;
    let got = store.call(&ws.id, &call.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.last_seq), (CallStatus::Completed, 3));
    let turns = store.transcript(&ws.id, &call.id).await.unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!((turns[0].text.as_str(), turns[0].seq), ("hello", 2));
    let more = store
        .append_call_events_np(
            &ws.id,
            &call.id,
            vec![ev("call.dtmf", json!({"digits": "1"}))],
        )
        .await;
    assert!(
        matches!(more, Err(StoreError::CallEnded(CallStatus::Completed))),
        "{more:?}"
    );
}

pub async fn another_workspace_sees_nothing(backend: &dyn Backend) {
    let store = backend.open().await;
    let a = store.ensure_workspace("a").await.unwrap();
    let b = store.ensure_workspace("b").await.unwrap();
    let call = new_call(&a.id);
    store.create_call(&call).await.unwrap();
    assert!(store.call(&b.id, &call.id).await.unwrap().is_none());
    assert!(
        store
            .calls(
                &b.id,
                &CallFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.transcript(&b.id, &call.id).await.unwrap().is_empty());
    let r = store
        .append_call_events_np(
            &b.id,
            &call.id,
            vec![ev("call.dtmf", json!({"digits": "1"}))],
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)));
    // Nothing was reserved on the real call by the refused append.
    assert_eq!(
        store.call(&a.id, &call.id).await.unwrap().unwrap().last_seq,
        0
    );
}

pub async fn terminal_must_be_last_and_concurrent_appends_never_share_a_seq(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let bad = store
        .append_call_events_np(
            &ws.id,
            &call.id,
            vec![
                ev("call.completed", json!({})),
                ev("call.dtmf", json!({"digits": "1"})),
            ],
        )
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))));

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, ws, id) = (store.clone(), ws.id.clone(), call.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for _ in 0..10 {
                let a = store
                    .append_call_events_np(&ws, &id, vec![ev("call.dtmf", json!({"digits": "1"}))])
                    .await
                    .unwrap();
                seqs.push(a.envelopes[0].seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=80).collect::<Vec<u64>>());
}

pub async fn keys_resolve_by_hash_and_filters_apply(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let key = KeyRecord {
        id: KeyId::new(),
        workspace_id: ws.id.clone(),
        kind: KeyKind::Runtime,
        key_hash: [7; 32],
        hint: "rk_live_ab".into(),
        created_at: time::now(),
        expires_at: None,
        admin: false,
        revoked_at: None,
    };
    store.insert_key(&key).await.unwrap();
    assert_eq!(
        store.key_by_hash(&[7; 32]).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.key_by_hash(&[8; 32]).await.unwrap(), None);

    // An admin key that expires in an hour; keys are listed newest first, per workspace.
    let admin = KeyRecord {
        id: KeyId::new(),
        kind: KeyKind::Api,
        key_hash: [9; 32],
        hint: "pk_live_cd".into(),
        created_at: time::now() + chrono::Duration::milliseconds(5),
        expires_at: Some(time::now() + chrono::Duration::hours(1)),
        admin: true,
        ..key.clone()
    };
    store.insert_key(&admin).await.unwrap();
    assert_eq!(
        store.keys(&ws.id).await.unwrap(),
        vec![admin.clone(), key.clone()]
    );
    assert!(admin.live_at(time::now()));
    assert!(!admin.live_at(time::now() + chrono::Duration::hours(2)));
    let other = store.ensure_workspace("a-other").await.unwrap();
    assert!(store.keys(&other.id).await.unwrap().is_empty());
    assert_eq!(
        store.workspace_by_name("a").await.unwrap().map(|w| w.id),
        Some(ws.id.clone())
    );
    assert_eq!(store.workspace_by_name("nobody").await.unwrap(), None);

    // Revoking: refused for another workspace's key; the first time stays.
    let before = time::now() - chrono::Duration::seconds(1);
    assert!(
        !store
            .revoke_key(&other.id, &key.id, time::now())
            .await
            .unwrap()
    );
    let at = time::now();
    assert!(store.revoke_key(&ws.id, &key.id, at).await.unwrap());
    assert!(
        store
            .revoke_key(&ws.id, &key.id, at + chrono::Duration::seconds(5))
            .await
            .unwrap()
    );
    let revoked = store.key_by_hash(&[7; 32]).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert!(!revoked.live_at(time::now()));
    assert_eq!(
        store.keys_revoked_since(before).await.unwrap(),
        vec![key.id.clone()]
    );
    assert!(
        store
            .keys_revoked_since(at + chrono::Duration::seconds(1))
            .await
            .unwrap()
            .is_empty()
    );

    let live = new_call(&ws.id);
    let done = new_call(&ws.id);
    store.create_call(&live).await.unwrap();
    store.create_call(&done).await.unwrap();
    store
        .append_call_events_np(
            &ws.id,
            &done.id,
            vec![ev("call.failed", json!({"reason": "busy"}))],
        )
        .await
        .unwrap();
    let active = store
        .calls(
            &ws.id,
            &CallFilter {
                status: Some(CallStatus::InProgress),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        active.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        [live.id]
    );
    let future = store
        .calls(
            &ws.id,
            &CallFilter {
                since: Some(time::now() + chrono::Duration::hours(1)),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(future.is_empty());
    let list = |filter: CallFilter| {
        let store = &store;
        let ws = ws.id.clone();
        async move {
            store
                .calls(&ws, &filter)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(CallFilter {
            ended: true,
            limit: 10,
            ..Default::default()
        })
        .await,
        std::slice::from_ref(&done.id),
        "ended: completed or failed, never live"
    );

    // Pages by cursor, newest first, each call once, also among calls started in the same
    // millisecond; and a search by a part of the phone number.
    let mut other = new_call(&ws.id);
    other.phone = Phone::parse("+442071838750").unwrap();
    other.started_at = live.started_at;
    store.create_call(&other).await.unwrap();
    let all = list(CallFilter {
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(all.len(), 3);
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = list(CallFilter {
            limit: 1,
            before: before.clone(),
            ..Default::default()
        })
        .await;
        let Some(last) = page.last() else { break };
        before = Some(last.clone());
        paged.extend(page);
        assert!(paged.len() <= 3, "paging ends: {paged:?}");
    }
    assert_eq!(paged, all);
    assert_eq!(
        list(CallFilter {
            phone: Some("2071".into()),
            limit: 10,
            ..Default::default()
        })
        .await,
        std::slice::from_ref(&other.id)
    );
    assert_eq!(
        list(CallFilter {
            phone: Some("+1415".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .len(),
        2
    );
}

pub async fn conversation_events_keep_message_history_and_mode(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let other = store.ensure_workspace("b").await.unwrap();
    let c = Conversation {
        id: ConversationId::new(),
        workspace_id: ws.id.clone(),
        channel: Channel::Sms,
        participants: vec!["+14155550123".into()],
        mode: ConversationMode::Ai,
        created_at: time::now(),
        last_seq: 0,
    };
    store.create_conversation(&c).await.unwrap();
    let msg = |ty: &str, status: &str, text: Option<&str>| {
        let mut p = json!({"message_id": "m1", "direction": "inbound", "status": status});
        if let Some(t) = text {
            p["text"] = json!(t);
        }
        ev(ty, p)
    };
    let a = store
        .append_conversation_events(
            &ws.id,
            &c.id,
            vec![
                msg("message.received", "received", Some("hi")),
                msg("message.read", "read", None),
            ],
            &crate::NoPublish,
        )
        .await
        .unwrap();
    assert_eq!(
        a.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    let history = store.messages(&ws.id, &c.id).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].text.as_deref(), history[0].status.as_str()),
        (Some("hi"), "read")
    );

    let handoff = ev(
        "conversation.mode_changed",
        json!({"from_mode": "ai", "to_mode": "human", "actor_user_id": "usr_1"}),
    );
    let b = store
        .append_conversation_events(&ws.id, &c.id, vec![handoff.clone()], &crate::NoPublish)
        .await
        .unwrap();
    assert_eq!(
        (b.conversation.mode, b.conversation.last_seq),
        (ConversationMode::Human, 3)
    );
    // A stale from_mode is refused and takes no seq.
    assert!(matches!(
        store
            .append_conversation_events(&ws.id, &c.id, vec![handoff], &crate::NoPublish)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store
            .conversation(&ws.id, &c.id)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        3
    );
    // Another workspace sees nothing and can append nothing.
    assert!(matches!(
        store
            .append_conversation_events(
                &other.id,
                &c.id,
                vec![msg("message.read", "read", None)],
                &crate::NoPublish,
            )
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store.messages(&other.id, &c.id).await.unwrap().is_empty());
    assert!(matches!(
        store
            .append_conversation_events(
                &ws.id,
                &c.id,
                vec![ev("call.dtmf", json!({"digits": "1"}))],
                &crate::NoPublish,
            )
            .await,
        Err(StoreError::Invalid(_))
    ));
}

fn audio_stream(ws: &WorkspaceId, call: &CallId, url: &str) -> AudioStreamRecord {
    AudioStreamRecord {
        stream_id: callstream_core::audio::new_stream_id(),
        workspace_id: ws.clone(),
        call_id: call.clone(),
        service_url: url.into(),
        audio_track: AudioTrack::Inbound,
        bidirectional: true,
        content_type: "audio/x-l16;rate=8000".into(),
        l16_big_endian: false,
        stream_timeout_secs: 86400,
        status_callback_url: Some("http://127.0.0.1:9/status".into()),
        status_callback_method: CallbackMethod::Get,
        extra_headers: "a=1".into(),
        status: StreamStatus::Connecting,
        created_at: time::now(),
        start_time: None,
        end_time: None,
        end_reason: None,
    }
}

pub async fn audio_streams_are_one_active_per_url_end_once_and_survive_reopen(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let other = store.ensure_workspace("b").await.unwrap();
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let first = audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/a");
    store.create_audio_stream(&first).await.unwrap();
    let again = audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/a");
    let refused = store.create_audio_stream(&again).await.unwrap_err();
    assert!(
        matches!(&refused, StoreError::Invalid(m) if m.starts_with("service_url:")),
        "{refused:?}"
    );
    let second = audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/b");
    store.create_audio_stream(&second).await.unwrap();
    // Another workspace can neither create on the call nor read the streams.
    assert!(matches!(
        store
            .create_audio_stream(&audio_stream(&other.id, &call.id, "ws://x/"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .audio_stream(&other.id, &first.stream_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .audio_streams(&other.id, &call.id, 10, 0)
            .await
            .unwrap(),
        (vec![], 0)
    );

    let at = time::now();
    assert!(
        store
            .set_audio_stream_status(&ws.id, &first.stream_id, StreamStatus::InProgress, at, None)
            .await
            .unwrap()
    );
    assert!(
        store
            .set_audio_stream_status(
                &ws.id,
                &first.stream_id,
                StreamStatus::Dropped,
                at,
                Some("gone")
            )
            .await
            .unwrap()
    );
    // Ended once: a second ending is not reported.
    assert!(
        !store
            .set_audio_stream_status(
                &ws.id,
                &first.stream_id,
                StreamStatus::Stopped,
                at,
                Some("x")
            )
            .await
            .unwrap()
    );
    // The URL is free again once its stream ended.
    store.create_audio_stream(&again).await.unwrap();

    drop(store);
    let store = backend.open().await;
    let read = store
        .audio_stream(&ws.id, &first.stream_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.status, StreamStatus::Dropped);
    assert_eq!(read.end_reason.as_deref(), Some("gone"));
    assert_eq!(
        read.start_time.map(|t| time::format(&t)),
        Some(time::format(&at))
    );
    assert_eq!(read.extra_headers, "a=1");
    assert_eq!(read.status_callback_method, CallbackMethod::Get);
    let (page, total) = store.audio_streams(&ws.id, &call.id, 2, 1).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.len(), 2);
    let mut active: Vec<String> = store
        .active_audio_streams()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stream_id)
        .collect();
    active.sort();
    let mut expect = [second.stream_id.clone(), again.stream_id.clone()];
    expect.sort();
    assert_eq!(active, expect);

    // An ended call takes no new stream.
    store
        .append_call_events_np(&ws.id, &call.id, vec![ev("call.completed", json!({}))])
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_audio_stream(&audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/c"))
            .await,
        Err(StoreError::CallEnded(_))
    ));
}

pub async fn callbacks_are_queued_signed_by_the_workspace_and_claimed_like_webhooks(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let secret = store
        .signing_secret(&ws.id, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .await
        .unwrap();
    // The first secret stays.
    assert_eq!(
        store.signing_secret(&ws.id, "whsec_other").await.unwrap(),
        secret
    );
    let message = CallbackMessage {
        id: "msg_1".into(),
        workspace_id: ws.id.clone(),
        url: "http://127.0.0.1:9/status".into(),
        method: CallbackMethod::Post,
        body: "Event=StartStream&StreamID=x".into(),
        kind: "StartStream".into(),
        created_at: time::now(),
    };
    store.queue_callback(&message).await.unwrap();
    // Queuing the same message twice keeps one.
    store.queue_callback(&message).await.unwrap();
    let now = time::now();
    let lease = now + chrono::Duration::seconds(60);
    let due = store.due_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let d = &due[0];
    assert_eq!(d.target, DeliveryTarget::Callback(CallbackMethod::Post));
    assert_eq!(
        (d.event_id.as_str(), d.secret.as_str()),
        ("msg_1", secret.as_str())
    );
    assert_eq!(d.payload, b"Event=StartStream&StreamID=x");
    // Claimed: not due again until the lease ends.
    assert!(
        store
            .due_deliveries(now, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let retry = now + chrono::Duration::seconds(5);
    store
        .record_delivery(
            d,
            now,
            &DeliveryResult::RetryAt {
                at: retry,
                status: Some(500),
                error: "HTTP 500".into(),
            },
            &AttemptLog::default(),
        )
        .await
        .unwrap();
    let again = store.due_deliveries(retry, lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    store
        .record_delivery(
            &again[0],
            retry,
            &DeliveryResult::Delivered { status: 204 },
            &AttemptLog::default(),
        )
        .await
        .unwrap();
    assert!(
        store
            .due_deliveries(retry + chrono::Duration::hours(1), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn webhooks_are_queued_with_the_events_and_survive_reopen(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let endpoint = endpoint(&ws.id, "whe_1", Some(&["call.dtmf"]));
    store.create_webhook_endpoint(&endpoint).await.unwrap();
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let appended = store
        .append_call_events_np(
            &ws.id,
            &call.id,
            vec![
                ev("call.dtmf", json!({"digits": "1"})),
                ev("call.metrics", json!({})),
            ],
        )
        .await
        .unwrap();
    drop(store);
    let store = backend.open().await;
    let now = time::now();
    let lease = now + chrono::Duration::seconds(60);
    let due = store.due_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(due.len(), 1, "only the wanted type is queued");
    assert_eq!(
        due[0].payload,
        appended.envelopes[0].to_json(),
        "the payload is the canonical envelope"
    );
    assert!(
        store
            .due_deliveries(now, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a claimed delivery is leased"
    );
    let retry = now + chrono::Duration::seconds(5);
    let result = DeliveryResult::RetryAt {
        at: retry,
        status: Some(500),
        error: "HTTP 500".into(),
    };
    let failed = AttemptLog {
        latency_ms: 12,
        error_kind: Some("http_status".into()),
        response_body: "upstream down".into(),
    };
    store
        .record_delivery(&due[0], now, &result, &failed)
        .await
        .unwrap();
    let (failing, _) = messages(&*store, &ws.id, "whe_1", Some(MessageState::Failing)).await;
    assert_eq!(failing.len(), 1, "a retried message is failing");
    assert_eq!(
        (
            failing[0].attempts,
            failing[0].next_attempt_at,
            failing[0].last_status_code
        ),
        (1, Some(retry), Some(500))
    );
    let again = store
        .due_deliveries(retry, retry + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(
        (again.len(), again[0].attempts, again[0].first_attempt_at),
        (1, 1, Some(now))
    );
    store
        .record_delivery(
            &again[0],
            retry,
            &DeliveryResult::Delivered { status: 204 },
            &AttemptLog {
                latency_ms: 3,
                ..AttemptLog::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.outbox_counts().await.unwrap(),
        [("delivered".to_owned(), 1)]
    );

    // The delivery log: the message's state, and each attempt in order.
    let (all, _) = messages(&*store, &ws.id, "whe_1", None).await;
    assert_eq!(all.len(), 1);
    let message = &all[0];
    assert_eq!(
        (
            message.event_id.as_str(),
            message.event_type.as_str(),
            message.state,
            message.attempts
        ),
        (
            appended.envelopes[0].event_id.as_str(),
            "call.dtmf",
            MessageState::Delivered,
            2
        )
    );
    assert_eq!(
        message.next_attempt_at, None,
        "a delivered message is not due"
    );
    assert!(
        messages(&*store, &ws.id, "whe_1", Some(MessageState::Failing))
            .await
            .0
            .is_empty()
    );
    let attempts = store
        .webhook_attempts(&ws.id, "whe_1", &message.event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (
            attempts[0].attempted_at,
            attempts[0].status_code,
            attempts[0].latency_ms
        ),
        (now, Some(500), 12)
    );
    assert_eq!(
        (
            attempts[0].error_kind.as_deref(),
            attempts[0].response_body.as_str()
        ),
        (Some("http_status"), "upstream down")
    );
    assert_eq!(
        (attempts[1].status_code, attempts[1].error_kind.as_deref()),
        (Some(204), None)
    );
    let other = store.ensure_workspace("b").await.unwrap();
    assert_eq!(
        store
            .webhook_attempts(&other.id, "whe_1", &message.event_id)
            .await
            .unwrap(),
        None,
        "another workspace sees no log"
    );
    assert_eq!(
        store
            .webhook_messages(
                &other.id,
                "whe_1",
                &MessageFilter {
                    limit: 10,
                    ..MessageFilter::default()
                }
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .webhook_attempts(&ws.id, "whe_1", "evt_nope")
            .await
            .unwrap(),
        None
    );

    // Paged, newest first, by cursor; filtered by the time each was queued.
    store
        .append_call_events_np(
            &ws.id,
            &call.id,
            (0..4)
                .map(|_| ev("call.dtmf", json!({"digits": "2"})))
                .collect(),
        )
        .await
        .unwrap();
    let first_page = store
        .webhook_messages(
            &ws.id,
            "whe_1",
            &MessageFilter {
                limit: 3,
                ..MessageFilter::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_page.len(), 3);
    assert!(first_page.iter().all(|m| m.state == MessageState::Pending));
    let rest = store
        .webhook_messages(
            &ws.id,
            "whe_1",
            &MessageFilter {
                limit: 3,
                before: Some(first_page[2].cursor),
                ..MessageFilter::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[1].event_id, message.event_id, "the oldest last");
    let later = store
        .webhook_messages(
            &ws.id,
            "whe_1",
            &MessageFilter {
                limit: 10,
                since: Some(time::now() + chrono::Duration::hours(1)),
                ..MessageFilter::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(later.is_empty());

    // Sent again: a delivered message is pending once more, on a new schedule, its log kept.
    let at = time::now();
    assert_eq!(
        store
            .requeue_webhook_messages(&ws.id, "whe_1", &Requeue::One(message.event_id.clone()), at)
            .await
            .unwrap(),
        Some(1)
    );
    let (pending, _) = messages(&*store, &ws.id, "whe_1", Some(MessageState::Pending)).await;
    let again = pending
        .iter()
        .find(|m| m.event_id == message.event_id)
        .unwrap();
    assert_eq!((again.attempts, again.next_attempt_at), (0, Some(at)));
    assert_eq!(
        store
            .webhook_attempts(&ws.id, "whe_1", &message.event_id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );
    let all = store
        .requeue_webhook_messages(
            &ws.id,
            "whe_1",
            &Requeue::Since(at - chrono::Duration::hours(1)),
            at,
        )
        .await
        .unwrap();
    assert_eq!(all, Some(5));
    for (workspace, which) in [
        (&ws.id, Requeue::One("evt_nope".into())),
        (&other.id, Requeue::One(message.event_id.clone())),
        (&other.id, Requeue::Since(at)),
    ] {
        assert_eq!(
            store
                .requeue_webhook_messages(workspace, "whe_1", &which, at)
                .await
                .unwrap(),
            None
        );
    }
    // Pruned: only what is done (delivered or given up) and queued before the time goes, with
    // its log; pending messages stay whatever their age.
    let (pending, _) = messages(&*store, &ws.id, "whe_1", None).await;
    assert_eq!(pending.len(), 5);
    let due = store
        .due_deliveries(time::now(), time::now() + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    let done = due.iter().find(|d| d.event_id == message.event_id).unwrap();
    store
        .record_delivery(
            done,
            time::now(),
            &DeliveryResult::Delivered { status: 200 },
            &AttemptLog::default(),
        )
        .await
        .unwrap();
    let later = time::now() + chrono::Duration::days(1);
    assert_eq!(store.prune_webhook_messages(later).await.unwrap(), 1);
    let (left, _) = messages(&*store, &ws.id, "whe_1", None).await;
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|m| m.event_id != message.event_id));
    assert_eq!(
        store
            .webhook_attempts(&ws.id, "whe_1", &message.event_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.prune_webhook_messages(later).await.unwrap(), 0);

    // A retry asked for while an attempt is in flight is not undone when that attempt's
    // outcome is recorded: the message is sent again, and the attempt is still in its log.
    // (The claim above leased the rest of the endpoint's messages: they are in flight.)
    let in_flight = due
        .iter()
        .find(|d| {
            d.event_id != message.event_id
                && d.workspace_id == ws.id
                && d.target == DeliveryTarget::Endpoint("whe_1".into())
        })
        .unwrap();
    let logged = store
        .webhook_attempts(&ws.id, "whe_1", &in_flight.event_id)
        .await
        .unwrap()
        .unwrap()
        .len();
    let at = time::now();
    assert_eq!(
        store
            .requeue_webhook_messages(
                &ws.id,
                "whe_1",
                &Requeue::One(in_flight.event_id.clone()),
                at
            )
            .await
            .unwrap(),
        Some(1)
    );
    store
        .record_delivery(
            in_flight,
            time::now(),
            &DeliveryResult::Delivered { status: 200 },
            &AttemptLog::default(),
        )
        .await
        .unwrap();
    let (pending, _) = messages(&*store, &ws.id, "whe_1", Some(MessageState::Pending)).await;
    let requeued = pending
        .iter()
        .find(|m| m.event_id == in_flight.event_id)
        .expect("the retry asked for during the attempt stands");
    assert_eq!((requeued.attempts, requeued.next_attempt_at), (0, Some(at)));
    assert_eq!(
        store
            .webhook_attempts(&ws.id, "whe_1", &in_flight.event_id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        logged + 1
    );
    // Its next claim's outcome counts again.
    let due = store
        .due_deliveries(time::now(), time::now() + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    let again = due
        .iter()
        .find(|d| d.event_id == in_flight.event_id)
        .expect("due again at once");
    store
        .record_delivery(
            again,
            time::now(),
            &DeliveryResult::Delivered { status: 200 },
            &AttemptLog::default(),
        )
        .await
        .unwrap();
    let (delivered, _) = messages(&*store, &ws.id, "whe_1", Some(MessageState::Delivered)).await;
    assert!(delivered.iter().any(|m| m.event_id == in_flight.event_id));
}

/// An endpoint's messages in `state` (all with `None`), at most 100, and whether there are more.
async fn messages(
    store: &dyn Store,
    ws: &callstream_core::WorkspaceId,
    endpoint: &str,
    state: Option<MessageState>,
) -> (Vec<crate::WebhookMessage>, bool) {
    let got = store
        .webhook_messages(
            ws,
            endpoint,
            &MessageFilter {
                state,
                limit: 100,
                ..MessageFilter::default()
            },
        )
        .await
        .unwrap()
        .expect("the endpoint exists");
    let more = got.len() == 100;
    (got, more)
}

pub async fn reserved_seqs_are_never_reused_and_settling_returns_the_rest(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let (_, end) = store
        .reserve_call_seqs(&ws.id, &call.id, 100)
        .await
        .unwrap();
    assert_eq!(end, 100);
    // A "crash": the next process reserves after the whole first block.
    drop(store);
    let store = backend.open().await;
    let (_, end) = store
        .reserve_call_seqs(&ws.id, &call.id, 100)
        .await
        .unwrap();
    assert_eq!(end, 200);
    // Used up to 150: settling gives back 151..=200.
    store
        .settle_call_seqs(&ws.id, &call.id, 200, 150)
        .await
        .unwrap();
    assert_eq!(
        store
            .call(&ws.id, &call.id)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        150
    );
    // Settling is refused if someone reserved after us.
    store.reserve_call_seqs(&ws.id, &call.id, 10).await.unwrap();
    store
        .settle_call_seqs(&ws.id, &call.id, 150, 140)
        .await
        .unwrap();
    assert_eq!(
        store
            .call(&ws.id, &call.id)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        160
    );
    // The end is recorded with its seq; then reserving is refused.
    let end_event = Envelope::new(
        ws.id.clone(),
        Subject::Call(call.id.clone()),
        161,
        time::now(),
        Payload::parse("call.completed", json!({})).unwrap(),
    )
    .unwrap();
    let ended = store
        .record_call_events(&ws.id, &call.id, &[end_event])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ended.status, ended.last_seq), (CallStatus::Completed, 161));
    assert!(matches!(
        store.reserve_call_seqs(&ws.id, &call.id, 1).await,
        Err(StoreError::CallEnded(_))
    ));
    let other = store.ensure_workspace("b").await.unwrap();
    assert!(matches!(
        store.reserve_call_seqs(&other.id, &call.id, 1).await,
        Err(StoreError::NotFound)
    ));
}

/// Many calls reserving at once (a campaign's start): every block is its call's own, none
/// overlaps another of the same call, and an ended or foreign call among them is refused
/// without failing the others (the embedded store commits such a rush together).
pub async fn reservations_in_a_rush_never_overlap_and_refusals_stay_alone(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let other = store.ensure_workspace("b").await.unwrap();
    let mut calls = Vec::new();
    for _ in 0..20 {
        let call = new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        calls.push(call.id);
    }
    let ended = new_call(&ws.id);
    store.create_call(&ended).await.unwrap();
    let end_event = Envelope::new(
        ws.id.clone(),
        Subject::Call(ended.id.clone()),
        1,
        time::now(),
        Payload::parse("call.completed", json!({})).unwrap(),
    )
    .unwrap();
    store
        .record_call_events(&ws.id, &ended.id, &[end_event])
        .await
        .unwrap();
    let mut rush = tokio::task::JoinSet::new();
    for round in 0..10u64 {
        for (i, call) in calls.iter().enumerate() {
            let (store, ws, call) = (store.clone(), ws.id.clone(), call.clone());
            let size = 1 + (round + i as u64) % 7;
            rush.spawn(async move {
                let reserved = store.reserve_call_seqs(&ws, &call, size).await;
                (call, size, reserved.map(|(c, end)| (c.id, end)))
            });
        }
        let (s, w, c) = (store.clone(), ws.id.clone(), ended.id.clone());
        rush.spawn(async move {
            (
                c.clone(),
                1,
                s.reserve_call_seqs(&w, &c, 1).await.map(|(x, e)| (x.id, e)),
            )
        });
        let (s, w, c) = (store.clone(), other.id.clone(), calls[0].clone());
        rush.spawn(async move {
            (
                CallId::new(),
                1,
                s.reserve_call_seqs(&w, &c, 1).await.map(|(x, e)| (x.id, e)),
            )
        });
    }
    let mut blocks: std::collections::HashMap<CallId, Vec<(u64, u64)>> = Default::default();
    let (mut ended_refusals, mut foreign_refusals) = (0, 0);
    while let Some(done) = rush.join_next().await {
        let (call, size, reserved) = done.unwrap();
        match reserved {
            Ok((id, end)) => {
                assert_eq!(id, call, "the reservation's call is the one asked for");
                blocks.entry(call).or_default().push((end + 1 - size, end));
            }
            Err(StoreError::CallEnded(CallStatus::Completed)) if call == ended.id => {
                ended_refusals += 1;
            }
            Err(StoreError::NotFound) => foreign_refusals += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ended_refusals, foreign_refusals), (10, 10));
    for call in &calls {
        let mut mine = blocks.remove(call).unwrap();
        mine.sort_unstable();
        assert_eq!(mine.len(), 10);
        assert_eq!(mine[0].0, 1, "the first block starts at 1");
        for pair in mine.windows(2) {
            assert_eq!(
                pair[1].0,
                pair[0].1 + 1,
                "blocks are contiguous and never overlap"
            );
        }
        let last = mine.last().unwrap().1;
        let stored = store.call(&ws.id, call).await.unwrap().unwrap().last_seq;
        assert_eq!(stored, last);
    }
}

/// However a call ended (appended, appended in a group, or recorded after a node numbered it),
/// its record keeps why, and its terminal event as the native WebSocket carried it: what a
/// client that connects after the end is sent. Only its own workspace sees them.
pub async fn an_ended_call_keeps_its_reason_and_its_terminal_event(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let other = store.ensure_workspace("b").await.unwrap();
    let live = new_call(&ws.id);
    store.create_call(&live).await.unwrap();
    assert_eq!(store.call_end_event(&ws.id, &live.id).await.unwrap(), None);

    // Appended.
    let failed = new_call(&ws.id);
    store.create_call(&failed).await.unwrap();
    let appended = store
        .append_call_events_np(
            &ws.id,
            &failed.id,
            vec![ev("call.failed", json!({"reason": "runtime_lost"}))],
        )
        .await
        .unwrap();
    assert_eq!(appended.call.end_reason.as_deref(), Some("runtime_lost"));
    let stored = store.call(&ws.id, &failed.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.end_reason.as_deref()),
        (CallStatus::Failed, Some("runtime_lost"))
    );
    assert_eq!(
        store.call_end_event(&ws.id, &failed.id).await.unwrap(),
        Some(appended.envelopes[0].to_json())
    );
    assert_eq!(
        store.call_end_event(&other.id, &failed.id).await.unwrap(),
        None
    );

    // Appended in a group, a completed call without a reason.
    let grouped = new_call(&ws.id);
    store.create_call(&grouped).await.unwrap();
    let group = store
        .append_calls_events(
            &ws.id,
            vec![(grouped.id.clone(), vec![ev("call.completed", json!({}))])],
            &[&crate::NoPublish],
        )
        .await
        .unwrap();
    let appended = group.into_iter().next().unwrap().unwrap();
    assert_eq!(appended.call.status, CallStatus::Completed);
    assert_eq!(appended.call.end_reason, None);
    assert_eq!(
        store.call_end_event(&ws.id, &grouped.id).await.unwrap(),
        Some(appended.envelopes[0].to_json())
    );

    // Numbered by a node, then recorded.
    let recorded = new_call(&ws.id);
    store.create_call(&recorded).await.unwrap();
    let (_, end) = store
        .reserve_call_seqs(&ws.id, &recorded.id, 4)
        .await
        .unwrap();
    let terminal = Envelope::new(
        ws.id.clone(),
        Subject::Call(recorded.id.clone()),
        end,
        time::now(),
        Payload::parse(
            "call.completed",
            json!({"reason": "hangup", "duration_s": 61.5}),
        )
        .unwrap(),
    )
    .unwrap();
    let ended = store
        .record_call_events(&ws.id, &recorded.id, std::slice::from_ref(&terminal))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.end_reason.as_deref(), Some("hangup"));
    assert_eq!(
        store.call_end_event(&ws.id, &recorded.id).await.unwrap(),
        Some(terminal.to_json())
    );
}

pub async fn conversations_survive_reopen(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let c = Conversation {
        id: ConversationId::new(),
        workspace_id: ws.id.clone(),
        channel: Channel::Whatsapp,
        participants: vec!["+14155550123".into()],
        mode: ConversationMode::Ai,
        created_at: time::now(),
        last_seq: 0,
    };
    store.create_conversation(&c).await.unwrap();
    drop(store);
    let store = backend.open().await;
    assert_eq!(store.conversation(&ws.id, &c.id).await.unwrap(), Some(c));
}

/// Records what `append_call_events` publishes, in the order it was handed over; fails when
/// asked to.
struct Recorder {
    seen: std::sync::Mutex<Vec<u64>>,
    fail: bool,
}

#[async_trait]
impl crate::PublishInOrder for Recorder {
    async fn publish(
        &self,
        envelopes: &[Envelope],
    ) -> std::result::Result<(), crate::NotPublished> {
        if self.fail {
            return Err(crate::NotPublished::Failed("the bus is down".into()));
        }
        // Take a moment, so that a store that did not hold the call's authority across the
        // publish would let another batch in between.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        self.seen
            .lock()
            .unwrap()
            .extend(envelopes.iter().map(|e| e.seq));
        Ok(())
    }
}

/// Concurrent appends to one call publish their batches one after another in seq order (what
/// lets several nodes ingest for one call); a publish that fails undoes the append, but its seqs
/// are never handed out again (part of it may have reached subscribers).
pub async fn appends_publish_in_seq_order_and_a_failed_publish_records_nothing(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let recorder = Arc::new(Recorder {
        seen: std::sync::Mutex::new(Vec::new()),
        fail: false,
    });
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, ws, id, recorder) = (
            store.clone(),
            ws.id.clone(),
            call.id.clone(),
            recorder.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                store
                    .append_call_events(
                        &ws,
                        &id,
                        vec![
                            ev("call.dtmf", json!({"digits": "1"})),
                            ev("call.dtmf", json!({"digits": "2"})),
                        ],
                        recorder.as_ref(),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        (1..=40).collect::<Vec<u64>>()
    );

    let failing = Recorder {
        seen: std::sync::Mutex::new(Vec::new()),
        fail: true,
    };
    let t = TurnId::new();
    let refused = store
        .append_call_events(&ws.id, &call.id, vec![turn(&t, "lost", true)], &failing)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Publish(_))),
        "{refused:?}"
    );
    assert!(store.transcript(&ws.id, &call.id).await.unwrap().is_empty());
    let after = store
        .append_call_events_np(
            &ws.id,
            &call.id,
            vec![ev("call.dtmf", json!({"digits": "3"}))],
        )
        .await
        .unwrap();
    // The failed batch's seq is never handed out again (its publish may have landed late).
    assert_eq!(
        after.envelopes[0].seq, 42,
        "the failed append's seq is burnt"
    );
}

/// A group append numbers each call after its own seqs and publishes each call's batch through
/// its own publisher; a call that would be refused alone is refused alone; two groups over the
/// same calls at once (two nodes) never share a seq and never deadlock; a failed publish undoes
/// the whole group and burns its seqs.
/// The server wakes the webhook workers of every node only when an append says it queued
/// something; an append that says no must have queued nothing, and one that says yes must have
/// queued exactly what its workspace's endpoints want, single or grouped.
pub async fn appends_say_whether_they_queued_webhooks_and_queue_only_their_workspaces(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let other = store.ensure_workspace("b").await.unwrap();
    store
        .create_webhook_endpoint(&endpoint(&other.id, "whe_other", None))
        .await
        .unwrap();
    let (a, b) = (new_call(&ws.id), new_call(&ws.id));
    for call in [&a, &b] {
        store.create_call(call).await.unwrap();
    }
    let now = time::now();
    // Due from the moment they are queued: looked for a little after, leased for a minute.
    let due = || async {
        let at = time::now() + chrono::Duration::seconds(1);
        store
            .due_deliveries(at, at + chrono::Duration::seconds(60), 10)
            .await
            .unwrap()
    };
    let dtmf = || ev("call.dtmf", json!({"digits": "1"}));
    let metrics = || ev("call.metrics", json!({}));
    let group =
        |events: fn() -> Vec<NewEvent>| vec![(a.id.clone(), events()), (b.id.clone(), events())];
    let no_publish: [&dyn crate::PublishInOrder; 2] = [&crate::NoPublish, &crate::NoPublish];

    // No endpoint in this workspace (another workspace's wants everything): nothing queued.
    let single = store
        .append_call_events_np(&ws.id, &a.id, vec![dtmf()])
        .await
        .unwrap();
    assert!(
        !single.webhooks_queued,
        "no endpoint: a single append queues nothing"
    );
    let grouped = store
        .append_calls_events(
            &ws.id,
            group(|| vec![ev("call.dtmf", json!({"digits": "2"}))]),
            &no_publish,
        )
        .await
        .unwrap();
    for result in grouped {
        assert!(
            !result.unwrap().webhooks_queued,
            "no endpoint: a group queues nothing"
        );
    }
    assert!(
        due().await.is_empty(),
        "another workspace's endpoint gets none of this workspace's events"
    );

    // Endpoints wanting DTMF only, and everything but DTMF turned off: metrics queue nothing.
    store
        .create_webhook_endpoint(&endpoint(&ws.id, "whe_dtmf", Some(&["call.dtmf"])))
        .await
        .unwrap();
    store
        .create_webhook_endpoint(&endpoint(&ws.id, "whe_all", None))
        .await
        .unwrap();
    let disable = EndpointChange {
        enabled: Some(false),
        disabled_reason: Some("paused".into()),
        ..EndpointChange::default()
    };
    store
        .change_webhook_endpoint(&ws.id, "whe_all", &disable, now)
        .await
        .unwrap()
        .unwrap();
    let single = store
        .append_call_events_np(&ws.id, &a.id, vec![metrics()])
        .await
        .unwrap();
    assert!(!single.webhooks_queued, "an unwanted type queues nothing");
    let grouped = store
        .append_calls_events(
            &ws.id,
            group(|| vec![ev("call.metrics", json!({}))]),
            &no_publish,
        )
        .await
        .unwrap();
    for result in grouped {
        assert!(
            !result.unwrap().webhooks_queued,
            "an unwanted type queues nothing in a group"
        );
    }
    assert!(due().await.is_empty());

    // Wanted events: said, and queued once each for the endpoint that wants them.
    let single = store
        .append_call_events_np(&ws.id, &a.id, vec![dtmf(), metrics()])
        .await
        .unwrap();
    assert!(single.webhooks_queued, "a wanted event is queued and said");
    let grouped = store
        .append_calls_events(
            &ws.id,
            group(|| {
                vec![
                    ev("call.dtmf", json!({"digits": "3"})),
                    ev("call.metrics", json!({})),
                ]
            }),
            &no_publish,
        )
        .await
        .unwrap();
    let mut wanted = vec![single.envelopes[0].event_id.to_string()];
    for result in grouped {
        let appended = result.unwrap();
        assert!(
            appended.webhooks_queued,
            "a wanted event in a group is queued and said"
        );
        wanted.push(appended.envelopes[0].event_id.to_string());
    }
    let due = due().await;
    let mut got: Vec<_> = due.iter().map(|d| d.event_id.clone()).collect();
    got.sort();
    wanted.sort();
    assert_eq!(
        got, wanted,
        "each wanted event once, for the endpoint that wants it"
    );
}

pub async fn group_appends_number_each_call_and_refuse_alone(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let (a, b, ended) = (new_call(&ws.id), new_call(&ws.id), new_call(&ws.id));
    for call in [&a, &b, &ended] {
        store.create_call(call).await.unwrap();
    }
    store
        .append_call_events_np(&ws.id, &a.id, vec![ev("call.dtmf", json!({"digits": "1"}))])
        .await
        .unwrap();
    store
        .append_call_events_np(
            &ws.id,
            &ended.id,
            vec![ev("call.completed", json!({"reason": "hangup"}))],
        )
        .await
        .unwrap();
    let recorders: Vec<Recorder> = (0..5)
        .map(|_| Recorder {
            seen: std::sync::Mutex::new(Vec::new()),
            fail: false,
        })
        .collect();
    let publish: Vec<&dyn crate::PublishInOrder> = recorders
        .iter()
        .map(|r| r as &dyn crate::PublishInOrder)
        .collect();
    let t = TurnId::new();
    let results = store
        .append_calls_events(
            &ws.id,
            vec![
                (
                    a.id.clone(),
                    vec![turn(&t, "hel", false), turn(&t, "hello", true)],
                ),
                (b.id.clone(), vec![ev("call.dtmf", json!({"digits": "2"}))]),
                (
                    ended.id.clone(),
                    vec![ev("call.dtmf", json!({"digits": "3"}))],
                ),
                (CallId::new(), vec![ev("call.dtmf", json!({"digits": "4"}))]),
                (b.id.clone(), vec![ev("call.dtmf", json!({"digits": "5"}))]),
            ],
            &publish,
        )
        .await
        .unwrap();
    let seqs = |r: &crate::Result<crate::Appended>| {
        r.as_ref()
            .map(|a| a.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>())
            .ok()
    };
    assert_eq!(seqs(&results[0]), Some(vec![2, 3]));
    assert_eq!(seqs(&results[1]), Some(vec![1]));
    assert!(
        matches!(results[2], Err(StoreError::CallEnded(_))),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(StoreError::NotFound)),
        "{:?}",
        results[3]
    );
    assert!(
        matches!(results[4], Err(StoreError::Invalid(_))),
        "a call twice: {:?}",
        results[4]
    );
    assert_eq!(*recorders[0].seen.lock().unwrap(), [2, 3]);
    assert_eq!(*recorders[1].seen.lock().unwrap(), [1]);
    assert!(recorders[2].seen.lock().unwrap().is_empty());
    assert_eq!(store.transcript(&ws.id, &a.id).await.unwrap().len(), 1);

    // Two groups over the same calls, in opposite orders, many times at once.
    let mut tasks = Vec::new();
    for k in 0..4 {
        let (store, ws, a, b) = (store.clone(), ws.id.clone(), a.id.clone(), b.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..5 {
                let order = if k % 2 == 0 {
                    vec![a.clone(), b.clone()]
                } else {
                    vec![b.clone(), a.clone()]
                };
                let batches = order
                    .iter()
                    .map(|c| (c.clone(), vec![ev("call.dtmf", json!({"digits": "6"}))]))
                    .collect();
                let results = store
                    .append_calls_events(&ws, batches, &[&crate::NoPublish, &crate::NoPublish])
                    .await
                    .unwrap();
                for (call, result) in order.iter().zip(results) {
                    got.push((call.clone(), result.unwrap().envelopes[0].seq));
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    for (call, before) in [(&a.id, 3u64), (&b.id, 1u64)] {
        let mut mine: Vec<u64> = all
            .iter()
            .filter(|(c, _)| c == call)
            .map(|(_, s)| *s)
            .collect();
        mine.sort_unstable();
        assert_eq!(
            mine,
            (before + 1..=before + 20).collect::<Vec<_>>(),
            "no seq shared or skipped"
        );
    }

    // A failed publish fails its batch: nothing of it is recorded and its seqs are never handed
    // out again. (A backend that appends the group in one transaction fails the whole group;
    // one that appends call by call, only that call's batch.)
    let failing = Recorder {
        seen: std::sync::Mutex::new(Vec::new()),
        fail: true,
    };
    let fine = Recorder {
        seen: std::sync::Mutex::new(Vec::new()),
        fail: false,
    };
    let t2 = TurnId::new();
    let results = store
        .append_calls_events(
            &ws.id,
            vec![
                (a.id.clone(), vec![turn(&t2, "lost", true)]),
                (b.id.clone(), vec![ev("call.dtmf", json!({"digits": "7"}))]),
            ],
            &[&failing, &fine],
        )
        .await
        .unwrap();
    assert!(
        matches!(results[0], Err(StoreError::Publish(_))),
        "{results:?}"
    );
    assert!(
        matches!(results[1], Ok(_) | Err(StoreError::Publish(_))),
        "{results:?}"
    );
    assert_eq!(
        store.transcript(&ws.id, &a.id).await.unwrap().len(),
        1,
        "nothing of the failed batch recorded"
    );
    let after = store
        .append_call_events_np(&ws.id, &a.id, vec![ev("call.dtmf", json!({"digits": "8"}))])
        .await
        .unwrap();
    assert_eq!(
        after.envelopes[0].seq, 25,
        "the failed batch's seq is burnt"
    );
}

/// An endpoint's fields change one at a time; a disabled endpoint's deliveries wait, pending,
/// and go out once it is enabled; a rotated secret signs beside the new one until its time.
pub async fn endpoints_change_pause_while_disabled_and_rotate_with_an_overlap(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let other = store.ensure_workspace("b").await.unwrap();
    let old_secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let endpoint = WebhookEndpoint {
        secret: old_secret.into(),
        description: "first".into(),
        ..endpoint(&ws.id, "whe_change", None)
    };
    store.create_webhook_endpoint(&endpoint).await.unwrap();
    let got = store
        .webhook_endpoint(&ws.id, "whe_change")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, endpoint);
    assert_eq!(
        store
            .webhook_endpoint(&other.id, "whe_change")
            .await
            .unwrap(),
        None,
        "another workspace's endpoint is not there"
    );
    let now = time::now();
    let changed = store
        .change_webhook_endpoint(
            &ws.id,
            "whe_change",
            &EndpointChange {
                url: Some("http://127.0.0.1:9/other".into()),
                event_types: Some(Some(vec!["call.dtmf".into()])),
                ..EndpointChange::default()
            },
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            changed.url.as_str(),
            changed.event_types.clone(),
            changed.description.as_str()
        ),
        (
            "http://127.0.0.1:9/other",
            Some(vec!["call.dtmf".to_owned()]),
            "first"
        )
    );
    assert_eq!(
        store
            .change_webhook_endpoint(&other.id, "whe_change", &EndpointChange::default(), now)
            .await
            .unwrap(),
        None
    );

    // Disabled: a queued delivery waits; a second disable keeps the first reason.
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    store
        .append_call_events_np(
            &ws.id,
            &call.id,
            vec![ev("call.dtmf", json!({"digits": "1"}))],
        )
        .await
        .unwrap();
    // Its row is due from the event's time, which is after the `now` above.
    let now = time::now();
    let disable = |reason: &str| EndpointChange {
        enabled: Some(false),
        disabled_reason: Some(reason.into()),
        ..EndpointChange::default()
    };
    let disabled = store
        .change_webhook_endpoint(&ws.id, "whe_change", &disable("paused by the API"), now)
        .await
        .unwrap()
        .unwrap();
    let again = store
        .change_webhook_endpoint(
            &ws.id,
            "whe_change",
            &disable("other"),
            now + chrono::Duration::seconds(5),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.disabled_at, again.disabled_reason.as_deref()),
        (disabled.disabled_at, Some("paused by the API"))
    );
    assert!(disabled.disabled_at.is_some());
    let lease = now + chrono::Duration::seconds(60);
    assert!(
        store
            .due_deliveries(now, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let enabled = store
        .change_webhook_endpoint(
            &ws.id,
            "whe_change",
            &EndpointChange {
                enabled: Some(true),
                ..EndpointChange::default()
            },
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((enabled.disabled_at, enabled.disabled_reason), (None, None));
    let due = store.due_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(due.len(), 1, "the waiting delivery goes out once enabled");
    assert_eq!(
        (due[0].secret.as_str(), due[0].previous_secret.as_deref()),
        (old_secret, None)
    );
    store
        .record_delivery(
            &due[0],
            now,
            &DeliveryResult::RetryAt {
                at: now,
                status: None,
                error: "x".into(),
            },
            &AttemptLog::default(),
        )
        .await
        .unwrap();

    // Rotated: the new secret signs, the old one beside it until its time, then not.
    let new_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let until = now + chrono::Duration::hours(24);
    let rotated = store
        .change_webhook_endpoint(
            &ws.id,
            "whe_change",
            &EndpointChange {
                rotate: Some((new_secret.into(), until)),
                ..EndpointChange::default()
            },
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            rotated.secret.as_str(),
            rotated.previous_secret.as_deref(),
            rotated.previous_secret_until
        ),
        (new_secret, Some(old_secret), Some(until))
    );
    let due = store.due_deliveries(now, lease, 10).await.unwrap();
    assert_eq!(
        (due[0].secret.as_str(), due[0].previous_secret.as_deref()),
        (new_secret, Some(old_secret))
    );
    store
        .record_delivery(
            &due[0],
            now,
            &DeliveryResult::RetryAt {
                at: now,
                status: None,
                error: "x".into(),
            },
            &AttemptLog::default(),
        )
        .await
        .unwrap();
    let after = until + chrono::Duration::seconds(1);
    let due = store
        .due_deliveries(after, after + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(
        (due[0].secret.as_str(), due[0].previous_secret.as_deref()),
        (new_secret, None),
        "the old secret stops at the end of the overlap"
    );
}

/// Several workers (nodes) draining the outbox at once never take the same delivery, and a
/// delivery claimed by a worker that died (never recorded) is due again once its lease ends.
pub async fn concurrent_claims_never_share_a_delivery_and_lapsed_leases_come_back(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let endpoint = endpoint(&ws.id, "whe_claims", None);
    store.create_webhook_endpoint(&endpoint).await.unwrap();
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let events: Vec<NewEvent> = (0..40)
        .map(|_| ev("call.dtmf", json!({"digits": "1"})))
        .collect();
    store
        .append_call_events_np(&ws.id, &call.id, events)
        .await
        .unwrap();
    let now = time::now();
    let lease = now + chrono::Duration::seconds(30);
    // Four workers, each claiming five at a time until nothing is due.
    let mut workers = Vec::new();
    for _ in 0..4 {
        let store = backend.open().await;
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let due = store.due_deliveries(now, lease, 5).await.unwrap();
                if due.is_empty() {
                    return mine;
                }
                mine.extend(due.into_iter().map(|d| d.event_id));
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        all.len(),
        40,
        "every delivery claimed once: {} claims",
        all.len()
    );
    assert_eq!(unique.len(), 40, "no delivery claimed twice");
    // Nobody recorded anything: after the lease they are all due again, once.
    assert!(
        store
            .due_deliveries(now, lease, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let later = lease + chrono::Duration::seconds(1);
    let again = store
        .due_deliveries(later, later + chrono::Duration::seconds(30), 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 40);
}

/// Concurrent appends to one conversation publish in seq order before they commit, as call
/// appends do; a failed publish records nothing, and its seqs are never handed out again.
/// A bus that already holds the seqs of the first batch it is given, and three more (a batch
/// that went out from a node whose transaction then failed): it refuses that batch with
/// `NotPublished::Taken` and takes every later one.
struct TakenOnce {
    refused: std::sync::atomic::AtomicBool,
    seen: std::sync::Mutex<Vec<u64>>,
}

impl TakenOnce {
    fn new() -> Self {
        Self {
            refused: std::sync::atomic::AtomicBool::new(false),
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> Vec<u64> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl crate::PublishInOrder for TakenOnce {
    async fn publish(
        &self,
        envelopes: &[Envelope],
    ) -> std::result::Result<(), crate::NotPublished> {
        if !self.refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::NotPublished::Taken {
                last: crate::last_seq_of(envelopes) + 3,
            });
        }
        self.seen
            .lock()
            .unwrap()
            .extend(envelopes.iter().map(|e| e.seq));
        Ok(())
    }
}

/// The bus holds seqs the store never recorded (another node's batch went out, then its
/// transaction failed before the burn of its seqs landed): an append whose numbering hits them
/// burns past them and numbers its events again, the same events, after them; nothing of the
/// refused try is kept. For a call alone, in a group, and for a conversation.
pub async fn a_batch_on_seqs_the_bus_held_is_numbered_after_them(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let dtmf = |d: &str| ev("call.dtmf", json!({"digits": d}));

    // One call: tried as 1..2 (the bus holds up to 5), numbered 6..7.
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let base = store
        .call(&ws.id, &call.id)
        .await
        .unwrap()
        .unwrap()
        .last_seq;
    let bus = TakenOnce::new();
    let events = vec![dtmf("1"), dtmf("2")];
    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let appended = store
        .append_call_events(&ws.id, &call.id, events, &bus)
        .await
        .unwrap();
    let seqs: Vec<u64> = appended.envelopes.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        vec![base + 6, base + 7],
        "numbered after the seqs the bus held"
    );
    assert_eq!(bus.seen(), seqs, "published once, under the new seqs");
    let kept: Vec<String> = appended
        .envelopes
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    assert_eq!(kept, ids, "the same events");
    let next = store
        .append_call_events_np(&ws.id, &call.id, vec![dtmf("3")])
        .await
        .unwrap();
    assert_eq!(
        next.envelopes[0].seq,
        base + 8,
        "and the next batch after them"
    );

    // A group: one call's publish hits taken seqs, and the whole group is numbered again.
    let (a, b) = (new_call(&ws.id), new_call(&ws.id));
    for c in [&a, &b] {
        store.create_call(c).await.unwrap();
    }
    let (a0, b0) = (
        store.call(&ws.id, &a.id).await.unwrap().unwrap().last_seq,
        store.call(&ws.id, &b.id).await.unwrap().unwrap().last_seq,
    );
    let plain = Recorder {
        seen: std::sync::Mutex::new(Vec::new()),
        fail: false,
    };
    let taken = TakenOnce::new();
    let (first, second) = if a.id.as_str() < b.id.as_str() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let results = store
        .append_calls_events(
            &ws.id,
            vec![
                (first.id.clone(), vec![dtmf("4")]),
                (second.id.clone(), vec![dtmf("5"), dtmf("6")]),
            ],
            &[&plain, &taken],
        )
        .await
        .unwrap();
    let got: Vec<Vec<u64>> = results
        .into_iter()
        .map(|r| r.unwrap().envelopes.iter().map(|e| e.seq).collect())
        .collect();
    let (f0, s0) = if first.id == a.id { (a0, b0) } else { (b0, a0) };
    // The call whose publish went through may have been numbered again with the group (its
    // first try burnt) or kept (a store that appends a group call by call): either way once,
    // under the seq it was given, and after its earlier events.
    assert_eq!(
        got[1],
        vec![s0 + 6, s0 + 7],
        "the held call after what the bus held"
    );
    let published = plain.seen.lock().unwrap().clone();
    assert_eq!(
        published.last(),
        got[0].last(),
        "the other under the seq it was given"
    );
    assert!(got[0][0] > f0 && got[0][0] <= f0 + 2, "{got:?}");
    assert_eq!(taken.seen(), vec![s0 + 6, s0 + 7]);

    // A conversation.
    let c = Conversation {
        id: ConversationId::new(),
        workspace_id: ws.id.clone(),
        channel: Channel::Sms,
        participants: vec!["+14155550123".into()],
        mode: ConversationMode::Ai,
        created_at: time::now(),
        last_seq: 0,
    };
    store.create_conversation(&c).await.unwrap();
    let bus = TakenOnce::new();
    let message =
        json!({"message_id": "m1", "direction": "inbound", "status": "received", "text": "hi"});
    let appended = store
        .append_conversation_events(&ws.id, &c.id, vec![ev("message.received", message)], &bus)
        .await
        .unwrap();
    assert_eq!(
        appended.envelopes[0].seq, 5,
        "tried as 1, the bus held up to 4"
    );
    assert_eq!(bus.seen(), vec![5]);
}

pub async fn conversation_appends_publish_in_seq_order(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let c = Conversation {
        id: ConversationId::new(),
        workspace_id: ws.id.clone(),
        channel: Channel::Sms,
        participants: vec!["+14155550123".into()],
        mode: ConversationMode::Ai,
        created_at: time::now(),
        last_seq: 0,
    };
    store.create_conversation(&c).await.unwrap();
    let recorder = Arc::new(Recorder {
        seen: std::sync::Mutex::new(Vec::new()),
        fail: false,
    });
    let mut tasks = Vec::new();
    for worker in 0..3 {
        let (store, ws, id, recorder) =
            (store.clone(), ws.id.clone(), c.id.clone(), recorder.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..4 {
                let message = json!({"message_id": format!("m{worker}_{n}"),
                                     "direction": "inbound", "status": "received", "text": "hi"});
                store
                    .append_conversation_events(
                        &ws,
                        &id,
                        vec![ev("message.received", message)],
                        recorder.as_ref(),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        (1..=12).collect::<Vec<u64>>()
    );
    let failing = Recorder {
        seen: std::sync::Mutex::new(Vec::new()),
        fail: true,
    };
    let lost =
        json!({"message_id": "lost", "direction": "inbound", "status": "received", "text": "x"});
    assert!(matches!(
        store
            .append_conversation_events(&ws.id, &c.id, vec![ev("message.received", lost)], &failing)
            .await,
        Err(StoreError::Publish(_))
    ));
    let history = store.messages(&ws.id, &c.id).await.unwrap();
    assert_eq!(history.len(), 12, "the failed append recorded no message");
    // Its seq is burnt, never handed out again.
    assert_eq!(
        store
            .conversation(&ws.id, &c.id)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        13
    );
}

/// At most `max` places per call and kind, whoever takes them at once; another call, another
/// kind and another workspace count apart; a released or expired place can be taken again, and
/// an expired holder cannot renew.
pub async fn connection_places_are_limited_per_call_and_come_back(backend: &dyn Backend) {
    let store = backend.open().await;
    let ws = store.ensure_workspace("a").await.unwrap();
    let call = new_call(&ws.id);
    store.create_call(&call).await.unwrap();
    let now = time::now();
    let until = now + chrono::Duration::seconds(30);
    // Twelve takers at once (as on several nodes) for ten places.
    let mut takers = Vec::new();
    for n in 0..12 {
        let store = backend.open().await;
        let (ws, call) = (ws.id.clone(), call.id.clone());
        takers.push(tokio::spawn(async move {
            store
                .take_place(
                    &ws,
                    &call,
                    "live_transcript",
                    10,
                    &format!("h{n}"),
                    until,
                    now,
                )
                .await
                .unwrap()
        }));
    }
    let mut taken = 0;
    for t in takers {
        taken += usize::from(t.await.unwrap());
    }
    assert_eq!(taken, 10, "ten places, whoever asked at once");
    let take = |holder: &'static str, kind: &'static str, at| {
        let (store, ws, call) = (store.clone(), ws.id.clone(), call.id.clone());
        async move {
            store
                .take_place(
                    &ws,
                    &call,
                    kind,
                    10,
                    holder,
                    at + chrono::Duration::seconds(30),
                    at,
                )
                .await
                .unwrap()
        }
    };
    assert!(!take("late", "live_transcript", now).await);
    assert!(take("other-kind", "other", now).await, "kinds count apart");
    // A place given back can be taken.
    let holders: Vec<String> = (0..12).map(|n| format!("h{n}")).collect();
    for h in &holders {
        store.release_place(&ws.id, h).await.unwrap();
    }
    assert!(take("after-release", "live_transcript", now).await);
    // Another workspace can neither see nor free these places.
    let other = store.ensure_workspace("b").await.unwrap();
    store
        .release_place(&other.id, "after-release")
        .await
        .unwrap();
    assert!(
        !store
            .renew_place(&other.id, "after-release", until)
            .await
            .unwrap(),
        "another workspace renewed a place it does not hold"
    );
    assert!(
        store
            .renew_place(&ws.id, "after-release", until)
            .await
            .unwrap()
    );
    // Fill up, then let the leases lapse: the places come back, and a lapsed holder cannot
    // renew once another took its place.
    for n in 0..9 {
        let holder: &'static str = Box::leak(format!("f{n}").into_boxed_str());
        assert!(take(holder, "live_transcript", now).await);
    }
    assert!(!take("full", "live_transcript", now).await);
    let later = until + chrono::Duration::seconds(1);
    assert!(take("after-expiry", "live_transcript", later).await);
    assert!(!store.renew_place(&ws.id, "f0", later).await.unwrap());
}

/// Calls with no recorded event since a time are found across workspaces, the longest idle
/// first; a touch keeps a call from them, and an ended call is never among them.
pub async fn idle_live_calls_of_every_workspace_are_found_and_touches_keep_them(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let a = store.ensure_workspace("a").await.unwrap();
    let b = store.ensure_workspace("b").await.unwrap();
    let hour_ago = time::now() - chrono::Duration::hours(1);
    let mut calls = Vec::new();
    for (ws, minutes) in [(&a, 50), (&b, 55), (&a, 40), (&b, 30)] {
        let mut call = new_call(&ws.id);
        call.started_at = hour_ago + chrono::Duration::minutes(minutes);
        store.create_call(&call).await.unwrap();
        calls.push(call);
    }
    // The first is touched recently; the last ends.
    store
        .touch_calls(&[(a.id.clone(), calls[0].id.clone(), time::now())])
        .await
        .unwrap();
    store
        .append_call_events_np(&b.id, &calls[3].id, vec![ev("call.completed", json!({}))])
        .await
        .unwrap();
    let cutoff = hour_ago + chrono::Duration::minutes(58);
    let stale = store.stale_calls(cutoff, 10).await.unwrap();
    let want = vec![
        (a.id.clone(), calls[2].id.clone()),
        (b.id.clone(), calls[1].id.clone()),
    ];
    assert_eq!(
        stale, want,
        "idle calls of both workspaces, longest idle first"
    );
    assert_eq!(store.stale_calls(cutoff, 1).await.unwrap(), want[..1]);
    // A touch of an ended call changes nothing; a touch of a stale one takes it out.
    store
        .touch_calls(&[
            (b.id.clone(), calls[3].id.clone(), hour_ago),
            (a.id.clone(), calls[2].id.clone(), time::now()),
        ])
        .await
        .unwrap();
    assert_eq!(store.stale_calls(cutoff, 10).await.unwrap(), want[1..]);
    // A touch naming the wrong workspace touches nothing.
    store
        .touch_calls(&[(a.id.clone(), calls[1].id.clone(), time::now())])
        .await
        .unwrap();
    assert_eq!(store.stale_calls(cutoff, 10).await.unwrap(), want[1..]);
}

/// The worker records what finished meanwhile in one write: each outcome lands on its own
/// message, in its own workspace (on PostgreSQL, under that workspace's row-level security),
/// callbacks beside endpoints.
pub async fn outcomes_recorded_together_each_land_in_their_own_workspace(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut workspaces = Vec::new();
    for name in ["a", "b"] {
        let ws = store.ensure_workspace(name).await.unwrap();
        store
            .create_webhook_endpoint(&endpoint(
                &ws.id,
                &format!("whe_{name}"),
                Some(&["call.dtmf"]),
            ))
            .await
            .unwrap();
        let call = new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        store
            .append_call_events_np(
                &ws.id,
                &call.id,
                vec![ev("call.dtmf", json!({"digits": "1"}))],
            )
            .await
            .unwrap();
        workspaces.push(ws.id);
    }
    store
        .queue_callback(&CallbackMessage {
            id: "msg_1".into(),
            workspace_id: workspaces[0].clone(),
            url: "http://127.0.0.1:9/status".into(),
            method: CallbackMethod::Post,
            body: "Event=StartStream".into(),
            kind: "StartStream".into(),
            created_at: time::now(),
        })
        .await
        .unwrap();
    let now = time::now();
    let due = store
        .due_deliveries(now, now + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 3);
    let retry = now + chrono::Duration::seconds(30);
    let outcome = |d: &crate::Delivery| match &d.target {
        DeliveryTarget::Endpoint(e) if e == "whe_b" => DeliveryResult::RetryAt {
            at: retry,
            status: Some(503),
            error: "HTTP 503".into(),
        },
        _ => DeliveryResult::Delivered { status: 204 },
    };
    let results: Vec<DeliveryResult> = due.iter().map(outcome).collect();
    let logs: Vec<AttemptLog> = due
        .iter()
        .zip(&results)
        .map(|(d, r)| AttemptLog {
            latency_ms: 7,
            error_kind: (!matches!(r, DeliveryResult::Delivered { .. }))
                .then(|| "http_status".to_owned()),
            response_body: format!("answer for {}", d.workspace_id.as_str()),
        })
        .collect();
    let attempted: Vec<Attempted<'_>> = due
        .iter()
        .zip(results.iter().zip(&logs))
        .map(|(delivery, (result, log))| Attempted {
            delivery,
            at: now,
            result,
            log,
        })
        .collect();
    store.record_deliveries(&attempted).await.unwrap();

    let (delivered, _) = messages(
        &*store,
        &workspaces[0],
        "whe_a",
        Some(MessageState::Delivered),
    )
    .await;
    assert_eq!(delivered.len(), 1, "workspace a's message is delivered");
    let (failing, _) = messages(
        &*store,
        &workspaces[1],
        "whe_b",
        Some(MessageState::Failing),
    )
    .await;
    assert_eq!(
        (
            failing.len(),
            failing[0].attempts,
            failing[0].next_attempt_at
        ),
        (1, 1, Some(retry)),
        "workspace b's message waits for its retry"
    );
    let log = store
        .webhook_attempts(&workspaces[1], "whe_b", &failing[0].event_id)
        .await
        .unwrap()
        .expect("the message exists");
    assert_eq!(
        log.iter()
            .map(|a| (a.status_code, a.response_body.as_str()))
            .collect::<Vec<_>>(),
        [(
            Some(503),
            format!("answer for {}", workspaces[1].as_str()).as_str()
        )],
        "each attempt is logged in its own workspace"
    );
    // Only b's message is due at its retry: the callback and a's message are done.
    let later = store
        .due_deliveries(retry, retry + chrono::Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(
        later
            .iter()
            .map(|d| (d.workspace_id.clone(), d.target.clone()))
            .collect::<Vec<_>>(),
        [(
            workspaces[1].clone(),
            DeliveryTarget::Endpoint("whe_b".into())
        )]
    );
    // An empty batch writes nothing and succeeds.
    store.record_deliveries(&[]).await.unwrap();
}

/// Two nodes' recorders, each with a batch over the same two endpoints, in opposite orders and
/// at the same moment: both commit. (A batch holds the endpoint rows it changes until it
/// commits; taken in the order they came, one batch would lock the first endpoint and the
/// other the second, each then waiting for the other, and PostgreSQL would fail one of them.)
pub async fn two_nodes_record_batches_over_the_same_endpoints_in_opposite_orders(
    backend: &dyn Backend,
) {
    let (node_a, node_b) = (backend.open().await, backend.open().await);
    for round in 0..12 {
        // A workspace per round: its endpoints get only this round's events.
        let ws = node_a
            .ensure_workspace(&format!("round-{round}"))
            .await
            .unwrap();
        let call = new_call(&ws.id);
        node_a.create_call(&call).await.unwrap();
        let ids = [format!("whe_{round}_1"), format!("whe_{round}_2")];
        for id in &ids {
            node_a
                .create_webhook_endpoint(&endpoint(&ws.id, id, None))
                .await
                .unwrap();
        }
        node_a
            .append_call_events_np(
                &ws.id,
                &call.id,
                vec![
                    ev("call.dtmf", json!({"digits": "1"})),
                    ev("call.dtmf", json!({"digits": "2"})),
                ],
            )
            .await
            .unwrap();
        let now = time::now();
        let mut due = node_a
            .due_deliveries(now, now + chrono::Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(
            due.len(),
            4,
            "two events for each of the round's two endpoints"
        );
        due.sort_by(|x, y| x.event_id.cmp(&y.event_id));
        let endpoint_of = |d: &crate::Delivery| match &d.target {
            DeliveryTarget::Endpoint(e) => e.clone(),
            DeliveryTarget::Callback(_) => String::new(),
        };
        // Node A: the first event's deliveries, first endpoint first; node B: the second
        // event's, second endpoint first. Every attempt failed: each changes its endpoint.
        let mut first: Vec<&crate::Delivery> = due[..2].iter().collect();
        first.sort_by_key(|d| endpoint_of(d));
        let mut second: Vec<&crate::Delivery> = due[2..].iter().collect();
        second.sort_by_key(|d| std::cmp::Reverse(endpoint_of(d)));
        let result = DeliveryResult::RetryAt {
            at: now + chrono::Duration::seconds(30),
            status: Some(500),
            error: "HTTP 500".into(),
        };
        let log = AttemptLog::default();
        let (a, b) = (
            batch(&first, now, &result, &log),
            batch(&second, now, &result, &log),
        );
        let (ra, rb) = tokio::join!(node_a.record_deliveries(&a), node_b.record_deliveries(&b));
        assert!(
            ra.is_ok() && rb.is_ok(),
            "round {round}: both batches commit: {ra:?}, {rb:?}"
        );
        for id in &ids {
            let (failing, _) = messages(&*node_a, &ws.id, id, Some(MessageState::Failing)).await;
            assert_eq!(
                failing.len(),
                2,
                "round {round}: both of {id}'s attempts recorded"
            );
        }
    }
}

/// One node's batch: every delivery with the same outcome.
fn batch<'a>(
    deliveries: &[&'a crate::Delivery],
    at: chrono::DateTime<chrono::Utc>,
    result: &'a DeliveryResult,
    log: &'a AttemptLog,
) -> Vec<Attempted<'a>> {
    deliveries
        .iter()
        .map(|&delivery| Attempted {
            delivery,
            at,
            result,
            log,
        })
        .collect()
}
