//! Start-up and shutdown: NATS, the databases and their migrations, stream `ORDER_EVENTS` and
//! its durable consumers, the actors, and the Services API endpoints.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::protocol::{Subjects, consumer};
use actors::store::Db;
use actors::{Hub, HubConfig, Tuning};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};
use tokio::sync::Semaphore;

use crate::endpoints::{Handlers, Kind};
use crate::micro::{self, ServiceConfig};
use crate::settings::{NatsSettings, Settings};
use crate::urls::{NatsUrls, redact};

/// Connects to NATS as the URL's user, with that user's own inbox prefix (`_INBOX_<user>`), as
/// `nats.conf` requires of every role. `url` may be a comma-separated list of servers (a cluster):
/// the client connects to one and fails over to the others.
pub async fn connect_nats(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let urls = NatsUrls::parse(url)?;
    let mut options = base_options(name);
    if let Some(user) = urls.user() {
        options = options
            .custom_inbox_prefix(format!("_INBOX_{user}"))
            .user_and_password(
                user.to_owned(),
                urls.password().unwrap_or_default().to_owned(),
            );
    }
    options
        .connect(urls.servers())
        .await
        .with_context(|| format!("connecting to NATS at {}", redact(url)))
}

/// The hub account's JetStream as every other role reaches it: through the `JS.hub.API` prefix
/// that its account imports and maps to the hub account's `$JS.API` (one account per role,
/// `nats.conf`). Acks keep their `$JS.ACK.…` subjects.
pub fn role_jetstream(client: &async_nats::Client) -> jetstream::Context {
    jetstream::with_prefix(client.clone(), crate::natsconf::JS_API_PREFIX)
}

/// What every connection shares: a name and timeouts. The first connection tries every server
/// of the list; once connected, the client reconnects for ever (to any server of the cluster).
fn base_options(name: &str) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .request_timeout(Some(Duration::from_secs(10)))
        .connection_timeout(Duration::from_secs(3))
}

/// Connects the hub (or `orderhub status`) with the configured login: a `.creds` file, an nkey
/// seed file, or the URL's user and password; inbox prefix `nats.inbox_prefix`, else the
/// role's (`_INBOX_<user>`, or `_INBOX_hub` for a `.creds` or nkey login).
pub async fn connect_hub(nats: &NatsSettings, name: &str) -> anyhow::Result<async_nats::Client> {
    let urls = NatsUrls::parse(&nats.url)?;
    let mut options = if !nats.credentials_file.is_empty() {
        async_nats::ConnectOptions::with_credentials_file(&nats.credentials_file)
            .await
            .with_context(|| format!("reading nats.credentials_file {}", nats.credentials_file))?
    } else if !nats.nkey_seed_file.is_empty() {
        let seed = std::fs::read_to_string(&nats.nkey_seed_file)
            .with_context(|| format!("reading nats.nkey_seed_file {}", nats.nkey_seed_file))?;
        async_nats::ConnectOptions::new().nkey(seed.trim().to_owned())
    } else if let Some(user) = urls.user() {
        async_nats::ConnectOptions::new().user_and_password(
            user.to_owned(),
            urls.password().unwrap_or_default().to_owned(),
        )
    } else {
        async_nats::ConnectOptions::new()
    };
    let prefix = if !nats.inbox_prefix.is_empty() {
        nats.inbox_prefix.clone()
    } else {
        format!("_INBOX_{}", urls.user().unwrap_or("hub"))
    };
    options = options
        .name(name)
        .custom_inbox_prefix(prefix)
        .request_timeout(Some(Duration::from_secs(10)))
        .connection_timeout(Duration::from_secs(3));
    options
        .connect(urls.servers())
        .await
        .with_context(|| format!("connecting to NATS at {}", redact(&nats.url)))
}

/// Creates or updates stream `ORDER_EVENTS` and its durable consumers: one per partner, the
/// gateway's and one per auxiliary system (`docs/protocol.md`, "Stream and durable consumers").
pub async fn provision_stream(
    js: &jetstream::Context,
    settings: &Settings,
    subjects: &Subjects,
) -> anyhow::Result<Vec<(String, jetstream::consumer::PullConsumer)>> {
    let config = stream::Config {
        name: settings.nats.stream.clone(),
        subjects: vec![subjects.events()],
        storage: stream::StorageType::File,
        duplicate_window: settings.nats.duplicate_window,
        max_age: settings.nats.max_age,
        num_replicas: settings.nats.replicas,
        allow_direct: true,
        ..Default::default()
    };
    let stream = ensure_stream(js, &config).await?;
    let durable = |name: String, filters: Vec<String>| pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        filter_subjects: filters,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 20_000,
        num_replicas: settings.nats.replicas,
        ..Default::default()
    };
    let mut wanted = vec![(consumer::GATEWAY.to_owned(), subjects.gateway_filters())];
    for p in &settings.partners {
        wanted.push((
            consumer::partner(&p.id),
            vec![subjects.stored_events_of(&p.id)],
        ));
    }
    for a in &settings.aux {
        wanted.push((consumer::aux(&a.system), subjects.aux_filters()));
    }
    let mut built_in = Vec::new();
    for (name, filter) in wanted {
        let c = ensure_consumer(&stream, durable(name.clone(), filter)).await?;
        if let Some(a) = settings
            .aux
            .iter()
            .find(|a| !a.external && consumer::aux(&a.system) == name)
        {
            built_in.push((a.system.clone(), c));
        }
    }
    Ok(built_in)
}

