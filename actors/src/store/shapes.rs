//! Statements of one shape whatever the number of rows they concern.
//!
//! A statement that lists n bound values (`id IN ($1, …, $n)`, or n rows of `VALUES`) is a new
//! statement for every n: the database parses and plans it anew, and the driver's cache of
//! prepared statements churns (on Postgres each new one is also a round trip to prepare it). A
//! group commit or a batched read brings a new n nearly every time. Here the ids, or the rows, go
//! as one bound value which the statement unpacks (ids as a text array on Postgres and a JSON
//! array on SQLite, rows as a JSON array on Postgres; SQLite inserts one row per statement): one
//! shape per kind of statement, prepared once per connection.

use chrono::SecondsFormat;
use entities::{order_facts, order_state};
use sea_orm::sea_query::{
    Alias, Expr, Func, InsertStatement, IntoIden, OnConflict, Query, SelectStatement, SimpleExpr,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, IdenStatic, IntoActiveModel,
    Iterable, ModelTrait, QueryTrait, Statement, TryGetableMany, Value,
};
use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value as Json;

/// `ids` as one bound value, a JSON array (SQLite's `json_each` reads it).
pub(crate) fn id_list<S: AsRef<str> + Serialize>(ids: &[S]) -> String {
    serde_json::to_string(ids).expect("a list of strings is JSON")
}

/// `ids` as one bound value, a Postgres array literal of text: every element quoted, with `"`
/// and `\` escaped by a backslash, so any id reads back as itself.
fn text_array<S: AsRef<str>>(ids: &[S]) -> String {
    let mut out =
        String::with_capacity(2 + ids.iter().map(|i| i.as_ref().len() + 3).sum::<usize>());
    out.push('{');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in id.as_ref().chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The `columns` of the rows of `table` whose `key` is one of `ids` and whose columns of `eq`
/// hold the values given, decoded positionally: for a key that leads a primary key without
/// being unique (`order_results.order_id`, `aux_records.order_id`).
///
/// On Postgres `key = ANY($1)` would do where the table has statistics. Until its first
/// `ANALYZE` (which autovacuum runs within about a minute), Postgres assumes each id of such a
/// list matches 0.5 % of the rows, and for more than about 24 ids it reads the whole table. A
/// slow read lets the next batch of ids grow, so one such plan would keep a young hub in it.
/// Here each id is one probe of the key's index (the `OFFSET 0` keeps the planner from turning
/// the probes back into one join), whatever the table's statistics and the number of ids. On
/// SQLite the ids are read by `json_each`, and each is looked up in the index as well.
pub(crate) async fn rows_by_key<T: TryGetableMany, S: AsRef<str> + Serialize>(
    db: &impl ConnectionTrait,
    (table, columns): (&str, &[&str]),
    key: &str,
    ids: &[S],
    eq: &[(&str, Value)],
) -> Result<Vec<T>, DbErr> {
    let backend = db.get_database_backend();
    let sql = rows_by_key_sql(backend, (table, columns), key, eq.iter().map(|(c, _)| *c));
    let values = std::iter::once(ids_value(backend, ids)).chain(eq.iter().map(|(_, v)| v.clone()));
    db.query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?
        .iter()
        .map(|row| T::try_get_many_by_index(row).map_err(DbErr::from))
        .collect()
}

fn rows_by_key_sql<'c>(
    backend: DbBackend,
    (table, columns): (&str, &[&str]),
    key: &str,
    eq: impl Iterator<Item = &'c str>,
) -> String {
    let list = columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let postgres = backend == DbBackend::Postgres;
    let and: String = eq
        .enumerate()
        .map(|(i, c)| match postgres {
            true => format!(" AND \"{c}\" = ${}", i + 2),
            false => format!(" AND \"{c}\" = ?"),
        })
        .collect();
    if postgres {
        format!(
            "SELECT {list} FROM unnest(CAST($1 AS text[])) AS ids(id) CROSS JOIN LATERAL \
             (SELECT {list} FROM \"{table}\" WHERE \"{key}\" = ids.id{and} OFFSET 0) AS found"
        )
    } else {
        format!(
            "SELECT {list} FROM \"{table}\" WHERE \"{key}\" IN (SELECT value FROM json_each(?)){and}"
        )
    }
}

/// `ids` as the value [`id_in`] and [`rows_by_key`] bind on `backend`.
fn ids_value<S: AsRef<str> + Serialize>(backend: DbBackend, ids: &[S]) -> Value {
    match backend {
        DbBackend::Postgres => text_array(ids).into(),
        _ => id_list(ids).into(),
    }
}

