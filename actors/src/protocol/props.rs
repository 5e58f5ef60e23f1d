//! Property tests of request decoding and validation (DESIGN.md §2): every parser, fed arbitrary
//! bytes and arbitrary JSON-ish values, never panics; every refusal is `invalid_request` with a
//! message; every acceptance obeys the documented rules and carries exactly what was sent.
//!
//! The rules are checked against oracles written here from the text of DESIGN.md, not by calling
//! the validation helpers under test. Bounded: [`CASES`] inputs per property, each fed to all
//! five parsers (well under a second in a debug build).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
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

/// The body an accepted request was decoded from.
fn accepted_body(bytes: &[u8]) -> Map<String, Value> {
    let value: Value = serde_json::from_slice(bytes).expect("an accepted body is JSON");
    assert!(free_of_nul(&value), "an accepted body holds no U+0000");
    match value {
        Value::Object(map) => map,
        other => panic!("an accepted body is an object, not {other}"),
    }
}

#[track_caller]
fn assert_refusal(e: &ApiError) {
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
    assert!(!e.message.trim().is_empty(), "a refusal says why");
}

fn check_submit(bytes: &[u8]) {
    match SubmitRequest::parse(bytes) {
        Err(e) => assert_refusal(&e),
        Ok(r) => {
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
    match ResultRequest::parse(bytes) {
        Err(e) => assert_refusal(&e),
        Ok(r) => {
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
    match GetRequest::parse(bytes) {
        Err(e) => assert_refusal(&e),
        Ok(r) => {
            let b = accepted_body(bytes);
            assert!(is_v7(&r.order_id) && text(&b, "order_id") == Some(r.order_id.as_str()));
        }
    }
}

fn check_query(bytes: &[u8]) {
    match QueryRequest::parse(bytes) {
        Err(e) => assert_refusal(&e),
        Ok(q) => {
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
    match AuxRecordRequest::parse(bytes) {
        Err(e) => assert_refusal(&e),
        Ok(r) => {
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
