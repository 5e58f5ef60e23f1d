//! The hub's Postgres pools: a pooled connection idle for a second is pinged before use, so one
//! that the server closed meanwhile (a restart, an administrator, a proxy's idle timeout) is
//! replaced before a statement meets it; a connection in steady use is not pinged.

use std::time::Duration;

use actors::store::{Db, DbUrls};
use sea_orm::sqlx::{self, Connection, PgConnection};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use crate::helpers::*;

/// Closes every session of the current database on the server at `url` but the caller's, and
/// returns how many it closed.
async fn close_sessions(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS closed",
    )
    .fetch_one(&mut conn)
    .await
    .expect("close the sessions")
}

async fn answers(pool: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    pool.execute_unprepared("SELECT 1").await.map(drop)
}

#[tokio::test]
async fn connections_the_server_closed_while_idle_are_replaced_before_use() {
    init_logs();
    let pg = shared_pg().create_database().await;
    let db = Db::connect(&DbUrls {
        primary: pg.primary_url.clone(),
        replica: pg.replica_url.clone(),
        max_read_lag_bytes: 16 << 20,
        aux: pg.aux_url.clone(),
        aux_standby: None,
    })
    .await
    .expect("the pools connect");
    let reader = db.reader().clone();
    for (pool, url, name) in [
        (&db.primary, &pg.primary_url, "the primary's pool"),
        (&reader, &pg.replica_url, "the read node's pool"),
    ] {
        answers(pool).await.expect("a first statement");
        assert!(close_sessions(url).await >= 1, "{name} had a session");
        // Idleness is what is under test: the pool's one connection, now closed by the server,
        // sits unused past the ping threshold (1 s).
        tokio::time::sleep(Duration::from_millis(1200)).await;
        answers(pool)
            .await
            .unwrap_or_else(|e| panic!("{name} handed out a closed connection: {e}"));
    }
}
