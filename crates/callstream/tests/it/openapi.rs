//! The OpenAPI description (`/openapi.json`) against the gateway that serves it: every route is
//! described (or is a stream, described in AsyncAPI), every described method is routed and no
//! other, every example validates against its schema, and every operation, exercised with its
//! documented request example where it has one, answers with a body its schema describes, no
//! undocumented field allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::audio_streams::Service;
use crate::support::{TestServer, obedient_runtime, transcription};

/// The description as served, and the operations the walk exercised.
struct Described {
    spec: Value,
    /// `components.schemas`, made strict: an object may carry only the fields it describes.
    strict: Value,
    exercised: BTreeSet<(String, String)>,
}

/// `#/components/schemas/Name` → `Name`.
fn ref_name(schema: &Value) -> Option<&str> {
    schema
        .get("$ref")?
        .as_str()?
        .strip_prefix("#/components/schemas/")
}

/// `node` with every `allOf` of objects (a flattened struct) merged into one object, so that it
/// can be closed like any other.
fn merge_all_of(node: &mut Value, schemas: &Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(parts)) = map.get("allOf").cloned() {
                let mut properties = Map::new();
                let mut required = Vec::new();
                let mut objects = true;
                for part in &parts {
                    let part = ref_name(part).map_or(part, |n| &schemas[n]);
                    match part.get("properties").and_then(Value::as_object) {
                        Some(p) => {
                            properties.extend(p.clone());
                            required
                                .extend(part["required"].as_array().cloned().unwrap_or_default());
                        }
                        None => objects = false,
                    }
                }
                if objects {
                    map.remove("allOf");
                    map.insert("type".to_owned(), json!("object"));
                    map.insert("properties".to_owned(), Value::Object(properties));
                    map.insert("required".to_owned(), Value::Array(required));
                }
            }
            map.values_mut().for_each(|v| merge_all_of(v, schemas));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| merge_all_of(v, schemas)),
        _ => {}
    }
}

/// Closes every object schema under `node`: no field it does not describe.
fn close(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.contains_key("properties") {
                map.entry("additionalProperties").or_insert(json!(false));
            }
            map.values_mut().for_each(close);
        }
        Value::Array(items) => items.iter_mut().for_each(close),
        _ => {}
    }
}

/// `schema` made strict: flattened structs merged, every object closed.
fn strictly(schema: &Value, schemas: &Value) -> Value {
    let mut strict = schema.clone();
    merge_all_of(&mut strict, schemas);
    close(&mut strict);
    strict
}

