//! Request decoding and validation: every rule of `docs/protocol.md`, each refusal an
//! [`ApiError`] with code `invalid_request` and a message naming the field.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ApiError;

/// Size limit of `payload`, `detail` and `data`, in bytes of compact JSON.
pub const MAX_JSON_OBJECT_BYTES: usize = 65_536;
const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;
const MAX_ITEMS: usize = 100;

/// The longest key a refusal message quotes before cutting it short.
const QUOTED_KEY_CHARS: usize = 40;

/// Any JSON value, decoded strictly: a key repeated within one object is refused at every depth
/// (rather than silently letting the last one win, which another JSON reader may not do), and so
/// is U+0000 in any string or key (Postgres `text` and `jsonb` cannot store it, and one such
/// order would fail the group commit of every order batched with it). serde_json's nesting limit
/// (128) still applies, since every nested value goes through its deserializer.
struct StrictValue(Value);

/// A key for a refusal message: escaped like a JSON string and cut short.
fn quote_key(key: &str) -> String {
    let cut: String = key.chars().take(QUOTED_KEY_CHARS).collect();
    let more = if cut.len() < key.len() { "…" } else { "" };
    format!("{}{more}", Value::String(cut))
}

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Bool(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<StrictValue, E> {
                serde_json::Number::from_f64(v)
                    .map(|n| StrictValue(Value::Number(n)))
                    .ok_or_else(|| E::custom("a number is not finite"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrictValue, E> {
                self.visit_string(v.to_owned())
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<StrictValue, E> {
                if v.contains('\0') {
                    return Err(E::custom(
                        "a string contains U+0000 (\\u0000), which cannot be stored",
                    ));
                }
                Ok(StrictValue(Value::String(v)))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<StrictValue, D2::Error> {
                StrictValue::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<StrictValue, A::Error> {
                let mut items = Vec::new();
                while let Some(StrictValue(item)) = access.next_element()? {
                    items.push(item);
                }
                Ok(StrictValue(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictValue, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if key.contains('\0') {
                        return Err(serde::de::Error::custom(
                            "a key contains U+0000 (\\u0000), which cannot be stored",
                        ));
                    }
                    let StrictValue(value) = access.next_value()?;
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate field {} in one object",
                            quote_key(&key)
                        )));
                    }
                    map.insert(key, value);
                }
                Ok(StrictValue(Value::Object(map)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The kind of a JSON value, for messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A decoded request body: a JSON object with typed accessors that explain every refusal.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ApiError::invalid("the body is not UTF-8; send a JSON object"))?;
        if text.trim().is_empty() {
            return Err(ApiError::invalid("the body is empty; send a JSON object"));
        }
        match serde_json::from_str::<StrictValue>(text) {
            Ok(StrictValue(Value::Object(map))) => Ok(Self(map)),
            Ok(StrictValue(other)) => Err(ApiError::invalid(format!(
                "the body must be a JSON object, not {}",
                kind_of(&other)
            ))),
            Err(e) if e.is_data() => Err(ApiError::invalid(format!("the body is refused: {e}"))),
            Err(e) => Err(ApiError::invalid(format!(
                "the body is not valid JSON: {e}"
            ))),
        }
    }

    /// A present, non-null value.
    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &str) -> Result<&Value, ApiError> {
        self.get(field)
            .ok_or_else(|| ApiError::invalid(format!("`{field}` is required")))
    }

    fn string(&self, field: &str) -> Result<&str, ApiError> {
        self.required(field)?
            .as_str()
            .ok_or_else(|| ApiError::invalid(format!("`{field}` must be a string")))
    }

    fn opt_string(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(format!("`{field}` must be a string"))),
        }
    }

    /// A string of `min..=max` characters.
    fn text(&self, field: &str, min: usize, max: usize) -> Result<String, ApiError> {
        let s = self.string(field)?;
        check_len(field, s, min, max)?;
        Ok(s.to_owned())
    }

    /// An idempotency key: 1–128 characters, each printable ASCII without space.
    fn key(&self, field: &str) -> Result<String, ApiError> {
        let s = self.string(field)?;
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ApiError::invalid(format!(
                "`{field}` must be 1–128 printable ASCII characters without spaces"
            )));
        }
        Ok(s.to_owned())
    }

    fn token(&self, field: &str) -> Result<String, ApiError> {
        let s = self.string(field)?;
        validate_token(field, s)?;
        Ok(s.to_owned())
    }

    fn order_id(&self, field: &str) -> Result<String, ApiError> {
        let s = self.string(field)?;
        validate_order_id(field, s)?;
        Ok(s.to_owned())
    }

    /// An optional JSON object of at most [`MAX_JSON_OBJECT_BYTES`] as compact JSON; `{}` if absent.
    fn object(&self, field: &str) -> Result<Value, ApiError> {
        match self.get(field) {
            None => Ok(Value::Object(Map::new())),
            Some(v @ Value::Object(_)) => {
                let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
                if size > MAX_JSON_OBJECT_BYTES {
                    return Err(ApiError::invalid(format!(
                        "`{field}` is {size} bytes as compact JSON; the limit is {MAX_JSON_OBJECT_BYTES}"
                    )));
                }
                Ok(v.clone())
            }
            Some(_) => Err(ApiError::invalid(format!(
                "`{field}` must be a JSON object"
            ))),
        }
    }

    fn integer(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) => Ok(Some(n)),
                None if v.is_number() => Err(ApiError::invalid(format!(
                    "`{field}` must be a whole number in range"
                ))),
                None => Err(ApiError::invalid(format!("`{field}` must be an integer"))),
            },
        }
    }
}

