//! `lior serve`: opens the data directory, starts the engine shards, the local API and the
//! optional Ping responder, prints one `lior ready ...` line with the chosen addresses, and runs
//! until SIGTERM or SIGINT, then finishes the pending group commit and closes cleanly.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::engine::host::{self, FdBudget};
use crate::engine::net::{Counters as EngineCounters, Engine, EngineConfig};
use crate::http::serve_api;
use crate::ping::PingResponder;
use crate::qm::broker::Broker;
use crate::server::Shared;
use crate::store::FileStore;

/// Runs the server until a signal arrives.
pub fn serve(mut config: Config) -> anyhow::Result<()> {
    config.validate()?;
    check_data_dir(&config.data_dir)?;
    // One server per data directory and per address: the lock is held until this returns.
    let _lock = host::lock_data_dir(&config.data_dir).map_err(anyhow::Error::msg)?;
    let hardened = config.parameters.Hardened_MSMQ;
    let srmp_addr = config
        .srmp_listen
        .or_else(|| hardened.then(|| "0.0.0.0:80".parse().expect("literal address")));
    if !hardened {
        host::ensure_no_listener(config.listen, "MS-MQQB listen").map_err(anyhow::Error::msg)?;
    }
    host::ensure_no_listener(config.api, "API").map_err(anyhow::Error::msg)?;
    // The AMQP door (same shards as MS-MQQB): its users and mechanisms are checked now, so a
    // bad [amqp] section stops the start. The AMQP app (issue 11) takes `amqp_sasl` from here.
    let amqp_sasl = if config.amqp.enabled {
        host::ensure_no_listener(config.amqp.listen, "AMQP (amqp.listen)")
            .map_err(anyhow::Error::msg)?;
        let users = crate::amqp::auth::UserTable::from_config(&config.amqp)
            .map_err(|e| anyhow::anyhow!("amqp.users: {e}"))?;
        let sasl = crate::amqp::auth::sasl_config(&config.amqp, Arc::new(users))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if sasl.anonymous && !config.amqp.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.amqp.listen, "amqp: ANONYMOUS is offered on a non-loopback address (amqp.sasl_mechanisms)");
        }
        Some(sasl)
    } else {
        None
    };
    if let Some(a) = srmp_addr {
        host::ensure_no_listener(a, "SRMP").map_err(anyhow::Error::msg)?;
    }
    // TLS on the doors (certificates read now, so a bad file stops the start) and the API token.
    let amqps = crate::amqp::tls::door(&config.amqp).map_err(anyhow::Error::msg)?;
    let srmp_tls = crate::http::tls::srmp_tls(&config).map_err(anyhow::Error::msg)?;
    let api_security = crate::http::tls::api_security(&config).map_err(anyhow::Error::msg)?;
    crate::engine::probe::check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let signal = crate::engine::signal::install()?;
    let cores = if config.cores.is_empty() {
        online_cores()
    } else {
        config.cores.clone()
    };
    // The descriptor budget: raise the soft limit, then give each door its share so that a
    // flood on one door cannot take the descriptors the others (and the store) need.
    let nofile = host::raise_nofile_limit().unwrap_or(1024) as usize;
    let l = &config.limits;
    let budget = FdBudget::split(
        nofile,
        l.fd_reserve,
        cores.len(),
        srmp_addr.is_some(),
        l.connections_per_shard_max,
        l.srmp_connections_max,
        l.api_connections_max,
    );
    tracing::info!(
        nofile,
        mqqb_per_shard = budget.mqqb_per_shard,
        srmp = budget.srmp,
        api = budget.api,
        "file-descriptor budget"
    );
    // The API reads its cap from the configuration the broker holds.
    config.limits.api_connections_max = budget.api;
    let broker = Arc::new(Broker::open(config.clone(), cores.len()).map_err(|e| {
        anyhow::anyhow!(
            "opening the data directory {}: {e:#}{}",
            config.data_dir.display(),
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
            }) || format!("{e:#}").contains("os error 13")
            {
                " (give the user running lior write access to it and everything in it, or \
                 choose another --data-dir)"
            } else {
                ""
            }
        )
    })?);
    let shared = Arc::new(Shared::with_shards(broker.clone(), cores.len()));
    // Hardened mode listens on no raw MS-MQQB port (only SRMP over HTTP is accepted); the AMQP
    // door is not MS-MQQB and follows `[amqp] enabled`.
    let mut listen = Vec::new();
    if !hardened {
        listen.push((crate::server::MSMQ_LISTENER, config.listen));
    }
    if config.amqp.enabled {
        listen.push((crate::amqp::AMQP_LISTENER, config.amqp.listen));
    }
    if let (Some(a), Some(_)) = (config.amqp.tls_listen, &amqps) {
        listen.push((crate::amqp::AMQPS_LISTENER, a));
    }
    let engine_cfg = EngineConfig {
        listen,
        cores: cores.clone(),
        max_connections: budget.mqqb_per_shard,
        max_connections_per_ip: config.limits.connections_per_ip_max,
        send_buffered_max_bytes: config.limits.session_transmit_bytes_max.max(4 << 20) + (64 << 10),
        ..EngineConfig::default()
    };
    let s2 = shared.clone();
    let amqp_shared = Arc::new(crate::amqp::app::AmqpShared::new(amqp_sasl).with_tls(amqps));
    let amqp_factory = amqp_shared.clone();
    // The shards' mesh (a lane per ordered pair), made by whichever factory runs first: every
    // shard's waker exists before any factory runs.
    let mesh: Arc<std::sync::OnceLock<Option<Arc<crate::engine::mesh::Mesh>>>> = Arc::default();
    let lane_bytes = config.limits.handoff_lane_bytes;
    // The HTTP API's and SRMP's requests: a bounded channel per shard, served by the shard
    // owning the queue in its own turn (`qm::requests`). Each shard takes its receiver.
    let requests_max = config.limits.api_requests_per_shard_max;
    let (request_senders, request_receivers) =
        crate::qm::requests::channels(cores.len(), requests_max);
    let request_receivers: std::sync::Mutex<Vec<Option<_>>> =
        std::sync::Mutex::new(request_receivers.into_iter().map(Some).collect());
    // Each shard registers its eventfd on the store rings of the partitions it runs before its
    // loop starts, so no commit completion of theirs goes unsignalled.
    let engine = Engine::start_with_ctx(engine_cfg, move |ctx: crate::engine::net::ShardCtx| {
        crate::qm::broker::set_thread_shard(ctx.index, ctx.shards);
        let mut shard_app =
            crate::shard_app::ShardApp::new(s2.clone(), amqp_factory.clone(), ctx.index);
        shard_app.commit_on_shard_ring(ctx.index, ctx.shards);
        let app = &mut shard_app.msmq;
        if let Some(w) = ctx.wakers.get(ctx.index) {
            app.notify_commits_to(w.as_raw_fd());
        }
        let rx = request_receivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(ctx.index)
            .and_then(Option::take);
        match rx {
            Some(rx) => app.take_requests(rx),
            None => tracing::error!(shard = ctx.index, "no request channel for this shard; the API and SRMP answer 503 for its queues"),
        }
        if ctx.shards > 1 {
            let mesh = mesh.get_or_init(|| {
                crate::engine::mesh::Mesh::new(ctx.shards, lane_bytes, ctx.wakers.clone())
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot build the shards' mesh (limits.handoff_lane_bytes?); every shard stores into other shards' partitions under their locks instead")
                    })
                    .ok()
            });
            match mesh.as_ref().map(|m| m.port(ctx.index)) {
                Some(Ok(port)) => app.join_mesh(port),
                Some(Err(e)) => tracing::error!(shard = ctx.index, error = %e, "cannot join the shards' mesh"),
                None => {}
            }
        }
        shard_app
    })
    .map_err(|e| match &e {
        crate::engine::net::EngineError::Listen { addr, error } => {
            let door = if config.amqp.enabled && *addr == config.amqp.listen {
                "AMQP (amqp.listen)"
            } else if config.amqp.tls_listen == Some(*addr) {
                "AMQPS (amqp.tls_listen)"
            } else {
                "MS-MQQB (listen)"
            };
            listen_error(door, *addr, error)
        }
        _ => anyhow::anyhow!("{e}"),
    })?;
    // Other threads (the API, a shard queueing an admin ack for another shard) wake a shard
    // when its outgoing queues have new messages.
    let wakers: Arc<Vec<_>> = Arc::new(
        (0..engine.shard_count())
            .filter_map(|i| engine.waker(i))
            .collect(),
    );
    let w2 = wakers.clone();
    let wake: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(move |i: usize| {
        if let Some(w) = w2.get(i % w2.len().max(1)) {
            let _ = w.wake();
        }
    });
    let w3 = wake.clone();
    broker.set_waker(Box::new(move |i| w3(i)));
    crate::qm::broker::set_shards_running(true);
    let shards = crate::qm::requests::ShardClient::new(request_senders, requests_max, wake);
    let engine_counters: Vec<Arc<EngineCounters>> = (0..engine.shard_count())
        .filter_map(|i| engine.shard_counters(i))
        .collect();
    let s3 = shared.clone();
    let a3 = amqp_shared.clone();
    let metrics = Arc::new(move |lens: &crate::qm::broker::QueueLens| {
        let mut m = render_metrics(&s3, &engine_counters, lens);
        a3.render_metrics(&mut m);
        crate::http::tls::render_metrics(&mut m);
        m
    });
    let api = serve_api(
        config.api,
        broker.clone(),
        shards.clone(),
        metrics,
        api_security,
    )
    .map_err(|e| listen_error("API (api)", config.api, &e))?;
    let srmp = match srmp_addr {
        Some(a) => Some(
            crate::http::srmp::serve_srmp(
                a,
                broker.clone(),
                shards.clone(),
                crate::http::srmp::SrmpLimits::from_config(&config.limits, budget.srmp),
                srmp_tls,
            )
            .map_err(|e| listen_error("SRMP (srmp_listen)", a, &e))?,
        ),
        None => None,
    };
    let ping = if config.parameters.security.EnablePingService {
        let mut addr = config.listen;
        addr.set_port(config.parameters.MsmqIpPingPort);
        Some(PingResponder::start(
            addr,
            broker.guid(),
            Arc::new(AtomicBool::new(false)),
        )?)
    } else {
        None
    };
    let amqp = engine
        .local_addr_of(crate::amqp::AMQP_LISTENER)
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    let amqps = engine
        .local_addr_of(crate::amqp::AMQPS_LISTENER)
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    let listen = engine
        .local_addr_of(crate::server::MSMQ_LISTENER)
        .map(|a| a.to_string())
        .unwrap_or_else(|| "none(hardened)".into());
    // The first line on stdout names the chosen ports, so scripts and tests can use port 0.
    // Written without `println!`: a closed stdout (the reader went away) must not stop a
    // running server, so a failed write is only logged.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let written = writeln!(
            out,
            "lior ready listen={listen} api={} srmp={} amqp={amqp} amqps={amqps} qm={} cores={:?} \
             data_dir={}",
            api.local_addr,
            srmp.as_ref()
                .map_or_else(|| "off".to_string(), |s| s.local_addr.to_string()),
            broker.guid(),
            engine.cores(),
            config.data_dir.display()
        )
        .and_then(|()| out.flush());
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write the ready line to stdout; serving anyway");
        }
    }
    tracing::info!(%listen, api = %api.local_addr, qm = %broker.guid(), "lior is serving");
    // systemd (Type=notify): every listener and the API accept connections from here on.
    crate::sdnotify::notify_logged(
        &format!(
            "READY=1\nMAINPID={}\nSTATUS=serving listen={listen} api={}",
            std::process::id(),
            api.local_addr
        ),
        "lior is ready",
    );
    let sig = signal.wait();
    tracing::info!(signal = sig, "shutting down");
    crate::sdnotify::notify_logged("STOPPING=1", "lior is stopping");
    engine.shutdown().map_err(|e| anyhow::anyhow!("{e}"))?;
    api.stop();
    crate::qm::broker::set_shards_running(false);
    if let Some(s) = srmp {
        s.stop();
    }
    if let Some(p) = ping {
        p.stop();
    }
    for i in 0..broker.partition_count() {
        let mut part = broker.partition(i);
        if let Err(e) = part.commit(None) {
            tracing::error!(partition = i, error = %e, "final commit failed");
        }
        // Wait for the last batch and confirm it with a synced commit marker.
        if let Err(e) = part.store.close() {
            tracing::error!(partition = i, error = %e, "closing the store failed");
        }
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Makes sure the data directory exists and is writable, and says which path and what to do
/// when it is not (a bare "Permission denied" or "File exists" names neither).
fn check_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => anyhow::bail!(
            "data directory {shown} exists but is not a directory; remove or rename it, or \
             choose another --data-dir (data_dir in the config file)"
        ),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create data directory {shown}: {e}; create it with write access for \
                     the user running lior, or choose another --data-dir"
                )
            })?;
        }
        Err(e) => anyhow::bail!(
            "cannot use data directory {shown}: {e}; check the permissions of it and of its \
             parents, or choose another --data-dir"
        ),
    }
    // Write access is checked the only reliable way: by writing.
    let probe = dir.join(".lior-write-check");
    let written = std::fs::write(&probe, b"");
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| {
        anyhow::anyhow!(
            "cannot write in data directory {shown}: {e}; give the user running lior write \
             access (chown/chmod), or choose another --data-dir"
        )
    })
}

