//! `tollgate`: the command line.

#![forbid(unsafe_code)]

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "A conntrack middlebox with Linux netfilter semantics"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pipeline on a capture: one JSON line per packet.
    Replay {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Capture (pcap or pcapng).
        #[arg(long)]
        pcap: PathBuf,
        /// Inside prefixes: packets from these sources arrive on the inside.
        #[arg(long)]
        inside: String,
        /// Write the JSON lines here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `capture`: each packet's timestamp is the clock (timeouts as on the
        /// wire); `index`: packet i is at i microseconds (nothing expires).
        #[arg(long, default_value = "capture", value_parser = ["capture", "index"])]
        clock: String,
        /// Run over this many conntrack shards (the many-core semantics).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
        /// With --workers: which worker receives each packet. `owner`:
        /// symmetric RSS; `side`: inside to the first, outside to the last
        /// (every reply handed over); `round-robin`: packet i to worker i mod N.
        #[arg(long, default_value = "owner", value_parser = ["owner", "side", "round-robin"])]
        steer: String,
        /// Put the XDP fast path in front (`offload = true`): Tollgate's XDP
        /// program run with BPF_PROG_TEST_RUN forwards the established flows
        /// handed to it. Root; one worker.
        #[arg(long, conflicts_with = "workers")]
        offload: bool,
    },
    /// Build a lab of network namespaces, run Tollgate on it, drive traffic
    /// through it, and remove everything on exit (also on Ctrl-C).
    Lab {
        /// Policy and conntrack settings (default: the built-in example policy).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds to keep running after the demo traffic.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Queues per veth (one worker each).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
        queues: u32,
        /// Established flows forwarded by the XDP fast path (`offload = true`).
        #[arg(long)]
        offload: bool,
    },
    /// Bridge the two interfaces of the config through Tollgate.
    Run {
        /// Configuration file (TOML) with an [interfaces] section.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file, and/or (--system) report what the
    /// kernel and the interfaces offer and what Tollgate chooses from it.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["config", "system"])))]
    Check {
        /// Configuration file (TOML); with --system, its [interfaces] and
        /// offload settings are checked too.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Probe the running kernel (and the interfaces) and print the
        /// features and choices. Exit status 1 only if Tollgate cannot run.
        #[arg(long)]
        system: bool,
        /// An interface to probe (repeatable; in this network namespace).
        #[arg(long = "interface", requires = "system")]
        interfaces: Vec<String>,
        /// One JSON object instead of the table.
        #[arg(long, requires = "system")]
        json: bool,
    },
    /// Connection tracking table of a running instance.
    Ct {
        #[command(subcommand)]
        cmd: CtCmd,
        #[command(flatten)]
        at: At,
    },
    /// Expectations of a running instance.
    Expect {
        #[command(subcommand)]
        cmd: ExpectCmd,
        #[command(flatten)]
        at: At,
    },
    /// Re-read the running instance's config file and apply its policy
    /// (same as SIGHUP). An invalid file changes nothing.
    Reload {
        #[command(flatten)]
        at: At,
    },
}

/// Which running instance.
#[derive(clap::Args)]
struct At {
    /// Control socket (default: the config's [control] socket, else
    /// /run/tollgate/control.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// The instance's config file (to find its control socket).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// JSON lines instead of conntrack-style text.
    #[arg(long, global = true)]
    json: bool,
}

/// Connection filters (all given ones must match the original direction).
#[derive(clap::Args, Default)]
struct FilterArgs {
    /// Source address or CIDR prefix.
    #[arg(long, short = 's')]
    src: Option<String>,
    /// Destination address or CIDR prefix.
    #[arg(long, short = 'd')]
    dst: Option<String>,
    /// Source port.
    #[arg(long)]
    sport: Option<u16>,
    /// Destination port.
    #[arg(long)]
    dport: Option<u16>,
    /// Protocol (tcp, udp, icmp, icmpv6, gre, sctp, udplite or a number).
    #[arg(long, short = 'p')]
    proto: Option<String>,
    /// TCP state (ESTABLISHED, TIME_WAIT, ...) or unreplied, replied, assured.
    #[arg(long)]
    state: Option<String>,
}

