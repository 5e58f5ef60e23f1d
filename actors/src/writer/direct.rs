//! The writer's own connection, on a thread of its own, so a group commit's statements wait for
//! the database and nothing else:
//!
//! - **SQLite.** Through sqlx, every statement of a group commit, and every row it returns,
//!   crosses a channel to the connection's thread and back. Here the writer hands over the whole
//!   batch once: the thread runs the group commit's statements ([`commit::apply`]) on a rusqlite
//!   connection, each prepared once and kept for the next batch of the same shape, and hands back
//!   what the commit did. It writes the file the hub's sqlx pools opened (the path SQLite itself
//!   reports), with their settings: WAL, `synchronous = FULL`, a 5 s busy timeout.
//! - **Postgres.** A group commit is a chain of round trips (`BEGIN`, the locks, a statement per
//!   kind, `COMMIT`), and on the hub's runtime each answer waits its turn behind every other task
//!   the runtime has ready. Here the chain runs on a runtime of its own, through a pool of one
//!   connection opened on that runtime ([`crate::store::Db::writer_options`]: the primary's
//!   options, so it refuses a standby and is checked after a write failed as on a demoted
//!   primary), and each answer is taken up as soon as it arrives.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rusqlite::{Connection, TransactionBehavior};
use sea_orm::{ConnectOptions, Database, DbBackend, DbErr, Statement};
use tokio::sync::{mpsc, oneshot};

use super::commit::{self, Batch, Committed, Tx};
use crate::partners::Partners;
use crate::store::local::{self, failed};

/// A handle on the writer's thread; the thread ends when the handle is dropped.
pub(super) struct Direct {
    jobs: mpsc::UnboundedSender<Job>,
    target: Target,
}

/// What the thread writes to.
#[derive(Clone)]
enum Target {
    /// A SQLite file (which must exist: the pools created and migrated it).
    Sqlite(PathBuf),
    /// A Postgres primary, through a pool of one connection made with these options.
    Postgres(Box<ConnectOptions>),
}

struct Job {
    batch: Batch,
    partners: Arc<Partners>,
    reply: oneshot::Sender<(Batch, Result<Committed, DbErr>)>,
}

impl Direct {
    /// Opens the SQLite file `file` on a new thread.
    pub(super) fn sqlite(file: &Path) -> Result<Self, DbErr> {
        Self::open(Target::Sqlite(file.to_owned()))
    }

    /// A new thread for a Postgres primary; its connection opens at the first commit.
    pub(super) fn postgres(options: ConnectOptions) -> Result<Self, DbErr> {
        Self::open(Target::Postgres(Box::new(options)))
    }

    fn open(target: Target) -> Result<Self, DbErr> {
        let (jobs, rx) = mpsc::unbounded_channel::<Job>();
        let spawned = match &target {
            Target::Sqlite(file) => {
                let conn = local::connect(file, true).map_err(|e| failed(&e))?;
                std::thread::Builder::new()
                    .name("sqlite-writer".into())
                    .spawn(move || serve_sqlite(conn, rx))
            }
            Target::Postgres(options) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| DbErr::Custom(format!("the writer's runtime: {e}")))?;
                let options = (**options).clone();
                std::thread::Builder::new()
                    .name("pg-writer".into())
                    .spawn(move || runtime.block_on(serve_postgres(options, rx)))
            }
        };
        spawned.map_err(|e| DbErr::Custom(format!("starting the writer's thread: {e}")))?;
        Ok(Self { jobs, target })
    }

    /// A new thread (and connection) on the same target, after this one's thread is gone.
    pub(super) fn reopen(&self) -> Result<Self, DbErr> {
        Self::open(self.target.clone())
    }

    /// Runs `batch` in one transaction; hands the batch back with what it did. `None` when the
    /// thread is gone (it ends only when the handle is dropped, or if it panicked).
    pub(super) async fn commit(
        &self,
        batch: Batch,
        partners: Arc<Partners>,
    ) -> Option<(Batch, Result<Committed, DbErr>)> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                batch,
                partners,
                reply,
            })
            .ok()?;
        answer.await.ok()
    }
}

fn serve_sqlite(mut conn: Connection, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(Job {
        batch,
        partners,
        reply,
    }) = jobs.blocking_recv()
    {
        let done = run(&mut conn, &batch, &partners);
        // A writer that stopped meanwhile dropped its end: nothing to do.
        let _ = reply.send((batch, done));
    }
}

