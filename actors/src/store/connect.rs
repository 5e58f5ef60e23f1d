//! The pools, and the primary's pool following the primary: a connection is refused if the
//! server it reaches is in recovery, and after a write failed as a standby's would (read-only,
//! shut down, connection lost), each pooled connection is checked again before use for a while,
//! so no connection keeps writing to a node that is no longer the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

use super::{Db, DbUrls};
use crate::readset::ReadSet;

/// After a write failed as a standby's would, the primary's pooled connections are checked for
/// recovery before use for a while ([`SUSPECT_FOR`]).
#[derive(Clone, Debug, Default)]
pub struct PrimaryGuard(Arc<AtomicU64>);

impl PrimaryGuard {
    /// A write failed with `e`: when it looks like the primary moved, start checking.
    pub fn note(&self, e: &DbErr) {
        if primary_may_have_moved(e) {
            let now = now_ms();
            if self
                .0
                .swap(now + SUSPECT_FOR.as_millis() as u64, Ordering::Relaxed)
                < now
            {
                tracing::warn!(error = %e, "a write failed as if the primary moved: checking its connections");
            }
        }
    }

    fn active(&self) -> bool {
        self.0.load(Ordering::Relaxed) > now_ms()
    }
}

/// The node the primary URL reached at each probe: a change is a failover (or switchover).
#[derive(Debug, Default)]
pub struct PrimaryWatch {
    node: std::sync::Mutex<Option<String>>,
    failovers: AtomicU64,
}

impl PrimaryWatch {
    /// The primary answered from `node`.
    pub fn saw(&self, node: &str) {
        let Ok(mut current) = self.node.lock() else {
            return;
        };
        if current.as_deref() == Some(node) {
            return;
        }
        if let Some(old) = current.replace(node.to_owned()) {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("orderhub_failovers_total").increment(1);
            tracing::warn!(from = %old, to = %node, "the primary moved");
        }
    }

    /// The node the primary URL reached last, if known.
    pub fn current(&self) -> Option<String> {
        self.node.lock().ok().and_then(|n| n.clone())
    }

    /// How often the primary moved since the hub started.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }
}

/// How long after a write failed as on a demoted primary its pooled connections are checked.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `host:port` of a Postgres URL, as status names a node.
fn node_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// The SQLSTATE of a failed statement, when the database sent one.
fn sqlstate(e: &DbErr) -> Option<String> {
    match e {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(err))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(err))
        | DbErr::Conn(sea_orm::RuntimeErr::SqlxError(err)) => err
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether a failed write looks like the primary moved: a read-only transaction (the node is a
/// standby now), an administrator's shutdown, a server that cannot take connections, or a lost
/// connection (class 08, or no SQLSTATE at all on a Postgres connection error).
pub fn primary_may_have_moved(e: &DbErr) -> bool {
    match sqlstate(e) {
        Some(code) => {
            matches!(code.as_str(), "25006" | "57P01" | "57P02" | "57P03") || code.starts_with("08")
        }
        None => matches!(e, DbErr::Conn(_) | DbErr::ConnectionAcquire(_)),
    }
}

/// How long a request may wait for a connection or a statement before it is answered `unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The same on Postgres, where a server that is down refuses at once but sqlx keeps retrying until
/// this passes: short enough that a write reaching a down primary still answers `unavailable`
/// within 2 s (the writers then fail fast, see the writer's `DOWN_RETRY`).
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1000);

/// The primary's pool on Postgres: a new connection that reaches a server in recovery is
/// refused, and while `guard` is active each pooled connection is checked the same way
/// before use (one that is not a primary any more, or does not answer, is closed).
fn primary_options(url: &str, max: u32, guard: PrimaryGuard) -> ConnectOptions {
    let mut opt = options(url, max, false);
    if !url.starts_with("postgres") {
        return opt;
    }
    opt.map_sqlx_postgres_pool_opts(move |pool| {
        let guard = guard.clone();
        pool.after_connect(|conn, _| {
            Box::pin(async move {
                if in_recovery(conn).await? {
                    return Err(sea_orm::sqlx::Error::Configuration(
                        "the primary URL reached a standby (in recovery); the primary has moved"
                            .into(),
                    ));
                }
                Ok(())
            })
        })
        .before_acquire(move |conn, meta| {
            let check = guard.active();
            Box::pin(async move {
                if !check {
                    return Ok(answers_if_idle(conn, &meta).await);
                }
                Ok(matches!(in_recovery(conn).await, Ok(false)))
            })
        })
    });
    opt
}

/// A pooled Postgres connection idle this long is pinged before use. One used more recently is
/// not: its last statement showed that it answers, and under load a ping before each use would
/// add a round trip to every transaction and read.
const PING_IDLE: Duration = Duration::from_secs(1);

/// Whether a pooled connection may be used: one idle for [`PING_IDLE`] or longer must answer a
/// ping (one that does not is closed, and the pool takes or opens another).
async fn answers_if_idle(
    conn: &mut sea_orm::sqlx::PgConnection,
    meta: &sea_orm::sqlx::pool::PoolConnectionMetadata,
) -> bool {
    use sea_orm::sqlx::Connection;
    meta.idle_for < PING_IDLE || conn.ping().await.is_ok()
}

async fn in_recovery(conn: &mut sea_orm::sqlx::PgConnection) -> Result<bool, sea_orm::sqlx::Error> {
    sea_orm::sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
}

