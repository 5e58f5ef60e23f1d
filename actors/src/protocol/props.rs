//! Property tests of request decoding and validation (`docs/protocol.md`, "Conventions" and
//! "Requests and replies"), both ways:
//!
//! * every parser, fed arbitrary bytes, arbitrary JSON-ish values and near-valid bodies, never
//!   panics, and accepts exactly the inputs the documented rules accept: an acceptance carries
//!   exactly what was sent, a refusal is `invalid_request` with a message naming a field that
//!   breaks a rule (or, for a body refused as a whole, saying why);
//! * bodies that keep every rule are accepted, and bodies that break exactly one rule are refused
//!   with `invalid_request` naming that field.
//!
//! The rules are checked against oracles written here from the documented rules, not by calling
//! the validation helpers under test (the body is decoded by a JSON reader of its own that keeps
//! repeated keys). Bounded: [`CASES`] inputs per property (well under a minute in a debug build).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value, json};

use super::{
    ApiError, AuxRecordRequest, ErrorCode, GetRequest, Outcome, QueryRequest, ResultRequest,
    SubmitRequest,
};

const CASES: u32 = 2_000;
const LIMIT: usize = 65_536;
const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Every field name any request knows: random objects use them as keys often.
const FIELDS: &[&str] = &[
    "request_id",
    "user_id",
    "partner_id",
    "product",
    "amount_minor",
    "currency",
    "items",
    "payload",
    "order_id",
    "result_id",
    "outcome",
    "partner_ref",
    "detail",
    "status",
    "data",
    "limit",
    "before",
];

// ---- oracles ---------------------------------------------------------------------------------

/// `^[A-Za-z0-9_-]{1,64}$`
fn is_token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An idempotency key: 1–128 characters, each 0x21–0x7E.
fn is_key(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A lowercase hyphenated UUIDv7 (RFC 9562 variant).
fn is_v7(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'7'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

fn chars_between(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.chars().count())
}

/// An object of at most 64 KiB as compact JSON.
fn is_small_object(v: &Value) -> bool {
    v.is_object()
        && serde_json::to_vec(v)
            .map(|b| b.len() <= LIMIT)
            .unwrap_or(false)
}

/// No U+0000 in any string or key (Postgres cannot store it).
fn free_of_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.contains('\0'),
        Value::Array(a) => a.iter().all(free_of_nul),
        Value::Object(m) => m.iter().all(|(k, v)| !k.contains('\0') && free_of_nul(v)),
        _ => true,
    }
}

/// A field as the parsers see it: absent and `null` are the same.
fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn text<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    field(body, name).and_then(Value::as_str)
}

/// A JSON value as written: keys in their order, repeated keys kept.
enum Node {
    Scalar(Value),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Scalar(Value::Bool(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(Value::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(Value::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Node, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| Node::Scalar(Value::Number(n)))
                    .ok_or_else(|| E::custom("not finite"))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(Value::String(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(n) = a.next_element()? {
                    items.push(n);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut pairs = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Node>()? {
                    pairs.push((k, v));
                }
                Ok(Node::Object(pairs))
            }
        }
        d.deserialize_any(V)
    }
}

impl Node {
    /// The value, unless a key repeats within one object or a string or key holds U+0000.
    fn into_value(self) -> Result<Value, BodyRule> {
        match self {
            Node::Scalar(Value::String(s)) if s.contains('\0') => Err(BodyRule::Nul),
            Node::Scalar(v) => Ok(v),
            Node::Array(items) => items
                .into_iter()
                .map(Node::into_value)
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Node::Object(pairs) => {
                let mut map = Map::new();
                for (k, v) in pairs {
                    if k.contains('\0') {
                        return Err(BodyRule::Nul);
                    }
                    if map.insert(k, v.into_value()?).is_some() {
                        return Err(BodyRule::RepeatedKey);
                    }
                }
                Ok(Value::Object(map))
            }
        }
    }
}

/// Why a body is refused as a whole, before any field is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyRule {
    NotUtf8,
    NotJson,
    RepeatedKey,
    Nul,
    NotObject,
}

/// What the documented rules say of a body, for one parser.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Body(BodyRule),
    /// Each of these fields breaks a rule of its own.
    Fields(Vec<&'static str>),
}

/// The request body: UTF-8 JSON, an object, no key repeated in any object, no U+0000.
fn decode(bytes: &[u8]) -> Result<Map<String, Value>, BodyRule> {
    let text = std::str::from_utf8(bytes).map_err(|_| BodyRule::NotUtf8)?;
    let node: Node = serde_json::from_str(text).map_err(|_| BodyRule::NotJson)?;
    match node.into_value()? {
        Value::Object(map) => Ok(map),
        _ => Err(BodyRule::NotObject),
    }
}

/// The endpoints' bodies, each with its fields' rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Parser {
    Submit,
    Result,
    Get,
    /// `orders.query` with an `order_id`.
    QueryOne,
    /// `orders.query` without one.
    QueryList,
    Aux,
}

/// Required and a string passing `rule`.
fn required_str(b: &Map<String, Value>, name: &str, rule: impl Fn(&str) -> bool) -> bool {
    text(b, name).is_some_and(rule)
}

/// Absent, or a JSON object of at most 64 KiB.
fn optional_object(b: &Map<String, Value>, name: &str) -> bool {
    field(b, name).is_none_or(is_small_object)
}

fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|c| c.is_ascii_uppercase())
}

fn is_partner_outcome(s: &str) -> bool {
    ["confirmed", "rejected", "failed"].contains(&s)
}

