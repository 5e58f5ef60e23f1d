use anyhow::Context as _;
use clap::Parser;

/// The hub allocates and frees many small buffers across threads (JSON, NATS messages, rows).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    orderhub::telemetry::init("orderhub=info,actors=info,warn");
    let cli = orderhub::cli::Cli::parse();
    let settings = cli.settings()?;
    let runtime = settings
        .runtime
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(cli.run(settings))
}
