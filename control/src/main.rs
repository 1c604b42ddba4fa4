//! `berthd`: one node of berth's Raft-replicated control plane.
//!
//! Start-up: claim the node identity in the data dir, open storage, serve
//! gRPC, then bootstrap a new cluster (`--initial-cluster`, first start
//! only) or join a running one (`--join`). SIGTERM shuts down cleanly.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_control::auth::chain::Chain;
use berth_control::auth::layer::Admission;
use berth_control::{auth, bootstrap, leader, secrets, server};

/// How often the TLS files are checked for a change.
const CERT_RELOAD_EVERY: Duration = Duration::from_secs(2);
use berth_raft::{NodeConfig, RaftNode};
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A berth control-plane node.
#[derive(Debug, Parser)]
#[command(name = "berthd", version)]
struct Args {
    /// This node's id (a positive integer, stable for the node's life).
    #[arg(long)]
    id: u64,
    /// Address to serve gRPC on (host:port).
    #[arg(long)]
    listen: String,
    /// Address other nodes and clients reach this node at (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Local address outgoing connections (to peers and agents) leave from;
    /// default: the system's choice.
    #[arg(long)]
    source_ip: Option<std::net::IpAddr>,
    /// The cluster CA's certificate (PEM): with --tls-cert and --tls-key,
    /// this node serves TLS only, and talks to other nodes over mutual TLS,
    /// accepting only certificates that name this cluster's servers.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This node's server certificate (`berth certs issue server`).
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Run without TLS: anyone who can reach the port can act as a control
    /// node, an agent or a client. Without it, the --tls-* flags are
    /// required.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    insecure: bool,
    /// The cluster data key file (`ID:HEX` per line, the first seals):
    /// needed to keep secret env. Every node needs the same keys.
    #[arg(long)]
    data_key_file: Option<PathBuf>,
    /// Directory for this node's RocksDB and identity.
    #[arg(long)]
    data_dir: PathBuf,
    /// Bootstrap a new cluster: ID=HOST:PORT,... (ignored once initialized).
    #[arg(long, conflicts_with = "join")]
    initial_cluster: Option<String>,
    /// Join a running cluster through any of these nodes (HOST:PORT,...).
    #[arg(long)]
    join: Option<String>,
    /// Log output format; the filter comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Build a snapshot once at least this many writes were applied since
    /// the last one (and at least as many as there are records).
    #[arg(long, default_value_t = 1000, hide = true)]
    snapshot_every: u64,
    /// Log entries kept behind a snapshot before purging.
    #[arg(long, default_value_t = 1000, hide = true)]
    logs_to_keep: u64,
    /// As leader, commit each write in a log entry of its own instead of
    /// packing concurrent writes into one. Needed only while upgrading a
    /// cluster from a release without group commit (see deploy/README.md).
    #[arg(long)]
    no_group_commit: bool,
    /// Bound on client operations, in milliseconds.
    #[arg(long, default_value_t = 5000, hide = true)]
    request_timeout_ms: u64,
    /// Revisions kept per sandbox besides the stable ones (0: keep all).
    #[arg(long, default_value_t = 20)]
    keep_revisions: u32,
    /// Also serve gRPC health alone, in plaintext, on this address
    /// (host:port), for probes that cannot speak mutual TLS (the kubelet's
    /// gRPC probes); nothing else is served there.
    #[arg(long)]
    health_listen: Option<String>,
    /// Export traces over OTLP/gRPC to this endpoint (http://host:4317);
    /// default: OTEL_EXPORTER_OTLP_ENDPOINT, else no export.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (host:port).
    #[arg(long)]
    metrics_listen: Option<String>,
}