/// At shutdown, how long no request must have arrived before the hub unsubscribes.
const QUIET: Duration = Duration::from_millis(200);
/// The longest it waits for that quiet.
const QUIET_MAX: Duration = Duration::from_secs(3);
/// How long it waits for the server to confirm the unsubscriptions before it answers the requests
/// it parked meanwhile.
const UNSUBSCRIBED_WITHIN: Duration = Duration::from_secs(2);

/// How long start-up retries JetStream calls while a cluster elects its leaders.
const JETSTREAM_READY: Duration = Duration::from_secs(30);

/// Retries a JetStream call until it succeeds or [`JETSTREAM_READY`] has passed (a cluster that
/// just started, or lost a node, answers "no leader" for a few seconds).
async fn retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    mut call: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + JETSTREAM_READY;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::info!(error = %e, "{what}: JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("{what}: {e}"),
        }
    }
}

/// Creates the stream, or brings an existing one to `config`. A stream with fewer replicas than
/// `nats.replicas` is scaled up; what NATS does not let a hub change is reported and left.
async fn ensure_stream(
    js: &jetstream::Context,
    config: &stream::Config,
) -> anyhow::Result<stream::Stream> {
    let name = config.name.clone();
    let existing = retrying("reading the stream", || async {
        match js.get_stream(&name).await {
            Ok(s) => Ok(Some(s)),
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref je)
                    if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    })
    .await?;
    let Some(mut existing) = existing else {
        return retrying(&format!("creating stream {name}"), || {
            js.create_stream(config.clone())
        })
        .await;
    };
    let info = existing.info().await.map(|i| i.config.clone());
    if let Ok(current) = &info
        && current.num_replicas < config.num_replicas
    {
        tracing::warn!(
            stream = %name,
            replicas = current.num_replicas,
            wanted = config.num_replicas,
            "the stream has fewer replicas than nats.replicas; scaling it up"
        );
    }
    if let Err(e) = js.update_stream(config).await {
        tracing::warn!(stream = %name, error = %e, "the stream keeps its configuration: NATS refused the update");
    }
    retrying("reading the stream", || js.get_stream(&name)).await
}

/// Creates a durable consumer, or updates an existing one in place (its filters, its replicas),
/// so nothing is redelivered; one NATS refuses to update is used as it is, and said so.
async fn ensure_consumer(
    stream: &stream::Stream,
    config: pull::Config,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let name = config.durable_name.clone().unwrap_or_default();
    match stream.get_consumer::<pull::Config>(&name).await {
        Ok(existing) => {
            let current = existing.cached_info().config.clone();
            if current.num_replicas < config.num_replicas {
                tracing::warn!(consumer = %name, replicas = current.num_replicas, wanted = config.num_replicas,
                    "the consumer has fewer replicas than nats.replicas; scaling it up");
            }
            match stream.update_consumer(config).await {
                Ok(c) => Ok(c),
                Err(e) => {
                    tracing::warn!(consumer = %name, error = %e, "the consumer keeps its configuration: NATS refused the update");
                    Ok(existing)
                }
            }
        }
        Err(_) => {
            retrying(&format!("creating durable consumer {name}"), || {
                stream.create_consumer(config.clone())
            })
            .await
        }
    }
}

/// How long start-up waits for the replica to replay the migrations before serving anyway.
const REPLICA_AT_START: Duration = Duration::from_secs(10);

/// A running hub.
pub struct App {
    handlers: Arc<Handlers>,
    service: micro::Service,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    client: async_nats::Client,
}

