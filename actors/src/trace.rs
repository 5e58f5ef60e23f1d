//! `orders.admin.trace`: an order's whole story for an operator — its transitions with their
//! times (primary), every event it produced with its stream sequence and commit LSN, and for every
//! durable consumer whose filter matches the event, whether it was delivered and acknowledged.

use async_nats::jetstream;
use futures::TryStreamExt;

use crate::protocol::{
    ApiError, AuxTraceView, COMMIT_LSN_HEADER, CloudEvent, ConsumerTrace, EventTrace, OrderView,
    ResultView, TraceReply, TransitionView, rfc3339,
};
use crate::store::Db;

/// A durable consumer as the trace compares it with events.
struct Durable {
    name: String,
    filters: Vec<String>,
    delivered: u64,
    ack_floor: u64,
}

/// The story of `order_id`; `systems` are every configured auxiliary system.
pub async fn trace(
    db: &Db,
    stream: Option<&jetstream::stream::Stream>,
    systems: &[String],
    order_id: &str,
) -> Result<TraceReply, ApiError> {
    let unavailable = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "trace read failed");
        ApiError::unavailable("the primary database is not available; retry later")
    };
    let Some(state) = db.order_on_primary(order_id).await.map_err(unavailable)? else {
        return Err(ApiError::not_found(order_id));
    };
    let rows = db.events_of(order_id).await.map_err(unavailable)?;
    let transitions = crate::store::transition_times(&state.order);
    let aux = db.aux_records(order_id).await.map_err(|e| {
        tracing::warn!(error = %e, "trace read failed");
        ApiError::unavailable("the auxiliary database is not available; retry later")
    })?;
    let durables = match stream {
        Some(stream) => durables(stream).await,
        None => Vec::new(),
    };
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let kind = serde_json::from_str::<CloudEvent>(&row.payload)
            .map(|e| e.kind)
            .unwrap_or_default();
        let published = row.published_at.is_some();
        let stored = match (stream, published) {
            (Some(stream), true) => stream
                .direct_get_last_for_subject(row.subject.clone())
                .await
                .ok()
                .filter(|m| {
                    m.headers.get("Nats-Msg-Id").map(|v| v.as_str()) == Some(row.id.as_str())
                }),
            _ => None,
        };
        let stream_seq = stored.as_ref().map(|m| m.sequence);
        let commit_lsn = stored.as_ref().and_then(|m| {
            m.headers
                .get(COMMIT_LSN_HEADER)
                .map(|v| v.as_str().to_owned())
        });
        let consumers = durables
            .iter()
            .filter(|d| d.filters.iter().any(|f| subject_matches(f, &row.subject)))
            .map(|d| ConsumerTrace {
                name: d.name.clone(),
                delivered: stream_seq.is_some_and(|seq| d.delivered >= seq),
                acked: stream_seq.is_some_and(|seq| d.ack_floor >= seq),
            })
            .collect();
        events.push(EventTrace {
            id: row.id,
            kind,
            subject: row.subject,
            committed_at: rfc3339(&row.created_at),
            published_at: row.published_at.as_ref().map(rfc3339),
            stream_seq,
            commit_lsn,
            consumers,
        });
    }
    let aux_missing = systems
        .iter()
        .filter(|s| !aux.iter().any(|r| &r.system == *s))
        .cloned()
        .collect();
    Ok(TraceReply {
        settled_at: state.order.settled_at.as_ref().map(rfc3339),
        order: OrderView::from(state.order),
        result: state.result.map(ResultView::from),
        late_result: state.late.map(ResultView::from),
        transitions: transitions
            .into_iter()
            .map(|(status, at)| TransitionView {
                version: status.version(),
                status: status.as_str().to_owned(),
                at: rfc3339(&at),
            })
            .collect(),
        events,
        aux: aux
            .into_iter()
            .map(|r| AuxTraceView {
                system: r.system,
                status: r.status,
                updated_at: rfc3339(&r.updated_at),
            })
            .collect(),
        aux_missing,
    })
}

/// Every durable consumer of the stream with its filters and positions; none when NATS does not
/// answer (the trace still shows the database's side).
async fn durables(stream: &jetstream::stream::Stream) -> Vec<Durable> {
    let listed: Result<Vec<_>, _> = stream.consumers().try_collect().await;
    match listed {
        Ok(infos) => infos
            .into_iter()
            .filter(|i| i.config.durable_name.is_some())
            .map(|i| {
                let mut filters = i.config.filter_subjects.clone();
                if !i.config.filter_subject.is_empty() {
                    filters.push(i.config.filter_subject.clone());
                }
                if filters.is_empty() {
                    filters.push(">".into());
                }
                Durable {
                    name: i.name,
                    filters,
                    delivered: i.delivered.stream_sequence,
                    ack_floor: i.ack_floor.stream_sequence,
                }
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "trace: could not list the stream's consumers");
            Vec::new()
        }
    }
}

/// NATS subject matching: `*` is one token, a final `>` one or more.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn wildcards_match_as_nats_matches_them() {
        assert!(subject_matches(
            "orders.events.result.>",
            "orders.events.result.u.o"
        ));
        assert!(subject_matches(
            "orders.events.*.u.o",
            "orders.events.late.u.o"
        ));
        assert!(subject_matches(
            "orders.events.stored.p.o",
            "orders.events.stored.p.o"
        ));
        assert!(!subject_matches(
            "orders.events.result.>",
            "orders.events.result"
        ));
        assert!(!subject_matches(
            "orders.events.stored.p.>",
            "orders.events.stored.q.o"
        ));
        assert!(!subject_matches("orders.events.*", "orders.events.a.b"));
        assert!(subject_matches(">", "anything.at.all"));
    }
}