fn check_len(field: &str, s: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(ApiError::invalid(format!(
            "`{field}` must be {min}–{max} characters (got {n})"
        )));
    }
    Ok(())
}

/// A subject token (`user_id`, `partner_id`, aux `system`): `^[A-Za-z0-9_-]{1,64}$`.
pub fn validate_token(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "`{field}` must match ^[A-Za-z0-9_-]{{1,64}}$ (it becomes a subject token)"
        )))
    }
}

/// An order id: a UUIDv7, lowercase and hyphenated.
fn validate_order_id(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = uuid::Uuid::try_parse(s)
        .map(|u| {
            u.get_version_num() == 7
                && u.get_variant() == uuid::Variant::RFC4122
                && u.hyphenated().to_string() == s
        })
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "`{field}` must be a lowercase hyphenated UUIDv7"
        )))
    }
}

/// `orders.submit`.
#[derive(Clone, Debug, PartialEq)]
pub struct SubmitRequest {
    pub request_id: String,
    pub user_id: String,
    pub partner_id: String,
    pub product: String,
    pub amount_minor: i64,
    pub currency: String,
    pub items: Value,
    pub payload: Value,
}

impl SubmitRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let b = Body::parse(bytes)?;
        let request_id = b.key("request_id")?;
        let user_id = b.token("user_id")?;
        let partner_id = b.token("partner_id")?;
        let product = b.text("product", 1, 64)?;
        let amount_minor = b
            .integer("amount_minor")?
            .ok_or_else(|| ApiError::invalid("`amount_minor` is required"))?;
        if !(0..=MAX_AMOUNT_MINOR).contains(&amount_minor) {
            return Err(ApiError::invalid(
                "`amount_minor` must be between 0 and 10^15",
            ));
        }
        let currency = b.string("currency")?;
        if currency.len() != 3 || !currency.bytes().all(|c| c.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "`currency` must be three upper-case letters (ISO 4217)",
            ));
        }
        let items = match b.get("items") {
            None => Value::Array(Vec::new()),
            Some(Value::Array(items)) => {
                if items.len() > MAX_ITEMS {
                    return Err(ApiError::invalid(format!(
                        "`items` holds {} entries; at most {MAX_ITEMS}",
                        items.len()
                    )));
                }
                if !items.iter().all(Value::is_object) {
                    return Err(ApiError::invalid(
                        "every entry of `items` must be a JSON object",
                    ));
                }
                Value::Array(items.clone())
            }
            Some(_) => return Err(ApiError::invalid("`items` must be an array of objects")),
        };
        let payload = b.object("payload")?;
        Ok(Self {
            request_id,
            user_id,
            partner_id,
            product,
            amount_minor,
            currency: currency.to_owned(),
            items,
            payload,
        })
    }
}

/// `orders.partner.<id>.get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetRequest {
    pub order_id: String,
}

impl GetRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let b = Body::parse(bytes)?;
        Ok(Self {
            order_id: b.order_id("order_id")?,
        })
    }
}

