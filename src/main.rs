use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use authgate::app::{Application, open_store};
use authgate::clock::SystemClock;
use authgate::config::Config;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, policy) = match Config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("authgate: {e}");
            return ExitCode::from(2);
        }
    };
    authgate::telemetry::init(&config.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Migrate => open_store(&config)
            .await
            .map(|_| tracing::info!("migrations applied"))
            .map_err(anyhow::Error::from),
        Command::Serve => serve(config, policy).await,
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
