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
use postino_core::Broker;
use postino_types::SystemClock;

use crate::config::{self, Flags, Listen, Loaded};
use tracing::{error, info};

/// Flags of `postino server`; each overrides the environment and the config file
/// (`docs/configuration.md`).
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// A TOML config file (also `POSTINO_CONFIG`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the broker keeps its data (default `./postino-data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log line format (default `text`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Where AMQP 0-9-1 clients connect (`host:port`, port 0 picks one, `off` disables;
    /// default `0.0.0.0:5672`).
    #[arg(long)]
    amqp_listen: Option<Listen>,
    /// Where the management HTTP API and `/metrics` listen (`host:port`, port 0 picks one,
    /// `off` disables; default `0.0.0.0:15672`).
    #[arg(long)]
    http_listen: Option<Listen>,
    /// Where AMQP over TLS listens (default `off`; conventionally `0.0.0.0:5671`; needs the
    /// `[tls]` certificate).
    #[arg(long)]
    amqp_tls_listen: Option<Listen>,
    /// Where the management API listens over TLS (default `off`; conventionally
    /// `0.0.0.0:15671`; needs the `[tls]` certificate).
    #[arg(long)]
    http_tls_listen: Option<Listen>,
    /// Where the native gRPC API listens (`host:port`, port 0 picks one, `off` disables;
    /// default `0.0.0.0:5680`).
    #[arg(long)]
    grpc_listen: Option<Listen>,
    /// Where the native gRPC API listens over TLS (default `off`; needs the `[tls]`
    /// certificate).
    #[arg(long)]
    grpc_tls_listen: Option<Listen>,
    /// Print the effective configuration, each key with where its value came from, and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs the server; the exit code follows `docs/operations.md`.
