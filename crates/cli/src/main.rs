//! `porthole`: the command line over porthole-core. It proves the core stands alone; the app
//! and the CLI share one state directory, so they see the same machines.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use porthole_core::{CreateSpec, Machine, Machines, ProviderKind, StateDir};
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "porthole",
    version,
    about = "Watch, steer and replay coding agents in VMs and sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create, list and manage machines.
    #[command(subcommand)]
    Machine(MachineCmd),
    /// Sessions on a machine.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Recorded sessions: list, sync to this computer, export as evidence.
    #[command(subcommand)]
    Recordings(RecordingsCmd),
    /// Agent runs: a repository and a task in, a branch and evidence out.
    #[command(subcommand)]
    Run(porthole_cli_run::RunCmd),
    /// A warm pool of machines booted from a snapshot, handed out at once.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Secrets (encrypted at rest; values are never printed): API keys, GIT_TOKEN for runs.
    #[command(subcommand)]
    Secrets(SecretsCmd),
}

#[derive(Subcommand)]
enum MachineCmd {
    /// Create a machine; returns when its agent answers.
    Create(CreateArgs),
    /// List machines.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped machine.
    Start(NameArgs),
    /// Stop a machine (its disk state and recordings stay).
    Stop(NameArgs),
    /// Stop a machine and remove everything it owns.
    Destroy(NameArgs),
    /// Print the machine's operator token (the app's and the CLI's; reaches every endpoint).
    Token {
        name: String,
        /// Print the coding agent's token instead: the only one the machine's own processes
        /// see (computer use, screenshot, exec, MCP, events, chapters; 403 elsewhere).
        #[arg(long)]
        agent: bool,
    },
    /// Save the machine's disk state as a snapshot new machines can start from.
    Snapshot {
        name: String,
        #[arg(long = "name", id = "snap")]
        snap: String,
        /// QEMU: save only the disk (the default also saves memory, so clones resume warm).
        #[arg(long)]
        disk_only: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct NameArgs {
    name: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CreateArgs {
    #[arg(long, default_value = "local")]
    provider: String,
    #[arg(long)]
    name: String,
    /// Environment file (.cursor/environment.json, .porthole/environment.json).
    #[arg(long)]
    env: Option<PathBuf>,
    /// Directory to mount as the machine's workspace (default: the environment's repository).
    #[arg(long)]
    workspace: Option<PathBuf>,
    #[arg(long)]
    from_snapshot: Option<String>,
    /// Remote host: the agent's URL, http[s]://host:port.
    #[arg(long)]
    url: Option<String>,
    /// Remote host: file holding the agent's token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Remote host over https: SHA-256 fingerprint of the agent's certificate.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Remote host: allow a plain http:// URL to another machine. The token, secrets and the
    /// screen then cross the network in clear: only on a network you trust.
    #[arg(long)]
    insecure_http: bool,
    /// Network. Local sandbox: always a private one by default (netns as root, slirp for an
    /// ordinary user); `host` shares the host's network and is NOT isolated (`loopback` is its
    /// old name). QEMU: tap (root, the default) or loopback (user networking).
    #[arg(long)]
    network: Option<String>,
    /// Start the agent without a session (for a warm pool).
    #[arg(long)]
    idle: bool,
    /// Start Chromium on the machine's desktop.
    #[arg(long)]
    browser: bool,
    /// Screen size, e.g. 1280x800.
    #[arg(long)]
    display_size: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SessionCmd {
    /// End the machine's current session and start a new one (new recording, clock at 0).
    Start {
        machine: String,
        /// Apply this environment file to the new session.
        #[arg(long)]
        env: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RecordingsCmd {
    /// Recordings on a machine (or all synced ones with --local).
    List {
        #[arg(long)]
        machine: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy a machine's recordings (video, events, thumbnails) into the local store; resumable.
    Sync {
        machine: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete synced sessions beyond the host's retention, oldest finished first (never one
    /// still recording). Without flags: PORTHOLE_RETAIN_DAYS (default 0, any age) and
    /// PORTHOLE_RETAIN_GB (default 50), which every sync also applies.
    Prune {
        /// Delete finished sessions that started more than this many days ago.
        #[arg(long)]
        older_than_days: Option<u64>,
        /// Delete the oldest finished sessions until all synced ones fit in this many GiB.
        #[arg(long)]
        max_gb: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Export a synced session as evidence: a folder with an HTML page, the clip, screenshots,
    /// the timeline and a Markdown summary.
    Export {
        session: String,
        #[arg(long)]
        out: PathBuf,
        /// Start of the range, ms on the session clock.
        #[arg(long)]
        from_ms: Option<u64>,
        /// End of the range, ms on the session clock.
        #[arg(long)]
        to_ms: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Store a secret; the value is read from standard input (one line), never from the
    /// command line where `ps` and shell history would see it.
    Set {
        name: String,
        /// Environment name to scope it to (default: every machine).
        #[arg(long, default_value = "")]
        scope: String,
    },
    /// Names, scopes and when they changed (never values).
    List {
        #[arg(long)]
        json: bool,
    },
    Delete {
        name: String,
        #[arg(long, default_value = "")]
        scope: String,
    },
}

#[derive(Subcommand)]
enum PoolCmd {
    /// Boot machines from a snapshot until N idle ones are ready.
    Fill {
        #[arg(long)]
        snapshot: String,
        #[arg(long, default_value_t = 1)]
        size: usize,
        #[arg(long)]
        json: bool,
    },
    /// Hand out a pooled machine under a new name (starts its session); refill in background.
    Claim {
        #[arg(long)]
        snapshot: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
}

mod porthole_cli_run {
    use clap::Subcommand;
    use std::path::PathBuf;

    #[derive(Subcommand)]
    pub enum RunCmd {
        /// Start an agent on a task in a fresh machine, on its own branch.
        Start {
            #[arg(long)]
            repo: String,
            #[arg(long)]
            branch: Option<String>,
            #[arg(long)]
            task: String,
            #[arg(long)]
            agent: String,
            #[arg(long)]
            env: Option<PathBuf>,
            #[arg(long, default_value = "local")]
            provider: String,
            #[arg(long)]
            json: bool,
        },
        List {
            #[arg(long)]
            json: bool,
        },
        Show {
            run: String,
            #[arg(long)]
            json: bool,
        },
        Stop {
            run: String,
            #[arg(long)]
            json: bool,
        },
        /// Bring the run's branch (porthole/<run-id>) into the repository.
        Collect {
            run: String,
            #[arg(long)]
            json: bool,
        },
    }
}

fn print(json_out: bool, v: &Value, human: impl FnOnce() -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human());
    }
}

fn machine_json(m: &Machine) -> Value {
    serde_json::to_value(m).unwrap_or_default()
}

fn machine_line(m: &Machine) -> String {
    format!(
        "{:<20} {:<7} {:<9} {}{}",
        m.name,
        m.provider.as_str(),
        m.status,
        m.agent_url.as_deref().unwrap_or("-"),
        m.error
            .as_ref()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default()
    )
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once('x')
        .context("--display-size: expected WIDTHxHEIGHT, e.g. 1280x800")?;
    Ok((
        w.parse().context("--display-size width")?,
        h.parse().context("--display-size height")?,
    ))
}

async fn run(cli: Cli) -> Result<()> {
    let ms = Machines::open(StateDir::from_env())
        .await
        .context("open the porthole state")?;
    match cli.cmd {
        Cmd::Machine(c) => match c {
            MachineCmd::Create(a) => {
                let spec = CreateSpec {
                    name: a.name,
                    provider: Some(ProviderKind::parse(&a.provider)?),
                    env_path: a.env,
                    workspace: a.workspace,
                    from_snapshot: a.from_snapshot,
                    url: a.url,
                    token_file: a.token_file,
                    fingerprint: a.fingerprint,
                    insecure_http: a.insecure_http,
                    idle: a.idle,
                    network: a.network,
                    display_size: a.display_size.as_deref().map(parse_size).transpose()?,
                    browser: a.browser,
                    extra_binds: vec![],
                };
                // Long steps (an image's build, a guest image) as they happen, on stderr when
                // a person watches it (a terminal) or PORTHOLE_PROGRESS=1 asks: a script's
                // stderr stays the one line of an error. stdout stays the result (`--json`).
                let show = std::io::IsTerminal::is_terminal(&std::io::stderr())
                    || std::env::var("PORTHOLE_PROGRESS").is_ok_and(|v| v == "1");
                let mut progress = ms.watch_progress();
                let create = ms.create(spec);
                tokio::pin!(create);
                let m = loop {
                    tokio::select! {
                        m = &mut create => break m,
                        Ok(p) = progress.recv() => if show { eprintln!("{}: {}", p.machine, p.message) },
                    }
                };
                while let Ok(p) = progress.try_recv() {
                    if show {
                        eprintln!("{}: {}", p.machine, p.message);
                    }
                }
                let m = m?;
                print(a.json, &machine_json(&m), || {
                    format!("created {}", machine_line(&m))
                });
            }
            MachineCmd::List { json } => {
                let list = ms.list().await?;
                print(
                    json,
                    &Value::Array(list.iter().map(machine_json).collect()),
                    || {
                        if list.is_empty() {
                            "no machines (create one: porthole machine create --name NAME)".into()
                        } else {
                            list.iter().map(machine_line).collect::<Vec<_>>().join("\n")
                        }
                    },
                );
            }
            MachineCmd::Start(a) => {
                let m = ms.start(&a.name).await?;
                print(a.json, &machine_json(&m), || {
                    format!("started {}", machine_line(&m))
                });
            }
            MachineCmd::Stop(a) => {
                let m = ms.stop(&a.name).await?;
                print(a.json, &machine_json(&m), || {
                    format!("stopped {}", machine_line(&m))
                });
            }
            MachineCmd::Destroy(a) => {
                ms.destroy(&a.name).await?;
                print(
                    a.json,
                    &json!({"name": a.name, "status": "destroyed"}),
                    || format!("destroyed {}", a.name),
                );
            }
            MachineCmd::Token { name, agent } => {
                let m = ms.get(&name).await?;
                if agent {
                    println!("{}", ms.agent_token(&m)?);
                } else {
                    println!("{}", ms.token(&m)?);
                }
            }
            MachineCmd::Snapshot {
                name,
                snap,
                disk_only,
                json,
            } => {
                let v = ms.snapshot_with(&name, &snap, disk_only).await?;
                print(json, &v, || format!("snapshot {snap} saved from {name}"));
            }
        },
        Cmd::Session(SessionCmd::Start { machine, env, json }) => {
            let m = ms.get(&machine).await?;
            let c = ms.client(&m)?;
            let v = c.post("/v1/sessions", &json!({})).await?;
            if let Some(env) = env {
                let e = porthole_core::environments::load(&env)?;
                c.post("/v1/environment", &json!({"environment": e}))
                    .await?;
            }
            print(json, &v, || {
                format!(
                    "session {} started on {machine}",
                    v["id"].as_str().unwrap_or("?")
                )
            });
        }
        Cmd::Recordings(c) => match c {
            RecordingsCmd::List { machine, json } => {
                let v = match machine {
                    Some(name) => {
                        let m = ms.get(&name).await?;
                        ms.client(&m)?.get("/v1/recordings").await?
                    }
                    None => {
                        json!({"recordings": porthole_core::sync::local_sessions(&ms.store).await?})
                    }
                };
                print(json, &v, || {
                    let rs = v["recordings"].as_array().cloned().unwrap_or_default();
                    if rs.is_empty() {
                        return "no recordings".into();
                    }
                    rs.iter()
                        .map(|r| {
                            format!(
                                "{:<24} {:>8} ms {:>10} bytes  {}",
                                r["id"].as_str().unwrap_or("?"),
                                r["duration_ms"],
                                r["bytes"],
                                r["state"].as_str().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            RecordingsCmd::Sync { machine, json } => {
                let m = ms.get(&machine).await?;
                let report = porthole_core::sync::sync_machine(&ms, &m).await?;
                print(json, &serde_json::to_value(&report)?, || {
                    format!(
                        "synced {} sessions, {} new events, {} new bytes",
                        report.sessions, report.events, report.bytes
                    )
                });
            }
            RecordingsCmd::Prune {
                older_than_days,
                max_gb,
                json,
            } => {
                let mut r = porthole_core::sync::host_retention()?;
                if older_than_days.is_some() || max_gb.is_some() {
                    r = porthole_proto::retention::Retention {
                        max_age: older_than_days
                            .map(|d| std::time::Duration::from_secs(d * 86_400)),
                        max_bytes: max_gb.map(|g| g << 30),
                    };
                }
                let gone = porthole_core::sync::prune(&ms, r).await?;
                print(json, &serde_json::json!({ "pruned": gone }), || {
                    if gone.is_empty() {
                        "nothing to prune".to_string()
                    } else {
                        format!("deleted {} session(s): {}", gone.len(), gone.join(", "))
                    }
                });
            }
            RecordingsCmd::Export {
                session,
                out,
                from_ms,
                to_ms,
                json,
            } => {
                let r = porthole_core::export::export(&ms, &session, &out, from_ms, to_ms).await?;
                print(json, &serde_json::to_value(&r)?, || {
                    format!(
                        "evidence written to {} (open {})",
                        out.display(),
                        r.html.display()
                    )
                });
            }
        },
        Cmd::Run(c) => porthole_core_runs(&ms, c).await?,
        Cmd::Secrets(c) => {
            let vault = porthole_core::vault::Vault::open(&ms).await?;
            match c {
                SecretsCmd::Set { name, scope } => {
                    let mut value = String::new();
                    std::io::stdin()
                        .read_line(&mut value)
                        .context("read the secret from standard input")?;
                    let value = value.trim_end_matches(['\n', '\r']);
                    vault.set(&name, &scope, value).await?;
                    eprintln!(
                        "secret {name} stored{}",
                        if scope.is_empty() {
                            String::new()
                        } else {
                            format!(" for environment {scope}")
                        }
                    );
                }
                SecretsCmd::List { json } => {
                    let list = vault.list().await?;
                    let v: Vec<Value> = list.iter().map(|s| json!({"name": s.name, "scope": s.scope, "updated_at": s.updated_at, "readable": s.readable})).collect();
                    print(json, &json!(v), || {
                        if list.is_empty() {
                            return "no secrets".into();
                        }
                        list.iter()
                            .map(|s| {
                                format!(
                                    "{:<24} {}",
                                    s.name,
                                    if s.scope.is_empty() {
                                        "(global)"
                                    } else {
                                        &s.scope
                                    }
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                }
                SecretsCmd::Delete { name, scope } => {
                    if !vault.delete(&name, &scope).await? {
                        anyhow::bail!(
                            "no secret {name}{} (see `porthole secrets list`)",
                            if scope.is_empty() {
                                String::new()
                            } else {
                                format!(" in {scope}")
                            }
                        );
                    }
                    eprintln!("secret {name} deleted");
                }
            }
        }
        Cmd::Pool(c) => match c {
            PoolCmd::Fill {
                snapshot,
                size,
                json,
            } => {
                let v = porthole_core::pool::fill(&ms, &snapshot, size).await?;
                print(json, &v, || {
                    format!("pool for {snapshot}: {} ready", v["ready"])
                });
            }
            PoolCmd::Claim {
                snapshot,
                name,
                json,
            } => {
                let (m, timing) = porthole_core::pool::claim(&ms, &snapshot, &name).await?;
                let mut v = machine_json(&m);
                v["claim_ms"] = json!(timing);
                print(json, &v, || {
                    format!("claimed {} in {timing} ms", machine_line(&m))
                });
            }
        },
    }
    Ok(())
}

async fn porthole_core_runs(ms: &Machines, c: porthole_cli_run::RunCmd) -> Result<()> {
    use porthole_cli_run::RunCmd;
    let runs = porthole_core::runs::Runs::new(ms.clone());
    match c {
        RunCmd::Start {
            repo,
            branch,
            task,
            agent,
            env,
            provider,
            json,
        } => {
            let r = runs
                .start(porthole_core::runs::StartSpec {
                    repo,
                    base: branch,
                    task,
                    agent,
                    env,
                    provider: ProviderKind::parse(&provider)?,
                })
                .await?;
            print(json, &serde_json::to_value(&r)?, || {
                format!(
                    "run {} started on {} (branch {})",
                    r.id, r.machine, r.branch
                )
            });
        }
        RunCmd::List { json } => {
            let list = runs.list().await?;
            print(json, &serde_json::to_value(&list)?, || {
                if list.is_empty() {
                    return "no runs".into();
                }
                list.iter()
                    .map(|r| format!("{:<14} {:<10} {:<24} {}", r.id, r.status, r.branch, r.task))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        RunCmd::Show { run, json } => {
            let r = runs.show(&run).await?;
            print(json, &r, || {
                serde_json::to_string_pretty(&r).unwrap_or_default()
            });
        }
        RunCmd::Stop { run, json } => {
            let r = runs.stop(&run).await?;
            print(json, &serde_json::to_value(&r)?, || {
                format!("run {} stopped", r.id)
            });
        }
        RunCmd::Collect { run, json } => {
            let v = runs.collect(&run).await?;
            print(json, &v, || {
                format!(
                    "branch {} is in {} ({} commits)",
                    v["branch"].as_str().unwrap_or("?"),
                    v["repo"].as_str().unwrap_or("?"),
                    v["commits"]
                )
            });
        }
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("porthole: {e:#}");
        std::process::exit(1);
    }
}
