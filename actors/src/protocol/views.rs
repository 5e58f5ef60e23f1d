//! Reply payloads: what `get`, `query`, `submit`, `result`, `record` and `status` answer.

use entities::{aux_records, order_results, orders};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rfc3339;

/// An order as `get` and `query` return it: every submitted field plus the hub's bookkeeping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub request_id: String,
    pub user_id: String,
    pub partner_id: String,
    pub product: String,
    pub amount_minor: i64,
    pub currency: String,
    pub items: Value,
    pub payload: Value,
    pub status: String,
    pub version: i32,
    pub created_at: String,
    pub updated_at: String,
}

impl From<orders::Model> for OrderView {
    fn from(m: orders::Model) -> Self {
        Self {
            created_at: rfc3339(&m.created_at),
            updated_at: rfc3339(&m.updated_at),
            order_id: m.id,
            request_id: m.request_id,
            user_id: m.user_id,
            partner_id: m.partner_id,
            product: m.product,
            amount_minor: m.amount_minor,
            currency: m.currency,
            items: m.items,
            payload: m.payload,
            status: m.status,
            version: m.version,
        }
    }
}

/// An order's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultView {
    pub order_id: String,
    pub result_id: String,
    pub outcome: String,
    pub partner_ref: Option<String>,
    pub detail: Value,
    pub received_at: String,
}

impl From<order_results::Model> for ResultView {
    fn from(m: order_results::Model) -> Self {
        Self {
            received_at: rfc3339(&m.received_at),
            order_id: m.order_id,
            result_id: m.result_id,
            outcome: m.outcome,
            partner_ref: m.partner_ref,
            detail: m.detail,
        }
    }
}

/// One auxiliary system's record of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuxView {
    pub system: String,
    pub status: String,
    pub data: Value,
    pub updated_at: String,
}

impl From<aux_records::Model> for AuxView {
    fn from(m: aux_records::Model) -> Self {
        Self {
            updated_at: rfc3339(&m.updated_at),
            system: m.system,
            status: m.status,
            data: m.data,
        }
    }
}

/// `submit` and `result` replies: `{"order_id","status","duplicate"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    pub order_id: String,
    pub status: String,
    pub duplicate: bool,
}

/// `get` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderReply {
    pub order: OrderView,
}

/// `query` reply, single-order form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryReply {
    pub order: OrderView,
    pub result: Option<ResultView>,
    /// A partner's result that arrived after the hub closed the order as `timeout`.
    pub late_result: Option<ResultView>,
    /// When every configured auxiliary system had a record (and the settled event was made).
    pub settled_at: Option<String>,
    pub aux: Vec<AuxView>,
}

/// `orders.admin.trace` reply: the order's whole story, read from the primary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceReply {
    pub order: OrderView,
    pub result: Option<ResultView>,
    pub late_result: Option<ResultView>,
    pub settled_at: Option<String>,
    /// One entry per version, oldest first.
    pub transitions: Vec<TransitionView>,
    pub events: Vec<EventTrace>,
    pub aux: Vec<AuxTraceView>,
    /// Configured auxiliary systems without a record.
    pub aux_missing: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionView {
    pub version: i32,
    pub status: String,
    pub at: String,
}

/// One event of an order, and who has seen it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventTrace {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    pub committed_at: String,
    pub published_at: Option<String>,
    pub stream_seq: Option<u64>,
    pub commit_lsn: Option<String>,
    pub consumers: Vec<ConsumerTrace>,
}

/// A durable consumer whose filter matches an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumerTrace {
    pub name: String,
    /// The consumer's delivered stream sequence has reached the event's.
    pub delivered: bool,
    /// The consumer's ack floor has reached the event's (an event acked out of order above the
    /// floor shows `false` until the floor reaches it).
    pub acked: bool,
}

/// An auxiliary record in a trace: its status and time, without its data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuxTraceView {
    pub system: String,
    pub status: String,
    pub updated_at: String,
}

/// `query` reply, list form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListReply {
    pub orders: Vec<OrderView>,
    pub next_before: Option<String>,
}

/// `query` reply, either form.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum QueryAnswer {
    One(Box<QueryReply>),
    List(ListReply),
}

/// `orders.aux.<system>.record` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordReply {
    pub order_id: String,
    pub system: String,
    pub status: String,
}

/// `orders.admin.status` reply; a value not known is `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub instance_id: String,
    pub version: String,
    pub uptime_s: u64,
    pub actors_live: u64,
    pub in_flight: u64,
    pub outbox_pending: Option<u64>,
    /// How old the oldest unpublished outbox row is, in ms (`null`: none, or not known).
    #[serde(default)]
    pub outbox_oldest_ms: Option<u64>,
    pub replica: ReplicaStatus,
    pub nats: NatsStatus,
    pub database: DatabaseStatus,
    /// How often each supervised actor (writers, replication, relay, deadline, settler,
    /// subscribers) was restarted since the hub started.
    pub restarts: std::collections::BTreeMap<String, u64>,
    /// Per partner: accepted orders waiting for its result (admission control's count).
    pub partners_pending: std::collections::BTreeMap<String, u64>,
    /// The hub's process.
    #[serde(default)]
    pub process: ProcessStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// CPU time (user + system) the process has used since it started, in ms.
    pub cpu_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// `postgres` or `same-as-primary`.
    pub mode: String,
    pub available: Option<bool>,
    pub lag_bytes: Option<u64>,
    pub lag_ms: Option<u64>,
    pub confirmed_lsn: Option<String>,
    pub events_waiting: u64,
    /// Why events are waiting, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Each read node: whether it is in the read set (serves reads, bounds the fence) and how
    /// far it lags. Empty without a separate read node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<ReadNodeStatus>,
}

/// A read node as `orders.admin.status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadNodeStatus {
    /// `host:port` of its URL.
    pub node: String,
    pub in_read_set: bool,
    pub lag_bytes: Option<u64>,
    pub replay_lsn: Option<String>,
    /// Why it is out of the read set, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NatsStatus {
    pub connected: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatabaseStatus {
    pub primary_ok: Option<bool>,
    pub aux_ok: Option<bool>,
    /// The node the primary URL reached at the last probe (`host:port`), if known.
    #[serde(default)]
    pub primary: Option<String>,
    /// Whether a synchronous standby is attached; `null` when not known.
    #[serde(default)]
    pub sync_standby: Option<bool>,
    /// How often the primary moved (failover or switchover) since this hub started.
    #[serde(default)]
    pub failovers: u64,
}
