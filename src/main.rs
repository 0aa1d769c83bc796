use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use authgate::app::{Application, Time, open_store};
use authgate::config::{ApiKeyConfig, Config};
use authgate::telemetry::LogTo;

/// A call allocates and frees dozens of small buffers (frames, headers,
/// messages, the key's text); glibc's malloc spent about a sixth of a
/// CheckAccess's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// authgate: may this user do this now?
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file for serve, migrate and check-config;
    /// ./authgate.toml is read when present.
    #[arg(long, env = "AUTHGATE_CONFIG")]
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
    /// Validate the configuration and print it, secrets redacted; with
    /// --since, print instead what a reload from that file (the one a
    /// server runs now) to this one would change.
    CheckConfig {
        #[arg(long)]
        since: Option<std::path::PathBuf>,
    },
    /// Print a new API key (to stderr) and the keys-file entry holding its
    /// hash (to stdout, so `keygen >> keys.toml` stores only the hash).
    Keygen {
        /// Who will hold the key (logged and audited as the caller).
        #[arg(long, default_value = "bot")]
        name: String,
        /// check (AccessService), admin (AdminService), or both.
        #[arg(long, value_delimiter = ',', default_value = "check")]
        roles: Vec<authgate::grpc::auth::Role>,
    },
    /// Operator commands over AdminService: unlock, list-locked, subject,
    /// stats, admission, offenders, reset-warnings, events.
    Admin(Box<authgate::cli::AdminArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The client commands read no server configuration: a --config given
    // to them would silently do nothing. (AUTHGATE_CONFIG, which a
    // container sets for the server, is fine.)
    let explicit_config = matches.value_source("config") == Some(ValueSource::CommandLine);
    if explicit_config
        && matches!(
            cli.command,
            Some(Command::Keygen { .. } | Command::Admin(_))
        )
    {
        eprintln!("authgate: --config is for serve, migrate and check-config");
        return ExitCode::from(2);
    }
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
    let command = cli.command.unwrap_or(Command::Serve);
    authgate::telemetry::init(
        &config.log,
        match command {
            Command::CheckConfig { .. } => LogTo::Stderr,
            _ => LogTo::Stdout,
        },
    );
    for miss in authgate::config::near_misses(std::env::vars().map(|(name, _)| name)) {
        tracing::warn!(
            variable = %miss.variable,
            meant = %miss.meant,
            "ignored: not a configuration key (sections and keys are separated by __)"
        );
    }
    let result = match command {
        Command::CheckConfig { since: None } => config
            .authenticator()
            .map(|_| print!("{}", config.to_toml()))
            .map_err(anyhow::Error::from),
        Command::CheckConfig { since: Some(since) } => reload_changes(&since, &config),
        Command::Migrate => open_store(&config)
            .await
            .map(|_| tracing::info!("migrations applied"))
            .map_err(anyhow::Error::from),
        Command::Serve => serve(config, policy, cli.config.clone()).await,
        Command::Keygen { .. } | Command::Admin(_) => unreachable!("handled before loading config"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "authgate failed");
            eprintln!("authgate: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each told once: wrappers often repeat the
/// message of the error they wrap.
/// Prints what reloading `next` over the configuration `since` holds
/// would change, one change per line.
fn reload_changes(since: &std::path::Path, next: &Config) -> anyhow::Result<()> {
    let (running, _) = Config::load(Some(since))
        .map_err(|e| anyhow::anyhow!("--since {}: {e}", since.display()))?;
    let changes = authgate::config::changes(
        &running,
        &running.authenticator()?,
        next,
        &next.authenticator()?,
    );
    if changes.is_empty() {
        println!("a reload changes nothing");
    }
    for change in changes {
        println!("{change}");
    }
    Ok(())
}

fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn keygen(name: String, roles: Vec<authgate::grpc::auth::Role>) -> ExitCode {
    /// The layout of auth.keys_file, for one key.
    #[derive(serde::Serialize)]
    struct Entry {
        keys: [ApiKeyConfig; 1],
    }
    let (key, hash) = authgate::grpc::auth::generate_key();
    let entry = Entry {
        keys: [ApiKeyConfig {
            name,
            hash: hash.to_string(),
            roles,
        }],
    };
    // The key goes to the person (stderr), the entry to the file (stdout):
    // `keygen >> keys.toml` must never store the key itself, only its hash.
    eprintln!(
        "API key for {:?} (shown once; authgate keeps only its hash):\n{}",
        entry.keys[0].name,
        key.as_str()
    );
    print!("{}", toml::to_string(&entry).unwrap_or_default());
    ExitCode::SUCCESS
}

/// A gRPC error as an operator should read it: the status and its message.
fn client_error(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => format!("{:?}: {}", s.code(), s.message()),
        None => chain(e),
    }
}

async fn serve(
    config: Config,
    policy: authgate::domain::Policy,
    path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    // Each connection costs a descriptor; the soft limit a shell or a
    // container starts with (often 1024) is far below what the hard limit
    // allows, so take all of it.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let app = Application::build(&config, policy, Time::Authority).await?;
    let reloads = tokio::spawn(app.reloader().watch(path));
    app.run_until(shutdown_signal()).await?;
    reloads.abort();
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