fn options(url: &str, max: u32, read_only: bool) -> ConnectOptions {
    let mut opt = ConnectOptions::new(url.to_owned());
    opt.max_connections(max)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .idle_timeout(Duration::from_secs(60))
        .sqlx_logging(false);
    if url.starts_with("postgres") {
        opt.acquire_timeout(PG_ACQUIRE_TIMEOUT)
            // Checked by `answers_if_idle` instead (the primary's pool: `primary_options`).
            .test_before_acquire(false)
            .map_sqlx_postgres_pool_opts(|pool| {
                pool.before_acquire(|conn, meta| {
                    Box::pin(async move { Ok(answers_if_idle(conn, &meta).await) })
                })
            })
            // The hub's statements keep one shape whatever their lists of ids (`store::shapes`):
            // planned at each execution, each plan sees its own list and the tables' size now,
            // where a generic plan made on a young, small table would scan it for good. Its
            // statements are short, and compiling one costs more than running it.
            .map_sqlx_postgres_opts(|o| {
                o.options([("plan_cache_mode", "force_custom_plan"), ("jit", "off")])
            });
    }
    opt.map_sqlx_sqlite_opts(move |o| {
        let o = o
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(false)
            .read_only(read_only);
        if read_only {
            o
        } else {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .create_if_missing(true)
        }
    });
    opt
}

/// Creates the parent directory of a `sqlite://path?...` URL, so `data/` need not exist.
fn ensure_sqlite_dir(url: &str) {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or_default();
        if let Some(parent) = std::path::Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(parent);
        }
    }
}

impl Db {
    /// Connects all three pools. The primary must answer; the replica and aux pools connect lazily
    /// so a hub can start while its replica is down.
    pub async fn connect(urls: &DbUrls) -> Result<Self, DbErr> {
        ensure_sqlite_dir(&urls.primary);
        ensure_sqlite_dir(&urls.aux);
        let sqlite = urls.primary.starts_with("sqlite:");
        let guard = PrimaryGuard::default();
        // SQLite has one writer at a time: the writer actor holds the only write connection.
        let primary = Database::connect(primary_options(
            &urls.primary,
            if sqlite { 2 } else { 16 },
            guard.clone(),
        ))
        .await?;
        let replicas: Vec<&str> = urls
            .replica
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let (nodes, separate_replica) = if replicas.is_empty() {
            let node = if sqlite {
                Database::connect(options(&urls.primary, 8, true)).await?
            } else {
                primary.clone()
            };
            (vec![(node_name(&urls.primary), node)], false)
        } else {
            let per_node = (16 / replicas.len() as u32).max(4);
            let mut nodes = Vec::with_capacity(replicas.len());
            for url in replicas {
                let mut o = options(url, per_node, !url.starts_with("postgres"));
                o.connect_lazy(true);
                nodes.push((node_name(url), Database::connect(o).await?));
            }
            (nodes, true)
        };
        let reads = Arc::new(ReadSet::new(nodes, urls.max_read_lag_bytes));
        let aux = Database::connect(options(
            &urls.aux,
            if urls.aux.starts_with("sqlite:") {
                4
            } else {
                8
            },
            false,
        ))
        .await?;
        let aux_standby = match &urls.aux_standby {
            Some(url) if separate_replica => {
                let mut o = options(url, 4, false);
                o.connect_lazy(true);
                Some(Database::connect(o).await?)
            }
            _ => None,
        };
        let local = Arc::new(super::LocalFiles::open(&primary, &aux).await);
        let writer = (!sqlite).then(|| primary_options(&urls.primary, 1, guard.clone()));
        Ok(Self {
            local,
            writer,
            primary,
            reads,
            aux,
            aux_standby,
            separate_replica,
            aux_down_until: Arc::default(),
            primary_guard: guard,
            primary_watch: Arc::default(),
        })
    }

    /// On Postgres, the options of a group-commit writer's own connection to the primary: those
    /// of the primary's pool (a standby is refused; after a write failed as on a demoted primary,
    /// the connection is checked before use), for a pool of one. The writer opens it on a
    /// runtime of its own (`writer::direct`). `None` on SQLite.
    pub fn writer_options(&self) -> Option<ConnectOptions> {
        self.writer.clone()
    }

    /// Whether a synchronous standby is attached to the primary (`pg_stat_replication`);
    /// `None` on SQLite, when the primary does not answer, or when the hub's login may not see
    /// the standbys' sync state (it needs `pg_read_all_stats` or to be their replication user).
    pub async fn sync_standby(&self) -> Option<bool> {
        if self.backend() != DbBackend::Postgres {
            return None;
        }
        let row = self
            .primary
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE sync_state IN ('sync', 'quorum')) AS sync, \
                 count(*) FILTER (WHERE sync_state IS NULL) AS hidden FROM pg_stat_replication",
            ))
            .await
            .ok()??;
        let sync: i64 = row.try_get("", "sync").ok()?;
        let hidden: i64 = row.try_get("", "hidden").ok()?;
        if sync > 0 {
            Some(true)
        } else if hidden > 0 {
            None
        } else {
            Some(false)
        }
    }

    /// `true` when the pool answers a trivial query within the acquire timeout.
    pub async fn ping(conn: &DatabaseConnection) -> bool {
        let backend = conn.get_database_backend();
        let q = sea_orm::Statement::from_string(backend, "SELECT 1");
        tokio::time::timeout(ACQUIRE_TIMEOUT, conn.query_one_raw(q))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
}
