//! Isolation (`docs/protocol.md`, "Roles and accounts"): every forbidden action of every role is
//! refused by the server — the client sees the permissions violation — and leaves no trace: no
//! order, result, aux record or event, and every other consumer's counters as they were. Each
//! role lives in an account of its own (`nats.conf`) and reaches the hub's JetStream as
//! `JS.hub.API.…`; forbidden JetStream requests are tried under both names. The last tests prove
//! the opposite: each role can still do all it must, so a role locked out by a careless change of
//! the layout fails here too. `accounts.rs` shows that no reply subject a role names lands in the
//! stream.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::roles::*;

/// A pull request body: ask for up to 10 messages, give up after 200 ms.
fn pull_request() -> Value {
    json!({"batch": 10, "expires": 200_000_000})
}

/// A durable consumer config that would read every event of the stream.
fn consumer_config(name: &str) -> Value {
    json!({"stream_name": STREAM, "config": {"durable_name": name, "name": name,
           "filter_subject": "orders.events.>", "ack_policy": "explicit", "deliver_policy": "all"}})
}

/// The next message of a subscription, within 10 s.
async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(sub))
        .await
        .expect("a message within 10 s")
        .expect("subscription open")
}

/// The order ids a user's list shows.
async fn orders_of(gateway: &async_nats::Client, user: &str) -> Vec<String> {
    let list = request(
        gateway,
        "orders.query",
        json!({"user_id": user, "limit": 100}),
    )
    .await;
    list.assert_ok()["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().expect("order_id").to_owned())
        .collect()
}

/// Submits an order and waits until its stored event is in the stream (`events` messages in all).
async fn order_stored(
    gateway: &async_nats::Client,
    probe: &Probe<'_>,
    user: &str,
    key: &str,
    partner: &str,
    events: u64,
) -> String {
    let id = submit(gateway, user, key, partner).await;
    probe.wait_messages(events).await;
    id
}

#[tokio::test]
async fn partners_read_only_their_own_stored_events() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let probe = Probe(&operator);
    let acme = Role::connect(&hub.nats, "partner-acme-air").await;
    let globex = Role::connect(&hub.nats, "partner-globex-hotels").await;
    order_stored(&gateway, &probe, "u-g", "g-1", "globex-hotels", 1).await;

    // Core subscriptions to anything but its own stored events.
    let mut foreign = Vec::new();
    for subject in [
        "orders.events.stored.globex-hotels.>",
        "orders.events.stored.*.>",
        "orders.events.stored.>",
        "orders.events.>",
        "orders.>",
        ">",
    ] {
        foreign.push(acme.deny_subscribe(subject).await);
    }
    let mut own = acme
        .client
        .subscribe("orders.events.stored.acme-air.>")
        .await
        .expect("own events");
    acme.client.flush().await.expect("flush");

    // Through JetStream: globex's consumer, its info, its acks, and the stream's info (which
    // would list every subject, hence every partner, user and order id).
    let before = probe.consumer_state("partner-globex-hotels").await;
    acme.deny_requests(&with_prefixed(&[
        (
            "$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.partner-globex-hotels",
            pull_request(),
        ),
        (
            "$JS.API.CONSUMER.INFO.ORDER_EVENTS.partner-globex-hotels",
            json!({}),
        ),
        (
            "$JS.ACK.ORDER_EVENTS.partner-globex-hotels.1.1.1.1700000000000000000.0",
            json!({}),
        ),
        (
            "$JS.API.STREAM.INFO.ORDER_EVENTS",
            json!({"subjects_filter": ">"}),
        ),
        ("$JS.API.STREAM.NAMES", json!({})),
        ("$JS.API.CONSUMER.NAMES.ORDER_EVENTS", json!({})),
    ]))
    .await;

    // A new order for globex reaches none of acme's subscriptions.
    order_stored(&gateway, &probe, "u-g", "g-2", "globex-hotels", 2).await;
    // Its own subscription is watched too, for the same window.
    foreign.push(own);
    assert_silent(&mut foreign, "acme must not see globex's stored events").await;
    own = foreign.pop().expect("own");

    // Globex's consumer was not touched: nothing delivered, nothing acknowledged, both waiting.
    let after = probe.consumer_state("partner-globex-hotels").await;
    assert_eq!(
        after["delivered"], before["delivered"],
        "{before} → {after}"
    );
    assert_eq!(after["ack_floor"], 0);
    assert_eq!(after["num_pending"], 2, "{after}");
    let got = pull(
        &durable(&globex.client, "partner-globex-hotels").await,
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 2, "globex still gets both of its events");

    // Its own events still reach acme, by subscription and through its own consumer.
    let a = order_stored(&gateway, &probe, "u-a", "a-1", "acme-air", 3).await;
    let m = next(&mut own).await;
    assert_eq!(
        m.subject.as_str(),
        format!("orders.events.stored.acme-air.{a}")
    );
    let mine = pull(
        &durable(&acme.client, "partner-acme-air").await,
        10,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(mine.len(), 1, "acme's consumer holds only acme's order");
    assert_eq!(event(&mine[0])["data"]["order_id"], a.as_str());
    globex.assert_no_violations();
}

#[tokio::test]
async fn no_client_role_manages_consumers_or_the_stream() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let operator_client = hub.client("operator").await;
    let probe = Probe(&operator_client);
    let id = order_stored(&gateway, &probe, "u-1", "k-1", "acme-air", 1).await;
    let consumers = probe.consumer_names().await;
    assert_eq!(consumers, hub_consumers());
    let own_before = probe.consumer_state("partner-acme-air").await;

    for (user, own) in [
        ("gateway", "gateway"),
        ("partner-acme-air", "partner-acme-air"),
        ("aux", "aux-audit"),
        ("operator", "partner-acme-air"),
    ] {
        let role = Role::connect(&hub.nats, user).await;
        role.deny_requests(&with_prefixed(&[
            // Create a durable of its own that reads everything.
            ("$JS.API.CONSUMER.CREATE.ORDER_EVENTS.snoop", consumer_config("snoop")),
            ("$JS.API.CONSUMER.CREATE.ORDER_EVENTS.snoop.orders.events.>", consumer_config("snoop")),
            ("$JS.API.CONSUMER.DURABLE.CREATE.ORDER_EVENTS.snoop", consumer_config("snoop")),
            // An ephemeral (the legacy subject), which with a durable's name would update it.
            ("$JS.API.CONSUMER.CREATE.ORDER_EVENTS", json!({"stream_name": STREAM, "config": {"name": own,
                "filter_subject": "orders.events.>", "ack_policy": "explicit", "inactive_threshold": 1_000_000_000u64}})),
            // Widen, pause or delete its own (or, for the operator, anyone's) consumer.
            (&format!("$JS.API.CONSUMER.CREATE.ORDER_EVENTS.{own}"), consumer_config(own)),
            (&format!("$JS.API.CONSUMER.PAUSE.ORDER_EVENTS.{own}"), json!({"pause_until": "2999-01-01T00:00:00Z"})),
            (&format!("$JS.API.CONSUMER.DELETE.ORDER_EVENTS.{own}"), json!({})),
            // Delete, purge, change or copy the stream; delete one message.
            ("$JS.API.STREAM.DELETE.ORDER_EVENTS", json!({})),
            ("$JS.API.STREAM.PURGE.ORDER_EVENTS", json!({})),
            ("$JS.API.STREAM.UPDATE.ORDER_EVENTS", json!({"name": STREAM, "subjects": ["orders.events.>"], "max_msgs": 1})),
            ("$JS.API.STREAM.MSG.DELETE.ORDER_EVENTS", json!({"seq": 1})),
            ("$JS.API.STREAM.CREATE.COPY", json!({"name": "COPY", "sources": [{"name": STREAM}]})),
        ]))
        .await;
    }

    // Nothing changed: the same consumers, the same configuration, the same counters, the message.
    assert_eq!(probe.consumer_names().await, hub_consumers());
    assert_eq!(probe.consumer_state("partner-acme-air").await, own_before);
    assert_eq!(probe.messages().await, 1);
    let info = js_api(
        &operator_client,
        "JS.hub.API.STREAM.INFO.ORDER_EVENTS",
        json!({}),
    )
    .await;
    assert_eq!(info["config"]["subjects"], json!(["orders.events.>"]));
    assert!(
        info["config"]["max_msgs"].as_i64().unwrap_or(-1) <= 0,
        "{info}"
    );
    assert!(info["config"]["sources"].is_null(), "{info}");
    let acme = hub.client("partner-acme-air").await;
    let got = pull(
        &durable(&acme, "partner-acme-air").await,
        10,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(event(&got[0])["data"]["order_id"], id.as_str());
}

#[tokio::test]
async fn only_the_operator_reads_stream_messages_directly() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let operator = Role::connect(&hub.nats, "operator").await;
    let probe = Probe(&operator.client);
    let id = order_stored(&gateway, &probe, "u-1", "k-1", "acme-air", 1).await;
    let subject = format!("orders.events.stored.acme-air.{id}");

    for user in [
        "gateway",
        "partner-acme-air",
        "partner-globex-hotels",
        "aux",
    ] {
        let role = Role::connect(&hub.nats, user).await;
        role.deny_requests(&with_prefixed(&[
            ("$JS.API.DIRECT.GET.ORDER_EVENTS", json!({"seq": 1})),
            (
                &format!("$JS.API.DIRECT.GET.ORDER_EVENTS.{subject}"),
                json!({}),
            ),
            ("$JS.API.STREAM.MSG.GET.ORDER_EVENTS", json!({"seq": 1})),
            (
                "$JS.API.STREAM.MSG.GET.ORDER_EVENTS",
                json!({"last_by_subj": subject}),
            ),
        ]))
        .await;
    }
    // The operator's read path is the direct get; the API get is refused to it as well.
    operator
        .deny_requests(&with_prefixed(&[(
            "$JS.API.STREAM.MSG.GET.ORDER_EVENTS",
            json!({"seq": 1}),
        )]))
        .await;
    for (api, body) in [
        (
            "JS.hub.API.DIRECT.GET.ORDER_EVENTS".to_owned(),
            json!({"seq": 1}),
        ),
        (
            format!("JS.hub.API.DIRECT.GET.ORDER_EVENTS.{subject}"),
            json!({}),
        ),
    ] {
        let m = operator
            .client
            .request(api.clone(), serde_json::to_vec(&body).unwrap().into())
            .await
            .expect(&api);
        let headers = m.headers.expect("direct get headers");
        assert_eq!(
            headers.get("Nats-Subject").map(|v| v.as_str()),
            Some(subject.as_str()),
            "{api}"
        );
        let ev: Value = serde_json::from_slice(&m.payload).expect("the stored event");
        assert_eq!(ev["data"]["order_id"], id.as_str());
    }
    // Reading that way moved no consumer.
    assert_eq!(
        probe.consumer_state("partner-acme-air").await["delivered"],
        0
    );
}