/// A partner's verdict on an order; `Timeout` is the hub's own, never accepted from a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Confirmed,
    Rejected,
    Failed,
    Timeout,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Confirmed, Self::Rejected, Self::Failed, Self::Timeout]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// `orders.partner.<id>.result`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRequest {
    pub order_id: String,
    pub result_id: String,
    pub outcome: Outcome,
    pub partner_ref: Option<String>,
    pub detail: Value,
}

impl ResultRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let b = Body::parse(bytes)?;
        let order_id = b.order_id("order_id")?;
        let result_id = b.key("result_id")?;
        let outcome = match b.string("outcome")? {
            "confirmed" => Outcome::Confirmed,
            "rejected" => Outcome::Rejected,
            "failed" => Outcome::Failed,
            _ => {
                return Err(ApiError::invalid(
                    "`outcome` must be one of confirmed, rejected, failed",
                ));
            }
        };
        let partner_ref = match b.opt_string("partner_ref")? {
            Some(r) => {
                check_len("partner_ref", r, 0, 128)?;
                Some(r.to_owned())
            }
            None => None,
        };
        let detail = b.object("detail")?;
        Ok(Self {
            order_id,
            result_id,
            outcome,
            partner_ref,
            detail,
        })
    }
}

/// `orders.aux.<system>.record`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuxRecordRequest {
    pub order_id: String,
    pub status: String,
    pub data: Value,
}

impl AuxRecordRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let b = Body::parse(bytes)?;
        Ok(Self {
            order_id: b.order_id("order_id")?,
            status: b.text("status", 1, 32)?,
            data: b.object("data")?,
        })
    }
}

/// `orders.query`: one order with its result and aux records, or a page of the user's orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryRequest {
    One {
        user_id: String,
        order_id: String,
    },
    List {
        user_id: String,
        limit: u64,
        before: Option<String>,
    },
}

