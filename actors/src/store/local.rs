//! The SQLite files' hot reads, and the auxiliary records' writes, on connections of their own.
//! Through sqlx every statement, and every row it returns, crosses a channel to the connection's
//! thread and back, and every column of a model is decoded (JSON parsed, times parsed from text).
//! Here a whole read goes to a thread that owns a connection, runs there with its statement
//! prepared once, decodes only the columns the caller asked for, and comes back in one hand-off.
//!
//! The connections open the files the hub's pools opened (the paths SQLite itself reports), with
//! the pools' settings; a read runs on a read-only connection, as the pool's read node does. Only
//! the embedded default uses them: on Postgres every read goes through the pools.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use entities::{aux_records, order_results, orders};
pub use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OpenFlags};
use sea_orm::sea_query::{OptionEnum, Value};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement};
use tokio::sync::oneshot;

/// Prepared statements kept per connection: the reads' shapes, by how many ids each carries.
const STATEMENTS: usize = 64;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The page cache of a connection that writes, in KiB.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Threads, each with a connection on one SQLite file; a job goes to the next one in turn.
#[derive(Debug)]
pub struct Local {
    threads: Vec<mpsc::Sender<Job>>,
    next: AtomicUsize,
}

impl Local {
    /// Opens `threads` connections on `file` (which must exist), read-only unless `write`.
    pub fn open(file: &Path, threads: usize, write: bool, name: &str) -> Result<Self, DbErr> {
        let mut senders = Vec::with_capacity(threads);
        for _ in 0..threads.max(1) {
            let conn = connect(file, write).map_err(|e| failed(&e))?;
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || serve(conn, rx))
                .map_err(|e| DbErr::Custom(format!("starting thread {name}: {e}")))?;
            senders.push(tx);
        }
        Ok(Self {
            threads: senders,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on one of the connections. `None` when that thread is gone (it ends only if a
    /// job panicked): the caller reads through the pools instead.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Option<Result<T, DbErr>> {
        let (reply, answer) = oneshot::channel();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(|e| failed(&e)));
        });
        self.threads[i].send(job).ok()?;
        answer.await.ok()
    }

    /// The rows of `sql` mapped by `row`, on one of the connections: `?1` is bound to `ids` (see
    /// [`super::shapes::id_list`]) and `?2`, … to `more`. `None` as for [`Local::run`].
    pub async fn rows<T: Send + 'static>(
        &self,
        sql: impl AsRef<str> + Send + 'static,
        ids: &[String],
        more: Vec<Sql>,
        row: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Option<Result<Vec<T>, DbErr>> {
        let mut params = vec![Sql::Text(super::shapes::id_list(ids))];
        params.extend(more);
        self.run(move |c| {
            let mut stmt = c.prepare_cached(sql.as_ref())?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params), row)?;
            rows.collect()
        })
        .await
    }
}

/// A connection on `file` with the pools' settings; no CREATE: a path that is not the pools'
/// file fails here instead of making a new one.
pub fn connect(file: &Path, write: bool) -> rusqlite::Result<Connection> {
    let mode = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(file, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if write {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The writer's page cache holds the indexes a commit changes (negative: KiB).
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    }
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(conn)
}

fn serve(mut conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        job(&mut conn);
    }
}

/// Runs `stmt` (built by sea-query for SQLite) with its values bound, prepared once per shape.
pub fn execute(conn: &Connection, stmt: &Statement) -> rusqlite::Result<usize> {
    prepared(conn, stmt)?.raw_execute()
}

/// `stmt` prepared (from the connection's cache) with its values bound.
pub fn prepared<'c>(
    conn: &'c Connection,
    stmt: &Statement,
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut prepared = conn.prepare_cached(&stmt.sql)?;
    if let Some(values) = &stmt.values {
        for (i, value) in values.0.iter().enumerate() {
            prepared.raw_bind_parameter(i + 1, bind(value)?)?;
        }
    }
    Ok(prepared)
}

