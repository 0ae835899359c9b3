//! The `jitbridge` binary: parses the command line, sets up logging, loads the configuration
//! and runs the requested command. Everything else lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod cli;

/// Just-in-time admin rights from ITSM ticket approvals.
#[derive(Debug, Parser)]
#[command(name = "jitbridge", version, about)]
struct Args {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
    },
    /// Validate the configuration, connectors and mappings; exit 0 only when all is valid.
    Check {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
    },
    /// Dry run: what a payload would do. Nothing is written or sent anywhere.
    Explain {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
        /// Connector id the payload arrives on.
        #[arg(long)]
        connector: String,
        /// JSON file holding the delivery body.
        #[arg(long)]
        payload: PathBuf,
        /// Evaluate time-dependent policy (`hours`) at this instant (RFC 3339, e.g.
        /// 2026-03-02T09:30:00Z) instead of now.
        #[arg(long)]
        at: Option<jiff::Timestamp>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and revoke grants (talks to the running daemon's admin API).
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Inspect and retry outbox jobs (dead letters).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum GrantsCommand {
    /// List grants, newest first.
    List {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
        /// Only grants in this state (requested, approved, active, ...).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant now.
    Revoke {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
        /// Grant id.
        id: String,
        /// Why (recorded in the audit and written to the ticket).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// List jobs (dead letters by default).
    List {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
        #[arg(long, default_value = "dead")]
        state: String,
        #[arg(long)]
        json: bool,
    },
    /// Put a dead job back in the queue.
    Retry {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit trail.
    Verify {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
    },
    /// One ticket's whole story as JSON lines (request, approval evidence, decision, apply, revoke, writebacks).
    Export {
        #[arg(long, default_value = "jitbridge.toml")]
        config: PathBuf,
        /// Ticket key (e.g. ACCESS-87).
        #[arg(long)]
        ticket: String,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: &Path) -> Result<jitbridge::config::Config> {
    jitbridge::config::load(
        config,
        &jitbridge::config::process_env(),
        &jitbridge::config::ProcessEnv,
    )
    .map_err(|problems| anyhow::anyhow!("{problems}"))
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve { config } => {
            // Register for signals before anything starts, so an early SIGTERM still shuts down
            // gracefully instead of killing the process.
            let signal = shutdown_signal()?;
            let reload = reload_signal()?;
            let cfg =
                load(&config).with_context(|| format!("cannot start with {}", config.display()))?;
            let running =
                jitbridge::app::start(cfg, Arc::new(jitbridge::clock::SystemClock)).await?;
            tokio::spawn(reload_on_signal(reload, running.reloader()));
            let token = running.shutdown_token();
            tokio::spawn(async move {
                signal.await;
                tracing::info!("shutting down");
                token.cancel();
            });
            running.wait().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match jitbridge::config::load(
            &config,
            &jitbridge::config::process_env(),
            &jitbridge::config::ProcessEnv,
        ) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    println!("warning: {w}");
                }
                println!(
                    "{}: valid ({} connector(s), {} mapping(s), {} provider(s), {} warning(s))",
                    config.display(),
                    cfg.connectors.len(),
                    cfg.mappings.len(),
                    cfg.providers.len(),
                    cfg.warnings.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                eprintln!("{problems}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Explain {
            config,
            connector,
            payload,
            at,
            json,
        } => cli::explain(&config, &connector, &payload, at, json),
        Command::Grants {
            command:
                GrantsCommand::List {
                    config,
                    state,
                    json,
                },
        } => cli::grants_list(&config, state.as_deref(), json).await,
        Command::Grants {
            command: GrantsCommand::Revoke { config, id, reason },
        } => cli::grants_revoke(&config, &id, &reason).await,
        Command::Outbox {
            command:
                OutboxCommand::List {
                    config,
                    state,
                    json,
                },
        } => cli::outbox_list(&config, &state, json).await,
        Command::Outbox {
            command: OutboxCommand::Retry { config, id },
        } => cli::outbox_retry(&config, &id).await,
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => cli::audit_verify(&config).await,
        Command::Audit {
            command: AuditCommand::Export { config, ticket },
        } => cli::audit_export(&config, &ticket).await,
    }
}

/// Reloads the configuration files each time `signals` yields (SIGHUP). A refused reload is
/// logged and counted by the reloader and leaves the running configuration in force.
async fn reload_on_signal(
    mut signals: impl futures::Stream<Item = ()> + Unpin,
    reloader: jitbridge::reload::Reloader,
) {
    use futures::StreamExt;
    while signals.next().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        // The outcome is logged and counted by the reloader.
        let _ = reloader.reload().await;
    }
}

/// SIGHUP, registered now, as a stream.
#[cfg(unix)]
fn reload_signal() -> Result<impl futures::Stream<Item = ()> + Unpin> {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    Ok(Box::pin(futures::stream::unfold(
        hup,
        |mut hup| async move { hup.recv().await.map(|()| ((), hup)) },
    )))
}

/// No SIGHUP: reloads come through the admin API only.
#[cfg(not(unix))]
fn reload_signal() -> Result<impl futures::Stream<Item = ()> + Unpin> {
    Ok(futures::stream::pending())
}

/// SIGTERM or ctrl-c, registered now.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// ctrl-c.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
