//! `berth-agent`: start-up and wiring. Settles the node name (invariant 7)
//! and the fence (invariant 3) from the data dir, connects the driver, then
//! serves AgentData and keeps a control session until SIGTERM or ctrl-c.
//! Stopping the agent never stops or deletes sandboxes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_agent::driver::kube::objects::Storage;
use berth_agent::driver::kube::KubeConfig;
use berth_agent::driver::{ContainerDriver, Driver, KubeDriver, MemoryDriver};
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
    /// Pods and PersistentVolumeClaims on a Kubernetes (k3s) cluster.
    Kube,
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
    /// Node name; default: the name persisted in the data dir, else the
    /// hostname (container driver). With --driver kube it must be the
    /// Kubernetes node's name: set BERTH_NODE_NAME from the downward API
    /// (fieldRef spec.nodeName); the Pod's hostname is never used.
    #[arg(long, env = "BERTH_NODE_NAME")]
    node_name: Option<String>,
    /// Directory for the persisted node name and fence term.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,
    /// Sandbox driver.
    #[arg(long, value_enum, default_value = "container")]
    driver: DriverKind,
    /// Address the AgentData service listens on.
    #[arg(long, default_value = "127.0.0.1:7101")]
    listen: SocketAddr,
    /// Address the control plane reaches AgentData at (host:port); default:
    /// the listen address, which then must not be unspecified (0.0.0.0).
    #[arg(long, env = "BERTH_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// Local address connections to the control plane leave from; default:
    /// the system's choice.
    #[arg(long)]
    source_ip: Option<std::net::IpAddr>,
    /// The cluster CA's certificate (PEM): with --tls-cert and --tls-key,
    /// the control session is mutual TLS (control nodes must present
    /// `server.<cluster>.berth`) and the data plane serves TLS only, to
    /// control nodes alone.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This agent's certificate (`berth certs issue agent NODE`); it must
    /// name this agent's node.
    #[arg(long, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(long, requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Run without TLS: anyone who can reach the data plane can exec into
    /// sandboxes, and anyone who answers as the control plane can command
    /// this agent. Without it, the --tls-* flags are required.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    insecure: bool,
    /// The cluster's name (`berth certs init --cluster`), which control
    /// nodes' certificates name.
    #[arg(long, default_value = "berth")]
    tls_cluster: String,
    /// Longest an image pull may take before it fails (e.g. 10m, 90s).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pull_timeout: std::time::Duration,
    /// With the container driver, inspect every container at least this
    /// often (between resyncs only changed ones are; 1ms: every heartbeat).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    inventory_resync: std::time::Duration,
    /// Container engine socket (unix:///path); default: find or start one.
    #[arg(long, env = "BERTH_ENGINE")]
    engine: Option<String>,
    /// Log output format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// (kube) Namespace of the sandboxes' Pods and claims.
    #[arg(long, env = "BERTH_NAMESPACE", default_value = "berth-sandboxes")]
    namespace: String,
    /// (kube) A kubeconfig file; default: the in-cluster service account.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// (kube) Size of a new sandbox's workspace claim.
    #[arg(long, default_value = "2Gi", value_parser = parse_quantity)]
    pvc_size: String,
    /// (kube) Storage class of new workspace claims; default: the cluster's.
    #[arg(long)]
    storage_class: Option<String>,
    /// Also serve gRPC health alone, in plaintext, on this address, for
    /// probes that cannot speak mutual TLS (the kubelet's gRPC probes).
    #[arg(long)]
    health_listen: Option<SocketAddr>,
    /// Export traces over OTLP/gRPC to this endpoint (http://host:4317);
    /// default: OTEL_EXPORTER_OTLP_ENDPOINT, else no export.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The chaos suite's failpoints (FAILPOINTS; unset in production).
    let _failpoints = berth_proto::chaos::failpoints();
    let _telemetry = berth_telemetry::init(berth_telemetry::Settings {
        service: "berth-agent",
        format: match args.log_format {
            LogFormat::Text => berth_telemetry::LogFormat::Text,
            LogFormat::Json => berth_telemetry::LogFormat::Json,
        },
        default_filter: "info",
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;
    if let Err(e) = run(args).await {
        eprintln!("berth-agent: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.insecure {
        tracing::warn!(
            "--insecure: no TLS; anyone who can reach the data plane can exec into sandboxes"
        );
    } else if args.tls_cert.is_none() {
        anyhow::bail!("berth-agent speaks TLS only unless told otherwise: pass --tls-ca, --tls-cert and --tls-key (`berth certs issue agent NODE` makes them), or --insecure to run without TLS");
    }
    if let Some(ip) = args.source_ip {
        berth_proto::dial::set_source_ip(ip).map_err(anyhow::Error::msg)?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let node_name = match args.driver {
        DriverKind::Kube => {
            identity::resolve_without_hostname(&args.data_dir, args.node_name.as_deref())?
        }
        _ => identity::resolve(&args.data_dir, args.node_name.as_deref())?,
    };
    let control_identity = berth_tls::Identity::Server {
        cluster: args.tls_cluster.clone(),
    };
    let tls = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let reloading = berth_tls::Reloading::load(ca, cert, key)?;
            reloading.watch(std::time::Duration::from_secs(2));
            let own = berth_proto::dial::set_tls(reloading.clone()).map_err(anyhow::Error::msg)?;
            let wanted = berth_tls::Identity::Agent {
                node: node_name.clone(),
            };
            if own != wanted {
                anyhow::bail!(
                    "--tls-cert names {own}, but this agent is node {node_name:?} ({wanted}): issue one with `berth certs issue agent {node_name}`"
                );
            }
            tracing::info!(identity = %own, "TLS on: control nodes must present {control_identity}");
            Some((reloading, control_identity.clone()))
        }
        _ => None,
    };
    let instance_id = identity::instance_id(&args.data_dir)?;
    let fence = Arc::new(Fence::load(&args.data_dir)?);
    let driver: Arc<dyn Driver> = match args.driver {
        DriverKind::Container => Arc::new(
            ContainerDriver::connect(args.engine.as_deref(), &args.data_dir)
                .await?
                .with_pull_timeout(args.pull_timeout)
                .with_resync(args.inventory_resync),
        ),
        DriverKind::Kube => Arc::new(
            KubeDriver::connect(KubeConfig {
                namespace: args.namespace.clone(),
                kubeconfig: args.kubeconfig.clone(),
                node: node_name.clone(),
                storage: Storage {
                    size: args.pvc_size.clone(),
                    class: args.storage_class.clone(),
                },
                pull_timeout: args.pull_timeout,
            })
            .await?,
        ),
        DriverKind::Memory => Arc::new(MemoryDriver::new()),
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let data_addr = advertised(args.advertise_addr.as_deref(), listener.local_addr()?)?;
    let listener = berth_proto::net::Listener::Tcp(listener);
    if let Some(addr) = args.metrics_listen {
        let bound = berth_telemetry::metrics::spawn(
            &addr.to_string(),
            berth_telemetry::metrics::Component::Agent,
        )
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
        tracing::info!(%bound, "serving metrics on /metrics");
    }
    if let Some(addr) = args.health_listen {
        berth_proto::probe::spawn(addr)
            .await
            .with_context(|| format!("--health-listen {addr}"))?;
    }
    tracing::info!(node = %node_name, driver = driver.kind(), %data_addr, highest_term = fence.highest(), "berth-agent starting");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_rx2 = stop_rx.clone();
    let server = tokio::spawn(data_server::serve(
        listener,
        driver.clone(),
        tls,
        async move {
            let _ = stop_rx2.wait_for(|s| *s).await;
        },
    ));
    let cfg = SessionConfig {
        control: args.control,
        node_name,
        instance_id,
        data_addr,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes: memory_bytes(),
        control_identity,
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

/// The AgentData address to advertise: the flag, else the bound listen
/// address, which must then be one others can dial.
fn advertised(flag: Option<&str>, bound: SocketAddr) -> anyhow::Result<String> {
    match flag {
        Some(addr) => {
            let (host, port) = addr
                .rsplit_once(':')
                .with_context(|| format!("--advertise-addr {addr:?} must be host:port"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("--advertise-addr {addr:?} has no valid port"))?;
            let unspecified = host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
            if host.is_empty() || unspecified {
                anyhow::bail!("--advertise-addr {addr:?} must name a host others can reach");
            }
            Ok(format!("{host}:{port}"))
        }
        None if bound.ip().is_unspecified() => anyhow::bail!(
            "--listen {bound} is unspecified; give --advertise-addr HOST:PORT that the control plane can reach"
        ),
        None => Ok(bound.to_string()),
    }
}

/// "10m", "90s", "1500ms", or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (e.g. 10m, 90s)"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("invalid duration unit in {text:?} (ms, s, m or h)")),
    };
    if ms == 0 {
        return Err("the duration must be positive".to_string());
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// A storage size as Kubernetes writes it: digits and a unit (Ki, Mi,
/// Gi, Ti, Pi, Ei, or k, M, G, T, P, E), not zero.
fn parse_quantity(text: &str) -> Result<String, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let units = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
    ];
    match number.parse::<u64>() {
        Ok(n) if n > 0 && units.contains(&unit) => Ok(text.to_string()),
        _ => Err(format!("invalid size {text:?} (e.g. 2Gi, 500Mi)")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_never_unspecified() {
        let any: SocketAddr = "0.0.0.0:7101".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:7101".parse().unwrap();
        assert_eq!(advertised(None, lo).unwrap(), "127.0.0.1:7101");
        assert!(advertised(None, any).is_err());
        assert_eq!(
            advertised(Some("10.0.0.5:7101"), any).unwrap(),
            "10.0.0.5:7101"
        );
        assert_eq!(
            advertised(Some("node-a.lan:80"), any).unwrap(),
            "node-a.lan:80"
        );
        for bad in ["0.0.0.0:7101", "[::]:7101", "host", "host:0", ":80"] {
            assert!(advertised(Some(bad), lo).is_err(), "{bad}");
        }
    }

    #[test]
    fn storage_sizes() {
        for ok in ["2Gi", "500Mi", "10G", "1073741824"] {
            assert_eq!(parse_quantity(ok).unwrap(), ok);
        }
        for bad in ["", "0Gi", "2GB", "Gi", "-1Gi", "1.5Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("1500ms").unwrap().as_millis(), 1500);
        assert_eq!(parse_duration("7").unwrap().as_secs(), 7);
        for bad in ["", "0s", "5d", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
