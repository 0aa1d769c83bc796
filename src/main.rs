use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use authgate::app::{Application, open_store};
use authgate::clock::SystemClock;
use authgate::config::{ApiKeyConfig, Config};

/// authgate: may this user do this now?
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; ./authgate.toml is read when present.
    #[arg(long, global = true, env = "AUTHGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply database migrations and exit (a Kubernetes Job runs this).
    Migrate,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Print a new API key and the config entry holding its hash.
    Keygen {
        /// Who will hold the key (logged and audited as the caller).
        #[arg(long, default_value = "bot")]
        name: String,
        /// check (AccessService), admin (AdminService), or both.
        #[arg(long, value_delimiter = ',', default_value = "check")]
        roles: Vec<authgate::auth::Role>,
    },
    /// Operator commands over AdminService: unlock, list-locked, subject,
    /// stats, events.
    Admin(Box<authgate::cli::AdminArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The client commands need no server configuration.
    match cli.command {
        Some(Command::Keygen { name, roles }) => return keygen(name, roles),
        Some(Command::Admin(args)) => {
            return match authgate::cli::admin(*args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("authgate admin: {}", client_error(&e));
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let (config, policy) = match Config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("authgate: {e}");
            return ExitCode::from(2);
        }
    };
    authgate::telemetry::init(&config.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => config
            .authenticator()
            .map(|_| print!("{}", config.to_toml()))
            .map_err(anyhow::Error::from),
        Command::Migrate => open_store(&config)
            .await
            .map(|_| tracing::info!("migrations applied"))
            .map_err(anyhow::Error::from),
        Command::Serve => serve(config, policy).await,
        Command::Keygen { .. } | Command::Admin(_) => unreachable!("handled before loading config"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "authgate failed");
            eprintln!("authgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(name: String, roles: Vec<authgate::auth::Role>) -> ExitCode {
    /// The layout of auth.keys_file, for one key.
    #[derive(serde::Serialize)]
    struct Entry {
        keys: [ApiKeyConfig; 1],
    }
    let (key, hash) = authgate::auth::generate_key();
    let entry = Entry {
        keys: [ApiKeyConfig {
            name,
            hash: hash.to_string(),
            roles,
        }],
    };
    // The whole output is valid TOML for auth.keys_file; the key itself is
    // in a comment, for the caller only (authgate keeps just the hash).
    println!("# key: {}", key.as_str());
    print!("{}", toml::to_string(&entry).unwrap_or_default());
    ExitCode::SUCCESS
}

/// A gRPC error as an operator should read it: the status and its message.
fn client_error(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => format!("{:?}: {}", s.code(), s.message()),
        None => format!("{e:#}"),
    }
}

async fn serve(config: Config, policy: authgate::domain::Policy) -> anyhow::Result<()> {
    let app = Application::build(&config, policy, Arc::new(SystemClock)).await?;
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
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
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received; draining");
}
