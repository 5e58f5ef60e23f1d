//! The floor under `orderhub bench`'s `cpu_ms_per_story`: what one whole order story's NATS
//! messages cost the client side with async-nats, with no database, no actors and no hub logic.
//!
//! `orderhub bench` runs the hub, the simulated participants and the load generator in one
//! process and divides that process's CPU time by the stories that settled. This example keeps
//! the NATS traffic of those stories and drops everything else, so its figure is what any design
//! within the protocol pays before it does any work of its own. It starts its own `nats-server`
//! from `nats.conf` (the same accounts and users: `hub`, `gateway`, `partner-<id>`, `aux`),
//! creates stream `ORDER_EVENTS` and its durable consumers with the hub's start-up code, and runs
//! per story the messages of `docs/protocol.md`:
//!
//! - the gateway requests `orders.submit`; a *null hub* on the hub's connection, behind the hub's
//!   Services API layer (`orderhub::micro`), answers `accepted` and publishes the stored event,
//!   awaiting JetStream's ack;
//! - the partner pulls `partner-<id>`, requests `get` and `result` and acks; the null hub answers
//!   both from the submitted order it keeps in memory, then publishes the result event;
//! - the null hub pulls and acks `aux-invoice` and `aux-loyalty` (the built-in systems); the
//!   external system `audit` pulls `aux-audit`, requests `orders.aux.audit.record` and acks;
//! - once the result event is out and the three records are in, the null hub publishes the
//!   settled event. The gateway pulls `gateway` (result and settled events) and acks each; the
//!   settled event frees the story's slot of the closed loop.
//!
//! Bodies have the documented shapes and sizes; the participants pull, request and acknowledge
//! through the simulators' own code (`orderhub::sim::client`), and orders go to the configured
//! partners in turn, as in the bench. The null hub still decodes each request and encodes each
//! reply and event as JSON. Unlike the bench, whose closed loop frees a slot at the result event,
//! a slot here is held until the settled event. Reported: stories per second, this process's CPU
//! per story, nats-server's CPU per story, and the messages each story sent.
//!
//! ```sh
//! cargo run --release --example floor -- --stories 20000 --concurrency 512 [--json]
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actors::protocol::{
    CloudEvent, EventData, EventKind, OrderReply, RecordReply, Subjects, SubmitReply, consumer,
    rfc3339,
};
use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_nats::{Client, HeaderMap};
use clap::Parser;
use futures::StreamExt;
use orderhub::endpoints::Kind;
use orderhub::micro::{self, ServiceConfig};
use orderhub::sim::client::{self, Pull, Running, Stop, call};
use orderhub::sim::{
    AUX_USER, GATEWAY_USER, Observer, cpu, natsserver::NatsServer, partner::fnv1a,
};
use orderhub::{Settings, startup};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

/// As the bench's binary: many small buffers freed across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deliveries each participant handles at once, as the simulators do.
const PULL_CONCURRENCY: usize = 64;
/// The endpoints a story uses.
const ENDPOINTS: [Kind; 4] = [
    Kind::Submit,
    Kind::PartnerGet,
    Kind::PartnerResult,
    Kind::AuxRecord,
];
/// Before an order settles: its result event out, and the records of invoice, loyalty and audit.
const SETTLE_STEPS: u8 = 4;

#[derive(Parser)]
struct Args {
    /// Whole stories to run.
    #[arg(long, default_value_t = 20_000)]
    stories: u64,
    /// Stories in flight at once (closed loop: from the submit to the settled event).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Give up when the stories have not all settled by then.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print one JSON line after the table.
    #[arg(long)]
    json: bool,
}

/// The messages counted where they are sent: core requests (submit, get, result, record), the
/// null hub's replies, JetStream publishes (each awaiting its ack), deliveries, acks.
#[derive(Clone, Copy)]
enum Sent {
    Request,
    Reply,
    Publish,
    Delivery,
    Ack,
}
const SENT: [(Sent, &str); 5] = [
    (Sent::Request, "requests"),
    (Sent::Reply, "replies"),
    (Sent::Publish, "event_publishes"),
    (Sent::Delivery, "deliveries"),
    (Sent::Ack, "acks"),
];

/// What the run's tasks share.
struct Run {
    subjects: Subjects,
    sent: [AtomicU64; 5],
    slots: Semaphore,
    target: u64,
    settled: AtomicU64,
    failed: AtomicU64,
    done: Notify,
}