async fn serve_postgres(mut options: ConnectOptions, mut jobs: mpsc::UnboundedReceiver<Job>) {
    options
        .max_connections(1)
        .min_connections(0)
        .connect_lazy(true);
    let primary = Database::connect(options).await;
    while let Some(Job {
        batch,
        partners,
        reply,
    }) = jobs.recv().await
    {
        let done = match &primary {
            Ok(primary) => commit::commit(primary, &batch, &partners).await,
            Err(e) => Err(DbErr::Custom(format!("the writer's connection: {e}"))),
        };
        let _ = reply.send((batch, done));
    }
}

fn run(conn: &mut Connection, batch: &Batch, partners: &Partners) -> Result<Committed, DbErr> {
    let txn = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| failed(&e))?;
    let committed = at_once(commit::apply(&Local(&txn), batch, partners))?;
    txn.commit().map_err(|e| failed(&e))?;
    Ok(committed)
}

/// Polls a future whose every step completes at once (its statements run synchronously).
fn at_once<T>(f: impl Future<Output = Result<T, DbErr>>) -> Result<T, DbErr> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => Err(DbErr::Custom(
            "a statement of the SQLite writer did not complete at once".into(),
        )),
    }
}

/// The open transaction of the writer's connection.
struct Local<'a>(&'a rusqlite::Transaction<'a>);

impl Local<'_> {
    fn prepared(&self, stmt: &Statement) -> Result<rusqlite::CachedStatement<'_>, DbErr> {
        local::prepared(self.0, stmt).map_err(|e| failed(&e))
    }
}

impl Tx for Local<'_> {
    fn backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn strings(&self, stmt: Statement) -> Result<Vec<String>, DbErr> {
        let mut prepared = self.prepared(&stmt)?;
        let mut rows = prepared.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| failed(&e))? {
            out.push(row.get::<_, String>(0).map_err(|e| failed(&e))?);
        }
        Ok(out)
    }

    async fn execute(&self, stmt: Statement) -> Result<(), DbErr> {
        self.prepared(&stmt)?
            .raw_execute()
            .map(drop)
            .map_err(|e| failed(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Duration as Span, Utc};
    use entities::{order_facts, order_state, orders};
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, Database, EntityTrait, IntoActiveModel, QueryFilter, QueryTrait};

    fn order(id: &str, at: DateTime<Utc>) -> orders::Model {
        orders::Model {
            items: serde_json::json!([{"sku": "A1", "qty": 2}]),
            payload: serde_json::json!({"note": "é \"quoted\"", "n": 1.5}),
            result_deadline: Some(at + Span::seconds(30)),
            dispatched_at: Some(at + Span::nanoseconds(1_500)),
            ..crate::testing::order(id, at)
        }
    }

    /// Rows the writer's own connection writes read back through sqlx exactly, and their times
    /// compare with times sqlx binds as the deadline scan compares them (as text).
    #[tokio::test]
    async fn rows_it_writes_read_back_through_the_pools_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/orders.db?mode=rwc", dir.path().display());
        let pool = Database::connect(&url).await.expect("connect");
        entities::Migrator::up(&pool).await.expect("migrate");
        let file = local::file_of(&pool).await.expect("a file");
        assert!(file.ends_with("orders.db"), "{}", file.display());

        let at = Utc::now();
        let written = order("o-1", at);
        let mut conn = local::connect(&file, true).expect("open");
        let txn = conn.transaction().expect("begin");
        let facts = order_facts::Entity::insert(written.facts().into_active_model()).into_query();
        at_once(Local(&txn).execute(DbBackend::Sqlite.build(&facts))).expect("insert");
        let state = order_state::Entity::insert(written.state().into_active_model()).into_query();
        at_once(Local(&txn).execute(DbBackend::Sqlite.build(&state))).expect("insert");
        let update = order_state::Entity::update_many()
            .col_expr(
                order_state::Column::NotifiedAt,
                Expr::value(at + Span::milliseconds(7)),
            )
            .filter(order_state::Column::Id.eq("o-1"))
            .into_query();
        at_once(Local(&txn).execute(DbBackend::Sqlite.build(&update))).expect("update");
        txn.commit().expect("commit");

        let read = orders::Entity::find_by_id("o-1")
            .one(&pool)
            .await
            .expect("read")
            .expect("the row");
        let mut expected = written.clone();
        expected.notified_at = Some(at + Span::milliseconds(7));
        assert_eq!(read, expected);

        let deadline = written.result_deadline.expect("deadline");
        let due = |before: DateTime<Utc>| {
            orders::Entity::find()
                .filter(orders::Column::ResultDeadline.lt(before))
                .all(&pool)
        };
        assert_eq!(
            due(deadline + Span::microseconds(1))
                .await
                .expect("scan")
                .len(),
            1
        );
        assert!(due(deadline).await.expect("scan").is_empty());
    }
}
