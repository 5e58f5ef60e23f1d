//! The contract against the wire: `docs/schemas/*.json` (referenced by `docs/asyncapi.yaml`)
//! checked against the bytes a real hub exchanges.
//!
//! - A whole run (submit, get, result, a late result, aux records, query in both forms, trace,
//!   status, and every error code of the error table) goes through a recorder that validates each
//!   request before it is sent, each reply and its headers as received, and each event as a role
//!   pulls it; then every message of stream `ORDER_EVENTS` is validated once more, so none goes
//!   unchecked. Every schema must have seen at least one message.
//! - The hostile inputs of `hostile.rs`, both ways: what the hub refuses as `invalid_request`,
//!   the schema refuses too, unless it is beyond JSON Schema (the request schema's description
//!   names each such refusal); what the hub lets through validation, the schema accepts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use async_nats::{Client, HeaderMap};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;

const SCHEMA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/schemas");
const WAIT: Duration = Duration::from_secs(20);

/// Resolves `common.json` (and any other relative reference) from `docs/schemas/`.
struct SchemaFiles;

impl jsonschema::Retrieve for SchemaFiles {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().rsplit('/').next().unwrap_or_default();
        let name = name.split('#').next().unwrap_or_default();
        let text = std::fs::read_to_string(format!("{SCHEMA_DIR}/{name}"))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Every message schema of `docs/schemas/`, compiled (`common.json` holds definitions only).
pub struct Contract {
    validators: BTreeMap<String, jsonschema::Validator>,
    documents: BTreeMap<String, Value>,
}

impl Contract {
    pub fn load() -> Self {
        let mut validators = BTreeMap::new();
        let mut documents = BTreeMap::new();
        for entry in std::fs::read_dir(SCHEMA_DIR).expect("docs/schemas") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            assert_eq!(
                schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{name}"
            );
            if name != "common.json" {
                let validator = jsonschema::options()
                    .with_retriever(SchemaFiles)
                    .with_base_uri(format!("file:///schemas/{name}"))
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
                validators.insert(name.clone(), validator);
            }
            documents.insert(name, schema);
        }
        assert!(validators.len() >= 20, "{:?}", validators.keys());
        Self {
            validators,
            documents,
        }
    }

    /// `Err` with every violation, one per line.
    pub fn check(&self, schema: &str, instance: &Value) -> Result<(), String> {
        let validator = self
            .validators
            .get(schema)
            .unwrap_or_else(|| panic!("no schema {schema}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    fn description(&self, schema: &str) -> &str {
        self.documents[schema]["description"].as_str().unwrap_or("")
    }

    /// A subject token (`partner_id`, `user_id`, `system`) against `common.json#/$defs/token`.
    fn token_ok(&self, token: &str) -> bool {
        let def = &self.documents["common.json"]["$defs"]["token"];
        jsonschema::validator_for(def)
            .expect("token schema")
            .is_valid(&json!(token))
    }
}

/// The headers of a message as a JSON object (each header's first value).
fn headers_json(headers: Option<&HeaderMap>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        if let Some(v) = values.first() {
            out.insert(name.to_string(), json!(v.as_str()));
        }
    }
    Value::Object(out)
}

/// Validates everything that passes through it and counts messages per schema.
struct Wire {
    contract: Contract,
    seen: BTreeMap<String, usize>,
    codes: BTreeMap<String, usize>,
}

impl Wire {
    fn new() -> Self {
        Self {
            contract: Contract::load(),
            seen: BTreeMap::new(),
            codes: BTreeMap::new(),
        }
    }

    #[track_caller]
    fn check(&mut self, schema: &str, what: &str, value: &Value) {
        if let Err(e) = self.contract.check(schema, value) {
            panic!("{what} does not match {schema}:\n{e}\n{value}");
        }
        *self.seen.entry(schema.to_owned()).or_default() += 1;
    }