impl Run {
    fn count(&self, what: Sent) {
        self.sent[what as usize].fetch_add(1, Relaxed);
    }

    /// A story is over (settled or failed): its slot comes back.
    fn end(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
        self.slots.add_permits(1);
        if self.settled.load(Relaxed) + self.failed.load(Relaxed) >= self.target {
            self.done.notify_one();
        }
    }

    async fn ack(&self, msg: &jetstream::Message) {
        client::ack(msg, AckKind::Ack).await;
        self.count(Sent::Ack);
    }
}

/// An order as the null hub keeps it: what `get` answers, and how many steps are still to come
/// before it settles.
struct Story {
    order: Value,
    waiting: u8,
}

/// Answers the story's requests and publishes its events: no database, no validation.
struct NullHub {
    js: jetstream::Context,
    run: Arc<Run>,
    stories: Mutex<HashMap<String, Story>>,
}

/// An event's thin data for `order` at `version`.
fn data(order: &Value, version: i32) -> EventData {
    let text = |key: &str| order[key].as_str().unwrap_or_default().to_owned();
    let (order_id, user_id, partner_id) = (text("order_id"), text("user_id"), text("partner_id"));
    let (outcome, partner_ref, aux) = (None, None, None);
    EventData {
        order_id,
        user_id,
        partner_id,
        version,
        outcome,
        partner_ref,
        aux,
    }
}

impl NullHub {
    fn stories(&self) -> MutexGuard<'_, HashMap<String, Story>> {
        self.stories.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn order(&self, order_id: &str) -> anyhow::Result<Value> {
        let stories = self.stories();
        let story = stories
            .get(order_id)
            .context("an order the null hub does not have")?;
        Ok(story.order.clone())
    }

    /// A task per request, as the hub's endpoints spawn one.
    async fn serve(self: Arc<Self>, kind: Kind, mut endpoint: micro::Endpoint) {
        while let Some(request) = endpoint.next().await {
            let hub = self.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.answer(kind, request).await {
                    eprintln!("null hub, {}: {e:#}", kind.name());
                }
            });
        }
    }

    /// Replies, then publishes the event the request leads to and takes its step to settling.
    async fn answer(&self, kind: Kind, request: micro::Request) -> anyhow::Result<()> {
        let mut body: Value = serde_json::from_slice(request.payload())?;
        let mut order_id = body["order_id"].as_str().unwrap_or_default().to_owned();
        let (reply, event) = match kind {
            Kind::Submit => {
                order_id = uuid::Uuid::now_v7().to_string();
                let now = rfc3339(&chrono::Utc::now());
                let added = json!({ "order_id": order_id, "status": "dispatched", "version": 2,
                    "created_at": now, "updated_at": now });
                for (key, value) in added.as_object().into_iter().flatten() {
                    body[key] = value.clone();
                }
                let stored = data(&body, 1);
                let story = Story {
                    order: body,
                    waiting: SETTLE_STEPS,
                };
                self.stories().insert(order_id.clone(), story);
                let reply =
                    json!({ "order_id": order_id, "status": "accepted", "duplicate": false });
                (reply, Some((EventKind::Stored, stored)))
            }
            Kind::PartnerGet => (json!({ "order": self.order(&order_id)? }), None),
            Kind::PartnerResult => {
                let result = EventData {
                    outcome: body["outcome"].as_str().map(str::to_owned),
                    partner_ref: Some(body["partner_ref"].as_str().map(str::to_owned)),
                    ..data(&self.order(&order_id)?, 3)
                };
                let reply =
                    json!({ "order_id": order_id, "status": "result_stored", "duplicate": false });
                (reply, Some((EventKind::ResultStored, result)))
            }
            _ => {
                let system = self
                    .run
                    .subjects
                    .token_of(request.subject(), "aux", "record");
                let reply = json!({ "order_id": order_id, "system": system, "status": "recorded" });
                (reply, None)
            }
        };
        request.respond(serde_json::to_vec(&reply)?.into()).await?;
        self.run.count(Sent::Reply);
        if let Some((kind, data)) = event {
            self.publish(kind, data).await?;
        }
        match kind {
            Kind::PartnerResult | Kind::AuxRecord => self.step(&order_id).await,
            _ => Ok(()),
        }
    }

    /// One of the steps towards settling is done; the last one publishes the settled event.
    async fn step(&self, order_id: &str) -> anyhow::Result<()> {
        let order = {
            let mut stories = self.stories();
            let story = stories
                .get_mut(order_id)
                .context("a step of an unknown order")?;
            story.waiting -= 1;
            if story.waiting > 0 {
                return Ok(());
            }
            stories
                .remove(order_id)
                .map(|s| s.order)
                .unwrap_or_default()
        };
        let aux = [
            ("audit", "done"),
            ("invoice", "invoiced"),
            ("loyalty", "credited"),
        ];
        let settled = EventData {
            outcome: Some("confirmed".into()),
            aux: Some(
                aux.into_iter()
                    .map(|(s, v)| (s.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..data(&order, 4)
        };
        self.publish(EventKind::Settled, settled).await
    }

    /// Publishes an event with the hub's headers and awaits JetStream's ack.
    async fn publish(&self, kind: EventKind, data: EventData) -> anyhow::Result<()> {
        let s = &self.run.subjects;
        let subject = match kind {
            EventKind::Stored => s.stored_event(&data.partner_id, &data.order_id),
            EventKind::ResultStored => s.result_event(&data.user_id, &data.order_id),
            EventKind::Settled => s.settled_event(&data.user_id, &data.order_id),
            EventKind::Late => s.late_event(&data.user_id, &data.order_id),
        };
        let id = uuid::Uuid::now_v7().to_string();
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("Content-Type", "application/cloudevents+json");
        let event = CloudEvent::new(kind, id, rfc3339(&chrono::Utc::now()), data);
        let payload = serde_json::to_vec(&event)?.into();
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await?;
        self.run.count(Sent::Publish);
        ack.await?;
        Ok(())
    }

    /// A built-in auxiliary system: pulls its consumer on the hub's connection, acks, and takes
    /// the order's step on a task of its own, so that the settled event's publish does not hold
    /// the next delivery back (the hub's settler runs apart from its auxiliary systems too).
    async fn built_in(self: Arc<Self>, consumer: PullConsumer) -> anyhow::Result<()> {
        let mut messages = consumer.messages().await?;
        while let Some(next) = messages.next().await {
            let Ok(msg) = next else { continue }; // heartbeats and other notices
            self.run.count(Sent::Delivery);
            let event: CloudEvent = serde_json::from_slice(&msg.payload)?;
            self.run.ack(&msg).await;
            let hub = self.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.step(&event.data.order_id).await {
                    eprintln!("null hub, a built-in record: {e:#}");
                }
            });
        }
        Ok(())
    }
}

