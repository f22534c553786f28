//! `porthole-agent`: the guest agent's command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use porthole_agent::app::Config;
use porthole_agent::serve::{self, Prepared};
use porthole_agent::stream::IceConfig;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "porthole-agent",
    version,
    about = "Porthole guest agent: streams and drives an X desktop"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Capture the display, serve WebRTC viewers and the HTTP API.
    Serve(ServeArgs),
    /// Environment files (.cursor/ or .porthole/environment.json, devcontainer.json).
    #[command(subcommand)]
    Env(EnvCmd),
    /// Internal: run a program in the workload sandbox (its namespaces at fds 3, 4, 5).
    #[command(hide = true)]
    WorkloadExec {
        #[arg(long)]
        seccomp: Option<PathBuf>,
        /// An image's root filesystem to run the program in (chroot, before privileges go).
        #[arg(long)]
        root: Option<PathBuf>,
        #[arg(last = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
    /// Internal: pid 1 of the workload sandbox.
    #[command(hide = true)]
    Reap,
    /// Internal: a machine's egress filter (started by core in its network namespace).
    #[command(hide = true)]
    EgressProxy {
        #[arg(long)]
        listen: SocketAddr,
        /// egressMode, as the environment file says it.
        #[arg(long)]
        mode: Option<String>,
        /// One egressAllowlist entry (repeatable).
        #[arg(long)]
        allow: Vec<String>,
        /// Where each decision goes, a JSON line.
        #[arg(long)]
        log: PathBuf,
        /// Exit when this descriptor reads EOF.
        #[arg(long)]
        exit_fd: Option<i32>,
    },
}

