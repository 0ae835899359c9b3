//! `jitbridge-sim`: runs a simulator as a standalone process for demos and manual testing.
//! `jira` serves a seeded Jira/JSM site with the `/_sim` control API; `receiver` serves the
//! elevation receiver and logs every call. Both stop on ctrl-c. Secrets come from environment
//! variables named on the command line, never from arguments (which `ps` would show).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use jitbridge_sim::jira::{
    ApiToken, ApprovalSpec, JiraSim, JiraSimConfig, NewIssue, User, WebhookTarget, users,
};
use jitbridge_sim::receiver::{ElevationReceiver, ReceiverConfig};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "jitbridge-sim",
    about = "Simulators of the systems jitbridge talks to"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Jira Cloud / JSM simulator, seeded with demo users and one elevation request.
    Jira {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Where to send webhooks (e.g. http://127.0.0.1:8080/webhooks/jira).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Environment variable holding the webhook HMAC secret (unsigned when absent).
        #[arg(long)]
        webhook_secret_env: Option<String>,
        /// Email of the API user jitbridge authenticates as.
        #[arg(long, default_value = users::API_EMAIL)]
        api_user: String,
        /// Environment variable holding that user's API token.
        #[arg(long)]
        api_token_env: String,
    },
    /// Run the elevation receiver (the endpoint-agent side of the webhook provider).
    Receiver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Environment variable holding the `whsec_...` secret.
        #[arg(long)]
        secret_env: String,
    },
}

fn secret_from_env(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => bail!("environment variable {name} is not set or empty"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Jira {
            listen,
            webhook_url,
            webhook_secret_env,
            api_user,
            api_token_env,
        } => {
            let token = secret_from_env(&api_token_env)?;
            let secret = webhook_secret_env
                .as_deref()
                .map(secret_from_env)
                .transpose()?;
            let mut config = JiraSimConfig {
                listen,
                control_api: true,
                api_tokens: vec![ApiToken {
                    email: api_user.clone(),
                    token,
                }],
                ..JiraSimConfig::default()
            };
            if !config
                .users
                .iter()
                .any(|u| u.email.eq_ignore_ascii_case(&api_user))
            {
                config.users.push(User::new(
                    "557058:f00dcafe-0000-4000-8000-0000000a1100",
                    &api_user,
                    "API user",
                ));
            }
            let jira = JiraSim::start(config)
                .await
                .context("starting the Jira simulator")?;
            // Seed before registering the webhook: the demo issue should not fire at start-up.
            let seeded = jira
                .create_issue(
                    NewIssue::new(
                        users::ALICE,
                        "Local admin on WS-042 to install a printer driver",
                    )
                    .description("Printer driver for the 3rd floor")
                    .field(
                        "customfield_10050",
                        serde_json::json!({"value": "Local admin"}),
                    )
                    .field("customfield_10060", serde_json::json!("WS-042"))
                    .field("customfield_10070", serde_json::json!("60m"))
                    .approval(ApprovalSpec::any_of(&[users::BOB])),
                )
                .await
                .context("seeding the example issue")?;
            if let Some(url) = webhook_url {
                let target = WebhookTarget { url, secret };
                jira.add_webhook(&target.url, target.secret.as_deref())
                    .await;
                tracing::info!(url = %target.url, signed = target.secret.is_some(), "webhook registered");
            }
            tracing::info!(base_url = jira.base_url(), issue = %seeded.key, "Jira simulator running; ctrl-c to stop");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for ctrl-c")?;
            jira.shutdown().await;
        }
        Command::Receiver { listen, secret_env } => {
            let secret = secret_from_env(&secret_env)?;
            let rx = ElevationReceiver::start_with(ReceiverConfig {
                listen,
                ..ReceiverConfig::new(secret)
            })
            .await
            .context("starting the receiver")?;
            tracing::info!(url = %rx.url(), "elevation receiver running; ctrl-c to stop");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for ctrl-c")?;
            rx.shutdown().await;
        }
    }
    Ok(())
}