impl FilterArgs {
    fn spec(self) -> control::proto::FilterSpec {
        control::proto::FilterSpec {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            state: self.state,
        }
    }
}

#[derive(Subcommand)]
enum CtCmd {
    /// List connections (like conntrack -L).
    List {
        #[command(flatten)]
        f: FilterArgs,
    },
    /// Delete connections: all, or those matching the filters (like conntrack -D/-F).
    Flush {
        #[command(flatten)]
        f: FilterArgs,
    },
    /// Counters per worker, with the kernel's names (like conntrack -S).
    Stats,
    /// Stream new/update/destroy events until interrupted (like conntrack -E).
    Events {
        #[command(flatten)]
        f: FilterArgs,
    },
}

#[derive(Subcommand)]
enum ExpectCmd {
    /// List expectations.
    List,
    /// Add an expectation on behalf of an existing (master) connection.
    Add {
        /// Protocol of the expected connection (tcp, udp, sctp, udplite).
        #[arg(long)]
        proto: String,
        /// Expected source address.
        #[arg(long)]
        src: String,
        /// Expected destination address.
        #[arg(long)]
        dst: String,
        /// Expected source port (default: any).
        #[arg(long)]
        sport: Option<u16>,
        /// Expected destination port.
        #[arg(long)]
        dport: u16,
        /// Master connection, original or reply tuple: "PROTO SRC SPORT DST DPORT".
        #[arg(long, num_args = 5, value_names = ["PROTO", "SRC", "SPORT", "DST", "DPORT"])]
        master: Vec<String>,
        /// Helper whose limits and timeout apply (ftp, tftp, irc, sip, ...).
        #[arg(long)]
        helper: String,
    },
    /// Delete an expectation by id (from `expect list`).
    Del {
        /// The id.
        id: u32,
        /// The worker holding it (default: any).
        #[arg(long)]
        worker: Option<usize>,
    },
}

fn socket_of(at: &At) -> anyhow::Result<PathBuf> {
    if let Some(s) = &at.socket {
        return Ok(s.clone());
    }
    if let Some(c) = &at.config {
        return Ok(load(c)?.control_socket);
    }
    Ok(PathBuf::from(control::config::DEFAULT_CONTROL_SOCKET))
}

