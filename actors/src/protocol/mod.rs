//! The wire protocol of `docs/protocol.md`, defined once: subjects, consumer names, request validation,
//! reply and event payloads, error codes. Everything else in orderhub speaks through these types.

mod error;
mod events;
#[cfg(test)]
mod props;
mod requests;
mod subjects;
mod views;

pub use error::{ApiError, DEFAULT_RETRY_AFTER_MS, ErrorCode, RETRY_AFTER_HEADER};
pub use events::{
    COMMIT_LSN_HEADER, CloudEvent, EventData, EventDataRef, EventKind, EventRef, TIMEOUT_RESULT_ID,
};
pub use requests::{
    AuxRecordRequest, GetRequest, MAX_JSON_OBJECT_BYTES, Outcome, QueryRequest, ResultRequest,
    SubmitRequest, validate_token,
};
pub use subjects::{Subjects, consumer};
pub use views::{
    AuxTraceView, AuxView, ConsumerTrace, DatabaseStatus, EventTrace, ListReply, NatsStatus,
    OrderReply, OrderView, ProcessStatus, QueryAnswer, QueryReply, ReadNodeStatus, RecordReply,
    ReplicaStatus, ResultView, StatusReply, SubmitReply, TraceReply, TransitionView,
};

/// RFC 3339 UTC with millisecond precision and a `Z` suffix: every timestamp on the wire.
pub fn rfc3339(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The lifecycle of an order (`docs/protocol.md`); `version` is the position in this chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OrderStatus {
    Accepted,
    Dispatched,
    ResultStored,
    Notified,
    /// A partner's result arrived after the hub closed the order as `timeout`.
    LateResultStored,
    /// The late event is out.
    LateNotified,
}

impl OrderStatus {
    /// Every status, in the order of their versions.
    pub const ALL: [Self; 6] = [
        Self::Accepted,
        Self::Dispatched,
        Self::ResultStored,
        Self::Notified,
        Self::LateResultStored,
        Self::LateNotified,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Dispatched => "dispatched",
            Self::ResultStored => "result_stored",
            Self::Notified => "notified",
            Self::LateResultStored => "late_result_stored",
            Self::LateNotified => "late_notified",
        }
    }

    /// The `version` an order has while in this status.
    pub const fn version(self) -> i32 {
        match self {
            Self::Accepted => 1,
            Self::Dispatched => 2,
            Self::ResultStored => 3,
            Self::Notified => 4,
            Self::LateResultStored => 5,
            Self::LateNotified => 6,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}
