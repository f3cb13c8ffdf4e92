//! The `lior` command line: parses arguments and starts things; holds no logic worth testing.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// lior: an MSMQ-compatible queue manager for Linux (MS-MQQB on TCP 1801).
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print captured MS-MQQB packets field by field (raw bytes or hex text).
    Decode {
        /// A file with one packet or a back-to-back stream; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        /// One JSON object per packet per line instead of indented text.
        #[arg(long)]
        json: bool,
    },
    /// Print the configuration: the defaults, or a file merged over them.
    Config {
        /// A TOML file to check and print with every default filled in.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode { file, json } => decode(file, json),
        Command::Config { config } => print_config(config),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lior: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn read_input(file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            bytes = std::fs::read(&p)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
        }
        _ => {
            std::io::stdin().read_to_end(&mut bytes)?;
        }
    }
    Ok(bytes)
}

fn decode(file: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let input = read_input(file)?;
    let bytes = lior::decode::hex_text_to_bytes(&input).unwrap_or(input);
    let (packets, error) = lior::decode::decode_stream(&bytes);
    for (i, p) in packets.iter().enumerate() {
        if json {
            println!("{p}");
        } else {
            if i > 0 {
                println!();
            }
            print!("{}", lior::decode::to_text(p));
        }
    }
    match error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            eprintln!("lior decode: malformed input: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_config(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = match path {
        Some(p) => lior::config::Config::load(&p)?,
        None => lior::config::Config::default(),
    };
    print!("{}", cfg.to_toml());
    Ok(ExitCode::SUCCESS)
}