/// `column IN (ids)`, with the ids as one bound value: on Postgres `column = ANY($1::text[])`,
/// which the planner sees as a list of constants when it plans the statement (the hub's
/// sessions plan each execution, see `store::connect`), and looks up in the column's index; on
/// SQLite a JSON array read by `json_each`.
pub(crate) fn id_in<C: ColumnTrait, S: AsRef<str> + Serialize>(
    backend: DbBackend,
    column: C,
    ids: &[S],
) -> SimpleExpr {
    let table = column.entity_name().to_string();
    let column = column.as_str();
    let sql = match backend {
        DbBackend::Postgres => format!("\"{table}\".\"{column}\" = ANY(CAST($1 AS text[]))"),
        _ => format!("\"{table}\".\"{column}\" IN (SELECT value FROM json_each(?))"),
    };
    Expr::cust_with_values(sql, [ids_value(backend, ids)])
}

/// Transaction-scoped advisory locks on `keys`, one after the other in the order given: a scan of
/// the array returns its elements in order, and each row takes its lock as the scan reaches it.
/// The keys go as one bound value, so the statement has one shape whatever their number.
pub(crate) fn advisory_locks(keys: &[i64]) -> Statement {
    let keys: Vec<String> = keys.iter().map(i64::to_string).collect();
    let list = format!("{{{}}}", keys.join(","));
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock(k) FROM unnest(CAST($1 AS int8[])) AS k",
        [list.into()],
    )
}

/// Rows per Postgres insert: each is one statement, so one round trip, whatever its rows.
const ROWS_PER_INSERT: usize = 256;

/// The statements that insert `rows`, with `conflict` and `returning` as for a multi-row
/// `VALUES` insert: on Postgres one per [`ROWS_PER_INSERT`] rows, which go as one JSON array
/// ([`insert_json`]); on SQLite, where a statement costs no round trip, one per row, the
/// statement's text built once and each further row bringing only its values, in the entity's
/// column order (the order an insert of a whole model lists them in).
pub(crate) fn inserts<E: EntityTrait>(
    backend: DbBackend,
    rows: &[&E::Model],
    conflict: Option<&OnConflict>,
    returning: Option<E::Column>,
) -> Result<Vec<Statement>, DbErr>
where
    E::Model: IntoActiveModel<E::ActiveModel>,
{
    if backend == DbBackend::Postgres {
        return rows
            .chunks(ROWS_PER_INSERT)
            .map(|chunk| Ok(backend.build(&insert_json::<E>(chunk, conflict, returning, None)?)))
            .collect();
    }
    let Some((first, rest)) = rows.split_first() else {
        return Ok(Vec::new());
    };
    let mut insert = E::insert_many([(*first).clone().into_active_model()]).into_query();
    if let Some(conflict) = conflict {
        insert.on_conflict(conflict.clone());
    }
    if let Some(column) = returning {
        insert.returning_col(column.into_iden());
    }
    let first = backend.build(&insert);
    let mut statements = Vec::with_capacity(rows.len());
    statements.extend(rest.iter().map(|row| {
        Statement::from_sql_and_values(
            backend,
            first.sql.clone(),
            E::Column::iter().map(|column| row.get(column)),
        )
    }));
    statements.insert(0, first);
    Ok(statements)
}

/// An insert of `rows` that binds them as one JSON array of objects, one key per column,
/// unpacked by Postgres' `jsonb_populate_recordset` into the table's row type. The array goes as
/// text, written straight from the rows ([`JsonRows`]): no tree of JSON values is built, and
/// nothing deep is copied as the statement is built and bound.
///
/// With `keep`, only the rows for which that condition (on the rows, as `"r"`) holds are inserted.
fn insert_json<E: EntityTrait>(
    rows: &[&E::Model],
    conflict: Option<&OnConflict>,
    returning: Option<E::Column>,
    keep: Option<&str>,
) -> Result<InsertStatement, DbErr> {
    let table = E::default().table_name().to_owned();
    let text = serde_json::to_string(&JsonRows::<E>(rows))
        .map_err(|e| DbErr::Custom(format!("insert of {table}: {e}")))?;
    let unpack = Func::cust(Alias::new("jsonb_populate_recordset"))
        .arg(Expr::cust(format!("NULL::\"{table}\"")))
        .arg(Expr::cust_with_values("CAST($1 AS jsonb)", [text]));
    let mut select: SelectStatement = Query::select();
    select
        .columns(E::Column::iter().map(|c| c.into_iden()))
        .from_function(unpack, Alias::new("r"));
    if let Some(keep) = keep {
        select.and_where(Expr::cust(keep.to_owned()));
    }
    let mut insert = Query::insert();
    insert
        .into_table(E::default().into_iden())
        .columns(E::Column::iter().map(|c| c.into_iden()))
        .select_from(select)
        .map_err(|e| DbErr::Custom(format!("insert of {table}: {e}")))?;
    if let Some(conflict) = conflict {
        insert.on_conflict(conflict.clone());
    }
    if let Some(column) = returning {
        insert.returning_col(column.into_iden());
    }
    Ok(insert)
}