impl Parser {
    /// The fields of `b` that break a rule of this body.
    fn broken(self, b: &Map<String, Value>) -> Vec<&'static str> {
        let checks: Vec<(&'static str, bool)> = match self {
            Parser::Submit => vec![
                ("request_id", required_str(b, "request_id", is_key)),
                ("user_id", required_str(b, "user_id", is_token)),
                ("partner_id", required_str(b, "partner_id", is_token)),
                (
                    "product",
                    required_str(b, "product", |s| chars_between(s, 1, 64)),
                ),
                (
                    "amount_minor",
                    field(b, "amount_minor")
                        .and_then(Value::as_i64)
                        .is_some_and(|n| (0..=MAX_AMOUNT).contains(&n)),
                ),
                ("currency", required_str(b, "currency", is_currency)),
                (
                    "items",
                    field(b, "items").is_none_or(|v| {
                        v.as_array()
                            .is_some_and(|a| a.len() <= 100 && a.iter().all(Value::is_object))
                    }),
                ),
                ("payload", optional_object(b, "payload")),
            ],
            Parser::Result => vec![
                ("order_id", required_str(b, "order_id", is_v7)),
                ("result_id", required_str(b, "result_id", is_key)),
                ("outcome", required_str(b, "outcome", is_partner_outcome)),
                (
                    "partner_ref",
                    field(b, "partner_ref")
                        .is_none_or(|v| v.as_str().is_some_and(|s| chars_between(s, 0, 128))),
                ),
                ("detail", optional_object(b, "detail")),
            ],
            Parser::Get => vec![("order_id", required_str(b, "order_id", is_v7))],
            Parser::QueryOne | Parser::QueryList => {
                let mut checks = vec![("user_id", required_str(b, "user_id", is_token))];
                if field(b, "order_id").is_some() {
                    checks.push(("order_id", required_str(b, "order_id", is_v7)));
                } else {
                    checks.push((
                        "limit",
                        field(b, "limit")
                            .is_none_or(|v| v.as_i64().is_some_and(|n| (1..=100).contains(&n))),
                    ));
                    checks.push((
                        "before",
                        field(b, "before").is_none_or(|v| v.as_str().is_some_and(is_v7)),
                    ));
                }
                checks
            }
            Parser::Aux => vec![
                ("order_id", required_str(b, "order_id", is_v7)),
                (
                    "status",
                    required_str(b, "status", |s| chars_between(s, 1, 32)),
                ),
                ("data", optional_object(b, "data")),
            ],
        };
        checks
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name)
            .collect()
    }

    fn verdict(self, bytes: &[u8]) -> Verdict {
        match decode(bytes) {
            Err(rule) => Verdict::Body(rule),
            Ok(b) => match self.broken(&b) {
                fields if fields.is_empty() => Verdict::Accept,
                fields => Verdict::Fields(fields),
            },
        }
    }

    /// Runs the parser under test; the query forms must come out as the form asked for.
    fn parse(self, bytes: &[u8]) -> Result<(), ApiError> {
        match self {
            Parser::Submit => SubmitRequest::parse(bytes).map(drop),
            Parser::Result => ResultRequest::parse(bytes).map(drop),
            Parser::Get => GetRequest::parse(bytes).map(drop),
            Parser::QueryOne | Parser::QueryList => QueryRequest::parse(bytes).map(|q| {
                let one = matches!(q, QueryRequest::One { .. });
                assert_eq!(one, self == Parser::QueryOne, "{q:?} parsed as {self:?}");
            }),
            Parser::Aux => AuxRecordRequest::parse(bytes).map(drop),
        }
    }
}

/// What `query` must say of `bytes`: the form follows `order_id`.
fn query_verdict(bytes: &[u8]) -> Verdict {
    let form = match decode(bytes) {
        Ok(b) if field(&b, "order_id").is_some() => Parser::QueryOne,
        _ => Parser::QueryList,
    };
    form.verdict(bytes)
}

/// The body an accepted request was decoded from.
fn accepted_body(bytes: &[u8]) -> Map<String, Value> {
    let value: Value = serde_json::from_slice(bytes).expect("an accepted body is JSON");
    assert!(free_of_nul(&value), "an accepted body holds no U+0000");
    match value {
        Value::Object(map) => map,
        other => panic!("an accepted body is an object, not {other}"),
    }
}

/// A refusal: `invalid_request` with a message; the rules must refuse the body too, and for a
/// body refused by its fields the message names one of the fields that break a rule.
#[track_caller]
fn assert_refusal(e: &ApiError, verdict: &Verdict, bytes: &[u8]) {
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
    assert!(!e.message.trim().is_empty(), "a refusal says why");
    match verdict {
        Verdict::Accept => panic!(
            "refused ({e}) although every rule holds: {}",
            String::from_utf8_lossy(bytes)
        ),
        Verdict::Body(_) => {}
        Verdict::Fields(fields) => assert!(
            fields.iter().any(|f| e.message.contains(&format!("`{f}`"))),
            "the refusal ({e}) names none of the fields that break a rule, {fields:?}"
        ),
    }
}

/// An acceptance: the rules must accept the body too.
#[track_caller]
fn assert_acceptance(verdict: &Verdict, bytes: &[u8]) {
    assert_eq!(
        verdict,
        &Verdict::Accept,
        "accepted although the rules refuse it: {}",
        String::from_utf8_lossy(bytes)
    );
}

