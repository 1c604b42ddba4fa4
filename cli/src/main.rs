//! `berth`: the command-line client for a berth control plane, and
//! `berth up`/`berth down` for a local cluster.
//!
//! Every failure prints one `error: ...` line and exits non-zero: 2 for bad
//! input, 3 not found, 4 already exists, 5 unavailable, 6 not
//! authenticated (no, a bad, revoked or expired credential), 7 permission
//! denied, 8 over quota, 1 otherwise.

mod access;
mod certs;
mod client;
mod credentials;
mod describe;
mod local;
mod operations;
mod output;
mod sandbox;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::client::{Control, Credentials};
use crate::output::Format;

/// Default control addresses: the nodes `berth up` starts.
const DEFAULT_CONTROL: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "berth: stateful sandboxes on a Raft-replicated control plane"
)]
struct Cli {
    /// Export a trace of this command over OTLP/gRPC to this endpoint
    /// (http://host:4317); default: OTEL_EXPORTER_OTLP_ENDPOINT, else none.
    #[arg(long, global = true)]
    otlp_endpoint: Option<String>,
    /// Control nodes to try, in order (HOST:PORT,...).
    #[arg(long, global = true, env = "BERTH_CONTROL", default_value = DEFAULT_CONTROL)]
    control: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Format,
    /// The cluster CA's certificate, to reach control nodes over TLS
    /// (default: the one `berth up` made under $BERTH_HOME).
    #[arg(long, global = true, env = "BERTH_CA")]
    ca: Option<PathBuf>,
    /// A client certificate (with --key) to present to the control nodes.
    #[arg(long, global = true, env = "BERTH_CERT")]
    cert: Option<PathBuf>,
    /// The key of --cert.
    #[arg(long, global = true, env = "BERTH_KEY")]
    key: Option<PathBuf>,
    /// API token (default: the one `berth up` wrote under $BERTH_HOME).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Act in this tenant (platform admins only; default: your token's).
    #[arg(long, global = true, env = "BERTH_TENANT")]
    as_tenant: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The agent driver of `berth up`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum UpDriver {
    Container,
    Kube,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The control plane itself.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Node agents.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Workspace volumes kept from deleted sandboxes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// A cluster CA and the certificates it issues.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(access::TokenCommand),
    /// Tenants and their quotas.
    #[command(subcommand)]
    Tenant(access::TenantCommand),
    /// Who your credential says you are.
    Whoami,
    /// Start a local cluster in the background.
    Up {
        /// Number of control nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Where the cluster keeps its data and logs.
        #[arg(long, env = "BERTH_HOME", default_value = ".berth")]
        home: PathBuf,
        /// Port of node 1; node N listens on base-port + N - 1; the agent on base-port + 100.
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        /// Start only the control plane, no node agent.
        #[arg(long)]
        no_agent: bool,
        /// How the agent runs sandboxes: containers on this machine, or
        /// Pods on a Kubernetes node (with --kubeconfig and --kube-node).
        #[arg(long, value_enum, default_value = "container")]
        driver: UpDriver,
        /// (kube) The cluster's kubeconfig.
        #[arg(long, env = "KUBECONFIG", required_if_eq("driver", "kube"))]
        kubeconfig: Option<PathBuf>,
        /// (kube) The Kubernetes node the agent runs sandboxes on (its
        /// name as `kubectl get nodes` shows it).
        #[arg(long, required_if_eq("driver", "kube"))]
        kube_node: Option<String>,
        /// (kube) Namespace of the sandboxes' Pods and claims.
        #[arg(long, default_value = "berth-sandboxes")]
        namespace: String,
        /// No TLS: anyone who can reach the ports can act as a node, an
        /// agent or a client (by default `up` makes a CA and certificates
        /// under HOME/tls and every link is mutual TLS).
        #[arg(long)]
        insecure: bool,
    },
    /// Stop the local cluster started by `berth up` (its data is kept).
    Down {
        #[arg(long, env = "BERTH_HOME", default_value = ".berth")]
        home: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Agents known to the cluster and whether they are Ready.
    List,
    /// Let a new agent instance take over a node name (after the machine
    /// was rebuilt or its data dir restored); the old agent must be stopped.
    Replace { name: String },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Leader, term and members.
    Status,
    /// Add a control node (learner, then voter).
    AddNode { id: u64, addr: String },
    /// Remove a control node.
    RemoveNode { id: u64 },
}

/// A failure to report: one line and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let broken = [
            "transport error",
            "h2 protocol error",
            "operation was canceled",
        ];
        if broken.iter().any(|b| status.message().starts_with(b)) {
            // The connection broke (no answer from berth's API), typically
            // plaintext spoken to a node that serves TLS.
            return Self {
                message: format!(
                    "{}: the control node broke the connection (if it serves TLS, pass --ca FILE or set BERTH_HOME to the home `berth up` used)",
                    status.message()
                ),
                code: 5,
            };
        }
        let code = match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => 2,
            tonic::Code::NotFound => 3,
            tonic::Code::AlreadyExists => 4,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => 5,
            tonic::Code::Unauthenticated => 6,
            tonic::Code::PermissionDenied => 7,
            tonic::Code::ResourceExhausted => 8,
            _ => 1,
        };
        let message = status.message().lines().next().unwrap_or("").to_string();
        let message = if message.is_empty() {
            format!("{:?}", status.code())
        } else {
            message
        };
        let message = match status.code() {
            tonic::Code::Unauthenticated => format!("not authenticated: {message}"),
            tonic::Code::PermissionDenied => format!("permission denied: {message}"),
            tonic::Code::ResourceExhausted => format!("over quota: {message}"),
            _ => message,
        };
        Self { message, code }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let home =
        std::env::var_os("BERTH_HOME").map_or_else(|| PathBuf::from(".berth"), PathBuf::from);
    let tls = credentials::client_tls(
        cli.ca.as_deref(),
        cli.cert.as_deref(),
        cli.key.as_deref(),
        &home,
    )?;
    let token = credentials::token(cli.token.as_deref(), &home)?;
    let creds = Credentials::new(token.as_deref(), cli.as_tenant.as_deref())?;
    match cli.command {
        Command::Cluster(command) => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            let mut client = control.cluster();
            let status = match command {
                ClusterCommand::Status => {
                    client
                        .get_status(berth_proto::v1::GetStatusRequest {})
                        .await?
                }
                ClusterCommand::AddNode { id, addr } => {
                    client
                        .add_node(berth_proto::v1::AddNodeRequest { id, addr })
                        .await?
                }
                ClusterCommand::RemoveNode { id } => {
                    client
                        .remove_node(berth_proto::v1::RemoveNodeRequest { id })
                        .await?
                }
            };
            output::print_status(cli.output, &status.into_inner());
            Ok(0)
        }
        Command::Sandbox(command) => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            sandbox::run(control, cli.output, command).await
        }
        Command::Certs(command) => certs::run(cli.output, command),
        Command::Token(command) => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            access::token(control, cli.output, command).await
        }
        Command::Tenant(command) => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            access::tenant(control, cli.output, command).await
        }
        Command::Whoami => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            access::whoami(control, cli.output).await
        }
        Command::Volume(command) => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            volume::run(control, cli.output, command).await
        }
        Command::Node(NodeCommand::Replace { name }) => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            let agent = control
                .cluster()
                .replace_node(berth_proto::v1::ReplaceNodeRequest { name })
                .await?
                .into_inner();
            match cli.output {
                Format::Json => output::print_agents(cli.output, &[agent]),
                Format::Table => println!(
                    "node {}: the next agent to register under this name is accepted",
                    agent.name
                ),
            }
            Ok(0)
        }
        Command::Node(NodeCommand::List) => {
            let control = Control::connect(&cli.control, tls.as_ref(), &creds).await?;
            let agents = control
                .cluster()
                .list_agents(berth_proto::v1::ListAgentsRequest {})
                .await?
                .into_inner();
            output::print_agents(cli.output, &agents.agents);
            Ok(0)
        }
        Command::Up {
            nodes,
            home,
            base_port,
            no_agent,
            insecure,
            driver,
            kubeconfig,
            kube_node,
            namespace,
        } => {
            let agent = match (no_agent, driver, kubeconfig, kube_node) {
                (true, ..) => None,
                (false, UpDriver::Container, ..) => Some(local::LocalDriver::Container),
                (false, UpDriver::Kube, Some(kubeconfig), Some(node)) => {
                    Some(local::LocalDriver::Kube {
                        kubeconfig,
                        node,
                        namespace,
                    })
                }
                (false, UpDriver::Kube, ..) => {
                    return Err(Failure::usage(
                        "--driver kube needs --kubeconfig PATH and --kube-node NAME",
                    ))
                }
            };
            local::up(&home, nodes, base_port, agent, !insecure)
                .await
                .map(|()| 0)
        }
        Command::Down { home } => local::down(&home).map(|()| 0),
    }
}

/// "sandbox create", "cluster status": the subcommand path, for the
/// root span's name (never arguments, which may hold secrets).
fn command_path(matches: &clap::ArgMatches) -> String {
    let mut path = Vec::new();
    let mut at = matches;
    while let Some((name, sub)) = at.subcommand() {
        path.push(name.to_string());
        at = sub;
    }
    path.join(" ")
}

#[tokio::main]
async fn main() -> ExitCode {
    use tracing::Instrument;
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Traces only when asked for; warnings and errors of the libraries
    // stay quiet unless RUST_LOG says otherwise.
    let telemetry = berth_telemetry::init(berth_telemetry::Settings {
        service: "berth",
        format: berth_telemetry::LogFormat::Text,
        default_filter: "off",
        otlp_endpoint: cli.otlp_endpoint.clone(),
    })
    .map_err(|e| eprintln!("berth: traces not exported: {e}"))
    .ok();
    let command = command_path(&matches);
    let span =
        tracing::info_span!("berth", otel.name = %format!("berth {command}"), otel.kind = "client");
    let outcome = run(cli).instrument(span).await;
    drop(telemetry); // flush the trace before exiting
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