impl Described {
    async fn load(ts: &TestServer) -> Self {
        let r = ts.http.get(ts.url("/openapi.json")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let spec: Value = r.json().await.unwrap();
        assert_eq!(spec["openapi"], "3.1.0");
        let schemas = &spec["components"]["schemas"];
        let strict = strictly(schemas, schemas);
        let mut exercised = BTreeSet::new();
        exercised.insert(("/openapi.json".to_owned(), "get".to_owned()));
        Self {
            strict,
            spec,
            exercised,
        }
    }

    fn operation(&self, path: &str, method: &str) -> &Value {
        let op = &self.spec["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        op
    }

    /// `schema` as a document of its own that can resolve the components (made strict).
    fn rooted(&self, schema: &Value) -> Value {
        let mut top = strictly(schema, &self.spec["components"]["schemas"]);
        top["components"] = json!({ "schemas": self.strict });
        top
    }

    fn validate(&self, what: &str, schema: &Value, instance: &Value) {
        let root = self.rooted(schema);
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("{what}: the schema does not compile: {e}\n{root:#}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the body does not match its schema:\n{}\nbody: {instance:#}",
            errors.join("\n")
        );
    }

    /// Checks an answer of `method path` (as described) against what its status promises.
    fn answer(&mut self, path: &str, method: &str, status: u16, body: &Value) {
        let op = self.operation(path, method).clone();
        let response = &op["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which it does not describe: {body}"
        );
        if let Some(schema) = response["content"]["application/json"]["schema"].as_object() {
            self.validate(
                &format!("{method} {path} {status}"),
                &Value::Object(schema.clone()),
                body,
            );
        }
        // A success, or a redirect (`/demo`): the operation did what it is for.
        if (200..400).contains(&status) {
            self.exercised.insert((path.to_owned(), method.to_owned()));
        }
    }

    /// The request body example of `method path`: the operation's own, else its schema's.
    fn example(&self, path: &str, method: &str) -> Value {
        let content = &self.operation(path, method)["requestBody"]["content"];
        let media = content
            .as_object()
            .and_then(|c| c.values().next())
            .unwrap_or_else(|| panic!("{method} {path} has no request body"));
        if let Some(e) = media.get("example") {
            return e.clone();
        }
        let schema = &media["schema"];
        let schema = ref_name(schema).map_or(schema, |n| &self.spec["components"]["schemas"][n]);
        schema
            .get("example")
            .or_else(|| schema["examples"].get(0))
            .unwrap_or_else(|| panic!("{method} {path}: no request example"))
            .clone()
    }

    /// Every example in the description validates against the schema beside it.
    fn check_examples(&self) {
        let mut checked = 0;
        for (name, schema) in self.spec["components"]["schemas"].as_object().unwrap() {
            let examples = schema
                .get("example")
                .into_iter()
                .chain(schema["examples"].as_array().into_iter().flatten());
            for example in examples {
                self.validate(
                    &format!("the example of {name}"),
                    &json!({"$ref": format!("#/components/schemas/{name}")}),
                    example,
                );
                checked += 1;
            }
        }
        for (path, item) in self.spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let requests = op["requestBody"]["content"]
                    .as_object()
                    .into_iter()
                    .flatten();
                for (_, media) in requests {
                    if let (Some(example), Some(schema)) =
                        (media.get("example"), media.get("schema"))
                    {
                        self.validate(&format!("an example of {method} {path}"), schema, example);
                        checked += 1;
                    }
                }
                for (status, response) in op["responses"].as_object().unwrap() {
                    let media = &response["content"]["application/json"];
                    if let (Some(example), Some(schema)) =
                        (media.get("example"), media.get("schema"))
                    {
                        self.validate(
                            &format!("the {status} example of {method} {path}"),
                            schema,
                            example,
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 20, "only {checked} examples");
    }
}

/// Sends a request as `key` (a bearer) and returns the status and the JSON body (null if none).
async fn send(
    ts: &TestServer,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = ts
        .http
        .request(method, ts.url(path))
        .timeout(Duration::from_secs(20));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The path literals `app()` routes with a plain `.route(…)` (outside its tests): not described
/// by construction, as `routes!(…)` entries are.
fn plainly_routed() -> Vec<String> {
    let source = include_str!("../../../callstream-server/src/lib.rs");
    let source = source.split("#[cfg(test)]").next().unwrap();
    let mut paths = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let literal = rest.trim_start();
        if let Some(literal) = literal.strip_prefix('"') {
            paths.push(literal[..literal.find('"').unwrap()].to_owned());
        }
    }
    paths
}

#[tokio::test]
async fn every_route_is_described_and_every_described_method_is_routed() {
    let ts = TestServer::start().await;
    let described = Described::load(&ts).await;
    let paths: BTreeMap<String, Value> = described.spec["paths"]
        .as_object()
        .unwrap()
        .clone()
        .into_iter()
        .collect();

    // A route added with `.route` is a stream (AsyncAPI) or an alias of a described path.
    let plain = plainly_routed();
    assert!(
        plain.len() >= callstream_server::STREAM_PATHS.len(),
        "{plain:?}"
    );
    for path in &plain {
        assert!(
            callstream_server::STREAM_PATHS.contains(&path.as_str())
                || paths.contains_key(&format!("{path}/")),
            "{path} is routed but described neither in OpenAPI nor in AsyncAPI"
        );
    }
    for stream in callstream_server::STREAM_PATHS {
        assert!(!paths.contains_key(*stream), "{stream} belongs to AsyncAPI");
    }

    // Each described path answers each described method with its handler, and every other
    // method with 405.
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    assert!(paths.len() >= 30, "{} paths", paths.len());
    // Every operation has an id of its own (client generators name their methods after it).
    let mut ids = BTreeSet::new();
    for item in paths.values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} is used twice");
        }
    }
    for (path, item) in &paths {
        let concrete = path
            .replace("{id}", "x_unknown")
            .replace("{event_id}", "evt_unknown")
            .replace("{auth_id}", "MAUNKNOWN")
            .replace("{call_uuid}", "call_unknown")
            .replace("{stream_id}", "unknown");
        assert!(!concrete.contains('{'), "{path}");
        for method in &methods {
            let name = method.as_str().to_ascii_lowercase();
            let r = ts
                .http
                .request(method.clone(), ts.url(&concrete))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if item.get(&name).is_some() {
                assert!(
                    status != 405 && !body.contains("no such endpoint"),
                    "{name} {path} is described but not routed: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{name} {path} is routed but not described: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_example_validates_and_every_operation_answers_as_described() {
    let ts = TestServer::start().await;
    let mut d = Described::load(&ts).await;
    d.check_examples();
    let (api, rt) = (ts.acme.api.clone(), ts.acme.runtime.clone());

    // Operations.
    for path in ["/healthz", "/readyz"] {
        let (status, body) = send(&ts, Method::GET, path, None, None).await;
        d.answer(path, "get", status, &body);
    }
    for path in [
        "/metrics",
        "/",
        "/assets/dashboard.js",
        "/assets/dashboard.css",
    ] {
        let (status, _) = send(&ts, Method::GET, path, None, None).await;
        d.answer(path, "get", status, &Value::Null);
    }
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects.get(ts.url("/demo")).send().await.unwrap();
    d.answer("/demo", "get", r.status().as_u16(), &Value::Null);

    // Calls, with the documented examples.
    let example = d.example("/v1/calls", "post");
    let (status, call) = send(&ts, Method::POST, "/v1/calls", Some(&rt), Some(&example)).await;
    d.answer("/v1/calls", "post", status, &call);
    assert_eq!(status, 201, "{call}");
    let id = call["id"].as_str().unwrap().to_owned();
    let example = d.example("/v1/calls/{id}/events", "post");
    let events = format!("/v1/calls/{id}/events");
    let (status, body) = send(&ts, Method::POST, &events, Some(&rt), Some(&example)).await;
    d.answer("/v1/calls/{id}/events", "post", status, &body);
    assert_eq!(status, 202, "{body}");
    let batch = json!([transcription("agent", "Nine to five.", true, "trn_2")]);
    let (status, body) = send(&ts, Method::POST, &events, Some(&rt), Some(&batch)).await;
    d.answer("/v1/calls/{id}/events", "post", status, &body);
    for (path, template) in [
        ("/v1/calls?limit=5".to_owned(), "/v1/calls"),
        (format!("/v1/calls/{id}"), "/v1/calls/{id}"),
        (
            format!("/v1/calls/{id}/transcript"),
            "/v1/calls/{id}/transcript",
        ),
        ("/v1/workspace".to_owned(), "/v1/workspace"),
    ] {
        let (status, body) = send(&ts, Method::GET, &path, Some(&api), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        d.answer(template, "get", status, &body);
    }
    let mut example = d.example("/v1/stream-tokens", "post");
    example["call_id"] = json!(id);
    let (status, body) = send(
        &ts,
        Method::POST,
        "/v1/stream-tokens",
        Some(&api),
        Some(&example),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    d.answer("/v1/stream-tokens", "post", status, &body);
    let runtime = obedient_runtime(&ts).await;
    let example = d.example("/v1/calls/{id}/commands", "post");
    let commands = format!("/v1/calls/{id}/commands");
    let (status, body) = send(&ts, Method::POST, &commands, Some(&api), Some(&example)).await;
    assert_eq!(status, 200, "{body}");
    d.answer("/v1/calls/{id}/commands", "post", status, &body);
    runtime.abort();

    // Refusals, in the error shape.
    let (status, body) = send(&ts, Method::GET, "/v1/calls/call_unknown", Some(&api), None).await;
    d.answer("/v1/calls/{id}", "get", status, &body);
    let (status, body) = send(&ts, Method::GET, "/v1/calls", Some("pk_live_nope"), None).await;
    d.answer("/v1/calls", "get", status, &body);
    let bad = json!({"event_type": "call.transcription", "payload": {"role": "bot"}});
    let (status, body) = send(&ts, Method::POST, &events, Some(&rt), Some(&bad)).await;
    d.answer("/v1/calls/{id}/events", "post", status, &body);

    // Keys, with an admin key.
    let admin = {
        let store = ts.server().state().store();
        let ws = store.ensure_workspace("acme").await.unwrap();
        let key =
            callstream_server::auth::mint_with(&ws.id, callstream_core::KeyKind::Api, true, None);
        store.insert_key(&key.record).await.unwrap();
        key.secret
    };
    let example = d.example("/v1/keys", "post");
    let (status, key) = send(&ts, Method::POST, "/v1/keys", Some(&admin), Some(&example)).await;
    assert_eq!(status, 201, "{key}");
    d.answer("/v1/keys", "post", status, &key);
    let (status, body) = send(&ts, Method::GET, "/v1/keys", Some(&admin), None).await;
    d.answer("/v1/keys", "get", status, &body);
    let (status, body) = send(&ts, Method::GET, "/v1/keys", Some(&api), None).await;
    d.answer("/v1/keys", "get", status, &body);
    let revoke = format!("/v1/keys/{}", key["key_id"].as_str().unwrap());
    let (status, body) = send(&ts, Method::DELETE, &revoke, Some(&admin), None).await;
    d.answer("/v1/keys/{id}", "delete", status, &body);

    // Conversations.
    let example = d.example("/v1/conversations", "post");
    let (status, conv) = send(
        &ts,
        Method::POST,
        "/v1/conversations",
        Some(&rt),
        Some(&example),
    )
    .await;
    assert_eq!(status, 201, "{conv}");
    d.answer("/v1/conversations", "post", status, &conv);
    let conv_id = conv["id"].as_str().unwrap().to_owned();
    let example = d.example("/v1/conversations/{id}/events", "post");
    let path = format!("/v1/conversations/{conv_id}/events");
    let (status, body) = send(&ts, Method::POST, &path, Some(&rt), Some(&example)).await;
    assert_eq!(status, 202, "{body}");
    d.answer("/v1/conversations/{id}/events", "post", status, &body);
    for (path, template) in [
        ("/v1/conversations".to_owned(), "/v1/conversations"),
        (
            format!("/v1/conversations/{conv_id}"),
            "/v1/conversations/{id}",
        ),
    ] {
        let (status, body) = send(&ts, Method::GET, &path, Some(&api), None).await;
        assert_eq!(status, 200, "{body}");
        d.answer(template, "get", status, &body);
    }
    let example = d.example("/v1/conversations/{id}/mode", "post");
    let path = format!("/v1/conversations/{conv_id}/mode");
    let (status, body) = send(&ts, Method::POST, &path, Some(&api), Some(&example)).await;
    assert_eq!(status, 200, "{body}");
    d.answer("/v1/conversations/{id}/mode", "post", status, &body);
    let (status, body) = send(&ts, Method::POST, &path, Some(&api), Some(&example)).await;
    d.answer("/v1/conversations/{id}/mode", "post", status, &body);

    // Webhooks, to a receiver on 127.0.0.1 (the example's own URL would be refused here: the
    // test server may not resolve it).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
        axum::serve(listener, app).await
    });
    let mut example = d.example("/v1/webhook-endpoints", "post");
    example["url"] = json!(receiver);
    example["event_types"] = json!(["call.dtmf"]);
    let (status, hook) = send(
        &ts,
        Method::POST,
        "/v1/webhook-endpoints",
        Some(&api),
        Some(&example),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    d.answer("/v1/webhook-endpoints", "post", status, &hook);
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    let one = format!("/v1/webhook-endpoints/{hook_id}");
    let (status, body) = send(&ts, Method::GET, "/v1/webhook-endpoints", Some(&api), None).await;
    d.answer("/v1/webhook-endpoints", "get", status, &body);
    let (status, body) = send(&ts, Method::GET, &one, Some(&api), None).await;
    d.answer("/v1/webhook-endpoints/{id}", "get", status, &body);
    let example = d.example("/v1/webhook-endpoints/{id}", "patch");
    let (status, body) = send(&ts, Method::PATCH, &one, Some(&api), Some(&example)).await;
    assert_eq!(status, 200, "{body}");
    d.answer("/v1/webhook-endpoints/{id}", "patch", status, &body);
    for action in ["disable", "enable", "rotate-secret"] {
        let (status, body) = send(
            &ts,
            Method::POST,
            &format!("{one}/{action}"),
            Some(&api),
            None,
        )
        .await;
        assert_eq!(status, 200, "{action}: {body}");
        d.answer(
            &format!("/v1/webhook-endpoints/{{id}}/{action}"),
            "post",
            status,
            &body,
        );
    }
    ts.ingest(
        &id,
        json!({"event_type": "call.dtmf", "payload": {"digits": "7"}}),
    )
    .await;
    let messages = format!("{one}/messages");
    let mut event_id = String::new();
    for _ in 0..200 {
        let (status, body) = send(&ts, Method::GET, &messages, Some(&api), None).await;
        d.answer("/v1/webhook-endpoints/{id}/messages", "get", status, &body);
        if body["messages"][0]["state"] == "delivered" {
            event_id = body["messages"][0]["event_id"].as_str().unwrap().to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!event_id.is_empty(), "the message was never delivered");
    let (status, body) = send(
        &ts,
        Method::GET,
        &format!("{messages}/{event_id}/attempts"),
        Some(&api),
        None,
    )
    .await;
    assert_eq!(body["attempts"].as_array().map(Vec::len), Some(1), "{body}");
    d.answer(
        "/v1/webhook-endpoints/{id}/messages/{event_id}/attempts",
        "get",
        status,
        &body,
    );
    let (status, body) = send(
        &ts,
        Method::POST,
        &format!("{messages}/{event_id}/retry"),
        Some(&api),
        None,
    )
    .await;
    d.answer(
        "/v1/webhook-endpoints/{id}/messages/{event_id}/retry",
        "post",
        status,
        &body,
    );
    let example = d.example("/v1/webhook-endpoints/{id}/replay", "post");
    let (status, body) = send(
        &ts,
        Method::POST,
        &format!("{one}/replay"),
        Some(&api),
        Some(&example),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    d.answer("/v1/webhook-endpoints/{id}/replay", "post", status, &body);
    let (status, body) = send(&ts, Method::DELETE, &one, Some(&api), None).await;
    d.answer("/v1/webhook-endpoints/{id}", "delete", status, &body);
    let (status, body) = send(&ts, Method::GET, &one, Some(&api), None).await;
    d.answer("/v1/webhook-endpoints/{id}", "get", status, &body);

    // The session.
    let (status, cookie, body) = ts.sign_in(&api).await;
    d.answer("/v1/session", "post", status, &body);
    let cookie = cookie.unwrap();
    for with_cookie in [true, false] {
        let mut request = ts.http.get(ts.url("/v1/session"));
        if with_cookie {
            request = request.header("cookie", &cookie);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["signed_in"], with_cookie, "{body}");
        d.answer("/v1/session", "get", status, &body);
    }
    let r = ts
        .http
        .delete(ts.url("/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    d.answer("/v1/session", "delete", r.status().as_u16(), &Value::Null);

    // Seed 004's audio streams, to a WebSocket service on 127.0.0.1.
    let service = Service::start().await;
    let auth_id = ts.auth_id().await;
    let streams = ts.streams_path(&auth_id, &id);
    let mut example = d.example("/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/", "post");
    example["service_url"] = json!(service.url);
    let template = "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/";
    let one_template = "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/{stream_id}/";
    let (status, started) = ts.stream_api(Method::POST, &streams, Some(&example)).await;
    assert_eq!(status, 201, "{started}");
    d.answer(template, "post", status, &started);
    let (status, body) = ts.stream_api(Method::GET, &streams, None).await;
    d.answer(template, "get", status, &body);
    let stream = format!("{streams}{}/", started["stream_id"].as_str().unwrap());
    let (status, body) = ts.stream_api(Method::GET, &stream, None).await;
    d.answer(one_template, "get", status, &body);
    let (status, body) = ts.stream_api(Method::DELETE, &stream, None).await;
    d.answer(one_template, "delete", status, &body);
    let (status, body) = ts.stream_api(Method::DELETE, &streams, None).await;
    assert_eq!(status, 404, "{body}");
    d.answer(template, "delete", status, &body);
    let (status, started) = ts.stream_api(Method::POST, &streams, Some(&example)).await;
    assert_eq!(status, 201, "{started}");
    let (status, body) = ts.stream_api(Method::DELETE, &streams, None).await;
    d.answer(template, "delete", status, &body);

    // The call's end.
    let (status, body) = send(
        &ts,
        Method::POST,
        &events,
        Some(&rt),
        Some(&json!({"event_type": "call.completed", "payload": {"reason": "hangup"}})),
    )
    .await;
    d.answer("/v1/calls/{id}/events", "post", status, &body);
    let (status, body) = send(&ts, Method::POST, &events, Some(&rt), Some(&batch)).await;
    assert_eq!(status, 409, "{body}");
    d.answer("/v1/calls/{id}/events", "post", status, &body);

    // Every described operation was exercised and answered as described.
    let mut missing = Vec::new();
    for (path, item) in d.spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !d.exercised.contains(&(path.clone(), method.clone())) {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "never exercised: {missing:?}");
}
