use serde::Serialize;

/// The error table of `docs/protocol.md`: the code a caller branches on and its Services API status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: not JSON, a missing or ill-typed field, a bad token, a limit exceeded.
    InvalidRequest,
    /// 404: no such order for this caller.
    NotFound,
    /// 409: a reused idempotency key with another body, or a second result.
    Conflict,
    /// 422: `partner_id` is not configured.
    UnknownPartner,
    /// 503: primary down or the hub at its in-flight limit: retry later.
    Unavailable,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::UnknownPartner => "unknown_partner",
            Self::Unavailable => "unavailable",
        }
    }

    /// The value of the `Nats-Service-Error-Code` header.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::UnknownPartner => 422,
            Self::Unavailable => 503,
        }
    }
}

/// An error reply: `{"error":{"code":…,"message":…}}` plus the two Services API headers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// `unavailable` only: how long the client should wait before it retries with the same
    /// idempotency key, sent as the header [`RETRY_AFTER_HEADER`].
    pub retry_after_ms: Option<u64>,
}

/// Header of an `unavailable` reply: the wait in milliseconds the hub suggests before a retry.
pub const RETRY_AFTER_HEADER: &str = "Orderhub-Retry-After-Ms";

/// The wait suggested when nothing more specific is known: about one replica-confirm or
/// primary-retry round of the hub.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 500;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: (code == ErrorCode::Unavailable).then_some(DEFAULT_RETRY_AFTER_MS),
        }
    }

    /// The wait this `unavailable` suggests, derived by the caller from what it waits on.
    pub fn retry_after(mut self, ms: u64) -> Self {
        if self.code == ErrorCode::Unavailable {
            self.retry_after_ms = Some(ms);
        }
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn not_found(order_id: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("no order {order_id} for this caller"),
        )
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn unknown_partner(partner_id: &str) -> Self {
        Self::new(
            ErrorCode::UnknownPartner,
            format!("partner `{partner_id}` is not configured on this hub"),
        )
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The JSON body of the reply.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        serde_json::to_vec(&Body {
            error: Inner {
                code: self.code.as_str(),
                message: &self.message,
            },
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_and_message() {
        let e = ApiError::invalid("`amount_minor` must be an integer");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["message"], "`amount_minor` must be an integer");
        assert_eq!(ErrorCode::Unavailable.status(), 503);
        assert_eq!(ErrorCode::UnknownPartner.status(), 422);
    }

    #[test]
    fn only_unavailable_suggests_a_wait() {
        assert_eq!(
            ApiError::unavailable("x").retry_after_ms,
            Some(DEFAULT_RETRY_AFTER_MS)
        );
        assert_eq!(
            ApiError::unavailable("x").retry_after(1234).retry_after_ms,
            Some(1234)
        );
        assert_eq!(ApiError::invalid("x").retry_after(10).retry_after_ms, None);
        assert_eq!(ApiError::conflict("x").retry_after_ms, None);
    }
}
