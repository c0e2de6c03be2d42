//! `warren`: parse flags, load the config, start the broker, wait for SIGINT/SIGTERM (SIGHUP
//! reloads the TLS certificate files).
#![forbid(unsafe_code)]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use warren::config::Config;
use warren::Server;

/// Warren, an AMQP 0-9-1 message broker compatible with RabbitMQ clients.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it, built-in defaults (the same as the shipped config.toml).
    #[arg(long, short = 'c', env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// AMQP listener, HOST:PORT (overrides amqp_listen).
    #[arg(long)]
    amqp_listen: Option<String>,
    /// Management HTTP listener, HOST:PORT (overrides http_listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// AMQP-over-TLS listener, HOST:PORT, or "" to disable (overrides amqps_listen).
    #[arg(long)]
    amqps_listen: Option<String>,
    /// Management listener over HTTPS, HOST:PORT, or "" to disable (overrides https_listen).
    #[arg(long)]
    https_listen: Option<String>,
    /// Prometheus listener, HOST:PORT, or "" to disable (overrides prometheus_listen).
    #[arg(long)]
    prometheus_listen: Option<String>,
    /// Data directory (overrides data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The user created on first start (overrides default_user). The environment variable is
    /// the one RabbitMQ's container image reads.
    #[arg(long, env = "RABBITMQ_DEFAULT_USER")]
    default_user: Option<String>,
    /// That user's password (overrides default_pass).
    #[arg(long, env = "RABBITMQ_DEFAULT_PASS", hide_env_values = true)]
    default_pass: Option<String>,
    /// This node's name in a cluster (overrides node_name).
    #[arg(long)]
    node_name: Option<String>,
    /// The inter-node listener, HOST:PORT (overrides [cluster] listen).
    #[arg(long)]
    cluster_listen: Option<String>,
    /// The cluster's seed nodes, HOST:PORT,HOST:PORT,... (overrides [cluster] seeds).
    #[arg(long, value_delimiter = ',')]
    cluster_seeds: Option<Vec<String>>,
    /// The file holding the cluster's shared secret (overrides [cluster] secret_file).
    #[arg(long)]
    cluster_secret_file: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(a) = args.amqp_listen {
        config.amqp_listen = a;
    }
    if let Some(a) = args.http_listen {
        config.http_listen = a;
    }
    if let Some(a) = args.amqps_listen {
        config.amqps_listen = a;
    }
    if let Some(a) = args.https_listen {
        config.https_listen = a;
    }
    if let Some(a) = args.prometheus_listen {
        config.prometheus_listen = a;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(u) = args.default_user {
        config.default_user = u;
    }
    if let Some(p) = args.default_pass {
        config.default_pass = p;
    }
    if let Some(n) = args.node_name {
        config.node_name = n;
    }
    if let Some(l) = args.cluster_listen {
        config.cluster.listen = l;
    }
    if let Some(s) = args.cluster_seeds {
        config.cluster.seeds = s.into_iter().filter(|s| !s.is_empty()).collect();
    }
    if let Some(f) = args.cluster_secret_file {
        config.cluster.secret_file = f;
    }
    if let Err(e) = config.validate() {
        eprintln!("warren: {e}");
        return ExitCode::from(2);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // openraft warns of routine events (a vote ignored after an election): errors only.
        tracing_subscriber::EnvFilter::new(format!("{},openraft=error", config.log_level))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is short (stream reads, disk checks, offset files): a few threads do
        // it. Each thread that allocates grows an allocator arena of its own, so hundreds of
        // them (tokio's default ceiling) would hold memory for nothing.
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let handle = match Server::start(config).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal(&handle).await;
        tracing::info!("shutdown requested");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Wait for SIGINT or SIGTERM; on SIGHUP, reload the TLS certificate files and keep waiting.
async fn wait_for_signal(handle: &warren::ServerHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            Some(()) = async { hup.as_mut()?.recv().await } => {
                tracing::info!("SIGHUP: reloading the TLS certificate files");
                // Failures are logged by reload_tls, and the old certificate stays.
                if let Err(warren::tls::TlsError::NotConfigured) = handle.reload_tls() {
                    tracing::info!("SIGHUP ignored: TLS is not configured");
                }
            }
        }
    }
}