fn check_submit(bytes: &[u8]) {
    let verdict = Parser::Submit.verdict(bytes);
    match SubmitRequest::parse(bytes) {
        Err(e) => assert_refusal(&e, &verdict, bytes),
        Ok(r) => {
            assert_acceptance(&verdict, bytes);
            let b = accepted_body(bytes);
            assert!(is_key(&r.request_id) && text(&b, "request_id") == Some(r.request_id.as_str()));
            assert!(is_token(&r.user_id) && text(&b, "user_id") == Some(r.user_id.as_str()));
            assert!(
                is_token(&r.partner_id) && text(&b, "partner_id") == Some(r.partner_id.as_str())
            );
            assert!(
                chars_between(&r.product, 1, 64) && text(&b, "product") == Some(r.product.as_str())
            );
            assert!((0..=MAX_AMOUNT).contains(&r.amount_minor));
            assert_eq!(
                field(&b, "amount_minor").and_then(Value::as_i64),
                Some(r.amount_minor)
            );
            assert!(r.currency.len() == 3 && r.currency.bytes().all(|c| c.is_ascii_uppercase()));
            assert_eq!(text(&b, "currency"), Some(r.currency.as_str()));
            let items = r.items.as_array().expect("items is an array");
            assert!(items.len() <= 100 && items.iter().all(Value::is_object));
            assert_eq!(
                field(&b, "items").cloned().unwrap_or_else(|| json!([])),
                r.items
            );
            assert!(is_small_object(&r.payload));
            assert_eq!(
                field(&b, "payload").cloned().unwrap_or_else(|| json!({})),
                r.payload
            );
        }
    }
}

fn check_result(bytes: &[u8]) {
    let verdict = Parser::Result.verdict(bytes);
    match ResultRequest::parse(bytes) {
        Err(e) => assert_refusal(&e, &verdict, bytes),
        Ok(r) => {
            assert_acceptance(&verdict, bytes);
            let b = accepted_body(bytes);
            assert!(is_v7(&r.order_id) && text(&b, "order_id") == Some(r.order_id.as_str()));
            assert!(is_key(&r.result_id) && text(&b, "result_id") == Some(r.result_id.as_str()));
            assert_ne!(
                r.outcome,
                Outcome::Timeout,
                "only the hub closes an order with timeout"
            );
            assert_eq!(text(&b, "outcome"), Some(r.outcome.as_str()));
            assert_eq!(text(&b, "partner_ref"), r.partner_ref.as_deref());
            assert!(
                r.partner_ref
                    .as_deref()
                    .is_none_or(|p| chars_between(p, 0, 128))
            );
            assert!(is_small_object(&r.detail));
            assert_eq!(
                field(&b, "detail").cloned().unwrap_or_else(|| json!({})),
                r.detail
            );
        }
    }
}

fn check_get(bytes: &[u8]) {
    let verdict = Parser::Get.verdict(bytes);
    match GetRequest::parse(bytes) {
        Err(e) => assert_refusal(&e, &verdict, bytes),
        Ok(r) => {
            assert_acceptance(&verdict, bytes);
            let b = accepted_body(bytes);
            assert!(is_v7(&r.order_id) && text(&b, "order_id") == Some(r.order_id.as_str()));
        }
    }
}

fn check_query(bytes: &[u8]) {
    let verdict = query_verdict(bytes);
    match QueryRequest::parse(bytes) {
        Err(e) => assert_refusal(&e, &verdict, bytes),
        Ok(q) => {
            assert_acceptance(&verdict, bytes);
            let b = accepted_body(bytes);
            assert!(is_token(q.user_id()) && text(&b, "user_id") == Some(q.user_id()));
            match &q {
                QueryRequest::One { order_id, .. } => {
                    assert!(is_v7(order_id) && text(&b, "order_id") == Some(order_id.as_str()));
                }
                QueryRequest::List { limit, before, .. } => {
                    assert!(
                        field(&b, "order_id").is_none(),
                        "the list form has no order_id"
                    );
                    assert!((1..=100).contains(limit));
                    let sent =
                        field(&b, "limit").map(|v| v.as_u64().expect("limit sent as an integer"));
                    assert_eq!(sent.unwrap_or(20), *limit);
                    assert!(before.as_deref().is_none_or(is_v7));
                    assert_eq!(text(&b, "before"), before.as_deref());
                }
            }
        }
    }
}

fn check_aux(bytes: &[u8]) {
    let verdict = Parser::Aux.verdict(bytes);
    match AuxRecordRequest::parse(bytes) {
        Err(e) => assert_refusal(&e, &verdict, bytes),
        Ok(r) => {
            assert_acceptance(&verdict, bytes);
            let b = accepted_body(bytes);
            assert!(is_v7(&r.order_id) && text(&b, "order_id") == Some(r.order_id.as_str()));
            assert!(
                chars_between(&r.status, 1, 32) && text(&b, "status") == Some(r.status.as_str())
            );
            assert!(is_small_object(&r.data));
            assert_eq!(
                field(&b, "data").cloned().unwrap_or_else(|| json!({})),
                r.data
            );
        }
    }
}

fn check_all(bytes: &[u8]) {
    check_submit(bytes);
    check_result(bytes);
    check_get(bytes);
    check_query(bytes);
    check_aux(bytes);
}

// ---- strategies ------------------------------------------------------------------------------

fn v7() -> impl Strategy<Value = String> {
    (0u64..(1 << 48), any::<[u8; 10]>()).prop_map(|(ms, rand)| {
        uuid::Builder::from_unix_timestamp_millis(ms, &rand)
            .into_uuid()
            .to_string()
    })
}

/// Printable text with some of every width of UTF-8 (1–4 bytes): far cheaper to generate than
/// `\PC`, whose hundreds of ranges dominate a debug run.
macro_rules! printable {
    ($n:literal) => {
        concat!("[ -~¡-ÿа-я一-龥😀-🙏]", $n)
    };
}

/// A string strategy from a regex, compiled once (a `&str` used as a strategy re-parses its
/// regex for every value it makes).
fn re(regex: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(regex)
        .expect("a valid regex")
        .boxed()
}