impl QueryRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let b = Body::parse(bytes)?;
        let user_id = b.token("user_id")?;
        if b.get("order_id").is_some() {
            return Ok(Self::One {
                user_id,
                order_id: b.order_id("order_id")?,
            });
        }
        let limit = match b.integer("limit")? {
            None => 20,
            Some(n @ 1..=100) => n as u64,
            Some(_) => return Err(ApiError::invalid("`limit` must be between 1 and 100")),
        };
        let before = match b.get("before") {
            None => None,
            Some(_) => Some(b.order_id("before")?),
        };
        Ok(Self::List {
            user_id,
            limit,
            before,
        })
    }

    pub fn user_id(&self) -> &str {
        match self {
            Self::One { user_id, .. } | Self::List { user_id, .. } => user_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn submit(v: Value) -> Result<SubmitRequest, ApiError> {
        SubmitRequest::parse(&serde_json::to_vec(&v).unwrap())
    }

    fn good() -> Value {
        json!({"request_id":"gw-7f3a","user_id":"u-1001","partner_id":"acme-air","product":"flight",
               "amount_minor":129900,"currency":"CNY","items":[{"sku":"MU5101","qty":1}],"payload":{"seat":"12A"}})
    }

    #[test]
    fn accepts_the_design_example() {
        let r = submit(good()).unwrap();
        assert_eq!(r.amount_minor, 129900);
        assert_eq!(r.items, json!([{"sku":"MU5101","qty":1}]));
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let mut v = good();
        v.as_object_mut().unwrap().remove("items");
        v.as_object_mut().unwrap().remove("payload");
        v["extra"] = json!(1);
        let r = submit(v).unwrap();
        assert_eq!(r.items, json!([]));
        assert_eq!(r.payload, json!({}));
    }

    #[test]
    fn refusals_name_the_field() {
        for (field, value) in [
            ("user_id", json!("u.1")),
            ("user_id", json!("x".repeat(65))),
            ("partner_id", json!("acme*")),
            ("request_id", json!("has space")),
            ("request_id", json!("")),
            ("product", json!("")),
            ("amount_minor", json!(-1)),
            ("amount_minor", json!(1_000_000_000_000_001i64)),
            ("amount_minor", json!(1.5)),
            ("amount_minor", json!("12")),
            ("currency", json!("cny")),
            ("items", json!([1])),
            ("payload", json!([])),
        ] {
            let mut v = good();
            v[field] = value.clone();
            let e = submit(v).unwrap_err();
            assert!(e.message.contains(field), "{field}={value}: {}", e.message);
        }
    }

    #[test]
    fn limits_at_the_edge() {
        let mut v = good();
        v["amount_minor"] = json!(1_000_000_000_000_000i64);
        v["product"] = json!("p".repeat(64));
        v["request_id"] = json!("k".repeat(128));
        assert!(submit(v.clone()).is_ok());
        v["request_id"] = json!("k".repeat(129));
        assert!(submit(v).is_err());
        // {"k":"…"} is 8 bytes of framing
        let mut v = good();
        v["payload"] = json!({"k": "x".repeat(MAX_JSON_OBJECT_BYTES - 8)});
        assert!(submit(v.clone()).is_ok());
        v["payload"] = json!({"k": "x".repeat(MAX_JSON_OBJECT_BYTES - 7)});
        assert!(submit(v).is_err());
    }

    #[test]
    fn duplicate_keys_and_non_objects() {
        assert!(
            SubmitRequest::parse(br#"{"user_id":"a","user_id":"b"}"#)
                .unwrap_err()
                .message
                .contains("duplicate")
        );
        assert!(SubmitRequest::parse(b"[]").is_err());
        assert!(SubmitRequest::parse(b"not json").is_err());
        assert!(SubmitRequest::parse(&[0xff, 0xfe]).is_err());
        let deep = "[".repeat(10_000);
        assert!(SubmitRequest::parse(format!("{{\"payload\":{deep}").as_bytes()).is_err());
    }

    #[test]
    fn nested_duplicates_nul_and_empty_bodies() {
        let mut v = good();
        let text = serde_json::to_string(&v).unwrap();
        // A repeated key inside `payload` is as ambiguous as one at the top.
        let nested = text.replace(r#"{"seat":"12A"}"#, r#"{"seat":"12A","seat":"1C"}"#);
        let e = SubmitRequest::parse(nested.as_bytes()).unwrap_err();
        assert!(
            e.message.contains("duplicate field \"seat\""),
            "{}",
            e.message
        );
        // U+0000 anywhere: Postgres cannot store it.
        v["product"] = json!("fli\u{0}ght");
        assert!(submit(v.clone()).unwrap_err().message.contains("U+0000"));
        v["product"] = json!("flight");
        v["payload"] = json!({"a\u{0}b": 1});
        assert!(submit(v).unwrap_err().message.contains("U+0000"));
        // A quoted key is escaped and cut short.
        let long = format!(r#"{{"{k}":1,"{k}":2}}"#, k = "\\n".repeat(100));
        let e = SubmitRequest::parse(long.as_bytes()).unwrap_err();
        assert!(
            e.message.len() < 200 && e.message.contains('…'),
            "{}",
            e.message
        );
        for empty in [&b""[..], b"  \n", b"null", b"42", b"\"x\""] {
            let e = SubmitRequest::parse(empty).unwrap_err();
            assert_eq!(e.code, crate::protocol::ErrorCode::InvalidRequest);
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn order_ids_are_lowercase_v7() {
        let id = uuid::Uuid::now_v7().to_string();
        assert!(GetRequest::parse(format!(r#"{{"order_id":"{id}"}}"#).as_bytes()).is_ok());
        let upper = id.to_uppercase();
        assert!(GetRequest::parse(format!(r#"{{"order_id":"{upper}"}}"#).as_bytes()).is_err());
        let v4 = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        assert!(GetRequest::parse(format!(r#"{{"order_id":"{v4}"}}"#).as_bytes()).is_err());
    }

    #[test]
    fn query_forms() {
        let q = QueryRequest::parse(br#"{"user_id":"u1"}"#).unwrap();
        assert_eq!(
            q,
            QueryRequest::List {
                user_id: "u1".into(),
                limit: 20,
                before: None
            }
        );
        assert!(QueryRequest::parse(br#"{"user_id":"u1","limit":0}"#).is_err());
        assert!(QueryRequest::parse(br#"{"user_id":"u1","limit":101}"#).is_err());
        assert!(QueryRequest::parse(br#"{"limit":10}"#).is_err());
    }

    #[test]
    fn results_refuse_timeout_from_partners() {
        let id = uuid::Uuid::now_v7().to_string();
        let body = format!(r#"{{"order_id":"{id}","result_id":"r1","outcome":"timeout"}}"#);
        assert!(ResultRequest::parse(body.as_bytes()).is_err());
    }
}