#[tokio::test]
async fn results_only_for_ones_own_orders() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let probe = Probe(&operator);
    let acme = Role::connect(&hub.nats, "partner-acme-air").await;
    let globex = Role::connect(&hub.nats, "partner-globex-hotels").await;
    let g = order_stored(&gateway, &probe, "u-g", "g-1", "globex-hotels", 1).await;
    let result = json!({"order_id": g, "result_id": "acme-steals", "outcome": "rejected"});

    // Another partner's subjects: refused by the server.
    acme.deny_requests(&[
        ("orders.partner.globex-hotels.result", result.clone()),
        ("orders.partner.globex-hotels.get", json!({"order_id": g})),
    ])
    .await;
    // Its own subjects with another partner's order: refused by the hub, without saying it exists.
    let r = request(
        &acme.client,
        "orders.partner.acme-air.result",
        result.clone(),
    )
    .await;
    r.assert_error("not_found", 404);
    request(
        &acme.client,
        "orders.partner.acme-air.get",
        json!({"order_id": g}),
    )
    .await
    .assert_error("not_found", 404);
    acme.assert_no_violations_except_publish(&[
        "orders.partner.globex-hotels.result",
        "orders.partner.globex-hotels.get",
    ]);

    // No result, no result event, the order still waits for globex.
    let q = query_order(&gateway, &g, "u-g").await;
    assert!(q.assert_ok()["result"].is_null(), "{:?}", q.body);
    assert_eq!(probe.messages().await, 1, "no result event");
    assert_eq!(probe.consumer_state("gateway").await["num_pending"], 0);

    // Globex's own answer goes through.
    let ok = request(
        &globex.client,
        "orders.partner.globex-hotels.result",
        json!({"order_id": g, "result_id": "g-r-1", "outcome": "confirmed"}),
    )
    .await;
    assert_eq!(ok.assert_ok()["duplicate"], false);
    probe.wait_messages(2).await;
    globex.assert_no_violations();
}