/// Strings that sit on or just past a rule, plus arbitrary ones.
fn tricky_string() -> BoxedStrategy<String> {
    let fixed: Vec<String> = [
        "",
        " ",
        "u-1001",
        "acme-air",
        "CNY",
        "cny",
        "confirmed",
        "rejected",
        "failed",
        "timeout",
        "done",
        "a.b",
        "a*",
        ">",
        "a b",
        "uа-1001",
        "ａcme",
        "NaN",
        "Infinity",
        "-0",
        "1e400",
        "\u{0}",
        "a\u{0}b",
        "\u{202e}",
        "67e55044-10b1-426f-9247-bb680e5fe0c8",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        "x".repeat(64),
        "x".repeat(65),
        "k".repeat(128),
        "k".repeat(129),
        "s".repeat(32),
        "s".repeat(33),
    ])
    .collect();
    prop_oneof![
        3 => select(fixed),
        2 => v7(),
        1 => v7().prop_map(|s| s.to_uppercase()),
        2 => re("[A-Za-z0-9_-]{0,66}"),
        2 => re("[!-~]{0,130}"),
        2 => re(printable!("{0,40}")),
        1 => any::<String>(),
    ]
    .boxed()
}

fn tricky_number() -> BoxedStrategy<Value> {
    prop_oneof![
        select(vec![
            json!(0),
            json!(-1),
            json!(1),
            json!(1.5),
            json!(20),
            json!(100),
            json!(101),
            json!(MAX_AMOUNT),
            json!(MAX_AMOUNT + 1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(-0.0),
            json!(1e300),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
    ]
    .boxed()
}

fn key() -> BoxedStrategy<String> {
    prop_oneof![3 => select(FIELDS).prop_map(String::from), 1 => tricky_string()].boxed()
}

/// Any JSON value, nested a few levels, with real field names among its keys.
fn json_value() -> BoxedStrategy<Value> {
    nested(4, 48, 6)
}

/// A JSON value of at most `depth` levels and about `nodes` values, `width` per array or object.
fn nested(depth: u32, nodes: u32, width: usize) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        tricky_number(),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, nodes, width as u32, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..width).prop_map(Value::Array),
            vec((key(), inner), 0..width).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// An object of about `bytes` bytes as compact JSON, across the 64 KiB limit.
fn sized_object() -> BoxedStrategy<Value> {
    // {"k":"…"} is 8 bytes of framing.
    (LIMIT - 3..=LIMIT + 3)
        .prop_map(|n| json!({"k": "x".repeat(n - 8)}))
        .boxed()
}

/// A few keys with shallow values: the free-form objects of a near-valid body (kept small, as
/// the deep cases are `json_value`'s job and generation dominates the run time).
fn small_object() -> BoxedStrategy<Value> {
    vec((key(), nested(2, 8, 3)), 0..4)
        .prop_map(|kv| Value::Object(kv.into_iter().collect()))
        .boxed()
}

/// A field of a near-valid body: mostly a value that passes, sometimes one just past a rule,
/// sometimes anything, sometimes absent.
fn slot(
    absent: u32,
    good: BoxedStrategy<Value>,
    near_miss: BoxedStrategy<Value>,
) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        absent => Just(None),
        16 => good.prop_map(Some),
        2 => near_miss.prop_map(Some),
        1 => json_value().prop_map(Some),
    ]
    .boxed()
}

