use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orderhub::telemetry::init("orderhub=info,actors=info,warn");
    orderhub::cli::Cli::parse().run().await
}