    #[track_caller]
    fn check_bytes(&mut self, schema: &str, what: &str, bytes: &[u8]) -> Value {
        let value: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| {
            panic!(
                "{what} is not JSON ({e}): {}",
                String::from_utf8_lossy(bytes)
            )
        });
        self.check(schema, what, &value);
        value
    }

    /// Sends `body` to an endpoint (`submit`, `partner-get`, …) and validates the request, the
    /// reply and, for an error, its headers.
    async fn request(
        &mut self,
        client: &Client,
        endpoint: &str,
        subject: &str,
        body: Value,
    ) -> Reply {
        let bytes = serde_json::to_vec(&body).unwrap();
        self.check_bytes(&format!("{endpoint}.request.json"), subject, &bytes);
        self.send(client, endpoint, subject, bytes).await
    }

    /// Sends a body the request schema refuses; the hub must refuse it as `invalid_request`.
    async fn refused(&mut self, client: &Client, endpoint: &str, subject: &str, body: Value) {
        let schema = format!("{endpoint}.request.json");
        assert!(
            self.contract.check(&schema, &body).is_err(),
            "{schema} accepts {body}"
        );
        let reply = self
            .send(
                client,
                endpoint,
                subject,
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        reply.assert_error("invalid_request", 400);
    }

    async fn send(
        &mut self,
        client: &Client,
        endpoint: &str,
        subject: &str,
        bytes: Vec<u8>,
    ) -> Reply {
        let msg = tokio::time::timeout(WAIT, client.request(subject.to_owned(), bytes.into()))
            .await
            .expect("a reply in time")
            .expect("a reply");
        let what = format!("reply of {subject}");
        let body = if msg
            .headers
            .as_ref()
            .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some())
        {
            let headers = headers_json(msg.headers.as_ref());
            self.check("error.headers.json", &what, &headers);
            let body = self.check_bytes("error.reply.json", &what, &msg.payload);
            let code = body["error"]["code"].as_str().unwrap().to_owned();
            *self.codes.entry(code).or_default() += 1;
            body
        } else {
            self.check_bytes(&format!("{endpoint}.reply.json"), &what, &msg.payload)
        };
        Reply {
            headers: msg.headers,
            body,
        }
    }

    /// Validates an event, its headers and how its subject, id and data agree.
    #[track_caller]
    fn event(&mut self, subject: &str, headers: Option<&HeaderMap>, payload: &[u8]) -> Value {
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!((tokens.len(), tokens[1]), (5, "events"), "{subject}");
        let ev = self.check_bytes(&format!("event.{}.json", tokens[2]), subject, payload);
        let headers = headers_json(headers);
        self.check("event.headers.json", subject, &headers);
        assert_eq!(headers["Nats-Msg-Id"], ev["id"], "{subject}");
        let data = &ev["data"];
        assert_eq!(tokens[4], data["order_id"], "{subject}");
        assert_eq!(ev["subject"], data["order_id"], "{subject}");
        let owner = if tokens[2] == "stored" {
            "partner_id"
        } else {
            "user_id"
        };
        assert_eq!(tokens[3], data[owner], "{subject}");
        ev
    }
}

/// Pulls from a durable consumer (as its role) until `want` of the events seen is satisfied.
async fn pull_until(
    w: &mut Wire,
    consumer: &PullConsumer,
    got: &mut Vec<Value>,
    what: &str,
    want: impl Fn(&[Value]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !want(got) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {got:#?}"
        );
        for m in pull(consumer, 10, Duration::from_millis(500)).await {
            got.push(w.event(&m.subject, m.headers.as_ref(), &m.payload));
        }
    }
}

fn has(events: &[Value], kind: &str, order: &str) -> bool {
    events
        .iter()
        .any(|e| e["type"] == kind && e["data"]["order_id"] == order)
}

fn acme_one_pending_globex_quick(s: &mut Settings) {
    for p in &mut s.partners {
        match p.id.as_str() {
            "acme-air" => p.max_pending = 1,
            _ => p.result_timeout = Duration::from_secs(1),
        }
    }
}

