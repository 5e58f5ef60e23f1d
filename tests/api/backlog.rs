//! Admission by the whole story: while the built-in auxiliary systems cannot keep up (here: their
//! database is locked by another writer), results pile up in their durable consumers; past
//! `limits.max_story_backlog` new orders are answered `unavailable` with a retry hint, a retried
//! submit of an order already taken still gets its answer, and once the systems catch up new
//! orders are taken again.

use std::time::Duration;

use sea_orm::sqlx::{Connection, Executor, SqliteConnection};
use serde_json::json;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn new_orders_wait_while_the_story_backlog_is_over_its_bound() {
    let hub = TestHub::start_with(|s| s.limits.max_story_backlog = 3).await;
    let Store::Sqlite(dir) = &hub.store else {
        unreachable!("a SQLite hub")
    };
    let gateway = hub.client("gateway").await;
    let partner = hub.client("partner-acme-air").await;

    // Another writer holds the auxiliary database: the built-in systems cannot record.
    let aux_url = format!("sqlite://{}/aux.db", dir.path().display());
    let mut lock = SqliteConnection::connect(&aux_url)
        .await
        .expect("open the auxiliary database");
    lock.execute("BEGIN IMMEDIATE")
        .await
        .expect("take the write lock");

    let mut ids = Vec::new();
    for i in 0..3 {
        let id = submit(&gateway, "u-b", &format!("b-{i}"), "acme-air").await;
        request(
            &partner,
            "orders.partner.acme-air.result",
            json!({"order_id": id, "result_id": format!("r-{i}"), "outcome": "confirmed"}),
        )
        .await
        .assert_ok();
        ids.push(id);
    }

    // Three results for two built-in systems: six events wait, over the bound of three.
    // (Until the hub sees them, new orders are taken: each try has a key of its own.)
    let tries = std::sync::atomic::AtomicUsize::new(0);
    let refused = eventually(WAIT, "a submit refused for the backlog", || async {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reply = request(
            &gateway,
            "orders.submit",
            order("u-b", &format!("b-try-{n}"), "acme-air"),
        )
        .await;
        (reply.error_code() == Some("unavailable")).then_some(reply)
    })
    .await;
    refused.assert_error("unavailable", 503);
    let message = refused.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("behind on settling"), "{message}");
    assert!(message.contains("bound 3"), "{message}");

    // A retry of an order already taken is answered as before.
    let again = request(&gateway, "orders.submit", order("u-b", "b-0", "acme-air")).await;
    assert_eq!(
        again.assert_ok(),
        &json!({"order_id": ids[0], "status": "accepted", "duplicate": true})
    );

    // The lock goes: the systems catch up, and new orders are taken again.
    lock.execute("ROLLBACK").await.expect("release the lock");
    let taken = eventually(
        WAIT,
        "a new order taken once the backlog drains",
        || async {
            let reply = request(&gateway, "orders.submit", order("u-b", "b-new", "acme-air")).await;
            reply.body.get("order_id").is_some().then_some(reply)
        },
    )
    .await;
    assert_eq!(taken.assert_ok()["duplicate"], json!(false));
    drop(lock);
}