fn ask(at: &At, req: &control::proto::Request) -> anyhow::Result<ExitCode> {
    let socket = socket_of(at)?;
    let output = if at.json {
        tollgate::cli::Output::Json
    } else {
        tollgate::cli::Output::Text
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match tollgate::cli::request(&socket, req, output, &mut out) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let _ = out.flush();
            eprintln!("tollgate: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<control::Config> {
    control::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn init_logs() {
    let filter = std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| "info".into());
    let level = filter
        .parse::<tracing::Level>()
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn run() -> anyhow::Result<ExitCode> {
    use control::proto::Request;
    match Cli::parse().cmd {
        Cmd::Lab {
            config,
            seconds,
            queues,
            offload,
        } => {
            init_logs();
            let mut cfg = match &config {
                Some(p) => load(p)?,
                None => control::parse(tollgate::live::LAB_CONFIG)
                    .map_err(|e| anyhow::anyhow!("built-in lab config: {e:?}"))?,
            };
            if offload {
                let i = cfg
                    .interfaces
                    .get_or_insert_with(|| control::config::Interfaces {
                        inside: "tgin".into(),
                        outside: "tgout".into(),
                        queues: control::config::Queues::Count(queues),
                        cores: Vec::new(),
                        xdp_mode: control::config::XdpMode::Auto,
                        offload: true,
                        busy_poll: false,
                    });
                i.offload = true;
            }
            tollgate::live::lab(&cfg, config, seconds, queues).map_err(|e| anyhow::anyhow!(e))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { config } => {
            init_logs();
            let cfg = load(&config)?;
            tollgate::live::run(&cfg, config).map_err(|e| anyhow::anyhow!(e))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ct { cmd, at } => {
            let req = match cmd {
                CtCmd::List { f } => Request::CtList { filter: f.spec() },
                CtCmd::Flush { f } => Request::CtFlush { filter: f.spec() },
                CtCmd::Stats => Request::CtStats,
                CtCmd::Events { f } => Request::CtEvents { filter: f.spec() },
            };
            ask(&at, &req)
        }
        Cmd::Expect { cmd, at } => {
            let req = match cmd {
                ExpectCmd::List => Request::ExpectList,
                ExpectCmd::Del { id, worker } => Request::ExpectDel { id, worker },
                ExpectCmd::Add {
                    proto,
                    src,
                    dst,
                    sport,
                    dport,
                    master,
                    helper,
                } => {
                    let [mp, ms, msp, md, mdp] = <[String; 5]>::try_from(master)
                        .map_err(|_| anyhow::anyhow!("--master takes PROTO SRC SPORT DST DPORT"))?;
                    let port = |p: &str, what: &str| {
                        p.parse::<u16>()
                            .map_err(|_| anyhow::anyhow!("--master {what}: \"{p}\" is not a port"))
                    };
                    Request::ExpectAdd(control::proto::ExpectAddSpec {
                        master: control::proto::TupleSpec {
                            proto: mp,
                            src: ms,
                            sport: Some(port(&msp, "SPORT")?),
                            dst: md,
                            dport: Some(port(&mdp, "DPORT")?),
                        },
                        expect: control::proto::TupleSpec {
                            proto,
                            src,
                            dst,
                            sport,
                            dport: Some(dport),
                        },
                        helper,
                    })
                }
            };
            ask(&at, &req)
        }
        Cmd::Reload { at } => ask(&at, &Request::Reload),
        Cmd::Check {
            config,
            system,
            interfaces,
            json,
        } => {
            let cfg = match config.as_deref().map(control::load).transpose() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if !system {
                if let Some(c) = cfg {
                    println!("ok: {} rules", c.policy.rules.len());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let check = tollgate::cli::SystemCheck::new(cfg.as_ref(), &interfaces);
            let output = if json {
                tollgate::cli::Output::Json
            } else {
                tollgate::cli::Output::Text
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let plan = tollgate::cli::system_report(&check, output, &mut out)?;
            out.flush()?;
            if plan.can_run() {
                Ok(ExitCode::SUCCESS)
            } else {
                for f in &plan.fatal {
                    eprintln!("tollgate: cannot run: {f}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Replay {
            config,
            pcap,
            inside,
            out,
            clock,
            workers,
            steer,
            offload,
        } => {
            let steer = match steer.as_str() {
                "side" => tollgate::replay::Steer::Side,
                "round-robin" => tollgate::replay::Steer::RoundRobin,
                _ => tollgate::replay::Steer::Owner,
            };
            let clock = if clock == "index" {
                tollgate::replay::Clock::Index
            } else {
                tollgate::replay::Clock::Capture
            };
            let cfg = load(&config)?;
            let inside = tollgate::replay::parse_inside(&inside).map_err(|e| anyhow::anyhow!(e))?;
            let bytes =
                std::fs::read(&pcap).with_context(|| format!("reading {}", pcap.display()))?;
            let mut w: Box<dyn Write> = match &out {
                Some(p) => Box::new(BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(BufWriter::new(std::io::stdout().lock())),
            };
            let res = if offload {
                tollgate::replay::replay_offload(&cfg, &bytes, &inside, clock, &mut w)
            } else {
                tollgate::replay::replay_sharded(
                    &cfg,
                    &bytes,
                    &inside,
                    clock,
                    usize::from(workers),
                    steer,
                    &mut w,
                )
            };
            w.flush()?;
            match res {
                Ok(sum) => {
                    eprintln!("{sum}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("tollgate replay: {}: {e}", pcap.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