/// A listener that could not be opened, with the address and what to do about it.
fn listen_error(what: &str, addr: std::net::SocketAddr, e: &std::io::Error) -> anyhow::Error {
    let remedy = match e.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "port {} is privileged: use a port >= 1024, or let lior bind low ports with \
             `sudo setcap cap_net_bind_service=+ep $(command -v lior)` (or run it under systemd \
             with AmbientCapabilities=CAP_NET_BIND_SERVICE)",
            addr.port()
        ),
        std::io::ErrorKind::AddrInUse => format!(
            "another program already listens on {addr} (another `lior serve`? see \
             `ss -ltnp 'sport = :{}'`); stop it or choose another port",
            addr.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{} is not an address of this machine", addr.ip())
        }
        _ => "check the address".to_string(),
    };
    anyhow::anyhow!("cannot listen for {what} on {addr}: {e}; {remedy}")
}

fn online_cores() -> Vec<usize> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Prometheus text exposition of every counter.
pub fn render_metrics(
    shared: &Shared<FileStore>,
    engine: &[Arc<EngineCounters>],
    lens: &crate::qm::broker::QueueLens,
) -> String {
    let mut out = String::new();
    let mut put = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP lior_{name} {help}\n# TYPE lior_{name} counter\nlior_{name} {v}"
        );
    };
    let c = &shared.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    put(
        "sessions_accepted_total",
        "Incoming MS-MQQB sessions accepted.",
        load(&c.sessions_accepted),
    );
    put(
        "sessions_refused_total",
        "Sessions refused at MaxInSessions.",
        load(&c.sessions_refused),
    );
    put(
        "sessions_established_total",
        "Sessions that completed the handshake.",
        load(&c.sessions_established),
    );
    put(
        "sessions_closed_protocol_total",
        "Sessions closed for a malformed or unexpected packet.",
        load(&c.sessions_closed_protocol),
    );
    put(
        "sessions_dropped_reassembly_total",
        "Sessions closed to free the reassembly budget, the oldest partial packet first.",
        load(&c.sessions_dropped_reassembly),
    );
    put(
        "messages_in_total",
        "UserMessages received.",
        load(&c.messages_in),
    );
    put(
        "session_acks_out_total",
        "SessionAck packets sent.",
        load(&c.acks_out),
    );
    put(
        "order_acks_out_total",
        "OrderAck packets sent.",
        load(&c.order_acks_out),
    );
    put(
        "group_commits_total",
        "Store group commits that carried recoverable messages.",
        load(&c.commits),
    );
    put(
        "handoffs_total",
        "Messages handed by the shard that received them to the shard owning their queue.",
        load(&c.handoffs),
    );
    put(
        "handoff_backlog_full_total",
        "Sessions closed because their shard's backlog of hand-offs was full \
         (limits.handoff_backlog_bytes_per_shard_max).",
        load(&c.handoff_backlog_full),
    );
    put(
        "records_mailed_total",
        "Dead letters and admin acknowledgements a shard sent to the shard running their \
         queue's partition (Mail::Store) instead of writing that partition itself.",
        load(&c.records_mailed),
    );
    let b = &shared.broker.counters;
    put(
        "partition_locks_foreign_total",
        "Store partitions locked by a thread that does not run them (another shard, the API, \
         SRMP): the locks issue 10 removes.",
        load(&b.foreign_partition_locks),
    );
    put(
        "messages_stored_total",
        "Messages stored in a queue.",
        load(&b.messages_stored),
    );
    put(
        "duplicates_dropped_total",
        "Duplicate messages dropped.",
        load(&b.duplicates_dropped),
    );
    put(
        "dead_lettered_total",
        "Messages moved to a dead-letter queue.",
        load(&b.dead_lettered),
    );
    put(
        "access_denied_total",
        "Messages refused at their target queue: no send right for the sender, or a queue \
         taking only authenticated messages (lior queue show NAME).",
        load(&b.access_denied),
    );
    put(
        "encrypted_refused_total",
        "Messages refused because their body is encrypted (NACK_BAD_ENCRYPTION).",
        load(&b.encrypted_refused),
    );
    put(
        "tx_rejected_total",
        "Transactional messages refused as duplicate or out of order.",
        load(&b.tx_rejected),
    );
    put(
        "srmp_out_failures_total",
        "SRMP posts lior sent that got no 2xx (refused, a malformed answer or none in time); the message stays queued.",
        load(&b.srmp_out_failures),
    );
    put(
        "srmp_receipts_received_total",
        "SRMP receipts (delivery, commitment, stream) received at the SRMP endpoint.",
        load(&b.srmp_receipts_received),
    );
    put(
        "srmp_stream_receipts_queued_total",
        "SRMP stream receipts queued for the senders of received stream messages.",
        load(&b.srmp_stream_receipts_queued),
    );
    put(
        "tx_acks_refused_total",
        "OrderAcks/FinalAcks ignored: not from the queue manager the sequence was sent to, or for numbers not sent.",
        load(&b.tx_acks_refused),
    );
    put(
        "store_poisoned",
        "Store partitions poisoned by a failed write/fsync (nothing more is acknowledged there until restart).",
        load(&b.store_poisoned),
    );
    put(
        "store_commit_failures_total",
        "Group commits that failed and were retried.",
        load(&b.commit_failures),
    );
    put(
        "tx_table_full_total",
        "Transactional messages refused because the sequence table (limits.tx_sequences_max) was full.",
        load(&b.tx_table_full),
    );
    put(
        "tx_sequences",
        "Incoming transactional sequence states kept.",
        lens.tx_sequences,
    );
    put(
        "order_acks_in_total",
        "OrderAcks taken for our own transactional sends.",
        load(&b.order_acks_received),
    );
    put(
        "final_acks_in_total",
        "FinalAcks taken for our own transactional sends (matched to a message).",
        load(&b.final_acks_received),
    );
    put(
        "final_acks_unmatched_total",
        "FinalAcks that named no message of ours awaiting one.",
        load(&b.final_acks_unmatched),
    );
    put(
        "final_acks_sent_total",
        "FinalAcks queued for the senders of transactional messages (received, purged, expired, refused).",
        load(&b.final_acks_sent),
    );
    put(
        "final_acks_unroutable_total",
        "FinalAcks owed but not sent: the sender's address was not known.",
        load(&b.final_acks_unroutable),
    );
    put(
        "final_acks_not_awaited_total",
        "OrderAcked messages dropped without awaiting their FinalAck (AWAITING_FINAL_ACK_MAX).",
        load(&b.final_acks_not_awaited),
    );
    put(
        "journal_copies_total",
        "Copies stored in a journal (a queue's journal or the machine journal).",
        load(&b.journal_copies),
    );
    put(
        "journal_dropped_total",
        "Journal copies dropped because the journal was over its quota (JournalQuota, MachineJournalQuota).",
        load(&b.journal_dropped),
    );
    put(
        "expired_on_arrival_total",
        "Messages expired before reaching their queue.",
        load(&b.expired_on_arrival),
    );
    put(
        "messages_received_total",
        "Messages received by local applications.",
        load(&b.messages_received),
    );
    put(
        "store_refusals_total",
        "Messages refused because the store could not take them.",
        load(&b.refused_store_errors),
    );
    let mut e = crate::engine::net::CountersSnapshot::default();
    for s in engine {
        e.add(&s.snapshot());
    }
    put(
        "connections_accepted_total",
        "TCP connections accepted.",
        e.accepted,
    );
    put(
        "connections_refused_limit_total",
        "TCP connections refused at the engine limit.",
        e.refused_limit,
    );
    put(
        "connections_refused_per_ip_total",
        "TCP connections refused at limits.connections_per_ip_max.",
        e.refused_per_ip,
    );
    put(
        "connections_refused_app_total",
        "TCP connections the application refused at once (a listener it does not serve yet, such as AMQP).",
        e.refused_app,
    );
    put("bytes_in_total", "Bytes received.", e.bytes_in);
    put("bytes_out_total", "Bytes sent.", e.bytes_out);
    put(
        "recv_buffer_exhausted_total",
        "Times the receive buffer ring ran dry.",
        e.recv_buffer_exhausted,
    );
    put(
        "store_ops_on_shard_ring_total",
        "Store writes and fdatasyncs issued on the shards' own rings.",
        e.file_ops_submitted,
    );
    put(
        "store_ops_on_shard_ring_failed_total",
        "Store writes and fdatasyncs on the shards' rings that completed with an errno.",
        e.file_ops_failed,
    );
    // Per shard: how the kernel spread the connections over the shards.
    let _ = writeln!(
        out,
        "# HELP lior_shard_connections_accepted_total TCP connections accepted, per shard.\n\
         # TYPE lior_shard_connections_accepted_total counter"
    );
    for (i, s) in engine.iter().enumerate() {
        let _ = writeln!(
            out,
            "lior_shard_connections_accepted_total{{shard=\"{i}\"}} {}",
            s.snapshot().accepted
        );
    }
    let _ = writeln!(
        out,
        "# HELP lior_sessions_open Incoming MS-MQQB sessions holding a MaxInSessions slot now.\n\
         # TYPE lior_sessions_open gauge\nlior_sessions_open {}",
        shared.sessions_in.load(Ordering::Relaxed)
    );
    let _ =
        writeln!(
        out,
        "# HELP lior_api_receives_waiting API receives with a wait_ms kept by their queue's shard \
         until a message arrives (limits.api_waiting_receives_per_shard_max per shard).\n\
         # TYPE lior_api_receives_waiting gauge\nlior_api_receives_waiting {}",
        shared.broker.counters.api_receives_waiting.load(Ordering::Relaxed)
    );
    render_queue_gauges(&mut out, &shared.broker, lens);
    out
}