/// Postgres: one statement per [`ROWS_PER_INSERT`] orders that inserts their `order_facts` rows,
/// except where `conflict` holds (a taken idempotency key), and the `order_state` rows of exactly
/// the orders inserted, returning their ids: the two inserts in one round trip. `facts` and
/// `states` are the same orders in the same order.
pub(crate) fn new_orders(
    facts: &[&order_facts::Model],
    states: &[&order_state::Model],
    conflict: &OnConflict,
) -> Result<Vec<Statement>, DbErr> {
    if facts.len() != states.len() {
        return Err(DbErr::Custom(format!(
            "{} orders' facts against {} states",
            facts.len(),
            states.len()
        )));
    }
    facts
        .chunks(ROWS_PER_INSERT)
        .zip(states.chunks(ROWS_PER_INSERT))
        .map(|(facts, states)| {
            let facts = DbBackend::Postgres.build(&insert_json::<order_facts::Entity>(
                facts,
                Some(conflict),
                Some(order_facts::Column::Id),
                None,
            )?);
            insert_after::<order_state::Entity>(
                facts,
                "inserted_facts",
                "id",
                states,
                order_state::Column::Id,
            )
        })
        .collect()
}

/// Postgres: `first`, a statement returning ids, then in the same statement (as a common table
/// named `name`) the insert of those of `rows` whose `key` is among the ids `first` returned,
/// returning their `returning`: two steps in one round trip. At most [`ROWS_PER_INSERT`] rows.
pub(crate) fn insert_after<E: EntityTrait>(
    first: Statement,
    name: &str,
    key: &str,
    rows: &[&E::Model],
    returning: E::Column,
) -> Result<Statement, DbErr> {
    if rows.len() > ROWS_PER_INSERT {
        return Err(DbErr::Custom(format!(
            "{} rows for one insert, at most {ROWS_PER_INSERT}",
            rows.len()
        )));
    }
    let keep = format!("\"r\".\"{key}\" IN (SELECT \"id\" FROM \"{name}\")");
    let then =
        DbBackend::Postgres.build(&insert_json::<E>(rows, None, Some(returning), Some(&keep))?);
    Ok(after(first, name, then))
}

/// Postgres: `first` as the common table `name`, then `then`, in one statement (one round trip);
/// `then`'s bound values (`$1`, `$2`, …) come after `first`'s. `first` runs whether `then` reads
/// `name` or not, and both see the same snapshot: neither sees the other's changes, so they must
/// not change the same rows.
pub(crate) fn after(first: Statement, name: &str, then: Statement) -> Statement {
    let first_values = first.values.map(|v| v.0).unwrap_or_default();
    let then_values = then.values.map(|v| v.0).unwrap_or_default();
    let then_sql = shift_placeholders(&then.sql, first_values.len());
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("WITH \"{name}\" AS ({}) {then_sql}", first.sql),
        first_values.into_iter().chain(then_values),
    )
}

/// `sql` with each placeholder `$n` read as a whole number and written as `$(n + by)`. The hub's
/// statements bind every value, so a `$` followed by digits is always a placeholder.
fn shift_placeholders(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Rows as a JSON array of [`JsonRow`]s.
struct JsonRows<'a, E: EntityTrait>(&'a [&'a E::Model]);

impl<E: EntityTrait> Serialize for JsonRows<'_, E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut array = serializer.serialize_seq(Some(self.0.len()))?;
        for row in self.0 {
            array.serialize_element(&JsonRow::<E>(row))?;
        }
        array.end()
    }
}

/// A row as a JSON object, one key per column, each value as [`json_of`] has it.
struct JsonRow<'a, E: EntityTrait>(&'a E::Model);