/// The outside participants' connections and pulling tasks.
struct Participants {
    run: Arc<Run>,
    stream: String,
    stop: Stop,
    clients: Vec<Client>,
    running: Vec<Running>,
}

impl Participants {
    /// Pulls durable consumer `name` as `role`, as the simulators do, running `handle` on each
    /// delivery.
    async fn pull<F, Fut>(&mut self, role: Client, name: String, handle: F) -> anyhow::Result<()>
    where
        F: Fn(Arc<Run>, Client, jetstream::Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let durable = client::bind(&role, &self.stream, &name).await?;
        let pull = Pull {
            client: role.clone(),
            stream: self.stream.clone(),
            consumer: name.clone(),
            concurrency: PULL_CONCURRENCY,
            stop: self.stop.clone(),
            observer: Observer::default(),
        };
        let (run, client) = (self.run.clone(), role.clone());
        self.running.push(pull.spawn(durable, move |msg| {
            run.count(Sent::Delivery);
            let (handled, name) = (handle(run.clone(), client.clone(), msg), name.clone());
            async move {
                if let Err(e) = handled.await {
                    eprintln!("{name}: {e:#}");
                }
            }
        }));
        self.clients.push(role);
        Ok(())
    }

    /// The messages every connection sent and received (pulls and heartbeats included).
    fn wire(&self) -> (u64, u64) {
        self.clients.iter().fold((0, 0), |(i, o), c| {
            let s = c.statistics();
            (
                i + s.in_messages.load(Relaxed),
                o + s.out_messages.load(Relaxed),
            )
        })
    }
}

