//! The events of `docs/protocol.md` "Events": structured-mode CloudEvents 1.0 JSON, thin data.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `result_id` of the result the hub stores itself when a partner misses its deadline.
pub const TIMEOUT_RESULT_ID: &str = "orderhub-timeout";

/// Header carrying the primary WAL position the event's commit is covered by (Postgres only).
pub const COMMIT_LSN_HEADER: &str = "Orderhub-Commit-Lsn";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `orderhub.order.stored`, on `orders.events.stored.<partner_id>.<order_id>`.
    Stored,
    /// `orderhub.order.result_stored`, on `orders.events.result.<user_id>.<order_id>`.
    ResultStored,
    /// `orderhub.order.late_result_stored`, on `orders.events.late.<user_id>.<order_id>`.
    Late,
    /// `orderhub.order.settled`, on `orders.events.settled.<user_id>.<order_id>`.
    Settled,
}

impl EventKind {
    pub const fn type_name(self) -> &'static str {
        match self {
            Self::Stored => "orderhub.order.stored",
            Self::ResultStored => "orderhub.order.result_stored",
            Self::Late => "orderhub.order.late_result_stored",
            Self::Settled => "orderhub.order.settled",
        }
    }
    pub fn from_type(t: &str) -> Option<Self> {
        [Self::Stored, Self::ResultStored, Self::Late, Self::Settled]
            .into_iter()
            .find(|k| k.type_name() == t)
    }
}

/// An event as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    pub data: EventData,
}

/// The thin `data` of an event: who and which version; details are pulled through `get`/`query`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    pub order_id: String,
    pub user_id: String,
    pub partner_id: String,
    pub version: i32,
    /// Result, late and settled events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Result and late events only (present, possibly `null`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "double_option"
    )]
    pub partner_ref: Option<Option<String>>,
    /// Settled events only: each configured auxiliary system's record `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux: Option<BTreeMap<String, String>>,
}

impl CloudEvent {
    pub fn new(kind: EventKind, id: String, time: String, data: EventData) -> Self {
        Self {
            specversion: "1.0".into(),
            id,
            source: "orderhub".into(),
            kind: kind.type_name().into(),
            subject: data.order_id.clone(),
            time,
            datacontenttype: "application/json".into(),
            data,
        }
    }
}

/// What a consumer acts on in an event, read in place from the message's bytes: the strings are
/// borrowed unless JSON escapes forced a copy, and the fields a consumer does not need are
/// skipped without being copied. [`CloudEvent`] is the whole event.
#[derive(Debug, Deserialize)]
pub struct EventRef<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub data: EventDataRef<'a>,
}

/// The part of [`EventData`] consumers act on, borrowed.
#[derive(Debug, Deserialize)]
pub struct EventDataRef<'a> {
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    #[serde(borrow)]
    pub user_id: Cow<'a, str>,
    #[serde(borrow)]
    pub partner_id: Cow<'a, str>,
    pub version: i32,
    #[serde(default, borrow)]
    pub outcome: Option<Cow<'a, str>>,
}

impl<'a> EventRef<'a> {
    /// An orderhub event and its kind; `None` for anything else (not JSON, another source, a
    /// type orderhub does not send).
    pub fn parse(bytes: &'a [u8]) -> Option<(EventKind, Self)> {
        let event: Self = serde_json::from_slice(bytes).ok()?;
        if event.source != "orderhub" {
            return None;
        }
        Some((EventKind::from_type(&event.kind)?, event))
    }
}

/// `Option<Option<T>>` that tells an absent field from an explicit `null`.
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result event's data without a partner reference.
    fn result_data(order_id: &str, user_id: &str, partner_id: &str, outcome: &str) -> EventData {
        EventData {
            order_id: order_id.into(),
            user_id: user_id.into(),
            partner_id: partner_id.into(),
            version: 3,
            outcome: Some(outcome.into()),
            partner_ref: Some(None),
            aux: None,
        }
    }

    #[test]
    fn result_event_carries_null_partner_ref() {
        let data = result_data("o", "u", "p", "timeout");
        let ev = CloudEvent::new(EventKind::ResultStored, "e".into(), "t".into(), data);
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "orderhub.order.result_stored");
        assert!(v["data"].as_object().unwrap().contains_key("partner_ref"));
        assert!(v["data"]["partner_ref"].is_null());
        let back: CloudEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    /// A consumer's view reads what the whole event holds, borrowing the strings of a body
    /// without escapes and copying the ones with; it takes only orderhub's own events.
    #[test]
    fn event_ref_reads_what_the_event_holds() {
        let data = result_data("o-1", "u \"quoted\"", "acme-air", "confirmed");
        let event = CloudEvent::new(EventKind::ResultStored, "e-1".into(), "t".into(), data);
        let bytes = serde_json::to_vec(&event).unwrap();
        let (kind, seen) = EventRef::parse(&bytes).expect("an orderhub event");
        assert_eq!(kind, EventKind::ResultStored);
        assert_eq!(seen.id, "e-1");
        assert_eq!(seen.data.order_id, "o-1");
        assert_eq!(seen.data.user_id, "u \"quoted\"");
        assert_eq!(seen.data.partner_id, "acme-air");
        assert_eq!(seen.data.version, 3);
        assert_eq!(seen.data.outcome.as_deref(), Some("confirmed"));
        assert!(matches!(seen.data.order_id, Cow::Borrowed(_)));
        assert!(matches!(seen.data.user_id, Cow::Owned(_)));

        let mut other = serde_json::to_value(&event).unwrap();
        other["source"] = "elsewhere".into();
        assert!(EventRef::parse(&serde_json::to_vec(&other).unwrap()).is_none());
        other["source"] = "orderhub".into();
        other["type"] = "orderhub.order.unknown".into();
        assert!(EventRef::parse(&serde_json::to_vec(&other).unwrap()).is_none());
        assert!(EventRef::parse(b"not json").is_none());
    }

    #[test]
    fn stored_event_is_thin() {
        let data = EventData {
            order_id: "o".into(),
            user_id: "u".into(),
            partner_id: "p".into(),
            version: 1,
            outcome: None,
            partner_ref: None,
            aux: None,
        };
        let v = serde_json::to_value(CloudEvent::new(
            EventKind::Stored,
            "e".into(),
            "t".into(),
            data,
        ))
        .unwrap();
        let keys: Vec<_> = v["data"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
    }
}