#[tokio::test]
async fn no_role_reads_another_roles_replies() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let probe = Probe(&operator);
    let id = order_stored(&gateway, &probe, "u-1", "k-1", "acme-air", 1).await;
    let acme = Role::connect(&hub.nats, "partner-acme-air").await;

    // Snoopers, each on a second connection of a role, subscribing to other inboxes.
    let mut snooped = Vec::new();
    let mut snoopers = Vec::new();
    for (user, subjects) in [
        (
            "gateway",
            vec![
                "_INBOX.>",
                "_INBOX_partner-acme-air.>",
                "_INBOX_hub.>",
                "*.>",
                ">",
            ],
        ),
        (
            "partner-globex-hotels",
            vec!["_INBOX.>", "_INBOX_partner-acme-air.>", "_INBOX_gateway.>"],
        ),
        (
            "aux",
            vec!["_INBOX.>", "_INBOX_gateway.>", "_INBOX_partner-acme-air.>"],
        ),
        (
            "operator",
            vec![
                "_INBOX.>",
                "_INBOX_gateway.>",
                "_INBOX_partner-acme-air.>",
                "_INBOX_hub.>",
            ],
        ),
    ] {
        let snoop = Role::connect(&hub.nats, user).await;
        for s in subjects {
            snooped.push(snoop.deny_subscribe(s).await);
        }
        snoopers.push(snoop);
    }

    // Acme's replies (hub answers and JetStream deliveries) reach acme only.
    let r = request(
        &acme.client,
        "orders.partner.acme-air.get",
        json!({"order_id": id}),
    )
    .await;
    assert_eq!(r.assert_ok()["order"]["order_id"], id.as_str());
    let got = pull(
        &durable(&acme.client, "partner-acme-air").await,
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(got.len(), 1);
    request(&gateway, "orders.query", json!({"user_id": "u-1"}))
        .await
        .assert_ok();
    assert_silent(&mut snooped, "another role's replies must not be readable").await;
    acme.assert_no_violations();
    drop(snoopers);

    // A client on the default `_INBOX` prefix cannot even receive its own replies.
    let careless = Role::connect_with_inbox(&hub.nats, "partner-acme-air", "_INBOX").await;
    let answer = tokio::time::timeout(
        QUIET * 3,
        careless.client.request(
            "orders.partner.acme-air.get",
            serde_json::to_vec(&json!({"order_id": id})).unwrap().into(),
        ),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "a reply reached the shared _INBOX prefix"
    );
    eventually(
        VIOLATION_DEADLINE,
        "refusal of the default inbox",
        || async {
            careless
                .errors()
                .iter()
                .any(|e| e.contains("Permissions Violation for Subscription to \"_INBOX."))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_gateway_cannot_act_as_a_partner_an_aux_system_or_an_operator() {
    let hub = TestHub::start().await;
    let operator = hub.client("operator").await;
    let probe = Probe(&operator);
    let gateway = Role::connect(&hub.nats, "gateway").await;
    let id = order_stored(&gateway.client, &probe, "u-1", "k-1", "acme-air", 1).await;
    let forged = json!({"specversion": "1.0", "id": uuid::Uuid::now_v7().to_string(), "source": "orderhub",
        "type": "orderhub.order.result_stored", "subject": id,
        "data": {"order_id": id, "user_id": "u-1", "partner_id": "acme-air", "version": 3, "outcome": "confirmed"}});

    gateway
        .deny_requests(&with_prefixed(&[
            ("orders.partner.acme-air.get", json!({"order_id": id})),
            (
                "orders.partner.acme-air.result",
                json!({"order_id": id, "result_id": "gw", "outcome": "confirmed"}),
            ),
            (
                "orders.aux.audit.record",
                json!({"order_id": id, "status": "done"}),
            ),
            (
                "orders.aux.invoice.record",
                json!({"order_id": id, "status": "invoiced"}),
            ),
            ("orders.admin.status", json!({})),
            (&format!("orders.events.result.u-1.{id}"), forged.clone()),
            (&format!("orders.events.stored.acme-air.{id}"), forged),
            (
                "$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.partner-acme-air",
                pull_request(),
            ),
            (
                "$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.aux-audit",
                pull_request(),
            ),
            ("$SRV.STATS.orderhub", json!({})),
        ]))
        .await;
    let mut subs = vec![
        gateway.deny_subscribe("orders.events.stored.>").await,
        gateway.deny_subscribe("orders.partner.>").await,
    ];

    // No result, no aux record, no event, no consumer moved.
    let q = query_order(&gateway.client, &id, "u-1").await;
    let b = q.assert_ok();
    assert!(b["result"].is_null() && b["aux"] == json!([]), "{b}");
    assert_eq!(probe.messages().await, 1);
    assert_eq!(
        probe.consumer_state("partner-acme-air").await["delivered"],
        0
    );
    assert_eq!(probe.consumer_state("aux-audit").await["delivered"], 0);
    submit(&gateway.client, "u-1", "k-2", "acme-air").await;
    assert_silent(
        &mut subs,
        "the gateway must not see stored events or partner requests",
    )
    .await;
}

#[tokio::test]
async fn the_operator_reads_but_cannot_write() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let operator = Role::connect(&hub.nats, "operator").await;
    let probe = Probe(&operator.client);
    let id = order_stored(&gateway, &probe, "u-1", "k-1", "acme-air", 1).await;
    let gateway_before = probe.consumer_state("gateway").await;
    let acme_before = probe.consumer_state("partner-acme-air").await;

    operator
        .deny_requests(&with_prefixed(&[
            ("orders.submit", order("u-op", "op-1", "acme-air")),
            ("orders.partner.acme-air.get", json!({"order_id": id})),
            (
                "orders.partner.acme-air.result",
                json!({"order_id": id, "result_id": "op", "outcome": "failed"}),
            ),
            (
                "orders.aux.audit.record",
                json!({"order_id": id, "status": "tampered"}),
            ),
            (
                &format!("orders.events.result.u-1.{id}"),
                json!({"forged": true}),
            ),
            (
                "$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.partner-acme-air",
                pull_request(),
            ),
            (
                "$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.gateway",
                pull_request(),
            ),
            (
                "$JS.ACK.ORDER_EVENTS.partner-acme-air.1.1.1.1700000000000000000.0",
                json!({}),
            ),
            (
                "$JS.API.CONSUMER.CREATE.ORDER_EVENTS",
                json!({"stream_name": STREAM,
                "config": {"filter_subject": "orders.events.>", "ack_policy": "none"}}),
            ),
            ("$JS.API.STREAM.PURGE.ORDER_EVENTS", json!({})),
            ("$JS.API.STREAM.DELETE.ORDER_EVENTS", json!({})),
            ("$JS.API.CONSUMER.DELETE.ORDER_EVENTS.gateway", json!({})),
        ]))
        .await;

    assert!(
        request(&gateway, "orders.query", json!({"user_id": "u-op"}))
            .await
            .assert_ok()["orders"]
            == json!([])
    );
    let q = query_order(&operator.client, &id, "u-1").await;
    let b = q.assert_ok();
    assert!(b["result"].is_null() && b["aux"] == json!([]), "{b}");
    assert_eq!(probe.messages().await, 1);
    assert_eq!(probe.consumer_names().await, hub_consumers());
    assert_eq!(probe.consumer_state("gateway").await, gateway_before);
    assert_eq!(probe.consumer_state("partner-acme-air").await, acme_before);
}

#[tokio::test]
async fn aux_only_records() {
    let hub = TestHub::start().await;
    let gateway = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let probe = Probe(&operator);
    let aux = Role::connect(&hub.nats, "aux").await;
    let id = order_stored(&gateway, &probe, "u-1", "k-1", "acme-air", 1).await;
    let gateway_before = probe.consumer_state("gateway").await;

    let mut subs = Vec::new();
    for s in [
        "orders.events.stored.>",
        "orders.events.stored.acme-air.>",
        "orders.submit",
        "orders.partner.*.result",
    ] {
        subs.push(aux.deny_subscribe(s).await);
    }
    aux.deny_requests(&with_prefixed(&[
        ("orders.submit", order("u-aux", "aux-1", "acme-air")),
        ("orders.query", json!({"order_id": id, "user_id": "u-1"})),
        ("orders.partner.acme-air.get", json!({"order_id": id})),
        (
            "orders.partner.acme-air.result",
            json!({"order_id": id, "result_id": "aux", "outcome": "confirmed"}),
        ),
        ("orders.admin.status", json!({})),
        (
            "$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.gateway",
            pull_request(),
        ),
        (
            "$JS.API.CONSUMER.MSG.NEXT.ORDER_EVENTS.aux-invoice",
            pull_request(),
        ),
    ]))
    .await;
    submit(&gateway, "u-1", "k-2", "acme-air").await;
    assert_silent(&mut subs, "aux must not see stored events or requests").await;

    assert!(orders_of(&gateway, "u-aux").await.is_empty());
    let q = query_order(&gateway, &id, "u-1").await;
    assert!(q.assert_ok()["result"].is_null());
    assert_eq!(probe.consumer_state("gateway").await, gateway_before);
}

/// Waits for an answer from the server itself on `client`'s connection (a JetStream API request
/// the role may send). The server handles a connection's messages in order, so everything sent
/// before, subscriptions included, has then been processed; `flush` only writes them out.
async fn server_round_trip(client: &async_nats::Client, api: &str) {
    let v = js_api(client, api, json!({})).await;
    assert!(v.get("error").is_none(), "{api}: {v}");
}

/// A CloudEvent as the hub would write it, marked so that it can be recognised anywhere.
fn forged_event(kind: &str, id: &str, user: &str, partner: &str, by: &str) -> Value {
    let version = if kind == "stored" { 1 } else { 3 };
    json!({"specversion": "1.0", "id": uuid::Uuid::now_v7().to_string(), "source": "orderhub",
           "type": format!("orderhub.order.{kind}"), "subject": id,
           "datacontenttype": "application/json",
           "data": {"order_id": id, "user_id": user, "partner_id": partner, "version": version,
                    "outcome": "confirmed", "partner_ref": format!("forged-by-{by}")}})
}

/// Publishes each event through JetStream (with a `Nats-Msg-Id`, waiting for the stream's ack):
/// the server must refuse every publish, so no ack comes.
async fn deny_jetstream_publishes(role: &Role, events: &[(String, Value)]) {
    let violation = |subject: &str| format!("Permissions Violation for Publish to \"{subject}\"");
    let seen: Vec<usize> = events
        .iter()
        .map(|(subject, _)| {
            let v = violation(subject);
            role.errors().iter().filter(|e| e.contains(&v)).count()
        })
        .collect();
    let mut js = jetstream::new(role.client.clone());
    js.set_timeout(QUIET * 2);
    let acks = events.iter().map(|(subject, event)| {
        let js = js.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event["id"].as_str().expect("id"));
            let payload = serde_json::to_vec(event).expect("json");
            let acked = match js
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
            {
                Ok(ack) => ack.await.ok(),
                Err(_) => None,
            };
            assert!(
                acked.is_none(),
                "{}: JetStream stored a forged event on {subject}: {acked:?}",
                role.user
            );
        }
    });
    futures::future::join_all(acks).await;
    for ((subject, _), seen) in events.iter().zip(seen) {
        role.expect_violation(Op::Publish, subject, seen + 1).await;
    }
}