impl<E: EntityTrait> Serialize for JsonRow<'_, E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = serializer.serialize_map(None)?;
        for column in E::Column::iter() {
            let value = json_of(self.0.get(column)).map_err(S::Error::custom)?;
            object.serialize_entry(column.as_str(), &value)?;
        }
        object.end()
    }
}

/// A column's value as `jsonb_populate_recordset` reads it back into the column's type: times
/// in RFC 3339 (microseconds, as the database keeps them), JSON columns as they are. Values of
/// any other type are refused, not guessed.
fn json_of(value: Value) -> Result<Json, DbErr> {
    Ok(match value {
        Value::String(s) => s.map_or(Json::Null, Json::String),
        Value::Bool(b) => b.map_or(Json::Null, Json::Bool),
        Value::Int(i) => i.map_or(Json::Null, Json::from),
        Value::BigInt(i) => i.map_or(Json::Null, Json::from),
        Value::Json(j) => j.map_or(Json::Null, |j| *j),
        Value::ChronoDateTimeUtc(t) => t.map_or(Json::Null, |t| {
            Json::String(t.to_rfc3339_opts(SecondsFormat::Micros, true))
        }),
        other => return Err(DbErr::Custom(format!("no JSON form for {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use entities::{order_facts, order_results, order_state, orders, outbox};

    #[test]
    fn an_id_list_is_one_bound_value_whatever_its_length() {
        let one = DbBackend::Postgres.build(
            sea_orm::sea_query::Query::select()
                .column(outbox::Column::Id)
                .from(outbox::Entity)
                .and_where(id_in(DbBackend::Postgres, outbox::Column::Id, &["a"])),
        );
        let three = DbBackend::Postgres.build(
            sea_orm::sea_query::Query::select()
                .column(outbox::Column::Id)
                .from(outbox::Entity)
                .and_where(id_in(
                    DbBackend::Postgres,
                    outbox::Column::Id,
                    &["a", "b", "c"],
                )),
        );
        assert_eq!(one.sql, three.sql);
        assert!(
            three
                .sql
                .contains("\"outbox\".\"id\" = ANY(CAST($1 AS text[]))"),
            "{}",
            three.sql
        );
        let values = three.values.expect("bound").0;
        assert_eq!(values, vec![Value::from(r#"{"a","b","c"}"#)]);

        // Numbered after the statement's other values.
        let update = DbBackend::Postgres.build(
            sea_orm::sea_query::Query::update()
                .table(outbox::Entity)
                .value(outbox::Column::Subject, "s")
                .and_where(id_in(DbBackend::Postgres, outbox::Column::Id, &["a"]))
                .and_where(id_in(DbBackend::Postgres, outbox::Column::OrderId, &["o"])),
        );
        assert!(update.sql.contains("\"subject\" = $1"), "{}", update.sql);
        assert!(update.sql.contains("CAST($2 AS text[])"), "{}", update.sql);
        assert!(update.sql.contains("CAST($3 AS text[])"), "{}", update.sql);
    }

    #[test]
    fn a_text_array_quotes_every_element_and_escapes_quotes_and_backslashes() {
        assert_eq!(text_array::<&str>(&[]), "{}");
        assert_eq!(text_array(&["a-1"]), r#"{"a-1"}"#);
        assert_eq!(
            text_array(&["x,y", r#"q"q"#, r"b\s", "{}", "NULL", " "]),
            r#"{"x,y","q\"q","b\\s","{}","NULL"," "}"#
        );
    }

    #[test]
    fn rows_go_as_one_json_array_under_their_column_names() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let rows = [
            outbox::Model {
                id: "e-1".into(),
                order_id: "o-1".into(),
                subject: "s".into(),
                payload: "{}".into(),
                created_at: at,
                published_at: None,
            },
            outbox::Model {
                id: "e-2".into(),
                order_id: "o-1".into(),
                subject: "s".into(),
                payload: "{}".into(),
                created_at: at,
                published_at: Some(at),
            },
        ];
        let refs: Vec<&outbox::Model> = rows.iter().collect();
        let one = insert_json::<outbox::Entity>(&refs[..1], None, None, None).unwrap();
        let two =
            insert_json::<outbox::Entity>(&refs, None, Some(outbox::Column::Id), None).unwrap();
        let one = DbBackend::Postgres.build(&one);
        let two = DbBackend::Postgres.build(&two);
        assert!(two.sql.starts_with(&one.sql), "{} / {}", one.sql, two.sql);
        assert!(two.sql.ends_with("RETURNING \"id\""), "{}", two.sql);
        let Some(Value::String(Some(text))) = two.values.clone().expect("bound").0.pop() else {
            panic!("the rows go as one text value");
        };
        assert!(two.sql.contains("CAST($1 AS jsonb)"), "{}", two.sql);
        let array: Json = serde_json::from_str(&text).expect("the text is JSON");
        assert_eq!(
            array,
            serde_json::json!([
                {"id": "e-1", "order_id": "o-1", "subject": "s", "payload": "{}",
                 "created_at": "2026-01-02T03:04:05.000000Z", "published_at": null},
                {"id": "e-2", "order_id": "o-1", "subject": "s", "payload": "{}",
                 "created_at": "2026-01-02T03:04:05.000000Z",
                 "published_at": "2026-01-02T03:04:05.000000Z"},
            ])
        );
    }

    #[test]
    fn new_orders_insert_their_state_only_where_their_facts_went_in_in_one_statement() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let orders: Vec<orders::Model> = (0..3)
            .map(|i| crate::testing::order(&format!("o-{i}"), at))
            .collect();
        let facts: Vec<order_facts::Model> = orders.iter().map(|o| o.facts()).collect();
        let states: Vec<order_state::Model> = orders.iter().map(|o| o.state()).collect();
        let (facts, states): (Vec<_>, Vec<_>) = (facts.iter().collect(), states.iter().collect());
        let taken =
            OnConflict::columns([order_facts::Column::UserId, order_facts::Column::RequestId])
                .do_nothing()
                .to_owned();
        let statements = new_orders(&facts, &states, &taken).unwrap();
        assert_eq!(statements.len(), 1);
        let sql = &statements[0].sql;
        assert!(
            sql.starts_with("WITH \"inserted_facts\" AS (INSERT INTO \"order_facts\""),
            "{sql}"
        );
        assert!(
            sql.contains("CAST($1 AS jsonb)) AS \"r\" ON CONFLICT"),
            "{sql}"
        );
        assert!(
            sql.contains(") INSERT INTO \"order_state\""),
            "the state rows go in the same statement: {sql}"
        );
        assert!(
            sql.ends_with(
                "CAST($2 AS jsonb)) AS \"r\" WHERE \"r\".\"id\" IN (SELECT \"id\" FROM \"inserted_facts\") RETURNING \"id\""
            ),
            "{sql}"
        );
        let values = statements[0].values.clone().expect("bound").0;
        let texts: Vec<Json> = values
            .into_iter()
            .map(|v| match v {
                Value::String(Some(text)) => serde_json::from_str(&text).expect("JSON"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0][2]["request_id"], orders[2].request_id.as_str());
        assert_eq!(texts[1][2]["id"], "o-2");
        assert!(texts[1][2].get("user_id").is_none(), "{}", texts[1][2]);

        assert!(new_orders(&facts, &states[..2], &taken).is_err());
    }

    #[test]
    fn an_insert_after_a_statement_binds_its_rows_after_that_statements_values() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let result = |id: &str| order_results::Model {
            order_id: id.into(),
            late: false,
            result_id: format!("r-{id}"),
            outcome: "confirmed".into(),
            partner_ref: None,
            detail: serde_json::json!({}),
            received_at: at,
        };
        let rows = [result("o-1"), result("o-2")];
        let refs: Vec<&order_results::Model> = rows.iter().collect();
        let first = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE \"t\" SET \"a\" = $1 WHERE \"b\" = $2 AND \"id\" = ANY($3) RETURNING \"id\"",
            [1.into(), 2.into(), "{o-1}".into()],
        );
        let stmt = insert_after::<order_results::Entity>(
            first,
            "moved",
            "order_id",
            &refs,
            order_results::Column::OrderId,
        )
        .unwrap();
        assert!(
            stmt.sql.starts_with(
                "WITH \"moved\" AS (UPDATE \"t\" SET \"a\" = $1 WHERE \"b\" = $2 AND \"id\" = ANY($3) RETURNING \"id\") INSERT INTO \"order_results\""
            ),
            "{}",
            stmt.sql
        );
        assert!(
            stmt.sql.ends_with(
                "CAST($4 AS jsonb)) AS \"r\" WHERE \"r\".\"order_id\" IN (SELECT \"id\" FROM \"moved\") RETURNING \"order_id\""
            ),
            "{}",
            stmt.sql
        );
        let values = stmt.values.expect("bound").0;
        assert_eq!(values.len(), 4);
        let Value::String(Some(text)) = &values[3] else {
            panic!("the rows go last, as text: {values:?}");
        };
        let rows: Json = serde_json::from_str(text).unwrap();
        assert_eq!(rows[1]["order_id"], "o-2");

        let one = result("o-3");
        let many: Vec<&order_results::Model> = std::iter::repeat_n(&one, 257).collect();
        let first = Statement::from_string(DbBackend::Postgres, "SELECT 1");
        assert!(
            insert_after::<order_results::Entity>(
                first,
                "moved",
                "order_id",
                &many,
                order_results::Column::OrderId
            )
            .is_err()
        );
    }

    #[test]
    fn a_statement_after_another_numbers_its_values_after_the_others() {
        let first = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE \"t\" SET \"a\" = $1 WHERE \"b\" = $2",
            [1.into(), 2.into()],
        );
        let then_sql = format!(
            "SELECT {}",
            (1..=11)
                .map(|n| format!("${n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let then = Statement::from_sql_and_values(
            DbBackend::Postgres,
            then_sql,
            (3..=13).map(Value::from),
        );
        let both = after(first, "first", then);
        assert_eq!(
            both.sql,
            "WITH \"first\" AS (UPDATE \"t\" SET \"a\" = $1 WHERE \"b\" = $2) \
             SELECT $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13"
        );
        let values: Vec<Value> = both.values.expect("bound").0;
        assert_eq!(values, (1..=13).map(Value::from).collect::<Vec<_>>());
    }

    /// Each further row's statement on SQLite: the first row's text with the row's own values,
    /// which must come in the order the text lists the columns, for every entity inserted so.
    fn further_row_reads_as_its_own_insert<E: EntityTrait>(first: &E::Model, row: &E::Model)
    where
        E::Model: IntoActiveModel<E::ActiveModel>,
    {
        let statements = inserts::<E>(DbBackend::Sqlite, &[first, row], None, None).unwrap();
        let alone = E::insert_many([row.clone().into_active_model()]).into_query();
        let alone = DbBackend::Sqlite.build(&alone);
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[1].sql, alone.sql);
        assert_eq!(statements[1].values, alone.values);
    }

    #[test]
    fn on_sqlite_each_row_is_its_own_insert_of_one_shape() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let first = crate::testing::order("o-1", at);
        let order = orders::Model {
            result_deadline: Some(at),
            dispatched_at: Some(at),
            ..crate::testing::order("o-2", at)
        };
        further_row_reads_as_its_own_insert::<order_facts::Entity>(&first.facts(), &order.facts());
        further_row_reads_as_its_own_insert::<order_state::Entity>(&first.state(), &order.state());

        let result = |late| order_results::Model {
            order_id: "o-1".into(),
            late,
            result_id: "r-1".into(),
            outcome: "confirmed".into(),
            partner_ref: None,
            detail: serde_json::json!({"seat": "12A"}),
            received_at: at,
        };
        further_row_reads_as_its_own_insert::<order_results::Entity>(&result(false), &result(true));

        let event = |id: &str| outbox::Model {
            id: id.into(),
            order_id: "o-1".into(),
            subject: "orders.events.stored.acme-air.o-1".into(),
            payload: "{}".into(),
            created_at: at,
            published_at: None,
        };
        further_row_reads_as_its_own_insert::<outbox::Entity>(&event("e-1"), &event("e-2"));
    }

    #[test]
    fn rows_by_key_probe_the_key_once_per_id_on_postgres() {
        let table = ("order_results", &["order_id", "outcome"][..]);
        let late = || ["late"].into_iter();
        assert_eq!(
            rows_by_key_sql(DbBackend::Postgres, table, "order_id", late()),
            "SELECT \"order_id\", \"outcome\" FROM unnest(CAST($1 AS text[])) AS ids(id) \
             CROSS JOIN LATERAL (SELECT \"order_id\", \"outcome\" FROM \"order_results\" \
             WHERE \"order_id\" = ids.id AND \"late\" = $2 OFFSET 0) AS found"
        );
        assert_eq!(
            rows_by_key_sql(DbBackend::Sqlite, table, "order_id", late()),
            "SELECT \"order_id\", \"outcome\" FROM \"order_results\" \
             WHERE \"order_id\" IN (SELECT value FROM json_each(?)) AND \"late\" = ?"
        );
    }

    #[test]
    fn values_without_a_json_form_are_refused() {
        assert!(json_of(Value::Double(Some(1.5))).is_err());
        assert_eq!(json_of(Value::String(None)).unwrap(), Json::Null);
    }
}