impl App {
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let instance_id = uuid::Uuid::now_v7().simple().to_string();
        let client = connect_hub(&settings.nats, &format!("orderhub-{instance_id}")).await?;
        let db = Db::connect(&settings.database.urls())
            .await
            .with_context(|| format!("connecting to {}", redact(&settings.database.primary_url)))?;
        db.migrate().await.context("applying migrations")?;
        let subjects = Subjects::new(settings.nats.subject_prefix.clone());
        let js = jetstream::new(client.clone());
        let aux = provision_stream(&js, &settings, &subjects).await?;
        let hub = Hub::start(HubConfig {
            instance: instance_id.clone(),
            db,
            subjects: subjects.clone(),
            partners: settings.partners(),
            aux,
            aux_systems: settings.aux.iter().map(|a| a.system.clone()).collect(),
            jetstream: js,
            stream: settings.nats.stream.clone(),
            writers: settings.writers(),
            ack_after_replica: settings.database.ack_after_replica(),
            max_story_backlog: settings.limits.max_story_backlog,
            tuning: Tuning::default(),
        })
        .await?;
        if !hub.await_replica(REPLICA_AT_START).await {
            tracing::warn!(
                "the replica has not replayed the schema within {REPLICA_AT_START:?}; reads answer \
                 `unavailable` and events wait until it has"
            );
        }
        let handlers = Arc::new(Handlers {
            hub,
            client: client.clone(),
            instance_id,
            started: Instant::now(),
            max_body: settings.limits.max_body_bytes,
            in_flight: Arc::new(Semaphore::new(settings.limits.max_in_flight)),
            max_in_flight: settings.limits.max_in_flight,
            stopping: Default::default(),
            last_arrival_ms: Default::default(),
            parked: Default::default(),
        });
        if !settings.metrics.listen.is_empty() {
            crate::metrics::start(&settings.metrics.listen, &handlers)?;
        }
        let (service, endpoints) = micro::Service::start(
            client.clone(),
            ServiceConfig {
                name: "orderhub".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                description: "Stores orders on the primary, confirms them on the replica, broadcasts thin events".into(),
                queue_group: "orderhub".into(),
                metadata: Default::default(),
            },
            Kind::ALL
                .iter()
                .map(|k| {
                    // `nats micro info orderhub` shows each endpoint's JSON Schemas (docs/schemas/).
                    let mut endpoint = k.config(&subjects);
                    let name = match k {
                        Kind::Submit => "submit",
                        Kind::Query => "query",
                        Kind::PartnerGet => "partner-get",
                        Kind::PartnerResult => "partner-result",
                        Kind::AuxRecord => "aux-record",
                        Kind::Status => "status",
                        Kind::Trace => "trace",
                    };
                    for (key, file) in [
                        ("request_schema", format!("{name}.request.json")),
                        ("reply_schema", format!("{name}.reply.json")),
                        ("error_schema", "error.reply.json".to_owned()),
                    ] {
                        endpoint.metadata.insert(key.into(), format!("docs/schemas/{file}"));
                    }
                    endpoint.metadata.insert("asyncapi".into(), "docs/asyncapi.yaml".into());
                    endpoint
                })
                .collect(),
        )
        .await
        .context("starting the orderhub service")?;
        let tasks = Kind::ALL
            .into_iter()
            .zip(endpoints)
            .map(|(kind, endpoint)| tokio::spawn(handlers.clone().serve(kind, endpoint)))
            .collect();
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        tracing::info!(instance = %handlers.instance_id, runtime_threads = workers, "orderhub is serving");
        Ok(Self {
            handlers,
            service,
            tasks,
            client,
        })
    }

    /// Graceful stop: stop taking requests, let in-flight ones finish, stop the actors.
    ///
    /// No request routed to this hub goes unanswered. From the signal on, new requests are parked,
    /// not answered, so a client waiting for one sends nothing new. Once the in-flight requests
    /// are done and requests have stopped arriving for a moment (at most [`QUIET_MAX`]), the hub
    /// unsubscribes, waits until the server has processed that, and only then answers the parked
    /// requests `unavailable`: their retries go to a peer instance (or find no hub), never here.
    /// A request the server routed here just before the unsubscription would otherwise be dropped
    /// by the client library unanswered.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.handlers.begin_stopping();
        let all = self.handlers.max_in_flight as u32;
        if let Ok(Ok(permits)) = tokio::time::timeout(
            Duration::from_secs(10),
            self.handlers.in_flight.acquire_many(all),
        )
        .await
        {
            // In-flight work is done; nothing new is taken.
            permits.forget();
        }
        let quiet_until = tokio::time::Instant::now() + QUIET_MAX;
        while self.handlers.since_last_arrival() < QUIET
            && tokio::time::Instant::now() < quiet_until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.service.stop().await {
            tracing::warn!(error = %e, "stopping the service");
        }
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        // The server handles a connection's messages in order: once it has answered a request
        // sent after the unsubscriptions, it routes no more requests here.
        let js = jetstream::new(self.client.clone());
        match tokio::time::timeout(UNSUBSCRIBED_WITHIN, js.query_account()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not confirm the unsubscriptions"),
            Err(_) => tracing::warn!("could not confirm the unsubscriptions in time"),
        }
        self.handlers.answer_parked().await;
        let _ = self.client.flush().await;
        match Arc::try_unwrap(self.handlers) {
            Ok(h) => h.hub.stop().await,
            Err(_) => tracing::warn!("handlers still referenced at shutdown"),
        }
        tracing::info!("orderhub stopped");
        Ok(())
    }
}

/// Runs a hub until `shutdown` resolves.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let app = App::start(settings).await?;
    shutdown.await;
    app.stop().await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received: draining");
}