pub fn run(args: ServerArgs) -> ExitCode {
    let flags = Flags {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        log_format: args.log_format.map(|format| {
            match format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .to_owned()
        }),
        amqp_listen: args.amqp_listen.as_ref().map(Listen::to_string),
        http_listen: args.http_listen.as_ref().map(Listen::to_string),
        amqp_tls_listen: args.amqp_tls_listen.as_ref().map(Listen::to_string),
        http_tls_listen: args.http_tls_listen.as_ref().map(Listen::to_string),
        grpc_listen: args.grpc_listen.as_ref().map(Listen::to_string),
        grpc_tls_listen: args.grpc_tls_listen.as_ref().map(Listen::to_string),
    };
    let loaded = match config::load(&flags, &|name| std::env::var(name).ok()) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("postino server: {error}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", loaded.to_toml());
        return ExitCode::SUCCESS;
    }
    init_tracing(&loaded.config.log);
    match serve(&loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = format!("{error:#}"), "server stopped");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(log: &config::LogSection) {
    // The filter was checked when the configuration loaded.
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(loaded: &Loaded) -> Result<()> {
    let config = &loaded.config;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.workers())
        .enable_all()
        .build()
        .context("start the runtime")?;
    runtime.block_on(async {
        let stop = shutdown_signals()?;
        let data_dir = open_data_dir(&config.server.data_dir)?;
        let path =
            fs::canonicalize(&config.server.data_dir).context("resolve the data directory")?;
        info!(path = %path.display(), version = env!("CARGO_PKG_VERSION"), "data directory ready");
        crate::faults::install_from_env();
        let broker = Broker::open_with_default_user(
            Some(path),
            loaded.log_config()?,
            Arc::new(SystemClock),
            loaded.flow_limits(),
            &loaded.default_user(),
        )
        .context("open the broker")?;
        broker.access().set_login_limits(loaded.login_limits());
        info!(vhosts = ?broker.vhost_names(), "broker ready");
        let tls = loaded.tls()?;
        let mut listeners = Vec::new();
        let amqp = bound(loaded.amqp_listen()?, "amqp", &mut listeners).await?;
        let amqps = bound(loaded.amqp_tls_listen()?, "amqps", &mut listeners).await?;
        let http = bound(loaded.http_listen()?, "http", &mut listeners).await?;
        let https = bound(loaded.http_tls_listen()?, "https", &mut listeners).await?;
        let grpc = bound(loaded.grpc_listen()?, "grpc", &mut listeners).await?;
        let grpcs = bound(loaded.grpc_tls_listen()?, "grpcs", &mut listeners).await?;
        if let Some(listener) = grpc {
            let broker = Arc::clone(&broker);
            tokio::spawn(async move {
                if let Err(error) = postino_grpc::serve(listener, broker).await {
                    error!(%error, "the gRPC API stopped");
                }
            });
        }
        if let (Some(listener), Some(tls)) = (grpcs, &tls) {
            let (broker, acceptor) = (Arc::clone(&broker), tls.grpc.clone());
            tokio::spawn(async move {
                if let Err(error) = postino_grpc::serve_tls(listener, broker, acceptor).await {
                    error!(%error, "the gRPC API over TLS stopped");
                }
            });
        }
        if let Some(listener) = amqp {
            let limits = loaded.amqp_limits();
            tokio::spawn(postino_amqp::serve(listener, Arc::clone(&broker), limits));
        }
        if let (Some(listener), Some(tls)) = (amqps, &tls) {
            let (limits, acceptor) = (loaded.amqp_limits(), tls.amqp.clone());
            tokio::spawn(postino_amqp::serve_tls(
                listener,
                Arc::clone(&broker),
                limits,
                acceptor,
            ));
        }
        let api = postino_http::Api::new(Arc::clone(&broker), listeners.clone());
        if let Some(listener) = http {
            let api = Arc::clone(&api);
            tokio::spawn(async move {
                if let Err(error) = postino_http::serve(listener, api).await {
                    error!(%error, "the management API stopped");
                }
            });
        }
        if let (Some(listener), Some(tls)) = (https, &tls) {
            let acceptor = tls.http.clone();
            tokio::spawn(async move {
                if let Err(error) = postino_http::serve_tls(listener, api, acceptor).await {
                    error!(%error, "the management API over TLS stopped");
                }
            });
        }
        for listener in &listeners {
            info!(protocol = %listener.protocol, addr = %listener.address, "listening");
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

/// Binds the listener of `protocol` when its setting is an address, and lists it.
async fn bound(
    listen: Listen,
    protocol: &str,
    listeners: &mut Vec<postino_http::Listener>,
) -> Result<Option<tokio::net::TcpListener>> {
    let Listen::At(address) = listen else {
        return Ok(None);
    };
    let key = match protocol {
        "amqps" => "amqp.tls_listen",
        "https" => "http.tls_listen",
        "amqp" => "amqp.listen",
        "grpc" => "grpc.listen",
        "grpcs" => "grpc.tls_listen",
        _ => "http.listen",
    };
    let listener = bind(&address, key).await?;
    let local = listener
        .local_addr()
        .with_context(|| format!("the {protocol} listener's address"))?;
    listeners.push(postino_http::Listener {
        protocol: protocol.to_owned(),
        address: local,
    });
    Ok(Some(listener))
}

/// Connections the kernel may hold for a listener before the server accepts them (as nginx
/// and tokio's own default; 128 made a burst of connects overflow it, and a client whose
/// handshake the kernel dropped believes it is connected).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener; a port in use is named as such, with the setting (`key`) that chose it.
async fn bind(address: &str, key: &str) -> Result<tokio::net::TcpListener> {
    listen(address).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            let port = address.rsplit(':').next().unwrap_or(address);
            anyhow::anyhow!("port {port} is already in use ({key} = {address})")
        } else {
            anyhow::anyhow!("listen on {address} ({key}): {error}")
        }
    })
}

async fn listen(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    let resolved = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
        })?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(resolved)?;
    socket.listen(LISTEN_BACKLOG)
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
