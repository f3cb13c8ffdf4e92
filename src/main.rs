//! The `lior` command line: parses arguments and starts things; holds no logic worth testing.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lior::http::api::{too_large, RECEIVE_COUNT_MAX, SEND_BODY_BYTES_MAX};

/// `println!` that exits quietly when stdout's reader went away (`lior peek ... | head`).
macro_rules! outln {
    () => {
        lior::bench::report::print_stdout("\n")
    };
    ($($t:tt)*) => {
        lior::bench::report::print_stdout(&format!("{}\n", format_args!($($t)*)))
    };
}

/// `eprintln!` that never panics: a closed stderr loses the line, nothing else.
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// `print!` with the same care.
macro_rules! out {
    ($($t:tt)*) => {
        lior::bench::report::print_stdout(&format!($($t)*))
    };
}

mod cli;

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
    /// Run the queue manager: MS-MQQB on TCP 1801 and the local API.
    Serve(ServeArgs),
    /// Load generator: N MS-MQQB sessions to any queue manager; messages/s and ack latency.
    Bench(lior::bench::BenchArgs),
    /// One screen on a running queue manager: GUID, addresses, partitions, sessions, queues,
    /// outgoing queues, disk use, store health.
    Status {
        /// The same as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Administer queues through the local API.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Outgoing queues (one per remote machine): their state, pause and resume.
    Outgoing {
        #[command(subcommand)]
        command: OutgoingCommand,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Verify a data directory's message store, or salvage a damaged one.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// AMQP users: `lior amqp-user hash` reads a password on stdin and prints the
    /// `password_hash` (an Argon2id PHC string) for `[[amqp.users]]`.
    AmqpUser {
        #[command(subcommand)]
        command: AmqpUserCommand,
    },
    /// Look at messages without removing them.
    Peek {
        queue: String,
        /// How many, from the front of the queue (at least 1).
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Send a message to a queue, here or on a remote queue manager (it waits in an outgoing
    /// queue until the remote machine takes it).
    Send {
        /// A format name, e.g. `DIRECT=OS:winbox\private$\orders`.
        to: String,
        #[arg(long, default_value = "")]
        label: String,
        /// The body as text...
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// ...or read from a file.
        #[arg(long)]
        body_file: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        priority: u8,
        /// Recoverable (on disk at every hop) instead of express.
        #[arg(long)]
        recoverable: bool,
        /// Transactional: exactly once, in order, to a transactional queue.
        #[arg(long)]
        transactional: bool,
        /// Positive source journaling (JP): a copy goes to this machine's journal
        /// (`SYSTEM$;JOURNAL`) once the message is delivered (transactional: received).
        #[arg(long)]
        journal: bool,
        /// Negative source journaling (JN): kept in a dead-letter queue if it cannot be
        /// delivered (transactional: if the destination refuses or drops it).
        #[arg(long)]
        dead_letter: bool,
        /// Send this many copies (at least 1).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// One JSON object per message sent per line (`message_id`, `placed`, `queue`, `held`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Receive (remove) messages; each removal is on disk before the message is printed.
    Receive {
        queue: String,
        /// How many (at least 1); fewer only when the queue runs empty, said on stderr.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Wait up to this long for a message to arrive.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
}

#[derive(Subcommand)]
enum AmqpUserCommand {
    /// Read one password from stdin (its first line) and print its salted Argon2id hash.
    Hash,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify every record of every partition, changing nothing; exit 0 clean, 1 damaged.
    Check {
        /// The data directory (or one partition's directory).
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Keep every record that verifies: copies each damaged segment file aside
    /// (`<name>.log.damaged`), then patches the damage so `lior serve` starts. Stop lior first.
    Salvage {
        /// The data directory (or one partition's directory).
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ApiArg {
    /// Address of the local API of a running `lior serve` (`HOST:PORT`, or a URL:
    /// `https://HOST:PORT` for an API served with api_tls_cert).
    #[arg(long, default_value = "127.0.0.1:1802", global = true)]
    api: String,
    /// PEM CA certificates that sign the certificate of an `https://` API (default: the
    /// public web roots built into lior).
    #[arg(long, global = true)]
    api_ca: Option<PathBuf>,
    /// The API's bearer token file, `DATA_DIR/api-token` of the server (needed when the API is
    /// beyond loopback or on HTTPS). Default: $LIOR_API_TOKEN_FILE, else ./lior-data/api-token
    /// or /var/lib/lior/api-token, the first that exists.
    #[arg(long, global = true)]
    api_token_file: Option<PathBuf>,
}

/// How the CLI reaches the API: the agent (with the CA of `--api-ca`) and the bearer token.
struct ApiClient {
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    token: Option<String>,
    agent: ureq::Agent,
}

static API_CLIENT: std::sync::OnceLock<ApiClient> = std::sync::OnceLock::new();

impl ApiArg {
    /// Sets up the API client from the options; returns the API's address.
    fn setup(&self) -> anyhow::Result<String> {
        let tls = match &self.api_ca {
            Some(ca) => Some(
                lior::http::tls::client_config(ca, None)
                    .map_err(|e| anyhow::anyhow!("--api-ca: {e}"))?,
            ),
            None => None,
        };
        let file = match &self.api_token_file {
            Some(f) => Some(f.clone()),
            None => std::env::var_os("LIOR_API_TOKEN_FILE")
                .map(PathBuf::from)
                .or_else(|| {
                    ["./lior-data", "/var/lib/lior"]
                        .iter()
                        .map(|d| std::path::Path::new(d).join(lior::http::tls::API_TOKEN_FILE))
                        .find(|p| p.is_file())
                }),
        };
        let token = match file {
            Some(f) => Some(
                std::fs::read_to_string(&f)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot read the API token file {}: {e}", f.display())
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let mut client = ApiClient {
            tls,
            token,
            agent: ureq::Agent::new(),
        };
        client.agent = client.agent_builder().build();
        let _ = API_CLIENT.set(client);
        Ok(self.api.clone())
    }
}

impl ApiClient {
    fn agent_builder(&self) -> ureq::AgentBuilder {
        let b = ureq::AgentBuilder::new();
        match &self.tls {
            Some(t) => b.tls_config(t.clone()),
            None => b,
        }
    }
}

fn api_client() -> &'static ApiClient {
    API_CLIENT.get_or_init(|| ApiClient {
        tls: None,
        token: None,
        agent: ureq::Agent::new(),
    })
}

/// A request carrying the bearer token, when there is one.
fn authorize(req: ureq::Request) -> ureq::Request {
    match &api_client().token {
        Some(t) => req.set("Authorization", &format!("Bearer {t}")),
        None => req,
    }
}

fn get(url: &str) -> ureq::Request {
    authorize(api_client().agent.get(url))
}

fn post(url: &str) -> ureq::Request {
    authorize(api_client().agent.post(url))
}

fn delete(url: &str) -> ureq::Request {
    authorize(api_client().agent.delete(url))
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Create a private queue.
    Create {
        name: String,
        #[arg(long)]
        transactional: bool,
        #[arg(long)]
        json: bool,
    },
    /// List queues with their message counts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a private queue and its messages.
    Delete {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove every message of a queue; says how many messages and bytes went.
    Purge {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A queue's rights, Authenticate, quota, journal, transaction type and partition.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Grant rights on a queue to a principal: a SID (S-1-5-21-...), Everyone, Anonymous or
    /// user:NAME. Rights: send, receive, peek, delete-message, receive-journal,
    /// get-properties, set-properties, get-permissions, set-permissions, take-ownership,
    /// delete, full (or MSMQ's MQSEC_* names).
    Grant {
        name: String,
        principal: String,
        #[arg(required = true)]
        rights: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Take rights on a queue from a principal (as `grant` names them).
    Revoke {
        name: String,
        principal: String,
        #[arg(required = true)]
        rights: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Whether the queue takes only authenticated messages (MSMQ's Authenticate): on or off.
    Authenticate {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
        #[arg(long)]
        json: bool,
    },
    /// Whether the queue keeps a copy of every received message in `NAME;journal` (MSMQ's
    /// Journal; read it with `lior receive 'NAME;journal'`): on or off.
    Journal {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OutgoingCommand {
    /// Every outgoing queue: state, messages and bytes waiting, next try, last error.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop sending to a machine (its session closes; messages keep waiting, across restarts).
    Pause {
        /// As `lior outgoing list` names it, e.g. `TCP:10.0.0.7` or `OS:winbox`.
        destination: String,
        #[arg(long)]
        json: bool,
    },
    /// Send to a machine again.
    Resume {
        destination: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (keys as `lior config` prints them).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (queues, logs, the queue-manager GUID).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// MS-MQQB listener; port 0 picks a free port.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Local API listener; port 0 picks a free port.
    #[arg(long)]
    api: Option<std::net::SocketAddr>,
    /// Serve AMQP 1.0 on this address (sets `[amqp] enabled = true` and `listen`); port 0
    /// picks a free port.
    #[arg(long)]
    amqp_listen: Option<std::net::SocketAddr>,
    /// Cores to run shards on, e.g. `0,1` or `2-3`; default all.
    #[arg(long)]
    cores: Option<String>,
    /// Salvage a damaged store first, as `lior store salvage` does (damaged segment files are
    /// copied aside; every record that verifies is kept).
    #[arg(long)]
    salvage: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Decode { file, json } => decode(file, json),
        Command::Config { config } => print_config(config),
        Command::Serve(args) => serve(args),
        Command::Bench(args) => lior::bench::main(args),
        Command::Status { json, api } => api.setup().and_then(|a| status(&a, json)),
        Command::Queue { command, api } => api.setup().and_then(|a| queue(command, &a)),
        Command::Outgoing { command, api } => api.setup().and_then(|a| outgoing(command, &a)),
        Command::Store { command } => store(command),
        Command::AmqpUser {
            command: AmqpUserCommand::Hash,
        } => amqp_user_hash(),
        Command::Peek {
            queue,
            count,
            json,
            api,
        } => api
            .setup()
            .and_then(|a| messages(&a, &queue, "GET", "messages", count, 0, json)),
        Command::Send {
            to,
            label,
            body,
            body_file,
            priority,
            recoverable,
            transactional,
            journal,
            dead_letter,
            count,
            json,
            api,
        } => api.setup().and_then(|a| {
            send(
                &a,
                &to,
                &label,
                body,
                body_file,
                priority,
                recoverable || transactional,
                transactional,
                (journal, dead_letter),
                count,
                json,
            )
        }),
        Command::Receive {
            queue,
            count,
            wait_ms,
            json,
            api,
        } => api
            .setup()
            .and_then(|a| messages(&a, &queue, "POST", "receive", count, wait_ms, json)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("lior: {e:#}");
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
            outln!("{p}");
        } else {
            if i > 0 {
                outln!();
            }
            out!("{}", lior::decode::to_text(p));
        }
    }
    match error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            errln!("lior decode: malformed input: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn amqp_user_hash() -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let phc = lior::amqp::auth::hash_password(password).map_err(|e| {
        anyhow::anyhow!("{e}; give the password on stdin, e.g. `lior amqp-user hash < file`")
    })?;
    println!("{phc}");
    Ok(ExitCode::SUCCESS)
}

fn store(cmd: StoreCommand) -> anyhow::Result<ExitCode> {
    use lior::store::check;
    match cmd {
        StoreCommand::Check { dir, json } => {
            let report = check::check(&dir).map_err(anyhow::Error::msg)?;
            if json {
                outln!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            Ok(ExitCode::from(u8::from(report.damaged())))
        }
        StoreCommand::Salvage { dir, json } => {
            let done = check::salvage(&dir).map_err(anyhow::Error::msg)?;
            if json {
                outln!("{}", check::salvaged_json(&done));
            } else {
                print!("{}", check::salvaged_text(&dir, &done));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_config(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let cfg = match path {
        Some(p) => lior::config::Config::load(&p)?,
        None => lior::config::Config::default(),
    };
    out!("{}", cfg.to_toml());
    Ok(ExitCode::SUCCESS)
}

fn parse_cores(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
                anyhow::ensure!(a <= b, "bad core range {part:?}");
                out.extend(a..=b);
            }
            None => out.push(part.parse()?),
        }
    }
    anyhow::ensure!(!out.is_empty(), "--cores names no core");
    Ok(out)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let mut cfg = match &args.config {
        Some(p) => lior::config::Config::load(p)?,
        None => lior::config::Config::default(),
    };
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(a) = args.api {
        cfg.api = a;
    }
    if let Some(a) = args.amqp_listen {
        cfg.amqp.enabled = true;
        cfg.amqp.listen = a;
    }
    if let Some(c) = args.cores {
        cfg.cores = parse_cores(&c)?;
    }
    if args.salvage && cfg.data_dir.join("partition-0").is_dir() {
        let done = lior::store::check::salvage(&cfg.data_dir).map_err(anyhow::Error::msg)?;
        eprint!(
            "{}",
            lior::store::check::salvaged_text(&cfg.data_dir, &done)
        );
    }
    lior::daemon::serve(cfg)?;
    Ok(ExitCode::SUCCESS)
}

fn url(api: &str, path: &str) -> String {
    if api.starts_with("http://") || api.starts_with("https://") {
        format!("{}{path}", api.trim_end_matches('/'))
    } else {
        format!("http://{api}{path}")
    }
}

/// Percent-encodes a queue name for a URL path segment.
fn seg(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn call(req: ureq::Request, body: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
    call_more(req, body).map(|(v, _)| v)
}

/// [`call`], and whether the answer says more messages may be waiting
/// (`lior::http::api::MORE_HEADER`).
fn call_more(
    req: ureq::Request,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(serde_json::Value, bool)> {
    let url = req.url().to_string();
    let (r, sent_bytes) = match body {
        Some(b) => {
            let text = b.to_string();
            let n = text.len();
            (
                req.set("Content-Type", "application/json")
                    .send_string(&text),
                n,
            )
        }
        None => (req.call(), 0),
    };
    match r {
        Ok(resp) => {
            let more = resp.header(lior::http::api::MORE_HEADER) == Some("true");
            // Read through a reader: ureq's `into_string` stops at 10 MB, and a batch of large
            // messages is bigger than that.
            let mut text = Vec::new();
            resp.into_reader().read_to_end(&mut text)?;
            if text.is_empty() {
                Ok((serde_json::Value::Null, more))
            } else {
                Ok((serde_json::from_slice(&text)?, more))
            }
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(text);
            if code == 401 && api_client().token.is_none() {
                anyhow::bail!(
                    "{msg} (HTTP 401): no token file was found; pass --api-token-file                      DATA_DIR/api-token (a copy of the server's file, kept private)"
                )
            }
            anyhow::bail!("{msg} (HTTP {code})")
        }
        Err(ureq::Error::Transport(t)) if sent_bytes > 0 && t.kind() == ureq::ErrorKind::Io => {
            // The server answers and closes before reading a request it will refuse (a body
            // over its limit): the write then fails, and the answer is lost with it.
            anyhow::bail!(
                "the lior API at {url} closed the connection while a request of {sent_bytes} \
                 bytes was sent: {t} (a message body may be at most {SEND_BODY_BYTES_MAX} bytes)"
            )
        }
        Err(e) => {
            anyhow::bail!("cannot reach the lior API: {e} (is `lior serve` running? see --api)")
        }
    }
}

fn status(api: &str, json: bool) -> anyhow::Result<ExitCode> {
    let st = call(get(&url(api, "/v1/status")), None)?;
    let queues = call(get(&url(api, "/v1/queues")), None)?;
    let outgoing = call(get(&url(api, "/v1/outgoing")), None)?;
    let metrics = get(&url(api, "/metrics"))
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default();
    let v = cli::status::compose(api, &st, &queues, &outgoing, &metrics);
    if json {
        outln!("{v}");
    } else {
        out!("{}", cli::status::text(&v));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a table's lines.
fn print_table(t: &cli::table::Table) {
    for line in t.render() {
        outln!("{line}");
    }
}

/// The named queue's `(messages, bytes)` as `/v1/queues` lists it (names are case-insensitive).
fn queue_counts(api: &str, name: &str) -> anyhow::Result<Option<(u64, u64)>> {
    let v = call(get(&url(api, "/v1/queues")), None)?;
    Ok(v.as_array().into_iter().flatten().find_map(|q| {
        q["name"]
            .as_str()
            .filter(|n| n.eq_ignore_ascii_case(name))
            .map(|_| {
                (
                    q["messages"].as_u64().unwrap_or(0),
                    q["bytes"].as_u64().unwrap_or(0),
                )
            })
    }))
}

fn queue(cmd: QueueCommand, api: &str) -> anyhow::Result<ExitCode> {
    match cmd {
        QueueCommand::Create {
            name,
            transactional,
            json,
        } => {
            let v = call(
                post(&url(api, "/v1/queues")),
                Some(serde_json::json!({"name": name, "transactional": transactional})),
            )?;
            if json {
                outln!("{v}");
            } else {
                outln!(
                    "created {} (private queue number {:#x}{})",
                    v["name"].as_str().unwrap_or(&name),
                    v["id"].as_u64().unwrap_or(0),
                    if transactional { ", transactional" } else { "" }
                );
            }
        }
        QueueCommand::List { json } => {
            let v = call(get(&url(api, "/v1/queues")), None)?;
            if json {
                outln!("{v}");
            } else {
                let mut t = cli::table::Table::new(
                    &[
                        ("queue", false),
                        ("id", true),
                        ("messages", true),
                        ("bytes", true),
                        ("kind", false),
                    ],
                    0,
                );
                for q in v.as_array().into_iter().flatten() {
                    t.row(vec![
                        terminal_safe(q["name"].as_str().unwrap_or("?")),
                        format!("{:#x}", q["id"].as_u64().unwrap_or(0)),
                        q["messages"].as_u64().unwrap_or(0).to_string(),
                        q["bytes"].as_u64().unwrap_or(0).to_string(),
                        format!(
                            "{}{}",
                            q["kind"].as_str().unwrap_or("?"),
                            if q["transactional"].as_bool() == Some(true) {
                                ", transactional"
                            } else {
                                ""
                            }
                        ),
                    ]);
                }
                print_table(&t);
            }
        }
        QueueCommand::Delete { name, json } => {
            call(
                delete(&url(api, &format!("/v1/queues/{}", seg(&name)))),
                None,
            )?;
            if json {
                outln!("{}", serde_json::json!({ "deleted": name }));
            } else {
                outln!("deleted {name}");
            }
        }
        QueueCommand::Purge { name, json } => {
            // What the queue held just before: the API's purge answers with nothing.
            let (messages, bytes) = queue_counts(api, &name)?.unwrap_or((0, 0));
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ticker = {
                let (done, name) = (done.clone(), name.clone());
                std::thread::spawn(move || {
                    let mut p = cli::Progress::new();
                    loop {
                        p.tick(|| {
                            format!(
                                "lior queue purge: removing {messages} messages ({}) from {name}",
                                cli::human_bytes(bytes)
                            )
                        });
                        if done.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    p.done();
                })
            };
            let r = call(
                post(&url(api, &format!("/v1/queues/{}/purge", seg(&name)))),
                None,
            );
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = ticker.join();
            r?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"queue": name, "messages": messages, "bytes": bytes})
                );
            } else {
                outln!(
                    "purged {name}: {messages} messages ({bytes} bytes, {})",
                    cli::human_bytes(bytes)
                );
            }
        }
        QueueCommand::Show { name, json } => {
            let v = call(
                ureq::get(&url(api, &format!("/v1/queues/{}", seg(&name)))),
                None,
            )?;
            print_queue_detail(&v, json);
        }
        QueueCommand::Grant {
            name,
            principal,
            rights,
            json,
        } => {
            change_rights(
                api,
                &name,
                serde_json::json!({ "principal": principal, "grant": rights }),
                json,
            )?;
        }
        QueueCommand::Revoke {
            name,
            principal,
            rights,
            json,
        } => {
            change_rights(
                api,
                &name,
                serde_json::json!({ "principal": principal, "revoke": rights }),
                json,
            )?;
        }
        QueueCommand::Authenticate {
            name,
            setting,
            json,
        } => {
            change_rights(
                api,
                &name,
                serde_json::json!({ "authenticate": setting == "on" }),
                json,
            )?;
        }
        QueueCommand::Journal {
            name,
            setting,
            json,
        } => {
            change_rights(
                api,
                &name,
                serde_json::json!({ "journal": setting == "on" }),
                json,
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints what `GET /v1/queues/{name}` answers (also the answer of a rights change).
/// `POST /v1/queues/{name}/rights` with `body`, then the queue as it is now.
fn change_rights(api: &str, name: &str, body: serde_json::Value, json: bool) -> anyhow::Result<()> {
    let v = call(
        ureq::post(&url(api, &format!("/v1/queues/{}/rights", seg(name)))),
        Some(body),
    )?;
    print_queue_detail(&v, json);
    Ok(())
}

fn print_queue_detail(v: &serde_json::Value, json: bool) {
    if json {
        outln!("{v}");
        return;
    }
    let yes_no = |b: Option<bool>| if b == Some(true) { "yes" } else { "no" };
    outln!(
        "queue {} (private queue number {:#x}, {})",
        terminal_safe(v["name"].as_str().unwrap_or("?")),
        v["id"].as_u64().unwrap_or(0),
        v["kind"].as_str().unwrap_or("?")
    );
    outln!("  transactional: {}", yes_no(v["transactional"].as_bool()));
    match v["quota_bytes"].as_u64() {
        Some(q) => outln!("  quota: {q} bytes"),
        None => outln!("  quota: none (limits.queue_messages_max applies)"),
    }
    outln!(
        "  journal: {}{}",
        yes_no(v["journal"].as_bool()),
        if v["journal"].as_bool() == Some(true) {
            format!(
                " (received messages are copied to {};journal)",
                terminal_safe(v["name"].as_str().unwrap_or("?"))
            )
        } else {
            String::new()
        }
    );
    outln!("  partition: {}", v["partition"].as_u64().unwrap_or(0));
    outln!(
        "  messages: {} ({} bytes)",
        v["messages"].as_u64().unwrap_or(0),
        v["bytes"].as_u64().unwrap_or(0)
    );
    outln!(
        "  authenticate: {}{}",
        yes_no(v["authenticate"].as_bool()),
        if v["authenticate"].as_bool() == Some(true) {
            " (every message from the network is refused until lior verifies signatures)"
        } else {
            ""
        }
    );
    let entries: Vec<(String, String)> = v["rights"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let names: Vec<&str> = e["rights"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .collect();
            (
                terminal_safe(e["principal"].as_str().unwrap_or("?")),
                names.join(", "),
            )
        })
        .collect();
    if entries.is_empty() {
        outln!("  rights: none (no sender from the network may send)");
        return;
    }
    outln!("  rights (send is checked for messages from the network):");
    let width = entries.iter().map(|e| e.0.len()).max().unwrap_or(0);
    for (p, r) in entries {
        outln!("    {p:width$}  {r}");
    }
}

fn outgoing(cmd: OutgoingCommand, api: &str) -> anyhow::Result<ExitCode> {
    let (destination, paused, json) = match cmd {
        OutgoingCommand::List { json } => {
            let v = call(get(&url(api, "/v1/outgoing")), None)?;
            if json {
                outln!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = cli::table::Table::new(
                &[
                    ("destination", false),
                    ("state", false),
                    ("messages", true),
                    ("bytes", true),
                    ("next try", true),
                    ("last error", false),
                ],
                0,
            );
            for q in v.as_array().into_iter().flatten() {
                let next = q["next_try_in_ms"]
                    .as_u64()
                    .map_or_else(|| "-".to_string(), |ms| format!("{:.1} s", ms as f64 / 1e3));
                t.row(vec![
                    terminal_safe(q["destination"].as_str().unwrap_or("?")),
                    q["state"].as_str().unwrap_or("?").to_string(),
                    q["messages"].as_u64().unwrap_or(0).to_string(),
                    q["bytes"].as_u64().unwrap_or(0).to_string(),
                    next,
                    terminal_safe(q["last_error"].as_str().unwrap_or("-")),
                ]);
            }
            print_table(&t);
            return Ok(ExitCode::SUCCESS);
        }
        OutgoingCommand::Pause { destination, json } => (destination, true, json),
        OutgoingCommand::Resume { destination, json } => (destination, false, json),
    };
    let path = if paused {
        "/v1/outgoing/pause"
    } else {
        "/v1/outgoing/resume"
    };
    let v = call(
        post(&url(api, path)),
        Some(serde_json::json!({ "destination": destination })),
    )?;
    if json {
        outln!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} {}",
        if paused { "paused" } else { "resumed" },
        v["destination"].as_str().unwrap_or(&destination)
    );
    Ok(ExitCode::SUCCESS)
}

fn messages(
    api: &str,
    queue: &str,
    method: &str,
    what: &str,
    count: usize,
    wait_ms: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let verb = if what == "receive" { "receive" } else { "peek" };
    anyhow::ensure!(
        count > 0,
        "--count 0: lior {verb} takes at least 1 message; nothing was done"
    );
    let timeout = std::time::Duration::from_millis(wait_ms + 30_000);
    let agent = api_client().agent_builder().timeout(timeout).build();
    let mut shown = 0usize;
    let mut progress = cli::Progress::new();
    // A peek answer that stopped at its byte bound with more messages left.
    let mut peek_cut;
    loop {
        // A peek always starts at the front of the queue, so it cannot ask for "the next" batch.
        let batch = (count - shown).min(RECEIVE_COUNT_MAX);
        // Only the first call waits; later ones take what is there.
        let wait = if shown == 0 { wait_ms } else { 0 };
        let path = format!(
            "/v1/queues/{}/{what}?count={batch}&wait_ms={wait}",
            seg(queue)
        );
        let (v, more) = call_more(authorize(agent.request(method, &url(api, &path))), None)?;
        let list = v.as_array().cloned().unwrap_or_default();
        for m in &list {
            if json {
                outln!("{m}");
            } else {
                print_message(m);
            }
        }
        shown += list.len();
        progress.tick(|| format!("lior {verb}: {shown} of {count} from {queue}"));
        peek_cut = verb == "peek" && more;
        // Fewer than asked means the queue ran empty, unless the answer stopped at its byte
        // bound and says more may be waiting.
        if list.is_empty() || (list.len() < batch && !more) || shown >= count || verb == "peek" {
            break;
        }
    }
    progress.done();
    if shown == 0 {
        errln!("no message in {queue}");
    } else if shown < count && count > 1 {
        if verb == "peek" && shown == RECEIVE_COUNT_MAX {
            errln!(
                "lior peek: showed the first {shown} of the {count} asked for \
                 (one peek shows at most {RECEIVE_COUNT_MAX})"
            );
        } else if verb == "peek" && peek_cut {
            errln!(
                "lior peek: showed the first {shown} of the {count} asked for \
                 (one answer carries about {} MiB of messages)",
                lior::http::api::RECEIVE_RESPONSE_BYTES_MAX >> 20
            );
        } else {
            errln!("lior {verb}: {shown} of the {count} asked for; {queue} has no more");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Text that is safe to put on a terminal: control characters (escape sequences, bells,
/// backspaces) are shown escaped.
fn terminal_safe(text: &str) -> String {
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        text.escape_debug().to_string()
    } else {
        text.to_string()
    }
}

/// How much of a body `lior peek`/`lior receive` shows without `--json`.
const BODY_SHOWN_BYTES_MAX: usize = 200;

/// BodyType values (VARTYPE) of a string sent as UTF-16LE: VT_BSTR (the ActiveX/.NET string
/// formatter) and VT_LPWSTR.
const BODY_TYPES_UTF16: [u64; 2] = [8, 31];

/// A body for a person: printable text as text (UTF-8, or UTF-16LE when its BodyType says it
/// is a string), anything else as a hex summary with its length (raw binary on a terminal can
/// garble it or send it control sequences).
fn body_text(body: &[u8], body_type: Option<u64>) -> String {
    let printable = |t: &str| {
        !t.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    };
    let utf16 = body_type
        .filter(|t| BODY_TYPES_UTF16.contains(t) && body.len() % 2 == 0)
        .and_then(|_| {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        })
        .map(|t| t.trim_end_matches('\0').to_string())
        .filter(|t| printable(t));
    if let Some(t) = utf16 {
        let shown: String = t.chars().take(BODY_SHOWN_BYTES_MAX).collect();
        let more = if shown.len() < t.len() { " ..." } else { "" };
        return format!("{} bytes: {shown}{more} (UTF-16 text)", body.len());
    }
    match std::str::from_utf8(body) {
        Ok(t) if printable(t) => {
            let mut end = t.len().min(BODY_SHOWN_BYTES_MAX);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            let more = if end < t.len() { " ..." } else { "" };
            format!("{} bytes: {}{more}", body.len(), &t[..end])
        }
        _ => {
            let shown = &body[..body.len().min(32)];
            let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "{} bytes, binary: {}{} (--json gives all of it as base64)",
                body.len(),
                hex.join(" "),
                if shown.len() < body.len() { " ..." } else { "" }
            )
        }
    }
}

fn print_message(m: &serde_json::Value) {
    let body = m["body_base64"]
        .as_str()
        .and_then(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        })
        .unwrap_or_default();
    outln!(
        "label:    {}",
        terminal_safe(m["label"].as_str().unwrap_or(""))
    );
    outln!(
        "priority: {}   class: {}   message class: {}",
        m["priority"],
        m["class"].as_str().unwrap_or("?"),
        m["message_class"].as_str().unwrap_or("?")
    );
    outln!(
        "id:       {}   lookup id: {}",
        m["message_id"].as_str().unwrap_or("?"),
        m["lookup_id"]
    );
    outln!(
        "sender:   {}{}",
        m["source_qm"].as_str().unwrap_or("?"),
        m["sender_sid"]
            .as_str()
            .map(|s| format!("  sid {s}"))
            .unwrap_or_default()
    );
    outln!("body:     {}", body_text(&body, m["body_type"].as_u64()));
    outln!();
}

#[allow(clippy::too_many_arguments)]
fn send(
    api: &str,
    to: &str,
    label: &str,
    body: Option<String>,
    body_file: Option<PathBuf>,
    priority: u8,
    recoverable: bool,
    transactional: bool,
    (journal, dead_letter): (bool, bool),
    count: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    let bytes = match (body, body_file) {
        (_, Some(f)) => {
            std::fs::read(&f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?
        }
        (Some(t), None) => t.into_bytes(),
        (None, None) => Vec::new(),
    };
    anyhow::ensure!(
        count > 0,
        "--count 0: lior send sends at least 1 message; nothing was sent"
    );
    anyhow::ensure!(
        bytes.len() <= SEND_BODY_BYTES_MAX,
        "{}; nothing was sent",
        too_large(bytes.len())
    );
    let req = serde_json::json!({
        "to": to,
        "label": label,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "priority": priority,
        "recoverable": recoverable,
        "transactional": transactional,
        "journal": journal,
        "dead_letter": dead_letter,
    });
    let mut some_refused = false;
    for i in 0..count {
        let mut req = req.clone();
        if count > 1 && bytes.is_empty() {
            // Numbered bodies make copies tell apart.
            req["body_base64"] = base64::engine::general_purpose::STANDARD
                .encode(format!("{}", i + 1))
                .into();
        }
        let v = call(post(&url(api, "/v1/send")), Some(req))?;
        if let Some(dests) = v["destinations"].as_array() {
            // A multiple-element or DL= name: one line per destination (qm/fanout.rs).
            some_refused |= dests.iter().any(|d| d["outcome"] == "refused");
            if json {
                outln!("{v}");
                continue;
            }
            for d in dests {
                outln!(
                    "{} {}: {}",
                    d["outcome"].as_str().unwrap_or("?"),
                    d["destination"].as_str().unwrap_or("?"),
                    d["error"].as_str().or(d["held"].as_str()).map_or_else(
                        || format!(
                            "{} (queue {})",
                            d["message_id"].as_str().unwrap_or("?"),
                            d["queue"].as_str().unwrap_or("?")
                        ),
                        |w| w.to_string()
                    )
                );
            }
            continue;
        }
        if json {
            outln!("{v}");
            continue;
        }
        outln!(
            "sent {} ({} queue {}){}",
            v["message_id"].as_str().unwrap_or("?"),
            v["placed"].as_str().unwrap_or("?"),
            v["queue"].as_str().unwrap_or("?"),
            v["held"]
                .as_str()
                .map_or_else(String::new, |h| format!("; {h}"))
        );
    }
    if some_refused {
        errln!("lior send: some destinations refused their copy (see above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