/// A value as sqlx binds it on SQLite, so that the rows read the same whichever connection wrote
/// them (times as RFC 3339 text, JSON as text, booleans as 0 and 1).
pub fn bind(value: &Value) -> rusqlite::Result<Sql> {
    fn or_null<T>(v: &Option<T>, f: impl FnOnce(&T) -> Sql) -> Sql {
        v.as_ref().map_or(Sql::Null, f)
    }
    Ok(match value {
        Value::Bool(v) => or_null(v, |b| Sql::Integer(i64::from(*b))),
        Value::TinyInt(v) => or_null(v, |i| Sql::Integer(i64::from(*i))),
        Value::SmallInt(v) => or_null(v, |i| Sql::Integer(i64::from(*i))),
        Value::Int(v) => or_null(v, |i| Sql::Integer(i64::from(*i))),
        Value::BigInt(v) => or_null(v, |i| Sql::Integer(*i)),
        Value::TinyUnsigned(v) => or_null(v, |i| Sql::Integer(i64::from(*i))),
        Value::SmallUnsigned(v) => or_null(v, |i| Sql::Integer(i64::from(*i))),
        Value::Unsigned(v) => or_null(v, |i| Sql::Integer(i64::from(*i))),
        Value::Float(v) => or_null(v, |f| Sql::Real(f64::from(*f))),
        Value::Double(v) => or_null(v, |f| Sql::Real(*f)),
        Value::String(v) => or_null(v, |s| Sql::Text(s.clone())),
        Value::Char(v) => or_null(v, |c| Sql::Text(c.to_string())),
        Value::Enum(OptionEnum::Some(v)) => Sql::Text(v.value.to_string()),
        Value::Enum(OptionEnum::None(_)) => Sql::Null,
        Value::Bytes(v) => or_null(v, |b| Sql::Blob(b.clone())),
        Value::Json(v) => or_null(v, |j| Sql::Text(j.to_string())),
        Value::ChronoDateTimeUtc(v) => or_null(v, |t| {
            Sql::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
        }),
        Value::ChronoDateTimeWithTimeZone(v) => or_null(v, |t| {
            Sql::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
        }),
        Value::ChronoDateTime(v) => or_null(v, |t| Sql::Text(t.format("%F %T%.f").to_string())),
        other => {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                format!("cannot bind {other:?} as sqlx would").into(),
            ));
        }
    })
}

pub fn failed(e: &rusqlite::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(format!("SQLite: {e}")))
}

/// The columns [`order_row`] reads, in its order.
pub const ORDER_COLUMNS: &str = "id, user_id, request_id, partner_id, product, amount_minor, \
     currency, items, payload, status, version, result_deadline, settled_at, created_at, \
     updated_at, dispatched_at, result_stored_at, notified_at, late_result_stored_at, \
     late_notified_at";

/// An order from a row of [`ORDER_COLUMNS`], decoded as sqlx decodes it (JSON from text, times
/// from RFC 3339 text or `YYYY-MM-DD HH:MM:SS[.f]` in UTC); `None` for a row in any other form,
/// which the caller reads through the pool instead.
pub fn order_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<orders::Model>> {
    let (Some(items), Some(payload)) = (json(row.get(7)?), json(row.get(8)?)) else {
        return Ok(None);
    };
    let times: Option<Vec<Option<DateTime<Utc>>>> = (11..20)
        .map(|i| row.get::<_, Option<String>>(i).map(time))
        .collect::<rusqlite::Result<_>>()?;
    let Some(
        [
            result_deadline,
            settled_at,
            Some(created_at),
            Some(updated_at),
            dispatched_at,
            result_stored_at,
            notified_at,
            late_result_stored_at,
            late_notified_at,
        ],
    ) = times.map(<[_; 9]>::try_from).and_then(Result::ok)
    else {
        return Ok(None);
    };
    Ok(Some(orders::Model {
        id: row.get(0)?,
        user_id: row.get(1)?,
        request_id: row.get(2)?,
        partner_id: row.get(3)?,
        product: row.get(4)?,
        amount_minor: row.get(5)?,
        currency: row.get(6)?,
        items,
        payload,
        status: row.get(9)?,
        version: row.get(10)?,
        result_deadline,
        settled_at,
        created_at,
        updated_at,
        dispatched_at,
        result_stored_at,
        notified_at,
        late_result_stored_at,
        late_notified_at,
    }))
}