/// The partner: `get`, then a confirmed `result`, then the ack.
async fn partner(run: Arc<Run>, role: Client, msg: jetstream::Message) -> anyhow::Result<()> {
    let event: CloudEvent = serde_json::from_slice(&msg.payload)?;
    let (order_id, id) = (&event.data.order_id, &event.data.partner_id);
    let get = json!({ "order_id": order_id });
    let OrderReply { order } = call(&role, run.subjects.partner_get(id), &get).await?;
    run.count(Sent::Request);
    let result = json!({
        "order_id": order_id,
        "result_id": format!("{id}-r-{order_id}"),
        "outcome": "confirmed",
        "partner_ref": format!("{:06X}", fnv1a(order_id) & 0xff_ffff),
        "detail": { "product": order.product, "amount_minor": order.amount_minor, "currency": order.currency },
    });
    let _: SubmitReply = call(&role, run.subjects.partner_result(id), &result).await?;
    run.count(Sent::Request);
    run.ack(&msg).await;
    Ok(())
}

/// The external auxiliary system `audit`: its record, then the ack.
async fn audit(run: Arc<Run>, role: Client, msg: jetstream::Message) -> anyhow::Result<()> {
    let event: CloudEvent = serde_json::from_slice(&msg.payload)?;
    let body = json!({
        "order_id": event.data.order_id,
        "status": "done",
        "data": {
            "event_id": event.id,
            "outcome": event.data.outcome,
            "partner_id": event.data.partner_id,
            "audited_at": rfc3339(&chrono::Utc::now()),
        },
    });
    let _: RecordReply = call(&role, run.subjects.aux_record("audit"), &body).await?;
    run.count(Sent::Request);
    run.ack(&msg).await;
    Ok(())
}

/// The gateway's listener: acks result and settled events; a settled event ends its story.
async fn gateway(run: Arc<Run>, _: Client, msg: jetstream::Message) -> anyhow::Result<()> {
    let event: CloudEvent = serde_json::from_slice(&msg.payload)?;
    run.ack(&msg).await;
    if EventKind::from_type(&event.kind) == Some(EventKind::Settled) {
        run.end(&run.settled);
    }
    Ok(())
}

/// The load generator's submit of story `i`, with the bench's body.
async fn submit(run: Arc<Run>, role: Client, partners: Arc<[String]>, i: u64) {
    let partner = &partners[i as usize % partners.len()];
    let body = json!({
        "request_id": format!("floor-{i}"),
        "user_id": format!("u-{}", i % 50),
        "partner_id": partner,
        "product": "flight",
        "amount_minor": 10_000 + (i * 7_919) % 500_000,
        "currency": "CNY",
        "items": [{ "sku": format!("SKU-{}", i % 97), "qty": 1 + i % 3 }],
        "payload": { "run": "floor", "seq": i, "channel": "demo" },
    });
    let submitted = call::<SubmitReply>(&role, run.subjects.submit(), &body).await;
    run.count(Sent::Request);
    if let Err(e) = submitted {
        eprintln!("submit #{i}: {e}");
        run.end(&run.failed);
    }
}

/// On the runtime `orderhub` itself runs on (`runtime.workers`), so the figures compare.
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.stories > 0 && args.concurrency > 0,
        "--stories and --concurrency must be at least 1"
    );
    let settings = Settings::load(None)?;
    settings.runtime.build()?.block_on(floor(args, settings))
}