#[tokio::test]
async fn no_role_forges_events_or_calls_another_roles_endpoints() {
    // Partners that take their time: no timeout result may appear while the attempts run.
    let hub = TestHub::start_with(|s| {
        for p in &mut s.partners {
            p.result_timeout = Duration::from_secs(600);
        }
    })
    .await;
    let gateway_client = hub.client("gateway").await;
    let operator = hub.client("operator").await;
    let probe = Probe(&operator);
    let a = order_stored(&gateway_client, &probe, "u-1", "k-1", "acme-air", 1).await;
    let g = order_stored(&gateway_client, &probe, "u-g", "g-1", "globex-hotels", 2).await;
    let mut states = Vec::new();
    for name in hub_consumers() {
        states.push(probe.consumer_state(&name).await);
    }
    let mut watch = operator.subscribe("orders.>").await.expect("watch");
    server_round_trip(&operator, "JS.hub.API.INFO").await;

    let mut attempted: Vec<String> = Vec::new();
    for user in [
        "partner-acme-air",
        "partner-globex-hotels",
        "aux",
        "gateway",
    ] {
        let role = Role::connect(&hub.nats, user).await;
        // Events of both partners' orders, as stored and as result events: core publishes (with
        // a reply subject, so an answer would show) and JetStream publishes.
        let events = [
            (
                format!("orders.events.stored.acme-air.{a}"),
                forged_event("stored", &a, "u-1", "acme-air", user),
            ),
            (
                format!("orders.events.stored.globex-hotels.{g}"),
                forged_event("stored", &g, "u-g", "globex-hotels", user),
            ),
            (
                format!("orders.events.result.u-1.{a}"),
                forged_event("result_stored", &a, "u-1", "acme-air", user),
            ),
            (
                format!("orders.events.result.u-g.{g}"),
                forged_event("result_stored", &g, "u-g", "globex-hotels", user),
            ),
        ];
        let forged: Vec<(&str, Value)> = events
            .iter()
            .map(|(subject, ev)| (subject.as_str(), ev.clone()))
            .collect();
        role.deny_requests(&forged).await;
        deny_jetstream_publishes(&role, &events).await;
        // Every endpoint that belongs to another role.
        let mark = format!("forged-by-{user}");
        let result = |id: &str| json!({"order_id": id, "result_id": mark, "outcome": "confirmed"});
        let record = |id: &str| json!({"order_id": id, "status": mark});
        let mut calls: Vec<(&str, Value)> = vec![("orders.admin.status", json!({}))];
        let (own_get, own_result) = match user {
            "partner-acme-air" => (
                "orders.partner.acme-air.get",
                "orders.partner.acme-air.result",
            ),
            "partner-globex-hotels" => (
                "orders.partner.globex-hotels.get",
                "orders.partner.globex-hotels.result",
            ),
            _ => ("", ""),
        };
        for (get, res, id) in [
            (
                "orders.partner.acme-air.get",
                "orders.partner.acme-air.result",
                &a,
            ),
            (
                "orders.partner.globex-hotels.get",
                "orders.partner.globex-hotels.result",
                &g,
            ),
        ] {
            if get != own_get {
                calls.push((get, json!({"order_id": id})));
            }
            if res != own_result {
                calls.push((res, result(id)));
            }
        }
        if user != "gateway" {
            calls.push(("orders.submit", order("u-forged", &mark, "acme-air")));
            calls.push(("orders.query", json!({"user_id": "u-1", "order_id": a})));
        }
        if user != "aux" {
            calls.push(("orders.aux.x.record", record(&a)));
            calls.push(("orders.aux.audit.record", record(&g)));
        }
        role.deny_requests(&calls).await;
        let mut refused: Vec<&str> = events.iter().map(|(s, _)| s.as_str()).collect();
        refused.extend(calls.iter().map(|(s, _)| *s));
        // Only these publishes were refused, nothing else.
        role.assert_no_violations_except_publish(&refused);
        attempted.extend(refused.iter().map(|s| s.to_string()));
    }

    // No trace: none of the attempted subjects or forged payloads reached anyone, the stream holds
    // the two stored events only, no consumer moved, no order, result or record was written.
    let quiet = tokio::time::timeout(QUIET, async {
        while let Some(m) = watch.next().await {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            assert!(
                !attempted.contains(&m.subject.to_string()) && !text.contains("forged"),
                "a refused publish got through: {} {text}",
                m.subject
            );
        }
    })
    .await;
    assert!(quiet.is_err(), "the watch ended");
    assert_eq!(probe.messages().await, 2, "only the two stored events");
    for (name, before) in hub_consumers().iter().zip(&states) {
        assert_eq!(&probe.consumer_state(name).await, before, "consumer {name}");
    }
    assert!(orders_of(&gateway_client, "u-forged").await.is_empty());
    for (id, user) in [(&a, "u-1"), (&g, "u-g")] {
        let q = query_order(&gateway_client, id, user).await;
        let b = q.assert_ok();
        assert!(b["result"].is_null() && b["aux"] == json!([]), "{b}");
        assert_eq!(b["order"]["status"], "dispatched", "{b}");
    }
}

