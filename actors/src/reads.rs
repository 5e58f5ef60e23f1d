//! The read side: `get`, `query` and the list form, with their ownership rules, served from the
//! read node (and the auxiliary database) without an order actor. A partner sees only its own
//! orders and a user only theirs; anybody else's order is `not_found`, so no caller learns that
//! it exists.

use crate::protocol::{
    ApiError, AuxView, ListReply, OrderReply, OrderView, QueryAnswer, QueryReply, QueryRequest,
    ResultView, rfc3339,
};
use crate::store::{Db, Results, StoreError};

/// `orders.partner.<partner_id>.get`: one of the partner's orders.
pub async fn partner_get(
    db: &Db,
    partner_id: &str,
    order_id: &str,
) -> Result<OrderReply, ApiError> {
    match db.order(order_id).await.map_err(read_failed)? {
        Some(o) if o.partner_id == partner_id => Ok(OrderReply {
            order: OrderView::from(o),
        }),
        _ => Err(ApiError::not_found(order_id)),
    }
}

/// `orders.query`: one of the user's orders with its result and auxiliary records, or a page of
/// the user's orders, newest first.
pub async fn query(db: &Db, request: QueryRequest) -> Result<QueryAnswer, ApiError> {
    match request {
        QueryRequest::One { user_id, order_id } => {
            let order = db.order(&order_id).await.map_err(read_failed)?;
            let Some(order) = order.filter(|o| o.user_id == user_id) else {
                return Err(ApiError::not_found(&order_id));
            };
            let (results, aux) = tokio::join!(db.results(&order_id), db.aux_records(&order_id));
            let (Results { result, late }, aux) =
                (results.map_err(read_failed)?, aux.map_err(read_failed)?);
            Ok(QueryAnswer::One(Box::new(QueryReply {
                settled_at: order.settled_at.as_ref().map(rfc3339),
                order: OrderView::from(order),
                result: result.map(ResultView::from),
                late_result: late.map(ResultView::from),
                aux: aux.into_iter().map(AuxView::from).collect(),
            })))
        }
        QueryRequest::List {
            user_id,
            limit,
            before,
        } => {
            let orders = db
                .orders_of(&user_id, limit, before.as_deref())
                .await
                .map_err(read_failed)?;
            let next_before = (orders.len() as u64 == limit)
                .then(|| orders.last().map(|o| o.id.clone()))
                .flatten();
            Ok(QueryAnswer::List(ListReply {
                orders: orders.into_iter().map(OrderView::from).collect(),
                next_before,
            }))
        }
    }
}

/// A read that failed answers `unavailable`: the caller retries.
pub(crate) fn read_failed(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "read failed");
    ApiError::unavailable("the read node is not available; retry later")
}
