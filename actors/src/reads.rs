//! The read side: `get`, `query` and the list form, with their ownership rules, served from the
//! read node (and the auxiliary database) without an order actor. A partner sees only its own
//! orders and a user only theirs; anybody else's order is `not_found`, so no caller learns that
//! it exists.

use crate::protocol::{
    ApiError, AuxView, ListReply, OrderReply, OrderView, QueryAnswer, QueryReply, QueryRequest,
    ResultView, rfc3339,
};
use crate::store::{Db, Results, StoreError};

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use entities::orders;
use sea_orm::DbErr;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Orders read in one statement at most.
const BATCH: usize = 256;
/// Statements of each of [`OrderReads`]' readers running at once.
const READERS: usize = 4;

type Answer<T> = oneshot::Sender<Result<Option<T>, StoreError>>;

/// Reads single orders from a read node, many in one statement: the partners' `get`s arrive
/// together under load, and while a statement runs the next ones gather into the next
/// `id IN (…)` (up to [`BATCH`], [`READERS`] statements at once). A lone `get` is read at once.
/// Whether an order exists is read the same way, from its submitted fields only.
#[derive(Clone)]
pub struct OrderReads {
    orders: Batched<orders::Model>,
    known: Batched<()>,
}

impl OrderReads {
    /// Starts the readers; they end when the last handle is dropped.
    pub fn start(db: Db) -> Self {
        Self {
            orders: Batched::start(db.clone(), |db, ids| async move {
                let rows = db.orders_by_ids(&ids).await?;
                Ok(rows.into_iter().map(|o| (o.id.clone(), o)).collect())
            }),
            known: Batched::start(db, |db, ids| async move {
                let known = db.known_ids(&ids).await?;
                Ok(known.into_iter().map(|id| (id, ())).collect())
            }),
        }
    }

    /// The order, if the read node has it.
    pub async fn order(&self, id: &str) -> Result<Option<orders::Model>, StoreError> {
        self.orders.get(id).await
    }

    /// Whether the read node has the order.
    pub async fn exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.known.get(id).await?.is_some())
    }
}

/// One kind of read by id, batched as [`OrderReads`] describes.
struct Batched<T> {
    tx: mpsc::UnboundedSender<(String, Answer<T>)>,
}

impl<T> Clone for Batched<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> Batched<T> {
    /// Starts the reader: `read` gives what the read node has of the ids, by id.
    fn start<F, Fut>(db: Db, read: F) -> Self
    where
        F: Fn(Db, Vec<String>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<HashMap<String, T>, StoreError>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Answer<T>)>();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(READERS));
            while let Some(first) = rx.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (db, read) = (db.clone(), read.clone());
                tokio::spawn(async move {
                    let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                    match read(db, ids).await {
                        Ok(mut found) => {
                            for (id, answer) in batch {
                                let _ = answer.send(Ok(found.remove(&id)));
                            }
                        }
                        Err(e) => {
                            let why = e.to_string();
                            for (_, answer) in batch {
                                let err = StoreError::Unavailable(DbErr::Custom(why.clone()));
                                let _ = answer.send(Err(err));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Self { tx }
    }

    async fn get(&self, id: &str) -> Result<Option<T>, StoreError> {
        let (answer, reply) = oneshot::channel();
        let gone = || StoreError::Unavailable(DbErr::Custom("the order reader stopped".into()));
        self.tx.send((id.to_owned(), answer)).map_err(|_| gone())?;
        reply.await.map_err(|_| gone())?
    }
}

/// `orders.partner.<partner_id>.get`: one of the partner's orders.
pub async fn partner_get(
    reads: &OrderReads,
    partner_id: &str,
    order_id: &str,
) -> Result<OrderReply, ApiError> {
    match reads.order(order_id).await.map_err(read_failed)? {
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
