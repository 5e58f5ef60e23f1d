//! Hostile input (`docs/protocol.md`, "Errors"): a table of malformed, ill-typed, oversized and
//! subject-breaking requests across every endpoint. Each is answered with the right code, both
//! Services API headers and a JSON error body with a message; afterwards nothing exists that
//! should not — no order, result, aux record, outbox row or event — and `$SRV.STATS` counted every
//! one of them as an error.
//!
//! Cases on the edge of a limit that pass validation are aimed so that they stop right after it
//! without writing: a submit names an unconfigured partner (`unknown_partner`), a result or aux
//! record names an order that does not exist (`not_found`).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::Client;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::roles::{Probe, js_api};

/// What a case must be answered with.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Want {
    Ok,
    Error(&'static str, u16),
}

const INVALID: Want = Want::Error("invalid_request", 400);
const NOT_FOUND: Want = Want::Error("not_found", 404);
const UNKNOWN_PARTNER: Want = Want::Error("unknown_partner", 422);

/// One request, as `user` sends it, and the answer it must get.
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) user: &'static str,
    pub(crate) subject: String,
    pub(crate) body: Vec<u8>,
    pub(crate) want: Want,
}

/// The cases, built endpoint by endpoint.
#[derive(Default)]
pub(crate) struct Table(pub(crate) Vec<Case>);

