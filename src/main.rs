//! The `ioswarm` binary: parse the configuration, start a node, wait for SIGINT/SIGTERM, stop it.
//! Everything else lives in the library ([`ioswarm::node::Node`]).

use anyhow::Context as _;
use clap::Parser as _;
use ioswarm::config::{Cli, Command};
use ioswarm::node::Node;
use ioswarm::shutdown::Signals;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Cluster { command }) = cli.command.clone() {
        println!("{}", ioswarm::cluster::run_cli(command)?);
        return Ok(());
    }
    let config = ioswarm::config::load(&cli).context("invalid configuration")?;
    ioswarm::node::init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut signals = Signals::install().context("installing signal handlers")?;
        let node = Node::start(config).await.context("starting the node")?;
        println!("{}", node.ready_line());
        let signal = signals.recv().await;
        tracing::info!(signal, "shutting down");
        node.shutdown().await;
        Ok(())
    })
}