both_backends!(every_message_of_a_whole_run_matches_its_schema => acme_one_pending_globex_quick);

async fn every_message_of_a_whole_run_matches_its_schema(hub: TestHub) {
    let gateway = hub.client("gateway").await;
    let acme = hub.client("partner-acme-air").await;
    let globex = hub.client("partner-globex-hotels").await;
    let aux = hub.client("aux").await;
    let operator = hub.client("operator").await;
    let mut w = Wire::new();
    let ghost = uuid::Uuid::now_v7().to_string();
    let (acme_events, gateway_events, audit_events) = (
        durable(&acme, "partner-acme-air").await,
        durable(&gateway, "gateway").await,
        durable(&aux, "aux-audit").await,
    );
    let (mut stored, mut seen_gw, mut seen_audit) = (Vec::new(), Vec::new(), Vec::new());

    // Submit: accepted, unavailable (acme-air may have one order waiting for its result),
    // unknown_partner, invalid_request; duplicate and conflict once acme-air has room again.
    let body_a = order("u-wire", "wire-a", "acme-air");
    let a = w
        .request(&gateway, "submit", "orders.submit", body_a.clone())
        .await;
    let a = a.assert_ok()["order_id"].as_str().unwrap().to_owned();
    let body_b = order("u-wire", "wire-b", "acme-air");
    w.request(&gateway, "submit", "orders.submit", body_b.clone())
        .await
        .assert_error("unavailable", 503);
    w.request(
        &gateway,
        "submit",
        "orders.submit",
        order("u-wire", "wire-x", "no-such-partner"),
    )
    .await
    .assert_error("unknown_partner", 422);
    w.refused(
        &gateway,
        "submit",
        "orders.submit",
        json!({"user_id": "u-wire"}),
    )
    .await;

    // The partner: its stored event, get, result, the same result again, another result.
    pull_until(&mut w, &acme_events, &mut stored, "stored A", |e| {
        has(e, "orderhub.order.stored", &a)
    })
    .await;
    let got = w
        .request(
            &acme,
            "partner-get",
            "orders.partner.acme-air.get",
            json!({"order_id": a}),
        )
        .await;
    assert_eq!(got.assert_ok()["order"]["order_id"], a.as_str());
    w.request(
        &acme,
        "partner-get",
        "orders.partner.acme-air.get",
        json!({"order_id": ghost}),
    )
    .await
    .assert_error("not_found", 404);
    w.refused(
        &acme,
        "partner-get",
        "orders.partner.acme-air.get",
        json!({"order_id": a.to_uppercase()}),
    )
    .await;
    let result = json!({"order_id": a, "result_id": "wire-r-a", "outcome": "confirmed",
                        "partner_ref": "PNR4XK", "detail": {"seat": "12A"}});
    let r = w
        .request(
            &acme,
            "partner-result",
            "orders.partner.acme-air.result",
            result.clone(),
        )
        .await;
    assert_eq!(r.assert_ok()["status"], "result_stored");
    let r = w
        .request(
            &acme,
            "partner-result",
            "orders.partner.acme-air.result",
            result,
        )
        .await;
    assert_eq!(r.assert_ok()["duplicate"], true);
    w.request(
        &acme,
        "partner-result",
        "orders.partner.acme-air.result",
        json!({"order_id": a, "result_id": "wire-r-a2", "outcome": "rejected"}),
    )
    .await
    .assert_error("conflict", 409);
    w.refused(
        &acme,
        "partner-result",
        "orders.partner.acme-air.result",
        json!({"order_id": a, "result_id": "wire-r-a3", "outcome": "timeout"}),
    )
    .await;
    // acme-air has room again: the refused order goes through with its key.
    let again = w
        .request(&gateway, "submit", "orders.submit", body_a.clone())
        .await;
    assert_eq!(again.assert_ok()["duplicate"], true);
    let mut other = body_a.clone();
    other["amount_minor"] = json!(1);
    w.request(&gateway, "submit", "orders.submit", other)
        .await
        .assert_error("conflict", 409);
    let deadline = Instant::now() + WAIT;
    loop {
        let b = w
            .request(&gateway, "submit", "orders.submit", body_b.clone())
            .await;
        if b.error_code().is_none() {
            assert_eq!(
                b.body["duplicate"], false,
                "the refused submit stored nothing"
            );
            break;
        }
        b.assert_error("unavailable", 503);
        assert!(
            Instant::now() < deadline,
            "acme-air takes no orders: {:?}",
            b.body
        );
        tokio::time::sleep(POLL).await;
    }

    // The external auxiliary system: the result event, its record (twice: stored, replaced).
    pull_until(
        &mut w,
        &audit_events,
        &mut seen_audit,
        "result A at audit",
        |e| has(e, "orderhub.order.result_stored", &a),
    )
    .await;
    for status in ["received", "done"] {
        let rec = w
            .request(
                &aux,
                "aux-record",
                "orders.aux.audit.record",
                json!({"order_id": a, "status": status, "data": {"by": "audit-7"}}),
            )
            .await;
        assert_eq!(rec.assert_ok()["status"], "recorded");
    }
    w.request(
        &aux,
        "aux-record",
        "orders.aux.audit.record",
        json!({"order_id": ghost, "status": "done"}),
    )
    .await
    .assert_error("not_found", 404);
    w.refused(
        &aux,
        "aux-record",
        "orders.aux.audit.record",
        json!({"order_id": a, "status": ""}),
    )
    .await;
    pull_until(
        &mut w,
        &gateway_events,
        &mut seen_gw,
        "result and settled A",
        |e| has(e, "orderhub.order.result_stored", &a) && has(e, "orderhub.order.settled", &a),
    )
    .await;

    // A timeout and a late result.
    let c = w
        .request(
            &gateway,
            "submit",
            "orders.submit",
            order("u-wire", "wire-c", "globex-hotels"),
        )
        .await;
    let c = c.assert_ok()["order_id"].as_str().unwrap().to_owned();
    pull_until(&mut w, &gateway_events, &mut seen_gw, "timeout of C", |e| {
        has(e, "orderhub.order.result_stored", &c)
    })
    .await;
    let late = json!({"order_id": c, "result_id": "wire-late-c", "outcome": "confirmed", "partner_ref": null});
    for duplicate in [false, true] {
        let r = w
            .request(
                &globex,
                "partner-result",
                "orders.partner.globex-hotels.result",
                late.clone(),
            )
            .await;
        assert_eq!(r.assert_ok()["status"], "late_result_stored");
        assert_eq!(r.body["duplicate"], duplicate);
    }
    pull_until(
        &mut w,
        &audit_events,
        &mut seen_audit,
        "result and late C at audit",
        |e| {
            has(e, "orderhub.order.result_stored", &c)
                && has(e, "orderhub.order.late_result_stored", &c)
        },
    )
    .await;
    w.request(
        &aux,
        "aux-record",
        "orders.aux.audit.record",
        json!({"order_id": c, "status": "cancelled"}),
    )
    .await
    .assert_ok();
    pull_until(
        &mut w,
        &gateway_events,
        &mut seen_gw,
        "late and settled C",
        |e| has(e, "orderhub.order.late_result_stored", &c) && has(e, "orderhub.order.settled", &c),
    )
    .await;

    // Query, both forms; trace; status.
    for id in [&a, &c] {
        let q = w
            .request(
                &gateway,
                "query",
                "orders.query",
                json!({"order_id": id, "user_id": "u-wire"}),
            )
            .await;
        assert!(q.assert_ok()["settled_at"].is_string(), "{:?}", q.body);
    }
    let q = w
        .request(
            &operator,
            "query",
            "orders.query",
            json!({"order_id": c, "user_id": "u-wire"}),
        )
        .await;
    assert_eq!(q.assert_ok()["late_result"]["result_id"], "wire-late-c");
    let page = w
        .request(
            &gateway,
            "query",
            "orders.query",
            json!({"user_id": "u-wire", "limit": 2}),
        )
        .await;
    let before = page.assert_ok()["next_before"]
        .as_str()
        .expect("a full page")
        .to_owned();
    let rest = w
        .request(
            &gateway,
            "query",
            "orders.query",
            json!({"user_id": "u-wire", "limit": 2, "before": before}),
        )
        .await;
    assert_eq!(rest.assert_ok()["orders"].as_array().unwrap().len(), 1);
    let none = w
        .request(
            &gateway,
            "query",
            "orders.query",
            json!({"user_id": "u-nobody"}),
        )
        .await;
    assert_eq!(
        none.assert_ok(),
        &json!({"orders": [], "next_before": null})
    );
    w.request(
        &gateway,
        "query",
        "orders.query",
        json!({"order_id": a, "user_id": "u-other"}),
    )
    .await
    .assert_error("not_found", 404);
    w.refused(
        &gateway,
        "query",
        "orders.query",
        json!({"user_id": "u-wire", "limit": 0}),
    )
    .await;
    for id in [&a, &c] {
        let t = w
            .request(
                &operator,
                "trace",
                "orders.admin.trace",
                json!({"order_id": id}),
            )
            .await;
        assert!(!t.assert_ok()["events"].as_array().unwrap().is_empty());
    }
    w.request(
        &operator,
        "trace",
        "orders.admin.trace",
        json!({"order_id": ghost}),
    )
    .await
    .assert_error("not_found", 404);
    w.refused(&operator, "trace", "orders.admin.trace", json!({}))
        .await;
    let s = w
        .request(&operator, "status", "orders.admin.status", json!({}))
        .await;
    assert_eq!(s.assert_ok()["nats"]["connected"], true);

    // B's partner answer is still owed; the others are in. Then every message of the stream,
    // as stored, once more: the roles' deliveries were a part of it.
    pull_until(&mut w, &acme_events, &mut stored, "stored B", |e| {
        e.len() >= 2
    })
    .await;
    let hub_client = hub.client("hub").await;
    let stream = jetstream::new(hub_client)
        .get_stream(STREAM)
        .await
        .expect("stream");
    let total = stream.cached_info().state.messages as usize;
    let mut all = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .expect("ordered consumer")
        .messages()
        .await
        .expect("messages");
    let mut ids = std::collections::HashSet::new();
    while ids.len() < total {
        let m = tokio::time::timeout(WAIT, all.next())
            .await
            .expect("message")
            .unwrap()
            .unwrap();
        let ev = w.event(&m.subject, m.headers.as_ref(), &m.payload);
        assert!(
            ids.insert(ev["id"].as_str().unwrap().to_owned()),
            "one id per event"
        );
    }
    // stored A, B, C; result A, C; late C; settled A, C (and B's, should it time out meanwhile).
    assert!(total >= 8, "{total} events in the stream");
    for delivered in stored.iter().chain(&seen_gw).chain(&seen_audit) {
        assert!(
            ids.contains(delivered["id"].as_str().unwrap()),
            "{delivered}"
        );
    }

    // `nats micro info orderhub` names each endpoint's schemas, and they are these.
    let info = crate::roles::js_api(&operator, "$SRV.INFO.orderhub", json!({})).await;
    let endpoints = info["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 7, "{info}");
    for e in endpoints {
        let meta = &e["metadata"];
        for key in ["request_schema", "reply_schema", "error_schema"] {
            let file = meta[key].as_str().unwrap_or_else(|| panic!("{key} of {e}"));
            let name = file
                .strip_prefix("docs/schemas/")
                .expect("under docs/schemas/");
            assert!(
                w.seen.contains_key(name),
                "{} names {file}, which no message used",
                e["name"]
            );
        }
        assert_eq!(meta["asyncapi"], "docs/asyncapi.yaml");
    }

    // No schema went without a message, and every error code was on the wire.
    println!("messages per schema: {:#?}", w.seen);
    for schema in w.contract.validators.keys() {
        assert!(
            w.seen.get(schema).copied().unwrap_or(0) > 0,
            "no message checked against {schema}"
        );
    }
    for code in [
        "invalid_request",
        "not_found",
        "conflict",
        "unknown_partner",
        "unavailable",
    ] {
        assert!(
            w.codes.get(code).copied().unwrap_or(0) > 0,
            "no {code} reply: {:?}",
            w.codes
        );
    }
    assert!(w.seen.values().sum::<usize>() >= 80, "{:?}", w.seen);
}

// ---- the hostile table, both ways ------------------------------------------------------------

/// A refusal JSON Schema cannot express; the phrase is quoted from the request schema's
/// description, which must name it.
#[derive(Clone, Copy, Debug)]
enum Beyond {
    /// Not a JSON document at all (or one serde_json cannot read): the schema never sees it.
    NotJson,
    DuplicateKey,
    BodySize,
    IntegerNotation,
    ObjectBytes,
}

impl Beyond {
    fn phrase(self) -> &'static str {
        match self {
            Beyond::NotJson => "not UTF-8 or not JSON",
            Beyond::DuplicateKey => "a key repeated within one object",
            Beyond::BodySize => "limits.max_body_bytes",
            Beyond::IntegerNotation => "with a fraction or an exponent",
            Beyond::ObjectBytes => "over 65,536 bytes as compact JSON",
        }
    }
}