/// A body that every parser could accept, with each field in turn good, just wrong, anything or
/// missing; since unknown fields are ignored, one shape serves all five parsers.
fn near_valid() -> BoxedStrategy<Value> {
    let s = |r: &str| re(r).prop_map(Value::String).boxed();
    let one_of = |values: Vec<Value>| select(values).boxed();
    // Rare: a body near 64 KiB costs far more to decode than the rest.
    let object = prop_oneof![30 => small_object(), 1 => sized_object()].boxed();
    let not_object = one_of(vec![json!([]), json!("{}"), json!(1), json!([{}])]);
    let key_miss = prop_oneof![
        s("[!-~]{129,130}"),
        s("[!-~]{0,8}[ \\x00-\\x1f\\x7f-\\u{ff}а][!-~]{0,8}"),
        one_of(vec![json!(""), json!(7)]),
    ]
    .boxed();
    let token_miss = prop_oneof![
        s("[A-Za-z0-9_-]{65,66}"),
        s("[A-Za-z0-9_-]{0,8}[.*> \\tаＡé/\\x00][A-Za-z0-9_-]{0,8}"),
        one_of(vec![json!(""), json!(1), json!(["u-1"])]),
    ]
    .boxed();
    let id_miss = prop_oneof![
        v7().prop_map(|id| Value::String(id.to_uppercase())),
        v7().prop_map(|id| Value::String(id.replace('-', ""))),
        v7().prop_map(|id| Value::String(format!("{{{id}}}"))),
        v7().prop_map(|id| Value::String(format!("{}4{}", &id[..14], &id[15..]))),
        // Version 7, but not the RFC 4122 variant.
        v7().prop_map(|id| Value::String(format!("{}c{}", &id[..19], &id[20..]))),
        v7().prop_map(|id| Value::String(format!("{id} "))),
        one_of(vec![
            json!("67e55044-10b1-426f-9247-bb680e5fe0c8"),
            json!(""),
            json!(7)
        ]),
    ]
    .boxed();
    let items = prop_oneof![
        4 => vec(small_object(), 0..3).prop_map(Value::Array),
        1 => (99usize..=100).prop_map(|n| Value::Array(vec![json!({}); n])),
    ]
    .boxed();
    let fields: Vec<(&str, BoxedStrategy<Value>, BoxedStrategy<Value>)> = vec![
        ("request_id", s("[!-~]{1,128}"), key_miss.clone()),
        ("user_id", s("[A-Za-z0-9_-]{1,64}"), token_miss.clone()),
        ("partner_id", s("[A-Za-z0-9_-]{1,64}"), token_miss),
        (
            "product",
            s(printable!("{1,64}")),
            prop_oneof![s(printable!("{65,66}")), one_of(vec![json!(""), json!(1)])].boxed(),
        ),
        (
            "amount_minor",
            prop_oneof![
                (0..=MAX_AMOUNT).prop_map(Value::from),
                one_of(vec![json!(0), json!(MAX_AMOUNT)])
            ]
            .boxed(),
            one_of(vec![
                json!(-1),
                json!(MAX_AMOUNT + 1),
                json!(1.5),
                json!(1e15),
                json!("12"),
                json!(u64::MAX),
            ]),
        ),
        (
            "currency",
            s("[A-Z]{3}"),
            prop_oneof![s("[A-Za-z]{2,4}"), s("[A-Z]{2}[^A-Z]")].boxed(),
        ),
        (
            "items",
            items,
            one_of(vec![
                Value::Array(vec![json!({}); 101]),
                json!([1]),
                json!({}),
                json!([[]]),
            ]),
        ),
        ("payload", object.clone(), not_object.clone()),
        (
            "order_id",
            v7().prop_map(Value::String).boxed(),
            id_miss.clone(),
        ),
        ("result_id", s("[!-~]{1,128}"), key_miss),
        (
            "outcome",
            one_of(vec![json!("confirmed"), json!("rejected"), json!("failed")]),
            one_of(vec![
                json!("timeout"),
                json!("Confirmed"),
                json!("confirmed "),
                json!(""),
                json!(1),
            ]),
        ),
        (
            "partner_ref",
            s(printable!("{0,128}")),
            prop_oneof![
                s(printable!("{129,130}")),
                one_of(vec![json!(1), json!({})])
            ]
            .boxed(),
        ),
        ("detail", object.clone(), not_object.clone()),
        (
            "status",
            s(printable!("{1,32}")),
            prop_oneof![
                s(printable!("{33,34}")),
                one_of(vec![json!(""), json!(true)])
            ]
            .boxed(),
        ),
        ("data", object, not_object),
        (
            "limit",
            prop_oneof![
                (1u64..=100).prop_map(Value::from),
                one_of(vec![json!(1), json!(100)])
            ]
            .boxed(),
            prop_oneof![
                2 => one_of(vec![json!(0), json!(101)]),
                1 => one_of(vec![json!(-1), json!(1.5), json!("20"), json!(1e2), json!(u64::MAX)]),
            ]
            .boxed(),
        ),
        ("before", v7().prop_map(Value::String).boxed(), id_miss),
    ];
    // Without `order_id` a query is the list form: give that form its share.
    let absent = |name: &str| if name == "order_id" { 6 } else { 1 };
    let (names, slots): (Vec<&str>, Vec<_>) = fields
        .into_iter()
        .map(|(name, good, miss)| (name, slot(absent(name), good, miss)))
        .unzip();
    slots
        .prop_map(move |values| {
            Value::Object(
                names
                    .iter()
                    .zip(values)
                    .filter_map(|(n, v)| v.map(|v| (n.to_string(), v)))
                    .collect(),
            )
        })
        .boxed()
}

/// One field of a body: values that keep its rule and values that break it (`None`: absent).
struct FieldRule {
    name: &'static str,
    good: BoxedStrategy<Option<Value>>,
    bad: BoxedStrategy<Option<Value>>,
}

fn rule(
    name: &'static str,
    good: BoxedStrategy<Option<Value>>,
    bad: BoxedStrategy<Option<Value>>,
) -> FieldRule {
    FieldRule { name, good, bad }
}

fn some(s: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    s.prop_map(Some).boxed()
}

fn string(regex: &str) -> BoxedStrategy<Value> {
    re(regex).prop_map(Value::String).boxed()
}

fn values(v: Vec<Value>) -> BoxedStrategy<Value> {
    select(v).boxed()
}

/// A required field: missing or `null` breaks it as surely as a bad value.
fn required(bad: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => bad.prop_map(Some),
    ]
    .boxed()
}

/// An optional field: missing or `null` keeps it.
fn optional(good: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        6 => good.prop_map(Some),
    ]
    .boxed()
}

/// A small object free of U+0000 (a rule of the whole body, kept apart).
fn clean_object() -> BoxedStrategy<Value> {
    small_object().prop_filter("no U+0000", free_of_nul).boxed()
}

/// A shallow value free of U+0000.
fn clean_value() -> BoxedStrategy<Value> {
    nested(2, 8, 3)
        .prop_filter("no U+0000", free_of_nul)
        .boxed()
}

/// Values of another JSON type than a string.
fn not_a_string() -> BoxedStrategy<Value> {
    values(vec![
        json!(7),
        json!(true),
        json!(["x"]),
        json!({"x": 1}),
        json!(1.5),
    ])
}

fn not_an_object() -> BoxedStrategy<Value> {
    values(vec![
        json!([]),
        json!([{}]),
        json!("{}"),
        json!(1),
        json!(false),
    ])
}

/// Idempotency keys: 1–128 characters, each 0x21–0x7E.
fn key_rule(name: &'static str) -> FieldRule {
    rule(
        name,
        some(prop_oneof![8 => string("[!-~]{1,128}"), 1 => Just(json!("k".repeat(128)))].boxed()),
        required(
            prop_oneof![
                Just(json!("")),
                string("[!-~]{129,140}"),
                // One character outside 0x21–0x7E (but never U+0000, a rule of the whole body).
                string("[!-~]{0,8}[ \\x01-\\x1f\\x7f-\\u{ff}а😀][!-~]{0,8}"),
                not_a_string(),
            ]
            .boxed(),
        ),
    )
}

/// Subject tokens: `^[A-Za-z0-9_-]{1,64}$`.
fn token_rule(name: &'static str) -> FieldRule {
    rule(
        name,
        some(string("[A-Za-z0-9_-]{1,64}")),
        required(
            prop_oneof![
                Just(json!("")),
                string("[A-Za-z0-9_-]{65,70}"),
                string("[A-Za-z0-9_-]{0,8}[.*> \\tаＡé/][A-Za-z0-9_-]{0,8}"),
                not_a_string(),
            ]
            .boxed(),
        ),
    )
}