#[derive(Subcommand)]
enum EnvCmd {
    /// Validate a file: each problem on its own line, starting with its JSON path; exit 1 if invalid.
    Check {
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// X display to capture and drive, e.g. :99.
    #[arg(long)]
    display: String,
    /// Address to listen on, e.g. 127.0.0.1:7300.
    #[arg(long)]
    listen: SocketAddr,
    /// File holding the bearer token (else PORTHOLE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// File holding the coding agent's token (scoped: computer use, screenshot, exec, MCP,
    /// events, control state, chapters; every other endpoint answers 403 wrong_scope).
    /// Without it the one token is the operator's.
    #[arg(long)]
    agent_token_file: Option<PathBuf>,
    /// Delete the token files once read (a sandbox's private copies): processes the machine
    /// starts later cannot read them.
    #[arg(long)]
    forget_token_files: bool,
    /// Where recordings and state go (default $XDG_STATE_HOME/porthole-agent).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Computer-use coordinate space, mapped to the real screen.
    #[arg(long, default_value = "1280x800")]
    display_size: String,
    /// Repository to set up from its .porthole/ or .cursor/environment.json.
    #[arg(long)]
    workspace: Option<PathBuf>,
    /// JSON object of secret NAME: value (mode 0600).
    #[arg(long)]
    secrets_file: Option<PathBuf>,
    /// Do not record sessions.
    #[arg(long)]
    no_record: bool,
    /// WHEP viewers connected at once; one more is a 503 `too_many_viewers`.
    #[arg(long, default_value_t = 16)]
    max_viewers: usize,
    /// Distinct encodes (codec and `max_fps`) running at once; a viewer asking for another
    /// rate is a 503 `too_many_pipelines`.
    #[arg(long, default_value_t = 4)]
    max_pipelines: usize,
    /// Commands (`exec`, HTTP and MCP) running at once; one more is a 429 `too_many_execs`.
    #[arg(long, default_value_t = 32)]
    max_exec: usize,
    /// Event streams (`/v1/events/stream`) open at once; one more is a 503
    /// `too_many_subscribers`.
    #[arg(long, default_value_t = 256)]
    max_sse: usize,
    /// Finished recordings older than this many days are deleted, oldest first (0: kept
    /// whatever their age). The live one is never touched.
    #[arg(long, default_value_t = 30)]
    retain_days: u64,
    /// Finished recordings beyond this many MiB in all are deleted, oldest first (0: no
    /// limit). Default 20 GiB.
    #[arg(long, default_value_t = 20480)]
    retain_mb: u64,
    /// Start without a session (a warm pool starts one when the machine is claimed).
    #[arg(long)]
    idle: bool,
    /// Frame-rate cap for the live stream.
    #[arg(long, default_value_t = 30)]
    max_fps: u32,
    /// STUN/TURN server URLs for ICE (repeatable).
    #[arg(long = "ice-server")]
    ice_servers: Vec<String>,
    /// Username for the TURN servers among --ice-server (coturn long-term credentials).
    #[arg(long)]
    ice_username: Option<String>,
    /// File holding the password for --ice-username (a file, so no other user reads it in
    /// `ps`).
    #[arg(long, requires = "ice_username", conflicts_with = "ice_credential")]
    ice_credential_file: Option<PathBuf>,
    /// The password itself on the command line: every local user can read it in `ps`. Kept
    /// for old scripts; warns. Prefer --ice-credential-file.
    #[arg(long, requires = "ice_username", hide = true)]
    ice_credential: Option<String>,
    /// Public IP to advertise in host candidates (1:1 NAT, e.g. a cloud VM).
    #[arg(long)]
    public_ip: Option<String>,
    /// One UDP port for all WebRTC traffic (a single firewall rule).
    #[arg(long)]
    udp_port: Option<u16>,
    /// Seconds without output from the `agent` terminal or any action before a `stalled`
    /// event (0 disables).
    #[arg(long, default_value_t = 120)]
    stall_after: u64,
    /// PEM certificate (chain) to serve HTTPS with; the app pins its SHA-256 fingerprint.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Run everything the coding agent runs (exec, the environment, terminals, --start) in a
    /// sandbox of its own (bubblewrap): it cannot see, signal or replace this process, nor
    /// reach the data directory. What a local machine uses.
    #[arg(long)]
    workload_sandbox: bool,
    /// The workload's seccomp filter (a compiled BPF program, bubblewrap's format).
    #[arg(long, requires = "workload_sandbox")]
    workload_seccomp: Option<PathBuf>,
    /// The egress filter's decision log (JSON lines), turned into `egress` events.
    #[arg(long)]
    egress_log: Option<PathBuf>,
    /// A shell command started in the workload at boot, after the display is up (repeatable;
    /// a machine's browser). In the machine's tree, even when the environment has an image.
    #[arg(long = "start")]
    start: Vec<String>,
    /// As --start, in the environment's image (a browser the image brings:
    /// chromeExecutablePath).
    #[arg(long = "start-in-image", requires = "workload_root")]
    start_in_image: Vec<String>,
    /// The environment's image: its root filesystem, where exec, the environment's steps and
    /// its terminals run (the machine's own copy; see --workload-sandbox).
    #[arg(long, requires = "workload_sandbox")]
    workload_root: Option<PathBuf>,
    /// One `NAME=value` of the image's ENV (repeatable).
    #[arg(long = "workload-env", requires = "workload_root")]
    workload_env: Vec<String>,
    /// What the provider did to make the image (JSON: id, name, steps_run, steps_total,
    /// duration_ms, warnings): the environment's `build` step.
    #[arg(long, requires = "workload_root")]
    image_build: Option<String>,
}

fn prepare(a: ServeArgs) -> anyhow::Result<Prepared> {
    serve::validate_display(&a.display)?;
    let ice_credential = ice_credential(&a)?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(porthole_agent::tls::acceptor(c, k)?),
        _ => None,
    };
    let token = serve::read_token(a.token_file.as_deref())?;
    let agent_token = match &a.agent_token_file {
        Some(p) => Some(serve::read_token(Some(p))?),
        None => None,
    };
    if agent_token.as_deref() == Some(token.as_str()) {
        return Err(serve::ConfigError::SameTokens.into());
    }
    if a.forget_token_files {
        for f in a.token_file.iter().chain(a.agent_token_file.iter()) {
            std::fs::remove_file(f)
                .with_context(|| format!("--forget-token-files: cannot remove {}", f.display()))?;
        }
    }
    // The coding agent may share this uid: a non-dumpable process's memory, environment and
    // descriptors are closed to other processes of the same uid (ptrace access checks), so
    // the operator's token stays in here.
    serve::make_undumpable();
    let display_size = serve::parse_size(&a.display_size)?;
    if !(1..=120).contains(&a.max_fps) {
        return Err(serve::ConfigError::Fps(a.max_fps).into());
    }
    if let Some(w) = &a.workspace {
        if !w.is_dir() {
            return Err(serve::ConfigError::Workspace(w.clone()).into());
        }
    }
    let environment = match &a.workspace {
        Some(w) => {
            porthole_agent::environment::load_workspace_env(w).map_err(anyhow::Error::msg)?
        }
        None => None,
    };
    let secrets = match &a.secrets_file {
        Some(p) => serve::read_secrets(p)?,
        None => Default::default(),
    };
    let data_dir = a.data_dir.unwrap_or_else(serve::default_data_dir);
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        // Only the agent's uid: the recording and the events are evidence.
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict data dir {}", data_dir.display()))?;
    }
    Ok(Prepared {
        cfg: Config {
            display: a.display,
            listen: a.listen,
            token,
            agent_token,
            data_dir,
            display_size,
            workspace: a.workspace.clone(),
            record: !a.no_record,
            max_fps: a.max_fps,
            limits: porthole_agent::app::Limits {
                max_exec: a.max_exec.max(1),
                max_sse: a.max_sse.max(1),
            },
            retention: porthole_agent::recorder::Retention {
                max_age: (a.retain_days > 0)
                    .then(|| std::time::Duration::from_secs(a.retain_days * 86_400)),
                max_bytes: (a.retain_mb > 0).then(|| a.retain_mb << 20),
            },
        },
        listen: a.listen,
        hub_limits: porthole_agent::stream::HubLimits {
            max_viewers: a.max_viewers.max(1),
            max_pipelines: a.max_pipelines.max(1),
        },
        secrets,
        ice: IceConfig {
            ice_servers: a.ice_servers,
            ice_username: a.ice_username,
            ice_credential,
            public_ip: a.public_ip,
            udp_port: a.udp_port,
        },
        idle: a.idle,
        environment,
        stall_after: std::time::Duration::from_secs(a.stall_after),
        tls,
        workload_sandbox: a.workload_sandbox,
        workload_seccomp: a.workload_seccomp,
        start: a.start,
        start_in_image: a.start_in_image,
        egress_log: a.egress_log,
        image: a
            .workload_root
            .map(|root| porthole_agent::workload::ImageRoot {
                root,
                env: a.workload_env,
                workspace: a.workspace.clone(),
            }),
        image_build: a
            .image_build
            .map(|j| serde_json::from_str(&j))
            .transpose()
            .context("--image-build is not JSON")?,
    })
}

