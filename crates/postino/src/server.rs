//! `postino server`: opens the data directory and the broker on it (virtual hosts, durable
//! queues and definitions), listens for AMQP 0-9-1 clients, and runs until SIGINT or SIGTERM,
//! then closes every queue cleanly.

use std::fs::{self, File, OpenOptions};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::ValueEnum;
use postino_amqp::Limits;
use postino_core::{Broker, FlowLimits};
use postino_storage::LogConfig;
use postino_types::SystemClock;
use tracing::{error, info};

/// Flags of `postino server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Where the broker keeps its data.
    #[arg(
        long,
        env = "POSTINO_SERVER_DATA_DIR",
        default_value = "./postino-data"
    )]
    data_dir: PathBuf,
    /// Log line format.
    #[arg(long, env = "POSTINO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Where AMQP 0-9-1 clients connect (`host:port`, port 0 picks one, `off` disables).
    #[arg(long, env = "POSTINO_AMQP_LISTEN", default_value = "0.0.0.0:5672")]
    amqp_listen: Listen,
}

/// A listener address, or `off`.
#[derive(Debug, Clone)]
enum Listen {
    Off,
    At(String),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "off" {
            return Ok(Listen::Off);
        }
        let valid = text
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if valid {
            Ok(Listen::At(text.to_owned()))
        } else {
            Err(format!("'{text}' is not host:port or off"))
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs the server; the exit code follows `docs/operations.md`.
pub fn run(args: ServerArgs) -> ExitCode {
    init_tracing(args.log_format);
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = format!("{error:#}"), "server stopped");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTINO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: &ServerArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async {
        let stop = shutdown_signals()?;
        let data_dir = open_data_dir(&args.data_dir)?;
        let path = fs::canonicalize(&args.data_dir).context("resolve the data directory")?;
        info!(path = %path.display(), version = env!("CARGO_PKG_VERSION"), "data directory ready");
        let broker = Broker::open(
            Some(path),
            LogConfig::default(),
            Arc::new(SystemClock),
            FlowLimits::default(),
        )
        .context("open the broker")?;
        info!(vhosts = ?broker.vhost_names(), "broker ready");
        if let Listen::At(address) = &args.amqp_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("listen for AMQP on {address}"))?;
            let local = listener
                .local_addr()
                .context("the AMQP listener's address")?;
            tokio::spawn(postino_amqp::serve(
                listener,
                Arc::clone(&broker),
                Limits::default(),
            ));
            info!(protocol = %"amqp", addr = %local, "listening");
        }
        let signal = stop.await;
        info!(signal, "shutting down");
        broker.close().await.context("close the broker")?;
        drop(data_dir);
        anyhow::Ok(())
    })?;
    info!("stopped");
    Ok(())
}

/// Creates the data directory if needed and locks it, so that two servers never share one.
fn open_data_dir(dir: &Path) -> Result<File> {
    fs::create_dir_all(dir).with_context(|| format!("create data directory {}", dir.display()))?;
    let path = dir.join(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    lock.try_lock().with_context(|| {
        format!(
            "data directory {} is in use by another postino",
            dir.display()
        )
    })?;
    Ok(lock)
}

/// The signals that stop the server, caught from the moment this returns (before the server
/// says it is ready, so that a script's SIGTERM right after is never the default kill).
fn shutdown_signals() -> Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        }
    })
}