/// A string of `min..=max` characters (any printable ones), required unless `min` is 0.
fn text_rule(name: &'static str, min: usize, max: usize) -> FieldRule {
    // `printable!("")` is the character class alone.
    let between = |lo: usize, hi: usize| string(&format!("{}{{{lo},{hi}}}", printable!("")));
    let edge = json!("一".repeat(max));
    let good = prop_oneof![8 => between(min, max), 1 => Just(edge)].boxed();
    let too_long = between(max + 1, max + 3);
    if min == 0 {
        rule(
            name,
            optional(good),
            some(prop_oneof![too_long, not_a_string()].boxed()),
        )
    } else {
        rule(
            name,
            some(good),
            required(prop_oneof![Just(json!("")), too_long, not_a_string()].boxed()),
        )
    }
}

/// Order ids: lowercase hyphenated UUIDv7.
fn id_good() -> BoxedStrategy<Value> {
    v7().prop_map(Value::String).boxed()
}

fn id_bad() -> BoxedStrategy<Value> {
    prop_oneof![
        // Upper case, with at least one letter that shows it.
        v7().prop_map(|id| {
            let mut id = id.to_uppercase();
            id.replace_range(19..20, "A");
            Value::String(id)
        }),
        v7().prop_map(|id| Value::String(id.replace('-', ""))),
        v7().prop_map(|id| Value::String(format!("{{{id}}}"))),
        v7().prop_map(|id| Value::String(format!("{}4{}", &id[..14], &id[15..]))),
        // Version 7, but not the RFC 4122 variant.
        v7().prop_map(|id| Value::String(format!("{}c{}", &id[..19], &id[20..]))),
        v7().prop_map(|id| Value::String(format!("{id} "))),
        v7().prop_map(|id| Value::String(id[..35].to_owned())),
        Just(json!("67e55044-10b1-426f-9247-bb680e5fe0c8")),
        Just(json!("")),
        not_a_string(),
    ]
    .boxed()
}

fn order_id_rule() -> FieldRule {
    rule("order_id", some(id_good()), required(id_bad()))
}

/// `payload`, `detail`, `data`: absent, or an object of at most 64 KiB as compact JSON.
fn object_rule(name: &'static str) -> FieldRule {
    let exactly_the_limit = Just(json!({"k": "x".repeat(LIMIT - 8)}));
    let just_over = (LIMIT + 1..=LIMIT + 3).prop_map(|n| json!({"k": "x".repeat(n - 8)}));
    rule(
        name,
        optional(prop_oneof![30 => clean_object(), 1 => exactly_the_limit].boxed()),
        some(prop_oneof![8 => not_an_object(), 1 => just_over].boxed()),
    )
}

fn submit_rules() -> Vec<FieldRule> {
    vec![
        key_rule("request_id"),
        token_rule("user_id"),
        token_rule("partner_id"),
        text_rule("product", 1, 64),
        rule(
            "amount_minor",
            some(
                prop_oneof![
                    (0..=MAX_AMOUNT).prop_map(Value::from),
                    values(vec![json!(0), json!(MAX_AMOUNT)])
                ]
                .boxed(),
            ),
            required(
                prop_oneof![
                    (i64::MIN..0).prop_map(Value::from),
                    (MAX_AMOUNT + 1..=i64::MAX).prop_map(Value::from),
                    ((i64::MAX as u64 + 1)..=u64::MAX).prop_map(Value::from),
                    // Integral values written as numbers with a fraction or an exponent.
                    values(vec![json!(1.0), json!(1.5), json!(1e3), json!(-0.0)]),
                    values(vec![json!("12"), json!(true), json!([1])]),
                ]
                .boxed(),
            ),
        ),
        rule(
            "currency",
            some(string("[A-Z]{3}")),
            required(
                prop_oneof![
                    string("[a-z]{3}"),
                    string("[A-Z]{0,2}"),
                    string("[A-Z]{4,5}"),
                    string("[A-Z]{2}[a-z0-9 ÉЖ]"),
                    not_a_string(),
                ]
                .boxed(),
            ),
        ),
        rule(
            "items",
            optional(
                prop_oneof![
                    4 => vec(clean_object(), 0..3).prop_map(Value::Array),
                    1 => Just(Value::Array(vec![json!({}); 100])),
                ]
                .boxed(),
            ),
            some(
                prop_oneof![
                    (101usize..=110).prop_map(|n| Value::Array(vec![json!({}); n])),
                    (
                        vec(clean_object(), 0..3),
                        0usize..4,
                        clean_value().prop_filter("not an object", |v| !v.is_object())
                    )
                        .prop_map(|(mut items, at, bad)| {
                            items.insert(at.min(items.len()), bad);
                            Value::Array(items)
                        }),
                    values(vec![json!({}), json!("[]"), json!(1), json!(true)]),
                ]
                .boxed(),
            ),
        ),
        object_rule("payload"),
    ]
}

fn result_rules() -> Vec<FieldRule> {
    vec![
        order_id_rule(),
        key_rule("result_id"),
        rule(
            "outcome",
            some(values(vec![
                json!("confirmed"),
                json!("rejected"),
                json!("failed"),
            ])),
            required(
                prop_oneof![
                    // Only the hub closes an order with `timeout`.
                    values(vec![
                        json!("timeout"),
                        json!("Confirmed"),
                        json!("confirmed "),
                        json!(""),
                    ]),
                    string("[a-z]{1,12}").prop_filter("not an outcome", |v| !is_partner_outcome(
                        v.as_str().unwrap_or_default()
                    )),
                    not_a_string(),
                ]
                .boxed(),
            ),
        ),
        text_rule("partner_ref", 0, 128),
        object_rule("detail"),
    ]
}