/// The TURN password: from a file (trailing newline dropped), or the old flag with a warning.
fn ice_credential(a: &ServeArgs) -> anyhow::Result<Option<String>> {
    if let Some(p) = &a.ice_credential_file {
        let v = std::fs::read_to_string(p)
            .with_context(|| format!("--ice-credential-file: cannot read {}", p.display()))?;
        let v = v.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(
            !v.is_empty(),
            "--ice-credential-file {} is empty",
            p.display()
        );
        return Ok(Some(v.to_string()));
    }
    if a.ice_credential.is_some() {
        eprintln!(
            "porthole-agent: warning: --ice-credential puts the TURN password where every local \
             user reads it (ps); use --ice-credential-file"
        );
    } else if a.ice_username.is_some() {
        anyhow::bail!("--ice-username needs --ice-credential-file (the TURN password)");
    }
    Ok(a.ice_credential.clone())
}

fn main() -> anyhow::Result<()> {
    // The trampoline and the reaper first, before anything could start a thread.
    match std::env::args_os()
        .nth(1)
        .as_deref()
        .and_then(|a| a.to_str())
    {
        Some("workload-exec") => {
            if let Cmd::WorkloadExec {
                seccomp,
                root,
                argv,
            } = Cli::parse().cmd
            {
                porthole_agent::workload::exec_main(seccomp, root, argv);
            }
        }
        Some("reap") => porthole_agent::workload::reap_main(),
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,webrtc=warn,webrtc_ice=warn,webrtc_srtp=warn,webrtc_dtls=warn,webrtc_sctp=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().cmd {
        Cmd::Env(EnvCmd::Check { file, json }) => {
            let report = porthole_envfile::check_file(&file);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            std::process::exit(if report.is_valid() { 0 } else { 1 });
        }
        Cmd::WorkloadExec { .. } | Cmd::Reap => unreachable!("dispatched above"),
        Cmd::EgressProxy {
            listen,
            mode,
            allow,
            log,
            exit_fd,
        } => {
            let policy = porthole_agent::egress::Policy::from_env(mode.as_deref(), &allow)
                .map_err(anyhow::Error::msg)?;
            porthole_agent::egress::proxy_main(listen, policy, &log, exit_fd)
        }
        Cmd::Serve(a) => {
            let p = prepare(a)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(serve::run(p))
        }
    }
}
