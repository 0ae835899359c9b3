//! `jitbridge-bench`: measures jitbridge against baselines started in the same run (issue 5).
//!
//! `jitbridge-bench all` runs P1–P5 and prints a Markdown table of results and ratios;
//! `p1` … `p5` run one scenario; `--quick` shrinks every size so a run takes well under a
//! minute. `serve` is the child side used internally to run each target in its own process.

mod load;
mod report;
mod scenarios;
mod serve;
mod sink;
mod targets;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::report::Table;
use crate::scenarios::{Settings, World};
use crate::targets::{JitbridgeArgs, ServeKind};

#[derive(Parser, Debug)]
#[command(
    name = "jitbridge-bench",
    about = "Benchmarks jitbridge against same-run baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Small sizes and short runs (well under a minute for `all`).
    #[arg(long, global = true)]
    quick: bool,
    /// Connections of the closed-loop runs.
    #[arg(long, global = true)]
    connections: Option<usize>,
    /// Seconds of each load run.
    #[arg(long, global = true)]
    seconds: Option<u64>,
    /// Open-loop rate of P2 (deliveries per second).
    #[arg(long, global = true)]
    rate: Option<u32>,
    /// Group commit: most rows per batch of the jitbridge under test.
    #[arg(long, global = true)]
    max_batch: Option<usize>,
    /// Group commit: window in microseconds.
    #[arg(long, global = true)]
    window_us: Option<u64>,
    /// Directory for scratch stores (on the disk to measure).
    #[arg(long, global = true, default_value = "target/bench-work")]
    work: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Durable accept: max throughput of verified, deduplicated, committed deliveries.
    P1,
    /// Ack latency at a fixed rate, and approval → provider-call latency.
    P2,
    /// Forged-signature rejection throughput (0 rows written).
    P3,
    /// Expiry lateness, and a burst of grants expiring in the same second.
    P4,
    /// Restart with many grants: time to ready and RSS.
    P5,
    /// P1 to P5.
    All,
    /// Internal: run one target server until stdin closes.
    #[command(hide = true)]
    Serve {
        #[command(subcommand)]
        kind: ServeCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ServeCmd {
    Bare,
    Hmac {
        #[arg(long)]
        secret: String,
    },
    StoreOnly(JitbridgeArgs),
    Jitbridge(JitbridgeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Serve { kind } = cli.command {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("error"))
            .with_writer(std::io::stderr)
            .init();
        let kind = match kind {
            ServeCmd::Bare => ServeKind::Bare,
            ServeCmd::Hmac { secret } => ServeKind::Hmac { secret },
            ServeCmd::StoreOnly(args) => ServeKind::StoreOnly(args),
            ServeCmd::Jitbridge(args) => ServeKind::Jitbridge(args),
        };
        return serve::serve(kind).await;
    }

    let mut settings = Settings::new(cli.quick, cli.work.clone());
    if let Some(c) = cli.connections {
        settings.connections = c.clamp(1, 1024);
    }
    if let Some(s) = cli.seconds {
        settings.duration = std::time::Duration::from_secs(s.clamp(1, 600));
    }
    if let Some(r) = cli.rate {
        settings.rate = r.clamp(1, 1_000_000);
    }
    if let Some(b) = cli.max_batch {
        settings.max_batch = b.clamp(1, 10_000);
    }
    if let Some(w) = cli.window_us {
        settings.window_us = w.min(1_000_000);
    }
    let world = World::start(settings).await?;
    let mut table = Table::default();
    let started = Instant::now();
    match cli.command {
        Command::P1 => scenarios::p1(&world, &mut table).await?,
        Command::P2 => scenarios::p2(&world, &mut table).await?,
        Command::P3 => scenarios::p3(&world, &mut table).await?,
        Command::P4 => scenarios::p4(&world, &mut table).await?,
        Command::P5 => scenarios::p5(&world, &mut table).await?,
        Command::All => {
            scenarios::p1(&world, &mut table).await?;
            scenarios::p2(&world, &mut table).await?;
            scenarios::p3(&world, &mut table).await?;
            scenarios::p4(&world, &mut table).await?;
            scenarios::p5(&world, &mut table).await?;
        }
        Command::Serve { .. } => {}
    }
    println!("{}", table.render());
    println!(
        "(finished in {:.1}s; {}{} connections, {:?} per load run)",
        started.elapsed().as_secs_f64(),
        if world.settings.quick {
            "quick mode; "
        } else {
            ""
        },
        world.settings.connections,
        world.settings.duration
    );
    Ok(())
}