fn query_one_rules() -> Vec<FieldRule> {
    vec![
        token_rule("user_id"),
        // Present and not null: without an `order_id` the query is the list form.
        rule("order_id", some(id_good()), some(id_bad())),
    ]
}

fn query_list_rules() -> Vec<FieldRule> {
    vec![
        token_rule("user_id"),
        rule(
            "limit",
            optional(
                prop_oneof![
                    (1u64..=100).prop_map(Value::from),
                    values(vec![json!(1), json!(100)])
                ]
                .boxed(),
            ),
            some(
                prop_oneof![
                    values(vec![json!(0), json!(101), json!(u64::MAX), json!(i64::MIN)]),
                    (101u64..=100_000).prop_map(Value::from),
                    (i64::MIN..=0).prop_map(Value::from),
                    values(vec![
                        json!(1.5),
                        json!(1e2),
                        json!(20.0),
                        json!("20"),
                        json!(true)
                    ]),
                ]
                .boxed(),
            ),
        ),
        rule("before", optional(id_good()), some(id_bad())),
    ]
}

fn aux_rules() -> Vec<FieldRule> {
    vec![
        order_id_rule(),
        text_rule("status", 1, 32),
        object_rule("data"),
    ]
}

impl Parser {
    const ALL: [Parser; 6] = [
        Parser::Submit,
        Parser::Result,
        Parser::Get,
        Parser::QueryOne,
        Parser::QueryList,
        Parser::Aux,
    ];

    fn rules(self) -> Vec<FieldRule> {
        match self {
            Parser::Submit => submit_rules(),
            Parser::Result => result_rules(),
            Parser::Get => vec![order_id_rule()],
            Parser::QueryOne => query_one_rules(),
            Parser::QueryList => query_list_rules(),
            Parser::Aux => aux_rules(),
        }
    }
}

/// Fields no parser knows, which every parser ignores.
fn unknown_fields() -> BoxedStrategy<Vec<(String, Value)>> {
    vec(
        (
            re("[a-z_]{1,12}").prop_filter("not a known field", |k| !FIELDS.contains(&k.as_str())),
            clean_value(),
        ),
        0..3,
    )
    .boxed()
}

