use clap::Parser;

/// The hub allocates and frees many small buffers across threads (JSON, NATS messages, rows).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderhub::telemetry::init("orderhub=info,actors=info,warn");
    orderhub::cli::Cli::parse().run().await
}