/// The cases of `hostile.rs` (by name) the hub refuses for a reason JSON Schema cannot express.
/// Every other case is refused by both the hub and its request schema, or by neither.
const BEYOND: &[(&str, Beyond)] = {
    use Beyond::*;
    &[
        ("not JSON", NotJson),
        ("empty body", NotJson),
        ("whitespace body", NotJson),
        ("truncated JSON", NotJson),
        ("trailing garbage", NotJson),
        ("two objects", NotJson),
        ("byte order mark", NotJson),
        ("a comment", NotJson),
        ("single quotes", NotJson),
        ("invalid UTF-8 in a string", NotJson),
        ("invalid UTF-8 as the whole body", NotJson),
        ("payload nested 200 deep", NotJson),
        ("10,000 open brackets", NotJson),
        ("a 1 MiB body", NotJson),
        ("NaN literal", NotJson),
        ("Infinity literal", NotJson),
        ("amount 1e400", NotJson),
        ("lone surrogate in product", NotJson),
        ("query not JSON", NotJson),
        ("get not JSON", NotJson),
        ("aux not JSON", NotJson),
        ("duplicate top-level key", DuplicateKey),
        ("duplicate key in payload", DuplicateKey),
        ("result with outcome twice", DuplicateKey),
        ("body of max_body_bytes + 1", BodySize),
        ("amount 1e15 (a float)", IntegerNotation),
        ("query limit 5.0", IntegerNotation),
        ("payload 65,537 bytes", ObjectBytes),
        ("result detail 65,537 bytes", ObjectBytes),
        ("aux data 65,537 bytes", ObjectBytes),
    ]
};