#[tokio::test]
async fn the_hub_answers_no_reply_subject_under_orders() {
    // Requests of other roles cross accounts and reach the hub with `_R_.…` reply subjects (see
    // accounts.rs). Inside the hub's own account a reply subject is whatever the sender names,
    // and `allow_responses` would let the answer through: the hub itself refuses to answer onto
    // any subject but an inbox or `_R_.…`, so not even a hub connection can steer an answer
    // into the stream.
    let hub = TestHub::start().await;
    let operator = hub.client("operator").await;
    let probe = Probe(&operator);
    let gateway = hub.client("gateway").await;
    let id = order_stored(&gateway, &probe, "u-1", "k-1", "acme-air", 1).await;
    let peer = hub.client("hub").await;
    let mut watch = peer.subscribe("orders.events.>").await.expect("watch");
    peer.flush().await.expect("flush");
    for (subject, body) in [
        ("orders.query", json!({"order_id": id, "user_id": "u-1"})),
        ("orders.submit", order("u-2", "k-1", "acme-air")),
        ("$SRV.PING", json!({})),
    ] {
        let body = serde_json::to_vec(&body).unwrap();
        let reply = format!("orders.events.result.u-1.{}", uuid::Uuid::now_v7());
        peer.publish_with_reply(subject, reply, body.clone().into())
            .await
            .expect("publish");
        peer.publish(subject, body.into())
            .await
            .expect("publish without reply");
    }
    peer.flush().await.expect("flush");
    assert_silent(
        std::slice::from_mut(&mut watch),
        "the hub must not answer into the event stream",
    )
    .await;
    assert_eq!(probe.messages().await, 1);
    // The submit without an inbox was not handled at all.
    assert!(orders_of(&gateway, "u-2").await.is_empty());
}

