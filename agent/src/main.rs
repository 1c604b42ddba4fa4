//! `berth-agent`: start-up and wiring. Settles the node name (invariant 7)
//! and the fence (invariant 3) from the data dir, connects the driver, then
//! serves AgentData and keeps a control session until SIGTERM or ctrl-c.
//! Stopping the agent never stops or deletes sandboxes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_agent::driver::{ContainerDriver, Driver, MemoryDriver};
use berth_agent::fence::Fence;
use berth_agent::session::{Session, SessionConfig};
use berth_agent::{data_server, identity};
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DriverKind {
    /// Docker Engine API (Podman or Docker).
    Container,
    /// In-memory sandboxes, for tests and benchmarks of the control plane.
    Memory,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs berth sandboxes on this machine for the berth control plane.
#[derive(Debug, Parser)]
#[command(name = "berth-agent", version)]
struct Args {
    /// Control node addresses (host:port), comma separated.
    #[arg(long, env = "BERTH_CONTROL", value_delimiter = ',', required = true)]
    control: Vec<String>,
    /// Node name; default: the name persisted in the data dir, else the hostname.
    #[arg(long, env = "BERTH_NODE_NAME")]
    node_name: Option<String>,
    /// Directory for the persisted node name and fence term.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,
    /// Sandbox driver.
    #[arg(long, value_enum, default_value = "container")]
    driver: DriverKind,
    /// Address of the AgentData service (also advertised to the control plane).
    #[arg(long, default_value = "127.0.0.1:7101")]
    listen: SocketAddr,
    /// Container engine socket (unix:///path); default: find or start one.
    #[arg(long, env = "BERTH_ENGINE")]
    engine: Option<String>,
    /// Log output format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    if let Err(e) = run(args).await {
        eprintln!("berth-agent: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let node_name = identity::resolve(&args.data_dir, args.node_name.as_deref())?;
    let fence = Arc::new(Fence::load(&args.data_dir)?);
    let driver: Arc<dyn Driver> = match args.driver {
        DriverKind::Container => {
            Arc::new(ContainerDriver::connect(args.engine.as_deref(), &args.data_dir).await?)
        }
        DriverKind::Memory => Arc::new(MemoryDriver::new()),
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let data_addr = listener.local_addr()?.to_string();
    tracing::info!(node = %node_name, driver = driver.kind(), %data_addr, highest_term = fence.highest(), "berth-agent starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_rx2 = stop_rx.clone();
    let server = tokio::spawn(data_server::serve(listener, driver.clone(), async move {
        let _ = stop_rx2.wait_for(|s| *s).await;
    }));
    let cfg = SessionConfig {
        control: args.control,
        node_name,
        data_addr,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: memory_bytes(),
    };
    let session = Session::new(cfg, driver, fence);

    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = session.run() => tracing::error!("control session loop ended"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping (sandboxes keep running)"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping (sandboxes keep running)"),
    }
    let _ = stop_tx.send(true);
    drop(stop_rx);
    match tokio::time::timeout(std::time::Duration::from_secs(2), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "data server failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "data server task failed"),
        _ => {}
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// Total memory from /proc/meminfo (0 if unknown).
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