impl Table {
    fn add(
        &mut self,
        name: impl Into<String>,
        user: &'static str,
        subject: impl Into<String>,
        body: Vec<u8>,
        want: Want,
    ) {
        self.0.push(Case {
            name: name.into(),
            user,
            subject: subject.into(),
            body,
            want,
        });
    }
    fn submit(&mut self, name: impl Into<String>, body: Value, want: Want) {
        self.add(name, "gateway", "orders.submit", bytes(&body), want);
    }
    fn submit_raw(&mut self, name: impl Into<String>, body: impl Into<Vec<u8>>, want: Want) {
        self.add(name, "gateway", "orders.submit", body.into(), want);
    }
    fn query(&mut self, name: impl Into<String>, body: Value, want: Want) {
        self.add(name, "gateway", "orders.query", bytes(&body), want);
    }
    fn get(&mut self, name: impl Into<String>, body: Value, want: Want) {
        self.add(
            name,
            "partner-acme-air",
            "orders.partner.acme-air.get",
            bytes(&body),
            want,
        );
    }
    fn result(&mut self, name: impl Into<String>, body: Value, want: Want) {
        self.add(
            name,
            "partner-acme-air",
            "orders.partner.acme-air.result",
            bytes(&body),
            want,
        );
    }
    fn aux(&mut self, name: impl Into<String>, body: Value, want: Want) {
        self.add(name, "aux", "orders.aux.audit.record", bytes(&body), want);
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn replace_bytes(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = hay
        .windows(from.len())
        .position(|w| w == from)
        .expect("present");
    [&hay[..at], to, &hay[at + from.len()..]].concat()
}

fn with(base: &Value, field: &str, value: Value) -> Value {
    let mut v = base.clone();
    v[field] = value;
    v
}

fn without(base: &Value, field: &str) -> Value {
    let mut v = base.clone();
    v.as_object_mut().expect("object").remove(field);
    v
}

/// An object of exactly `n` bytes as compact JSON (`{"k":"…"}` is 8 bytes of framing).
fn object_of(n: usize) -> Value {
    let v = json!({"k": "x".repeat(n - 8)});
    assert_eq!(bytes(&v).len(), n);
    v
}

/// `{…, "payload": <depth levels of nesting>}` as text.
fn nested_payload(base: &Value, depth: usize) -> Vec<u8> {
    let text = serde_json::to_string(&without(base, "payload")).expect("json");
    let nest = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    format!(
        "{},\"payload\":{{\"deep\":{nest}}}}}",
        &text[..text.len() - 1]
    )
    .into_bytes()
}

/// `body` as text with `field`'s value replaced by raw JSON text (for what serde_json cannot
/// produce: NaN, 1e400, lone surrogates…).
fn raw_field(base: &Value, field: &str, raw: &str) -> Vec<u8> {
    let marker = "\u{1}MARK\u{1}";
    let text = serde_json::to_string(&with(base, field, json!(marker))).expect("json");
    text.replace(&format!("\"{}\"", marker.replace('\u{1}', "\\u0001")), raw)
        .into_bytes()
}

/// Every hostile case; `real_order` is an order of `u-real` at acme-air, `max_body` the hub's
/// `limits.max_body_bytes`. `schemas.rs` checks each against the request schemas as well.
pub(crate) fn table(real_order: &str, max_body: usize) -> Table {
    let mut t = Table::default();
    let ghost = uuid::Uuid::now_v7().to_string();
    let v4 = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    // ---- orders.submit ------------------------------------------------------------------------
    let good = order("u-hostile", "h-1", "acme-air");
    // Valid except for the partner: a case that must pass validation ends at unknown_partner.
    let edge = order("u-hostile", "h-edge", "no-such-partner");

    t.submit_raw("not JSON", "not json", INVALID);
    t.submit_raw("empty body", "", INVALID);
    t.submit_raw("whitespace body", " \n\t ", INVALID);
    t.submit_raw("null body", "null", INVALID);
    t.submit_raw("array body", "[]", INVALID);
    t.submit("the good body inside an array", json!([good]), INVALID);
    t.submit_raw("string body", "\"orders\"", INVALID);
    t.submit_raw("number body", "42", INVALID);
    t.submit_raw("truncated JSON", &bytes(&good)[..40], INVALID);
    t.submit_raw(
        "trailing garbage",
        [bytes(&good), b" x".to_vec()].concat(),
        INVALID,
    );
    t.submit_raw(
        "two objects",
        [bytes(&good), bytes(&good)].concat(),
        INVALID,
    );
    t.submit_raw(
        "byte order mark",
        [b"\xEF\xBB\xBF".to_vec(), bytes(&good)].concat(),
        INVALID,
    );
    t.submit_raw(
        "a comment",
        format!("/* hi */{}", serde_json::to_string(&good).unwrap()),
        INVALID,
    );
    t.submit_raw("single quotes", "{'user_id':'u-1'}", INVALID);
    t.submit_raw(
        "invalid UTF-8 in a string",
        replace_bytes(&bytes(&good), b"flight", b"fl\xffght"),
        INVALID,
    );
    t.submit_raw(
        "invalid UTF-8 as the whole body",
        vec![0xc3, 0x28, 0xa0, 0xa1, 0xff, 0xfe],
        INVALID,
    );
    let text = serde_json::to_string(&good).unwrap();
    t.submit_raw(
        "duplicate top-level key",
        text.replacen('{', "{\"user_id\":\"u-other\",", 1),
        INVALID,
    );
    t.submit_raw(
        "duplicate key in payload",
        text.replace("{\"seat\":\"12A\"}", "{\"seat\":\"12A\",\"seat\":\"1C\"}"),
        INVALID,
    );
    t.submit_raw(
        "payload nested 127 deep",
        nested_payload(&edge, 125),
        UNKNOWN_PARTNER,
    );
    t.submit_raw(
        "payload nested 200 deep",
        nested_payload(&good, 200),
        INVALID,
    );
    t.submit_raw(
        "10,000 open brackets",
        format!("{{\"payload\":{}", "[".repeat(10_000)),
        INVALID,
    );
    let mut at_limit = serde_json::to_vec(&edge).unwrap();
    at_limit.resize(max_body, b' ');
    t.submit_raw(
        "body of max_body_bytes (whitespace padded)",
        at_limit.clone(),
        UNKNOWN_PARTNER,
    );
    at_limit.push(b' ');
    t.submit_raw("body of max_body_bytes + 1", at_limit, INVALID);
    t.submit_raw("a 1 MiB body", vec![b' '; 1 << 20], INVALID);
    t.submit_raw(
        "NaN literal",
        raw_field(&good, "amount_minor", "NaN"),
        INVALID,
    );
    t.submit_raw(
        "Infinity literal",
        raw_field(&good, "amount_minor", "Infinity"),
        INVALID,
    );
    t.submit_raw(
        "amount 1e400",
        raw_field(&good, "amount_minor", "1e400"),
        INVALID,
    );
    t.submit_raw(
        "amount 2^64",
        raw_field(&good, "amount_minor", "18446744073709551616"),
        INVALID,
    );
    t.submit_raw(
        "lone surrogate in product",
        raw_field(&good, "product", "\"\\ud800\""),
        INVALID,
    );
    t.submit(
        "U+0000 in product",
        with(&good, "product", json!("fli\u{0}ght")),
        INVALID,
    );
    t.submit(
        "U+0000 in a payload key",
        with(&good, "payload", json!({"a\u{0}": 1})),
        INVALID,
    );

    for field in [
        "request_id",
        "user_id",
        "partner_id",
        "product",
        "amount_minor",
        "currency",
    ] {
        t.submit(
            format!("submit without {field}"),
            without(&good, field),
            INVALID,
        );
        t.submit(
            format!("submit with {field} null"),
            with(&good, field, Value::Null),
            INVALID,
        );
    }
    for (name, field, value, want) in [
        ("request_id a number", "request_id", json!(123), INVALID),
        ("request_id empty", "request_id", json!(""), INVALID),
        (
            "request_id 128 characters",
            "request_id",
            json!("k".repeat(128)),
            UNKNOWN_PARTNER,
        ),
        (
            "request_id 129 characters",
            "request_id",
            json!("k".repeat(129)),
            INVALID,
        ),
        (
            "request_id with a space",
            "request_id",
            json!("gw 1"),
            INVALID,
        ),
        (
            "request_id with a tab",
            "request_id",
            json!("gw\t1"),
            INVALID,
        ),
        ("request_id with é", "request_id", json!("gw-é"), INVALID),
        ("user_id true", "user_id", json!(true), INVALID),
        ("user_id with .", "user_id", json!("u.1"), INVALID),
        ("user_id with *", "user_id", json!("u*"), INVALID),
        ("user_id *", "user_id", json!("*"), INVALID),
        ("user_id with >", "user_id", json!("u>"), INVALID),
        ("user_id with a space", "user_id", json!("u 1"), INVALID),
        (
            "user_id with Cyrillic а",
            "user_id",
            json!("u-1001-\u{430}"),
            INVALID,
        ),
        (
            "user_id with fullwidth Ｕ",
            "user_id",
            json!("\u{ff35}-1001"),
            INVALID,
        ),
        ("user_id empty", "user_id", json!(""), INVALID),
        (
            "user_id 64 characters",
            "user_id",
            json!("u".repeat(64)),
            UNKNOWN_PARTNER,
        ),
        (
            "user_id 65 characters",
            "user_id",
            json!("u".repeat(65)),
            INVALID,
        ),
        (
            "partner_id an array",
            "partner_id",
            json!(["acme-air"]),
            INVALID,
        ),
        (
            "partner_id with .",
            "partner_id",
            json!("acme.air"),
            INVALID,
        ),
        ("partner_id >", "partner_id", json!(">"), INVALID),
        (
            "partner_id with a space",
            "partner_id",
            json!("acme air"),
            INVALID,
        ),
        (
            "partner_id with Cyrillic а",
            "partner_id",
            json!("\u{430}cme-air"),
            INVALID,
        ),
        (
            "partner_id 65 characters",
            "partner_id",
            json!("p".repeat(65)),
            INVALID,
        ),
        (
            "partner_id not configured",
            "partner_id",
            json!("no-such-partner"),
            UNKNOWN_PARTNER,
        ),
        (
            "partner_id ACME-AIR (case matters)",
            "partner_id",
            json!("ACME-AIR"),
            UNKNOWN_PARTNER,
        ),
        ("product an object", "product", json!({}), INVALID),
        ("product empty", "product", json!(""), INVALID),
        (
            "product 64 two-byte characters",
            "product",
            json!("é".repeat(64)),
            UNKNOWN_PARTNER,
        ),
        (
            "product 65 characters",
            "product",
            json!("p".repeat(65)),
            INVALID,
        ),
        ("amount a string", "amount_minor", json!("129900"), INVALID),
        ("amount \"NaN\"", "amount_minor", json!("NaN"), INVALID),
        (
            "amount \"Infinity\"",
            "amount_minor",
            json!("Infinity"),
            INVALID,
        ),
        ("amount 1.5", "amount_minor", json!(1.5), INVALID),
        (
            "amount 1e15 (a float)",
            "amount_minor",
            json!(1e15),
            INVALID,
        ),
        ("amount -1", "amount_minor", json!(-1), INVALID),
        (
            "amount 10^15 + 1",
            "amount_minor",
            json!(1_000_000_000_000_001i64),
            INVALID,
        ),
        ("amount i64::MIN", "amount_minor", json!(i64::MIN), INVALID),
        ("amount u64::MAX", "amount_minor", json!(u64::MAX), INVALID),
        (
            "amount 10^15",
            "amount_minor",
            json!(1_000_000_000_000_000i64),
            UNKNOWN_PARTNER,
        ),
        ("amount 0", "amount_minor", json!(0), UNKNOWN_PARTNER),
        ("currency lower case", "currency", json!("cny"), INVALID),
        ("currency 2 letters", "currency", json!("CN"), INVALID),
        ("currency 4 letters", "currency", json!("CNYX"), INVALID),
        (
            "currency fullwidth",
            "currency",
            json!("\u{ff23}\u{ff2e}\u{ff39}"),
            INVALID,
        ),
        ("currency a number", "currency", json!(156), INVALID),
        ("items a string", "items", json!("MU5101"), INVALID),
        (
            "items an object",
            "items",
            json!({"sku": "MU5101"}),
            INVALID,
        ),
        ("items of numbers", "items", json!([1, 2]), INVALID),
        (
            "items 100 objects",
            "items",
            Value::Array(vec![json!({"sku": "x"}); 100]),
            UNKNOWN_PARTNER,
        ),
        (
            "items 101 objects",
            "items",
            Value::Array(vec![json!({"sku": "x"}); 101]),
            INVALID,
        ),
        ("payload an array", "payload", json!([]), INVALID),
        ("payload a string", "payload", json!("{}"), INVALID),
        (
            "payload 65,536 bytes",
            "payload",
            object_of(65_536),
            UNKNOWN_PARTNER,
        ),
        (
            "payload 65,537 bytes",
            "payload",
            object_of(65_537),
            INVALID,
        ),
    ] {
        let base = if matches!(want, Want::Error("unknown_partner", _)) && field != "partner_id" {
            &edge
        } else {
            &good
        };
        t.submit(name, with(base, field, value), want);
    }

    // ---- orders.query -------------------------------------------------------------------------
    let list = json!({"user_id": "u-hostile"});
    t.add(
        "query not JSON",
        "gateway",
        "orders.query",
        b"{user_id: u-1}".to_vec(),
        INVALID,
    );
    t.query("query an array", json!([list]), INVALID);
    t.query("query without user_id", json!({"limit": 10}), INVALID);
    t.query(
        "query with order_id but no user_id",
        json!({"order_id": real_order}),
        INVALID,
    );
    t.query(
        "query user_id 65 characters",
        json!({"user_id": "u".repeat(65)}),
        INVALID,
    );
    t.query(
        "query user_id with wildcards",
        json!({"user_id": "u.*"}),
        INVALID,
    );
    t.query(
        "query user_id with Cyrillic",
        json!({"user_id": "u-re\u{430}l"}),
        INVALID,
    );
    t.query("query user_id a number", json!({"user_id": 7}), INVALID);
    t.query("query user_id empty", json!({"user_id": ""}), INVALID);
    for (name, value, want) in [
        ("limit 0", json!(0), INVALID),
        ("limit 101", json!(101), INVALID),
        ("limit -1", json!(-1), INVALID),
        ("limit 1.5", json!(1.5), INVALID),
        ("limit 5.0", json!(5.0), INVALID),
        ("limit \"20\"", json!("20"), INVALID),
        ("limit 10^20", json!(1e20), INVALID),
        ("limit 1", json!(1), Want::Ok),
        ("limit 100", json!(100), Want::Ok),
    ] {
        t.query(format!("query {name}"), with(&list, "limit", value), want);
    }
    for (name, value) in [
        ("not an id", json!("not-an-id")),
        ("upper case", json!(real_order.to_uppercase())),
        ("a UUIDv4", json!(v4)),
        ("a number", json!(123)),
        ("with braces", json!(format!("{{{real_order}}}"))),
    ] {
        t.query(
            format!("query before {name}"),
            with(&list, "before", json!(value)),
            INVALID,
        );
    }
    t.query(
        "query order_id upper case",
        json!({"user_id": "u-real", "order_id": real_order.to_uppercase()}),
        INVALID,
    );
    t.query(
        "query order_id a UUIDv4",
        json!({"user_id": "u-real", "order_id": v4}),
        INVALID,
    );
    t.query(
        "query order_id empty",
        json!({"user_id": "u-real", "order_id": ""}),
        INVALID,
    );
    t.query(
        "query another user's order",
        json!({"user_id": "u-hostile", "order_id": real_order}),
        NOT_FOUND,
    );
    t.query(
        "query an unknown order",
        json!({"user_id": "u-real", "order_id": ghost}),
        NOT_FOUND,
    );

    // ---- orders.partner.<id>.get ----------------------------------------------------------------
    t.add(
        "get not JSON",
        "partner-acme-air",
        "orders.partner.acme-air.get",
        b"order".to_vec(),
        INVALID,
    );
    t.get("get without order_id", json!({}), INVALID);
    t.get("get order_id a number", json!({"order_id": 7}), INVALID);
    t.get(
        "get order_id upper case",
        json!({"order_id": real_order.to_uppercase()}),
        INVALID,
    );
    t.get("get order_id a UUIDv4", json!({"order_id": v4}), INVALID);
    t.get(
        "get order_id without hyphens",
        json!({"order_id": real_order.replace('-', "")}),
        INVALID,
    );
    t.get(
        "get order_id as a URN",
        json!({"order_id": format!("urn:uuid:{real_order}")}),
        INVALID,
    );
    t.get(
        "get order_id with a trailing space",
        json!({"order_id": format!("{real_order} ")}),
        INVALID,
    );
    t.get(
        "get an unknown order",
        json!({"order_id": ghost}),
        NOT_FOUND,
    );

    // ---- orders.partner.<id>.result (aimed at the real order unless the case should pass) ---------
    let res = json!({"order_id": real_order, "result_id": "acme-r-1", "outcome": "confirmed", "partner_ref": "PNR"});
    let ghost_res = with(&res, "order_id", json!(ghost));
    for field in ["order_id", "result_id", "outcome"] {
        t.result(
            format!("result without {field}"),
            without(&res, field),
            INVALID,
        );
    }
    for (name, field, value, want) in [
        (
            "outcome timeout (the hub's own)",
            "outcome",
            json!("timeout"),
            INVALID,
        ),
        ("outcome upper case", "outcome", json!("CONFIRMED"), INVALID),
        ("outcome a number", "outcome", json!(1), INVALID),
        ("result_id empty", "result_id", json!(""), INVALID),
        (
            "result_id 129 characters",
            "result_id",
            json!("r".repeat(129)),
            INVALID,
        ),
        ("result_id with a space", "result_id", json!("r 1"), INVALID),
        ("partner_ref a number", "partner_ref", json!(5), INVALID),
        (
            "partner_ref 129 characters",
            "partner_ref",
            json!("p".repeat(129)),
            INVALID,
        ),
        ("detail an array", "detail", json!([]), INVALID),
        ("detail 65,537 bytes", "detail", object_of(65_537), INVALID),
        (
            "detail with U+0000",
            "detail",
            json!({"note": "a\u{0}b"}),
            INVALID,
        ),
        (
            "order_id upper case",
            "order_id",
            json!(real_order.to_uppercase()),
            INVALID,
        ),
    ] {
        t.result(format!("result {name}"), with(&res, field, value), want);
    }
    let text = serde_json::to_string(&res).unwrap();
    t.add(
        "result with outcome twice",
        "partner-acme-air",
        "orders.partner.acme-air.result",
        text.replacen('{', "{\"outcome\":\"rejected\",", 1)
            .into_bytes(),
        INVALID,
    );
    t.result(
        "result partner_ref 128 characters (unknown order)",
        with(&ghost_res, "partner_ref", json!("p".repeat(128))),
        NOT_FOUND,
    );
    t.result(
        "result detail 65,536 bytes (unknown order)",
        with(&ghost_res, "detail", object_of(65_536)),
        NOT_FOUND,
    );
    t.result(
        "result result_id 128 characters (unknown order)",
        with(&ghost_res, "result_id", json!("r".repeat(128))),
        NOT_FOUND,
    );

    // ---- orders.aux.<system>.record -----------------------------------------------------------
    let rec = json!({"order_id": real_order, "status": "done", "data": {"by": "audit"}});
    let ghost_rec = with(&rec, "order_id", json!(ghost));
    t.add(
        "aux not JSON",
        "aux",
        "orders.aux.audit.record",
        b"{\"order_id\":".to_vec(),
        INVALID,
    );
    t.aux("aux without order_id", without(&rec, "order_id"), INVALID);
    t.aux("aux without status", without(&rec, "status"), INVALID);
    t.aux("aux status empty", with(&rec, "status", json!("")), INVALID);
    t.aux(
        "aux status a number",
        with(&rec, "status", json!(5)),
        INVALID,
    );
    t.aux(
        "aux status 33 characters",
        with(&rec, "status", json!("s".repeat(33))),
        INVALID,
    );
    t.aux("aux data an array", with(&rec, "data", json!([1])), INVALID);
    t.aux(
        "aux data 65,537 bytes",
        with(&rec, "data", object_of(65_537)),
        INVALID,
    );
    t.aux(
        "aux order_id a UUIDv4",
        with(&rec, "order_id", json!(v4)),
        INVALID,
    );
    t.aux(
        "aux status 32 characters (unknown order)",
        with(&ghost_rec, "status", json!("s".repeat(32))),
        NOT_FOUND,
    );
    t.aux(
        "aux data 65,536 bytes (unknown order)",
        with(&ghost_rec, "data", object_of(65_536)),
        NOT_FOUND,
    );

    // ---- tokens in wildcard subjects (sent as the hub user: nats.conf lets a partner or aux
    // system publish only on its own subject, so only an insider reaches these) -------------------
    let get = bytes(&json!({"order_id": real_order}));
    for (name, subject, want) in [
        (
            "partner token with Cyrillic а",
            "orders.partner.\u{430}cme-air.get".to_owned(),
            INVALID,
        ),
        (
            "partner token with *",
            "orders.partner.acme*air.get".to_owned(),
            INVALID,
        ),
        (
            "partner token with +",
            "orders.partner.acme+air.get".to_owned(),
            INVALID,
        ),
        (
            "partner token 65 characters",
            format!("orders.partner.{}.get", "p".repeat(65)),
            INVALID,
        ),
        (
            "partner not configured (get)",
            "orders.partner.no-such-partner.get".to_owned(),
            UNKNOWN_PARTNER,
        ),
        (
            "partner not configured (result)",
            "orders.partner.no-such-partner.result".to_owned(),
            UNKNOWN_PARTNER,
        ),
        (
            "partner token fullwidth",
            "orders.partner.\u{ff41}cme-air.result".to_owned(),
            INVALID,
        ),
    ] {
        let body = if subject.ends_with(".result") {
            bytes(&res)
        } else {
            get.clone()
        };
        t.add(name, "hub", subject, body, want);
    }
    for (name, subject) in [
        (
            "aux token with Cyrillic а",
            "orders.aux.\u{430}udit.record".to_owned(),
        ),
        (
            "aux token 65 characters",
            format!("orders.aux.{}.record", "a".repeat(65)),
        ),
        ("aux token with %", "orders.aux.au%dit.record".to_owned()),
    ] {
        t.add(name, "hub", subject, bytes(&rec), INVALID);
    }
    t
}

/// `$SRV.STATS` counters of each endpoint: (requests, errors).
async fn endpoint_stats(operator: &Client) -> HashMap<String, (u64, u64)> {
    let stats = js_api(operator, "$SRV.STATS.orderhub", json!({})).await;
    stats["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_owned();
            (
                name,
                (
                    e["num_requests"].as_u64().unwrap(),
                    e["num_errors"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn endpoint_of(subject: &str) -> &'static str {
    match subject {
        "orders.submit" => "submit",
        "orders.query" => "query",
        s if s.starts_with("orders.aux.") => "aux_record",
        s if s.ends_with(".get") => "partner_get",
        _ => "partner_result",
    }
}

/// Rows in a table of one of the test hub's databases (SQLite file or fresh Postgres database).
async fn rows<E: EntityTrait>(url: &str, _entity: E) -> u64
where
    E::Model: Send + Sync,
{
    let db = sea_orm::Database::connect(url)
        .await
        .expect("open the test database");
    let n = E::find().count(&db).await.expect("count rows");
    let _ = db.close().await;
    n
}

both_backends!(every_hostile_input_is_refused_with_the_right_error_and_leaves_nothing_behind);

async fn every_hostile_input_is_refused_with_the_right_error_and_leaves_nothing_behind(
    hub: TestHub,
) {
    let mut clients = HashMap::new();
    for user in ["gateway", "partner-acme-air", "aux", "hub", "operator"] {
        clients.insert(user, hub.client(user).await);
    }
    let gateway = &clients["gateway"];
    let operator = &clients["operator"];
    let probe = Probe(operator);

    // NATS refuses anything above 8 MB; the hub's own check is far below that.
    assert_eq!(
        gateway.server_info().max_payload,
        8 * 1024 * 1024,
        "nats.conf max_payload"
    );
    let max_body = hub.settings.limits.max_body_bytes;
    assert!(max_body < gateway.server_info().max_payload);

    let real = submit(gateway, "u-real", "real-1", "acme-air").await;
    probe.wait_messages(1).await;
    let before = endpoint_stats(operator).await;

    let cases = table(&real, max_body).0;
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut expected: HashMap<&str, (u64, u64)> = HashMap::new();
    for case in &cases {
        let reply = request_raw(&clients[case.user], &case.subject, case.body.clone()).await;
        let counts = expected.entry(endpoint_of(&case.subject)).or_default();
        counts.0 += 1;
        match case.want {
            Want::Ok => {
                assert!(
                    reply.body.get("error").is_none(),
                    "{}: {:?}",
                    case.name,
                    reply.body
                );
                reply.assert_ok();
            }
            Want::Error(code, status) => {
                counts.1 += 1;
                assert_eq!(
                    reply.error_code(),
                    Some(code),
                    "{}: {:?}",
                    case.name,
                    reply.body
                );
                reply.assert_error(code, status);
                // Shown with --nocapture, to read the messages a person would get.
                println!("{:<55} {}", case.name, reply.body["error"]["message"]);
                let keys: Vec<&String> = reply.body.as_object().expect("object").keys().collect();
                assert_eq!(
                    keys,
                    ["error"],
                    "{}: the error body has nothing else",
                    case.name
                );
            }
        }
    }
    println!("{} hostile cases answered", cases.len());

    // Every case was counted, and every refusal as an error.
    let after = endpoint_stats(operator).await;
    for (endpoint, (requests, errors)) in &expected {
        let (r0, e0) = before.get(*endpoint).copied().unwrap_or_default();
        let (r1, e1) = after[*endpoint];
        assert_eq!(
            (r1 - r0, e1 - e0),
            (*requests, *errors),
            "$SRV.STATS of {endpoint}"
        );
    }

    // Nothing was written: the one real order, untouched; no other order, result, aux record,
    // outbox row or event.
    let q = query_order(gateway, &real, "u-real").await;
    let b = q.assert_ok();
    assert!(b["result"].is_null(), "{b}");
    assert_eq!(b["aux"], json!([]));
    assert_eq!(b["order"]["amount_minor"], 129900);
    // The partner sees it as the hub left it: dispatched at most, no result recorded.
    let got = request(
        &clients["partner-acme-air"],
        "orders.partner.acme-air.get",
        json!({"order_id": real}),
    )
    .await;
    let o = &got.assert_ok()["order"];
    assert!(o["version"].as_i64().is_some_and(|v| v <= 2), "{o}");
    assert_eq!(o["user_id"], "u-real");
    for user in ["u-hostile", "u-other", &"u".repeat(64)] {
        let list = request(gateway, "orders.query", json!({"user_id": user})).await;
        assert_eq!(list.assert_ok()["orders"], json!([]), "orders of {user}");
    }
    let status = eventually(Duration::from_secs(5), "outbox drained", || async {
        let s = status(operator).await;
        (s["outbox_pending"] == 0).then_some(s)
    })
    .await;
    assert_eq!(status["nats"]["connected"], true);
    assert_eq!(
        probe.messages().await,
        1,
        "only the real order's stored event"
    );
    let db = &hub.settings.database;
    assert_eq!(rows(&db.primary_url, entities::orders::Entity).await, 1);
    assert_eq!(
        rows(&db.primary_url, entities::order_results::Entity).await,
        0
    );
    assert_eq!(rows(&db.primary_url, entities::outbox::Entity).await, 1);
    assert_eq!(rows(&db.aux_url, entities::aux_records::Entity).await, 0);

    // The hub is still fine: the partner's real result goes through.
    let ok = request(
        &clients["partner-acme-air"],
        "orders.partner.acme-air.result",
        json!({"order_id": real, "result_id": "acme-r-1", "outcome": "confirmed"}),
    )
    .await;
    assert_eq!(ok.assert_ok()["duplicate"], false);
}
