//! `tollgate`: the command line.

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
    },
    /// Bridge the two interfaces of the config through Tollgate.
    Run {
        /// Configuration file (TOML) with an [interfaces] section.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file.
    Check {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<control::Config> {
    control::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn run() -> anyhow::Result<ExitCode> {
    match Cli::parse().cmd {
        Cmd::Lab { config, seconds } => {
            let cfg = match config {
                Some(p) => load(&p)?,
                None => control::parse(tollgate::live::LAB_CONFIG)
                    .map_err(|e| anyhow::anyhow!("built-in lab config: {e:?}"))?,
            };
            tollgate::live::lab(&cfg, seconds).map_err(|e| anyhow::anyhow!(e))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { config } => {
            let cfg = load(&config)?;
            tollgate::live::run(&cfg).map_err(|e| anyhow::anyhow!(e))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { config } => match control::load(&config) {
            Ok(c) => {
                println!("ok: {} rules", c.policy.rules.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Replay {
            config,
            pcap,
            inside,
            out,
            clock,
        } => {
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
            let res = tollgate::replay::replay_with_clock(&cfg, &bytes, &inside, clock, &mut w);
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