/// A body of `parser` from its fields' values and some unknown fields.
fn assemble(
    names: &[&'static str],
    slots: Vec<Option<Value>>,
    extra: Vec<(String, Value)>,
) -> Value {
    let mut body: Map<String, Value> = extra.into_iter().collect();
    for (name, v) in names.iter().zip(slots) {
        if let Some(v) = v {
            body.insert(name.to_string(), v);
        }
    }
    Value::Object(body)
}

/// A body that keeps every rule of `parser`.
fn valid_body(parser: Parser) -> BoxedStrategy<Value> {
    let (names, goods): (Vec<_>, Vec<_>) =
        parser.rules().into_iter().map(|r| (r.name, r.good)).unzip();
    (goods, unknown_fields())
        .prop_map(move |(slots, extra)| assemble(&names, slots, extra))
        .boxed()
}

/// A body of `parser` that breaks the rule of exactly one field, and that field.
fn one_rule_broken(parser: Parser) -> BoxedStrategy<(Value, &'static str)> {
    let rules = parser.rules();
    let names: Vec<&'static str> = rules.iter().map(|r| r.name).collect();
    let goods: Vec<_> = rules.iter().map(|r| r.good.clone()).collect();
    let bads: Vec<_> = rules.iter().map(|r| r.bad.clone()).collect();
    (0..rules.len())
        .prop_flat_map(move |i| (Just(i), goods.clone(), bads[i].clone(), unknown_fields()))
        .prop_map(move |(i, mut slots, bad, extra)| {
            slots[i] = bad;
            (assemble(&names, slots, extra), names[i])
        })
        .boxed()
}

fn any_parser() -> impl Strategy<Value = Parser> {
    select(Parser::ALL.to_vec())
}

/// Damage done to the text of a body.
#[derive(Clone, Debug)]
enum Mutation {
    /// Cut it at this fraction of its length.
    Truncate(f64),
    /// Repeat a field name at the start of the object.
    DuplicateKey(&'static str),
    /// Put a byte at this fraction of its length.
    InsertByte(f64, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        select(FIELDS).prop_map(Mutation::DuplicateKey),
        (0.0..1.0f64, any::<u8>()).prop_map(|(at, b)| Mutation::InsertByte(at, b)),
    ]
}

fn mutate(mut text: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let at = |f: f64, len: usize| ((len as f64) * f) as usize;
    match *m {
        Mutation::Truncate(f) => {
            let n = at(f, text.len());
            text.truncate(n);
        }
        Mutation::DuplicateKey(k) if text.first() == Some(&b'{') => {
            let field = format!("\"{k}\":null,");
            text.splice(1..1, field.into_bytes());
        }
        Mutation::DuplicateKey(_) => {}
        Mutation::InsertByte(f, b) => {
            let n = at(f, text.len());
            text.insert(n, b);
        }
    }
    text
}

fn encode(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a Value encodes")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        // ChaCha is most of the run time in a debug build; XorShift is plenty for inputs.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes(bytes in prop_oneof![
        vec(any::<u8>(), 0..512),
        re(printable!("{0,200}")).prop_map(String::into_bytes),
        vec(select(b"{}[]\":,0123456789.eE+-tfnul \\".to_vec()), 0..200),
    ]) {
        check_all(&bytes);
    }

    #[test]
    fn arbitrary_json_values(v in json_value()) {
        check_all(&encode(&v));
    }

    /// Near-valid bodies, each field good, wrong or missing, and some of them damaged as text.
    #[test]
    fn near_valid_and_damaged_bodies(v in near_valid(), m in proptest::option::weighted(0.4, mutation())) {
        let text = encode(&v);
        let input = match &m {
            Some(m) => mutate(text, m),
            None => text,
        };
        check_all(&input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Every rule kept, unknown fields added: accepted, by the rules and by the parser.
    #[test]
    fn bodies_that_keep_every_rule_are_accepted(
        (parser, v) in any_parser().prop_flat_map(|p| (Just(p), valid_body(p)))
    ) {
        let bytes = encode(&v);
        prop_assert_eq!(parser.verdict(&bytes), Verdict::Accept, "{}", v);
        if let Err(e) = parser.parse(&bytes) {
            panic!("{parser:?} refused a body that keeps every rule ({e}): {v}");
        }
        check_all(&bytes);
    }

    /// Exactly one field breaks its rule: refused with `invalid_request` naming that field.
    #[test]
    fn a_body_breaking_one_rule_is_refused_naming_its_field(
        (parser, (v, name)) in any_parser().prop_flat_map(|p| (Just(p), one_rule_broken(p)))
    ) {
        let bytes = encode(&v);
        // The generator itself is held to the rules: this body breaks `name` and nothing else.
        prop_assert_eq!(parser.verdict(&bytes), Verdict::Fields(vec![name]), "{}", v);
        match parser.parse(&bytes) {
            Ok(()) => panic!("{parser:?} accepted a body whose `{name}` breaks its rule: {v}"),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e);
                prop_assert!(
                    e.message.contains(&format!("`{name}`")),
                    "{:?}: the refusal of a bad `{}` does not name it: {} (body {})",
                    parser, name, e.message, v
                );
            }
        }
        check_all(&bytes);
    }

    /// A body that breaks a rule of the whole body (a repeated key, U+0000 in a string or key,
    /// not an object) and no field rule: refused with `invalid_request` saying so.
    #[test]
    fn a_body_breaking_a_body_rule_is_refused(
        (parser, v) in any_parser().prop_flat_map(|p| (Just(p), valid_body(p))),
        how in 0..4usize,
        pick in any::<prop::sample::Index>(),
    ) {
        let map = v.as_object().expect("an object").clone();
        let keys: Vec<&String> = map.keys().collect();
        let key = keys[pick.index(keys.len())].clone();
        let text = String::from_utf8(encode(&v)).expect("UTF-8");
        let (bytes, rule, says) = match how {
            // The same key again, first with `null`: the value that counts as absent.
            0 => (
                text.replacen('{', &format!("{{{}:null,", Value::String(key.clone())), 1),
                BodyRule::RepeatedKey,
                "duplicate field",
            ),
            // The same key again with the very same value.
            1 => (
                text.replacen(
                    '{',
                    &format!("{{{}:{},", Value::String(key.clone()), map[&key]),
                    1,
                ),
                BodyRule::RepeatedKey,
                "duplicate field",
            ),
            // U+0000 in a key no parser knows.
            2 => (
                text.replacen('{', "{\"x\\u0000y\":1,", 1),
                BodyRule::Nul,
                "U+0000",
            ),
            // The body inside an array.
            _ => (format!("[{text}]"), BodyRule::NotObject, "JSON object"),
        };
        let bytes = bytes.into_bytes();
        prop_assert_eq!(parser.verdict(&bytes), Verdict::Body(rule));
        match parser.parse(&bytes) {
            Ok(()) => panic!("{parser:?} accepted {}", String::from_utf8_lossy(&bytes)),
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e);
                prop_assert!(e.message.contains(says), "{:?}: {}", rule, e.message);
            }
        }
        check_all(&bytes);
    }

    /// U+0000 inside a field's string value breaks the body rule, whatever the field.
    #[test]
    fn nul_in_a_field_is_refused(
        (parser, v) in any_parser().prop_flat_map(|p| (Just(p), valid_body(p))),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut map = v.as_object().expect("an object").clone();
        let strings: Vec<String> = map
            .iter()
            .filter(|(_, v)| v.is_string())
            .map(|(k, _)| k.clone())
            .collect();
        prop_assume!(!strings.is_empty());
        let key = &strings[pick.index(strings.len())];
        let s = map[key].as_str().expect("a string").to_owned();
        let at = s.char_indices().map(|(i, _)| i).nth(s.chars().count() / 2).unwrap_or(0);
        map.insert(key.clone(), Value::String(format!("{}\0{}", &s[..at], &s[at..])));
        let bytes = encode(&Value::Object(map));
        prop_assert_eq!(parser.verdict(&bytes), Verdict::Body(BodyRule::Nul));
        let e = parser.parse(&bytes).expect_err("U+0000 is refused");
        prop_assert_eq!(e.code, ErrorCode::InvalidRequest, "{}", e);
        prop_assert!(e.message.contains("U+0000"), "{}", e.message);
    }
}

/// The near-valid strategy must reach acceptance, or the properties above prove little.
#[test]
fn near_valid_bodies_are_often_accepted() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::XorShift,
        ),
    );
    let strategy = near_valid();
    let mut accepted = [0usize; 5];
    for _ in 0..300 {
        let bytes = encode(&strategy.new_tree(&mut runner).expect("a value").current());
        accepted[0] += SubmitRequest::parse(&bytes).is_ok() as usize;
        accepted[1] += ResultRequest::parse(&bytes).is_ok() as usize;
        accepted[2] += GetRequest::parse(&bytes).is_ok() as usize;
        accepted[3] += QueryRequest::parse(&bytes).is_ok() as usize;
        accepted[4] += AuxRecordRequest::parse(&bytes).is_ok() as usize;
    }
    eprintln!("accepted per parser (submit, result, get, query, aux) out of 300: {accepted:?}");
    assert!(
        accepted.iter().all(|&n| n >= 10),
        "accepted per parser out of 300: {accepted:?}"
    );
}
