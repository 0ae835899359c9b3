//! `jitbridge-sim`: runs a simulator as a standalone process for demos and manual testing.
//! `jira`, `servicenow` and `freshservice` serve a seeded ITSM with its `/_sim` control API;
//! `receiver` serves the elevation receiver and logs every call. Both stop on ctrl-c. Secrets come from environment
//! variables named on the command line, never from arguments (which `ps` would show).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use jitbridge_sim::jira::{
    ApiToken, ApprovalSpec, JiraSim, JiraSimConfig, NewIssue, User, WebhookTarget, users,
};
use jitbridge_sim::receiver::{ElevationReceiver, ReceiverConfig};
use jitbridge_sim::{freshservice, servicenow};
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
    /// Run the ServiceNow instance simulator, seeded with demo users and one RITM.
    Servicenow {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8082")]
        listen: SocketAddr,
        /// Where to send Business Rule deliveries (e.g. http://127.0.0.1:8080/webhooks/servicenow).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Environment variable holding the X-Signature HMAC secret (unsigned when absent).
        #[arg(long)]
        webhook_secret_env: Option<String>,
        /// user_name of the integration user jitbridge authenticates as.
        #[arg(long, default_value = servicenow::users::JITBRIDGE)]
        api_user: String,
        /// Environment variable holding that user's password (Basic auth).
        #[arg(long)]
        api_password_env: String,
        /// Environment variable holding an OAuth bearer token for that user (optional).
        #[arg(long)]
        api_bearer_env: Option<String>,
    },
    /// Run the Freshservice simulator, seeded with demo people and one service request.
    Freshservice {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8083")]
        listen: SocketAddr,
        /// Where to send Workflow Automator webhooks (e.g. http://127.0.0.1:8080/webhooks/freshservice).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Environment variable holding the shared secret sent as X-Api-Key (none when absent).
        #[arg(long)]
        webhook_secret_env: Option<String>,
        /// Environment variable holding the API key jitbridge uses (Basic <key>:X).
        #[arg(long)]
        api_key_env: String,
        /// Requests per minute before 429s.
        #[arg(long, default_value_t = 100)]
        per_minute: u32,
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
        Command::Servicenow {
            listen,
            webhook_url,
            webhook_secret_env,
            api_user,
            api_password_env,
            api_bearer_env,
        } => {
            run_servicenow(
                listen,
                webhook_url,
                webhook_secret_env,
                api_user,
                api_password_env,
                api_bearer_env,
            )
            .await?;
        }
        Command::Freshservice {
            listen,
            webhook_url,
            webhook_secret_env,
            api_key_env,
            per_minute,
        } => {
            run_freshservice(
                listen,
                webhook_url,
                webhook_secret_env,
                api_key_env,
                per_minute,
            )
            .await?;
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

async fn run_servicenow(
    listen: SocketAddr,
    webhook_url: Option<String>,
    webhook_secret_env: Option<String>,
    api_user: String,
    api_password_env: String,
    api_bearer_env: Option<String>,
) -> anyhow::Result<()> {
    use servicenow::{Credential, NewRequest, ServiceNowSim, ServiceNowSimConfig, User, users};
    let password = secret_from_env(&api_password_env)?;
    let secret = webhook_secret_env
        .as_deref()
        .map(secret_from_env)
        .transpose()?;
    let mut config = ServiceNowSimConfig {
        listen,
        control_api: true,
        credentials: vec![Credential::Basic {
            user_name: api_user.clone(),
            password,
        }],
        ..ServiceNowSimConfig::default()
    };
    if let Some(env) = api_bearer_env {
        config.credentials.push(Credential::Bearer {
            user_name: api_user.clone(),
            token: secret_from_env(&env)?,
        });
    }
    if !config.users.iter().any(|u| u.user_name == api_user) {
        config.users.push(User::new(
            "5e2c0000000040008000000000000099",
            &api_user,
            "api@example.com",
            "API user",
        ));
    }
    let snow = ServiceNowSim::start(config)
        .await
        .context("starting the ServiceNow simulator")?;
    // Seed before registering the webhook: the demo RITM should not fire at start-up.
    let seeded = snow
        .create_request(
            NewRequest::new(
                users::ALICE,
                "Local admin on WS-0042 to install a printer driver",
            )
            .elevation("Local admin", "WS-0042", "2h")
            .approvers(&[users::BOB]),
        )
        .await
        .context("seeding the example RITM")?;
    if let Some(url) = webhook_url {
        snow.add_webhook(&url, secret.as_deref()).await;
        tracing::info!(%url, signed = secret.is_some(), "webhook registered");
    }
    tracing::info!(base_url = snow.base_url(), ritm = %seeded.number, sys_id = %seeded.sys_id,
        "ServiceNow simulator running; ctrl-c to stop");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    snow.shutdown().await;
    Ok(())
}

async fn run_freshservice(
    listen: SocketAddr,
    webhook_url: Option<String>,
    webhook_secret_env: Option<String>,
    api_key_env: String,
    per_minute: u32,
) -> anyhow::Result<()> {
    use freshservice::{ApiKey, FreshserviceSim, FreshserviceSimConfig, NewServiceRequest, users};
    let key = secret_from_env(&api_key_env)?;
    let secret = webhook_secret_env
        .as_deref()
        .map(secret_from_env)
        .transpose()?;
    let fs = FreshserviceSim::start(FreshserviceSimConfig {
        listen,
        control_api: true,
        rate_limit_per_minute: per_minute,
        api_keys: vec![ApiKey {
            key,
            agent_id: users::JITBRIDGE,
        }],
        ..FreshserviceSimConfig::default()
    })
    .await
    .context("starting the Freshservice simulator")?;
    let seeded = fs
        .create_request(
            NewServiceRequest::new(
                users::ALICE,
                "Local admin on WS-0042 to install a printer driver",
            )
            .elevation("Local admin", "WS-0042", "2h")
            .approvers(&[users::BOB]),
        )
        .await
        .context("seeding the example ticket")?;
    if let Some(url) = webhook_url {
        fs.add_webhook(&url, secret.as_deref()).await;
        tracing::info!(%url, with_secret = secret.is_some(), "webhook registered");
    }
    tracing::info!(
        base_url = fs.base_url(),
        ticket = seeded.ticket_id,
        "Freshservice simulator running; ctrl-c to stop"
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    fs.shutdown().await;
    Ok(())
}