async fn shutdown_signal() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The chaos suite's failpoints (FAILPOINTS; unset in production).
    let _failpoints = berth_proto::chaos::failpoints();
    let _telemetry = berth_telemetry::init(berth_telemetry::Settings {
        service: "berthd",
        format: match args.log_format {
            LogFormat::Text => berth_telemetry::LogFormat::Text,
            LogFormat::Json => berth_telemetry::LogFormat::Json,
        },
        default_filter: "info,openraft=error,openraft::replication=off",
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;
    if args.id == 0 {
        bail!("--id must be a positive integer");
    }
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.clone());
    bootstrap::parse_addr(&advertise).map_err(anyhow::Error::msg)?;
    if let Some(ip) = args.source_ip {
        berth_proto::dial::set_source_ip(ip).map_err(anyhow::Error::msg)?;
    }
    if args.insecure {
        tracing::warn!("--insecure: no TLS and no authentication; anyone who can reach this port can act as a control node, an agent or a platform admin");
    } else if args.tls_cert.is_none() {
        bail!("berthd serves TLS only unless told otherwise: pass --tls-ca, --tls-cert and --tls-key (`berth certs` makes them), or --insecure to run without TLS");
    }
    if let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        let tls = berth_tls::Reloading::load(ca, cert, key)?;
        tls.watch(CERT_RELOAD_EVERY);
        let own = berth_proto::dial::set_tls(tls).map_err(anyhow::Error::msg)?;
        if !matches!(own, berth_tls::Identity::Server { .. }) {
            bail!(
                "--tls-cert names {own}, not a server: issue one with `berth certs issue server`"
            );
        }
        tracing::info!(identity = %own, "TLS on: peers must present {own}");
    }
    let initial_cluster = args
        .initial_cluster
        .as_deref()
        .map(bootstrap::parse_initial_cluster)
        .transpose()?;
    if let Some(members) = &initial_cluster {
        match members.get(&args.id) {
            Some(me) if me.addr == advertise => {}
            Some(me) => bail!(
                "--initial-cluster gives node {} the address {}, but it advertises {advertise}",
                args.id,
                me.addr
            ),
            None => bail!("--initial-cluster does not name this node ({})", args.id),
        }
    }
    if let Some(path) = &args.data_key_file {
        secrets::init(path)?;
    }
    bootstrap::claim_identity(&args.data_dir, args.id)?;

    let mut config = NodeConfig::new(args.id, advertise.clone(), &args.data_dir);
    config.snapshot_every = args.snapshot_every.max(1);
    config.logs_to_keep = args.logs_to_keep;
    config.group_commit = !args.no_group_commit;
    config.request_timeout = Duration::from_millis(args.request_timeout_ms.max(100));
    let node = RaftNode::start(config).await.context("start raft node")?;
    let listener = berth_proto::net::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    tracing::info!(id = args.id, listen = %args.listen, advertise = %advertise, "berthd serving");
    if let Some(addr) = &args.metrics_listen {
        let bound =
            berth_telemetry::metrics::spawn(addr, berth_telemetry::metrics::Component::Control)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?;
        tracing::info!(%bound, "serving metrics on /metrics");
    }
    if let Some(addr) = &args.health_listen {
        berth_proto::probe::spawn(addr.as_str())
            .await
            .with_context(|| format!("--health-listen {addr}"))?;
    }
    let leadership = leader::Leadership::watch(node.clone());
    let admission = match berth_proto::dial::tls().map(|t| t.identity()) {
        Some(berth_tls::Identity::Server { cluster }) => {
            tokio::spawn(auth::bootstrap::run(node.clone(), args.data_dir.clone()));
            Admission::Checked {
                chain: Chain::standard(node.clone(), cluster.clone()),
                node: node.clone(),
            }
        }
        _ => Admission::Insecure,
    };
    let server = tokio::spawn(server::serve(
        node.clone(),
        leadership,
        listener,
        shutdown_signal(),
        args.keep_revisions,
        admission,
    ));

    if node.is_initialized().await? {
        if args.initial_cluster.is_some() || args.join.is_some() {
            tracing::info!("data dir already holds a cluster; --initial-cluster/--join ignored");
        }
    } else if let Some(members) = initial_cluster {
        node.bootstrap(members).await?;
        tracing::info!("cluster bootstrapped");
    } else if let Some(join) = &args.join {
        bootstrap::join(join, args.id, &advertise, Duration::from_secs(60)).await?;
        tracing::info!(via = %join, "joined the cluster");
    } else {
        tracing::warn!("new data dir without --initial-cluster or --join: waiting to be added with `berth cluster add-node`");
    }

    let served = server.await.context("server task")?;
    node.shutdown().await;
    served
}