/// The endpoint a subject addresses (its schemas are `<endpoint>.request.json` and
/// `<endpoint>.reply.json`) and the subject's token (`partner_id`, `system`), if it has one.
fn endpoint_of(subject: &str) -> (&'static str, Option<&str>) {
    match subject.split('.').collect::<Vec<_>>()[..] {
        ["orders", "submit"] => ("submit", None),
        ["orders", "query"] => ("query", None),
        ["orders", "partner", partner, "get"] => ("partner-get", Some(partner)),
        ["orders", "partner", partner, "result"] => ("partner-result", Some(partner)),
        ["orders", "aux", system, "record"] => ("aux-record", Some(system)),
        _ => panic!("{subject}: no endpoint of the hub"),
    }
}

#[tokio::test]
async fn the_hub_and_the_schemas_refuse_the_same_hostile_inputs() {
    let hub = TestHub::start().await;
    let contract = Contract::load();
    let gateway = hub.client("gateway").await;
    let real = submit(&gateway, "u-real", "real-1", "acme-air").await;
    let cases = crate::hostile::table(&real, hub.settings.limits.max_body_bytes).0;
    assert!(cases.len() >= 150, "{} cases", cases.len());
    let mut clients = BTreeMap::from([("gateway", gateway)]);
    for case in &cases {
        if !clients.contains_key(case.user) {
            clients.insert(case.user, hub.client(case.user).await);
        }
    }
    let beyond_of: BTreeMap<&str, Beyond> = BEYOND.iter().copied().collect();
    assert_eq!(
        beyond_of.len(),
        BEYOND.len(),
        "a case named twice in BEYOND"
    );
    for name in beyond_of.keys() {
        assert!(
            cases.iter().any(|c| c.name == *name),
            "BEYOND names {name:?}, which is no case of hostile.rs"
        );
    }

    let (mut refused_by_both, mut beyond, mut passed_by_both) = (0, 0, 0);
    for case in &cases {
        let name = &case.name;
        let reply = request_raw(&clients[case.user], &case.subject, case.body.clone()).await;
        let hub_refused = reply.error_code() == Some("invalid_request");
        let (endpoint, token) = endpoint_of(&case.subject);
        let schema = format!("{endpoint}.request.json");
        // The schema's verdict on the body and, for a wildcard subject, the channel parameter's
        // on the token (common.json `token`); `None` when the body is not JSON.
        let verdict = serde_json::from_slice::<Value>(&case.body).ok().map(|v| {
            let mut errors: Vec<String> = contract.check(&schema, &v).err().into_iter().collect();
            if let Some(token) = token.filter(|t| !contract.token_ok(t)) {
                errors.push(format!(
                    "subject token {token:?} is not a common.json token"
                ));
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("\n"))
            }
        });
        match (beyond_of.get(name.as_str()), verdict) {
            (None, None) => panic!(
                "{name}: not JSON, so {schema} never sees it; classify it in BEYOND as NotJson"
            ),
            (None, Some(Ok(()))) if hub_refused => panic!(
                "{name}: the hub refuses it ({:?}) but {schema} accepts it; tighten the schema, \
                 or classify the case in BEYOND if JSON Schema cannot express the refusal",
                reply.body
            ),
            (None, Some(Err(e))) if !hub_refused => panic!(
                "{name}: the hub lets it through validation ({:?}) but {schema} refuses it:\n{e}",
                reply.body
            ),
            (None, Some(Ok(()))) => passed_by_both += 1,
            (None, Some(Err(_))) => refused_by_both += 1,
            (Some(why), verdict) => {
                assert!(
                    hub_refused,
                    "{name}: classified {why:?} in BEYOND, yet the hub answered {:?}",
                    reply.body
                );
                assert!(
                    contract.description(&schema).contains(why.phrase()),
                    "{schema} does not say that JSON Schema cannot express: {}",
                    why.phrase()
                );
                // Classified beyond, and truly so: the schema alone lets it through.
                match (why, verdict) {
                    (Beyond::NotJson, None) => {}
                    (Beyond::NotJson, Some(_)) => {
                        panic!("{name}: classified NotJson in BEYOND, but JSON after all")
                    }
                    (_, None) => panic!("{name}: classified {why:?} in BEYOND, but not JSON"),
                    (_, Some(Ok(()))) => {}
                    (_, Some(Err(e))) => panic!(
                        "{name}: classified {why:?} in BEYOND, but {schema} refuses it anyway; \
                         take it out of BEYOND:\n{e}"
                    ),
                }
                beyond += 1;
            }
        }
    }
    println!(
        "{refused_by_both} refused by both, {passed_by_both} passed by both, {beyond} beyond JSON Schema"
    );
    assert!(refused_by_both >= 100 && passed_by_both >= 15 && beyond >= 20);
}