/// The columns [`result_row`] reads, in its order.
pub const RESULT_COLUMNS: &str =
    "order_id, late, result_id, outcome, partner_ref, detail, received_at";

/// A result from a row of [`RESULT_COLUMNS`], decoded as sqlx decodes it; `None` as for
/// [`order_row`].
pub fn result_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<order_results::Model>> {
    let (Some(detail), Some(Some(received_at))) = (json(row.get(5)?), time(row.get(6)?)) else {
        return Ok(None);
    };
    Ok(Some(order_results::Model {
        order_id: row.get(0)?,
        late: row.get(1)?,
        result_id: row.get(2)?,
        outcome: row.get(3)?,
        partner_ref: row.get(4)?,
        detail,
        received_at,
    }))
}

/// The columns [`aux_row`] reads, in its order.
pub const AUX_COLUMNS: &str = "order_id, system, status, data, updated_at";

/// An auxiliary record from a row of [`AUX_COLUMNS`], decoded as sqlx decodes it; `None` as for
/// [`order_row`].
pub fn aux_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Option<aux_records::Model>> {
    let (Some(data), Some(Some(updated_at))) = (json(row.get(3)?), time(row.get(4)?)) else {
        return Ok(None);
    };
    Ok(Some(aux_records::Model {
        order_id: row.get(0)?,
        system: row.get(1)?,
        status: row.get(2)?,
        data,
        updated_at,
    }))
}

/// What a read of rows decoded by [`order_row`], [`result_row`] or [`aux_row`] gave: the rows,
/// or `None` when the caller reads through the pool instead (the thread is gone, or a row is
/// in a form the decoder does not know).
pub fn decoded<T>(read: Option<Result<Vec<Option<T>>, DbErr>>) -> Result<Option<Vec<T>>, DbErr> {
    match read {
        Some(Ok(rows)) => Ok(rows.into_iter().collect()),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

/// A JSON column as sqlx reads it: parsed from text; `None` for text that is not JSON.
fn json(text: String) -> Option<serde_json::Value> {
    serde_json::from_str(&text).ok()
}

/// A time column as sqlx reads it: RFC 3339 text, or `YYYY-MM-DD HH:MM:SS[.f]` in UTC; `None`
/// for text in any other form.
fn time(text: Option<String>) -> Option<Option<DateTime<Utc>>> {
    let Some(text) = text else {
        return Some(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&text) {
        return Some(Some(t.with_timezone(&Utc)));
    }
    ["%F %T%.f", "%FT%T%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&text, f).ok())
        .map(|t| Some(t.and_utc()))
}

/// The file behind a SQLite pool, as SQLite reports it; `None` in memory or on Postgres.
pub async fn file_of(db: &DatabaseConnection) -> Option<PathBuf> {
    use sea_orm::ConnectionTrait;
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
        ))
        .await
        .ok()??;
    let file: String = row.try_get_by_index(0).ok()?;
    (!file.is_empty()).then(|| PathBuf::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_the_forms_sqlx_reads() {
        let read = |t: &str| time(Some(t.into())).flatten().map(|t| t.to_rfc3339());
        let expected = Some("2026-01-02T03:04:05.678+00:00".to_owned());
        assert_eq!(read("2026-01-02T03:04:05.678+00:00"), expected);
        assert_eq!(read("2026-01-02T04:04:05.678+01:00"), expected);
        assert_eq!(read("2026-01-02 03:04:05.678"), expected);
        assert_eq!(read("2026-01-02T03:04:05.678"), expected);
        assert_eq!(time(Some("yesterday".into())), None);
        assert_eq!(time(None), Some(None));
    }

    #[test]
    fn values_it_cannot_bind_are_refused_not_guessed() {
        assert!(bind(&Value::Bool(Some(true))).is_ok());
        assert!(matches!(bind(&Value::String(None)), Ok(Sql::Null)));
        assert!(bind(&Value::ChronoDate(None)).is_err());
    }
}