#[tokio::test]
async fn every_role_can_do_all_it_must() {
    let hub = TestHub::start().await;
    let gateway = Role::connect(&hub.nats, "gateway").await;
    let acme = Role::connect(&hub.nats, "partner-acme-air").await;
    let aux = Role::connect(&hub.nats, "aux").await;
    let operator = Role::connect(&hub.nats, "operator").await;

    let mut results = gateway
        .client
        .subscribe("orders.events.result.>")
        .await
        .expect("gateway subscribes");
    let mut stored = acme
        .client
        .subscribe("orders.events.stored.acme-air.>")
        .await
        .expect("acme subscribes");
    let mut aux_results = aux
        .client
        .subscribe("orders.events.result.>")
        .await
        .expect("aux subscribes");
    let mut everything = operator
        .client
        .subscribe("orders.>")
        .await
        .expect("operator subscribes");
    for (c, api) in [
        (&gateway, "JS.hub.API.CONSUMER.INFO.ORDER_EVENTS.gateway"),
        (
            &acme,
            "JS.hub.API.CONSUMER.INFO.ORDER_EVENTS.partner-acme-air",
        ),
        (&aux, "JS.hub.API.CONSUMER.INFO.ORDER_EVENTS.aux-audit"),
        (&operator, "JS.hub.API.INFO"),
    ] {
        server_round_trip(&c.client, api).await;
    }

    // Gateway: submit, query (both forms).
    let id = submit(&gateway.client, "u-1", "k-1", "acme-air").await;
    request(&gateway.client, "orders.query", json!({"user_id": "u-1"}))
        .await
        .assert_ok();
    // Partner: its events (core and durable, with a confirmed ack), get, result.
    assert_eq!(
        next(&mut stored).await.subject.as_str(),
        format!("orders.events.stored.acme-air.{id}")
    );
    let consumer = durable(&acme.client, "partner-acme-air").await;
    let info = consumer
        .clone()
        .info()
        .await
        .expect("acme reads its consumer's info")
        .clone();
    assert_eq!(info.name, "partner-acme-air");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let m = futures::StreamExt::next(&mut batch)
        .await
        .expect("a stored event")
        .expect("message");
    m.double_ack()
        .await
        .expect("acme's double ack is confirmed");
    request(
        &acme.client,
        "orders.partner.acme-air.get",
        json!({"order_id": id}),
    )
    .await
    .assert_ok();
    request(
        &acme.client,
        "orders.partner.acme-air.result",
        json!({"order_id": id, "result_id": "r-1", "outcome": "confirmed"}),
    )
    .await
    .assert_ok();
    // Gateway and aux: the result event, core and durable.
    assert_eq!(
        next(&mut results).await.subject.as_str(),
        format!("orders.events.result.u-1.{id}")
    );
    assert_eq!(
        next(&mut aux_results).await.subject.as_str(),
        format!("orders.events.result.u-1.{id}")
    );
    for (role, name) in [(&gateway, "gateway"), (&aux, "aux-audit")] {
        let consumer = durable(&role.client, name).await;
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .expect("fetch");
        let m = futures::StreamExt::next(&mut batch)
            .await
            .expect("a result event")
            .expect("message");
        m.ack_with(AckKind::Progress).await.expect("in progress");
        m.double_ack()
            .await
            .unwrap_or_else(|e| panic!("{name}: double ack: {e}"));
    }
    // Aux: records.
    request(
        &aux.client,
        "orders.aux.audit.record",
        json!({"order_id": id, "status": "done"}),
    )
    .await
    .assert_ok();

    // Operator: watches everything, queries, status, service discovery, stream and consumers.
    // Its `orders.>` subscription carries every event and the hub's own traffic; the other
    // roles' requests reach the hub through service imports, which the server does not pass on
    // to the operator's stream import.
    let want = [
        format!("orders.events.stored.acme-air.{id}"),
        format!("orders.events.result.u-1.{id}"),
        // With audit's record every configured system has one: the order settles.
        format!("orders.events.settled.u-1.{id}"),
    ];
    let mut watched = Vec::new();
    while watched.len() < want.len() {
        let m = next(&mut everything).await;
        let ev: Value = serde_json::from_slice(&m.payload).expect("an event");
        assert_eq!(ev["data"]["order_id"], id.as_str(), "{}", m.subject);
        watched.push(m.subject.to_string());
    }
    assert_eq!(watched, want, "the events, in their order");
    assert_silent(
        std::slice::from_mut(&mut everything),
        "the operator saw all there was",
    )
    .await;
    let q = query_order(&operator.client, &id, "u-1").await;
    assert!(
        q.assert_ok()["aux"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["system"] == "audit")
    );
    request(&operator.client, "orders.admin.status", json!({}))
        .await
        .assert_ok();
    for srv in [
        "$SRV.PING",
        "$SRV.INFO",
        "$SRV.STATS",
        "$SRV.PING.orderhub",
        "$SRV.INFO.orderhub",
        "$SRV.STATS.orderhub",
    ] {
        let v = js_api(&operator.client, srv, json!({})).await;
        assert_eq!(v["name"], "orderhub", "{srv}: {v}");
    }
    let probe = Probe(&operator.client);
    for api in [
        "JS.hub.API.INFO",
        "JS.hub.API.STREAM.LIST",
        "JS.hub.API.STREAM.NAMES",
        "JS.hub.API.CONSUMER.LIST.ORDER_EVENTS",
    ] {
        let v = js_api(&operator.client, api, json!({})).await;
        assert!(v.get("error").is_none(), "{api}: {v}");
    }
    assert_eq!(probe.consumer_names().await, hub_consumers());
    for name in hub_consumers() {
        probe.consumer(&name).await;
    }
    probe.wait_messages(3).await;
    let direct = operator
        .client
        .request(
            "JS.hub.API.DIRECT.GET.ORDER_EVENTS",
            br#"{"seq":2}"#.to_vec().into(),
        )
        .await
        .expect("direct get");
    assert_eq!(
        direct
            .headers
            .expect("headers")
            .get("Nats-Sequence")
            .map(|v| v.as_str()),
        Some("2")
    );

    for role in [&gateway, &acme, &aux, &operator] {
        role.assert_no_violations();
    }
}