/// Gauges of what waits: each queue's messages and bytes, each outgoing queue's, and how many
/// outgoing queues are in each state (contrib/grafana/lior.json shows them).
fn render_queue_gauges(
    out: &mut String,
    broker: &Broker<FileStore>,
    lens: &crate::qm::broker::QueueLens,
) {
    // Prometheus label values escape backslash, double quote and newline.
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let queues = broker.list_queues_from(lens);
    for (name, help, bytes) in [
        ("queue_messages", "Messages in each queue.", false),
        ("queue_bytes", "Bytes of the messages in each queue.", true),
    ] {
        let _ = writeln!(out, "# HELP lior_{name} {help}\n# TYPE lior_{name} gauge");
        for q in &queues {
            let v = if bytes { q.bytes } else { q.messages };
            let _ = writeln!(out, "lior_{name}{{queue=\"{}\"}} {v}", esc(&q.name));
        }
    }
    let outgoing = broker.list_outgoing_from(lens);
    let state_of = |o: &crate::qm::broker::OutgoingInfo| match &o.status {
        Some(s) => s.state,
        None if o.def.paused => "paused",
        None => "inactive",
    };
    for (name, help, bytes) in [
        (
            "outgoing_messages",
            "Messages waiting in each outgoing queue (not yet acknowledged by the destination).",
            false,
        ),
        (
            "outgoing_bytes",
            "Bytes waiting in each outgoing queue.",
            true,
        ),
    ] {
        let _ = writeln!(out, "# HELP lior_{name} {help}\n# TYPE lior_{name} gauge");
        for o in &outgoing {
            let v = if bytes { o.bytes } else { o.messages };
            let _ = writeln!(
                out,
                "lior_{name}{{destination=\"{}\",state=\"{}\"}} {v}",
                esc(&o.def.key),
                state_of(o)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP lior_outgoing_queues Outgoing queues in each state.\n\
         # TYPE lior_outgoing_queues gauge"
    );
    // Every state `OutStatus::state` takes (qm/outgoing_queue.rs), so each series exists at 0.
    const OUT_STATES: [&str; 6] = [
        "connected",
        "connecting",
        "waiting to connect",
        "inactive",
        "locked",
        "paused",
    ];
    for state in OUT_STATES {
        let n = outgoing.iter().filter(|o| state_of(o) == state).count();
        let _ = writeln!(out, "lior_outgoing_queues{{state=\"{state}\"}} {n}");
    }
}