async fn floor(args: Args, mut settings: Settings) -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let mut server = NatsServer::start(None, store.path()).await?;
    let systems: Vec<(&str, bool)> = settings
        .aux
        .iter()
        .map(|a| (a.system.as_str(), a.external))
        .collect();
    anyhow::ensure!(
        systems == [("invoice", false), ("loyalty", false), ("audit", true)],
        "the floor runs the default auxiliary systems (config/default.toml), not {systems:?}"
    );
    settings.nats.url = format!("nats://hub:hub-dev@127.0.0.1:{}", server.port);
    let url = settings.nats.url.clone();
    let subjects = Subjects::new(settings.nats.subject_prefix.clone());

    let hub_client = startup::connect_hub(&settings.nats, "orderhub-floor-hub").await?;
    let js = jetstream::new(hub_client.clone());
    let built_in = startup::provision_stream(&js, &settings, &subjects).await?;
    let run = Arc::new(Run {
        subjects: subjects.clone(),
        sent: Default::default(),
        slots: Semaphore::new(args.concurrency),
        target: args.stories,
        settled: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        done: Notify::new(),
    });
    let hub = Arc::new(NullHub {
        js,
        run: run.clone(),
        stories: Mutex::default(),
    });
    let config = ServiceConfig {
        name: "orderhub".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "the null hub of examples/floor.rs".into(),
        queue_group: "orderhub".into(),
        metadata: Default::default(),
    };
    let endpoints = ENDPOINTS.iter().map(|k| k.config(&subjects)).collect();
    let (service, endpoints) = micro::Service::start(hub_client.clone(), config, endpoints).await?;
    for (kind, endpoint) in ENDPOINTS.into_iter().zip(endpoints) {
        tokio::spawn(hub.clone().serve(kind, endpoint));
    }
    for (system, durable) in built_in {
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = hub.built_in(durable).await {
                eprintln!("aux-{system}: {e:#}");
            }
        });
    }

    let (switch, stop) = client::stop_switch();
    let stream = settings.nats.stream.clone();
    let mut roles = Participants {
        run: run.clone(),
        stream,
        stop,
        clients: vec![hub_client],
        running: Vec::new(),
    };
    for p in &settings.partners {
        let name = consumer::partner(&p.id);
        roles
            .pull(client::connect_role(&url, &name).await?, name, partner)
            .await?;
    }
    let audit_role = client::connect_role(&url, AUX_USER).await?;
    roles
        .pull(audit_role, consumer::aux("audit"), audit)
        .await?;
    let gateway_role = client::connect_role(&url, GATEWAY_USER).await?;
    roles
        .pull(gateway_role.clone(), consumer::GATEWAY.into(), gateway)
        .await?;
    let partners: Arc<[String]> = settings.partners.iter().map(|p| p.id.clone()).collect();

    let nats_pid = server.pid().context("nats-server has no pid")?;
    let (cpu_start, nats_start, wire_start) = (cpu::own(), cpu::of_process(nats_pid), roles.wire());
    let started = Instant::now();
    let load = async {
        for i in 0..args.stories {
            run.slots.acquire().await?.forget();
            tokio::spawn(submit(
                run.clone(),
                gateway_role.clone(),
                partners.clone(),
                i,
            ));
        }
        run.done.notified().await;
        anyhow::Ok(())
    };
    let settled = |run: &Run| run.settled.load(Relaxed);
    tokio::time::timeout(args.timeout, load)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "{} of {} stories settled within {:?}",
                settled(&run),
                args.stories,
                args.timeout
            )
        })??;
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_end, nats_end, wire_end) = (cpu::own(), cpu::of_process(nats_pid), roles.wire());

    let stories = settled(&run);
    let used = |a: Option<Duration>, b: Option<Duration>| a?.checked_sub(b?);
    let per = |n: u64| n as f64 / stories.max(1) as f64;
    let mut per_story: serde_json::Map<String, Value> = SENT
        .iter()
        .map(|(what, name)| {
            (
                (*name).into(),
                per(run.sent[*what as usize].load(Relaxed)).into(),
            )
        })
        .collect();
    per_story.insert("wire_out".into(), per(wire_end.1 - wire_start.1).into());
    per_story.insert("wire_in".into(), per(wire_end.0 - wire_start.0).into());
    let report = json!({
        "stories": stories,
        "failed": run.failed.load(Relaxed),
        "concurrency": args.concurrency,
        "seconds": seconds,
        "stories_per_s": stories as f64 / seconds,
        "cpu_ms_per_story": cpu::ms_per_story(used(cpu_end, cpu_start), stories),
        "nats_cpu_ms_per_story": cpu::ms_per_story(used(nats_end, nats_start), stories),
        "per_story": per_story,
    });
    let ms = |key: &str| {
        report[key]
            .as_f64()
            .map_or("n/a".into(), |v| format!("{v:.3}"))
    };
    println!(
        "orderhub floor: NATS messages only, no database, no hub logic\n  \
         {stories} stories settled ({} failed), {} in flight, {seconds:.1} s\n  \
         stories/s                         {:>9.0}\n  \
         cpu ms per story, this process    {:>9}\n  \
         cpu ms per story, nats-server     {:>9}\n  \
         messages per story (counted where sent; wire: every connection, pulls included):",
        run.failed.load(Relaxed),
        args.concurrency,
        stories as f64 / seconds,
        ms("cpu_ms_per_story"),
        ms("nats_cpu_ms_per_story"),
    );
    let names = SENT
        .iter()
        .map(|(_, name)| *name)
        .chain(["wire_out", "wire_in"]);
    for name in names {
        println!(
            "    {name:<31} {:>9.2}",
            per_story[name].as_f64().unwrap_or_default()
        );
    }
    if args.json {
        println!("{report}");
    }

    switch.stop();
    for running in roles.running {
        running.finish(Duration::from_secs(5)).await;
    }
    let _ = service.stop().await;
    server.kill().await;
    Ok(())
}
