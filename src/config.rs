//! Configuration: every limit and timer in one place, with the Windows product defaults.
//!
//! Settings that exist in Windows MSMQ carry its registry value names, in a `[Parameters]`
//! table that mirrors `HKLM\SOFTWARE\Microsoft\MSMQ\Parameters` (and `[Parameters.Security]`
//! for `...\Parameters\Security`), so an MSMQ administrator recognises them. Settings that are
//! lior's own (addresses, data directory, cores, engine limits) use snake_case names at the top
//! level. Unknown keys are refused: a typo must not silently fall back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where queues, the queue-manager GUID and all state live.
    pub data_dir: PathBuf,
    /// The MS-MQQB listener (TCP 1801). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The local HTTP/JSON API for administration and for Linux applications.
    pub api: SocketAddr,
    /// The SRMP (MSMQ over HTTP) endpoint, `/msmq/...`; off unless set. In hardened mode it
    /// defaults to 0.0.0.0:80, the only way in.
    pub srmp_listen: Option<SocketAddr>,
    /// HTTPS for the SRMP endpoint: a PEM certificate chain (leaf first) and its PEM private
    /// key (PKCS#8, PKCS#1 or SEC1). Both or neither; with them `srmp_listen` speaks only TLS.
    pub srmp_tls_cert: Option<PathBuf>,
    pub srmp_tls_key: Option<PathBuf>,
    /// PEM CA certificates: with it, an SRMP client must present a certificate they signed.
    pub srmp_tls_client_ca: Option<PathBuf>,
    /// PEM CA certificates lior trusts when it sends SRMP to `DIRECT=HTTPS://` names; unset,
    /// the system's bundle (`/etc/ssl/certs/ca-certificates.crt` or
    /// `/etc/pki/tls/certs/ca-bundle.crt`).
    pub srmp_tls_ca: Option<PathBuf>,
    /// HTTPS for the local API (PEM chain and key, both or neither). Required, with the bearer
    /// token of `DATA_DIR/api-token`, when `api` is not a loopback address.
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    /// Cores to run shards on; empty means every online core.
    pub cores: Vec<usize>,
    /// Extra names this machine answers to in DIRECT=OS: and DIRECT=TCP: format names, beside
    /// the host name and every local address.
    pub aliases: Vec<String>,
    /// The TCP port of remote queue managers (Windows always listens on 1801; tests and
    /// unusual set-ups change it).
    pub remote_port: u16,
    /// Per remote machine, as named in format names (`[remotes."10.0.0.7"] port = 1901`):
    /// settings that differ from the defaults above. Names are compared without case.
    pub remotes: std::collections::BTreeMap<String, Remote>,
    /// Distribution lists (`DL=` names), by GUID: `[distribution_lists."<guid>"]` with `name`
    /// and `members` (format names; nested `DL=` allowed). lior has no directory service, so
    /// this is where a list's members come from (`qm/fanout.rs`).
    pub distribution_lists:
        std::collections::BTreeMap<String, crate::qm::fanout::DistributionListConfig>,
    /// Engine and store limits that have no Windows counterpart.
    pub limits: Limits,
    /// The AMQP 1.0 door: `enabled`, `listen`, `sasl_mechanisms`, `[[amqp.users]]` (see
    /// [`crate::amqp::config`]).
    pub amqp: crate::amqp::config::AmqpConfig,
    #[serde(rename = "Parameters")]
    pub parameters: Parameters,
}

/// Settings for one remote machine (`[remotes."NAME"]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The TCP port its queue manager listens on (instead of `remote_port`).
    pub port: Option<u16>,
}

impl Config {
    /// The port of the queue manager on `host` (a name or address as in a format name).
    pub fn remote_port_for(&self, host: &str) -> u16 {
        self.remotes
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(host))
            .and_then(|(_, r)| r.port)
            .unwrap_or(self.remote_port)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./lior-data"),
            listen: "0.0.0.0:1801".parse().expect("literal address"),
            api: "127.0.0.1:1802".parse().expect("literal address"),
            srmp_listen: None,
            srmp_tls_cert: None,
            srmp_tls_key: None,
            srmp_tls_client_ca: None,
            srmp_tls_ca: None,
            api_tls_cert: None,
            api_tls_key: None,
            cores: Vec::new(),
            aliases: Vec::new(),
            remote_port: 1801,
            remotes: std::collections::BTreeMap::new(),
            distribution_lists: std::collections::BTreeMap::new(),
            limits: Limits::default(),
            amqp: Default::default(),
            parameters: Parameters::default(),
        }
    }
}

/// lior's own bounds. Every table and buffer has one; a full table refuses, it never grows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Private queues this queue manager holds.
    pub queues_max: usize,
    /// Messages one queue holds; past it a message from the network gets NACK_Q_EXCEED_QUOTA
    /// (dead-lettered if its sender asked) and a local send is refused. The dead-letter queues
    /// are bounded by the machine quota instead.
    pub queue_messages_max: u64,
    /// Connections one shard holds (the engine's slab size).
    pub connections_per_shard_max: usize,
    /// Bytes queued for transmit on one session before senders are told to wait.
    pub session_transmit_bytes_max: usize,
    /// Messages waiting in one outgoing queue; past it a send to that machine is refused
    /// (`lior send` and the API say so) and admin acknowledgements to it are dropped, logged.
    pub outgoing_queue_messages_max: usize,
    /// Bytes of partly received packets one shard holds for all its sessions together; a
    /// session that pushes past it is closed (a flood of half-sent 4 MB packets cannot exhaust
    /// memory).
    pub reassembly_bytes_per_shard_max: usize,
    /// Bytes of a partly received packet one session may hold (at most one frame is ever held;
    /// lower it to refuse large packets). When the shard's total is reached, the session whose
    /// partial packet is the oldest is closed first, not the newcomer.
    pub reassembly_bytes_per_session_max: usize,
    /// Connections one peer IP address may hold open at once, on each door (MS-MQQB and SRMP
    /// counted apart); past it new connections from that address are closed at once and logged.
    pub connections_per_ip_max: usize,
    /// An incoming MS-MQQB connection must finish its handshake (EstablishConnection and
    /// ConnectionParameters) within this many ms (plus 2 x RoundTripDelay), or it is closed.
    /// Windows waits 60 s (the Session Initialization Timer); an idle socket holds a slot and a
    /// descriptor that long, so lior waits less for incoming sessions.
    pub handshake_timeout_ms: u64,
    /// Descriptors kept back from the connection budget for the store, rings and threads. The
    /// rest of RLIMIT_NOFILE (raised to its hard limit at start-up) is split between the doors:
    /// 70% MS-MQQB, 20% SRMP, 10% the API (MS-MQQB 90% when SRMP is off).
    pub fd_reserve: usize,
    /// SRMP connections open at once (the descriptor budget may lower it).
    pub srmp_connections_max: usize,
    /// An SRMP request's headers must arrive within this many ms of its first byte (or of the
    /// connection's opening); an idle kept-alive connection is closed after it too.
    pub srmp_header_timeout_ms: u64,
    /// An SRMP request's body must arrive within this many ms of its headers.
    pub srmp_body_timeout_ms: u64,
    /// Bytes of SRMP request bodies held in memory at once, over all connections. When a body
    /// needs more, the oldest unfinished body elsewhere is dropped (its request answered 503).
    pub srmp_body_bytes_in_flight_max: usize,
    /// Connections to the local HTTP API open at once (the descriptor budget may lower it).
    pub api_connections_max: usize,
    /// Requests of the HTTP API and SRMP waiting for one shard (each goes to the shard that
    /// owns its queue); past it a request is answered 503 with a Retry-After, never queued.
    pub api_requests_per_shard_max: usize,
    /// Receives with a wait (`wait_ms`) one shard keeps waiting for a message at once; past
    /// it a new one that finds its queue empty is answered 503.
    pub api_waiting_receives_per_shard_max: usize,
    /// Incoming transactional sequences (sender queue manager × queue) whose state each store
    /// partition keeps (for the queues it owns).
    /// When full, the longest-idle state idle for at least `tx_sequence_evict_idle_s` makes
    /// room; otherwise a message starting a new sequence is refused (the sender resends).
    pub tx_sequences_max: usize,
    /// Seconds a sequence state must have been idle before a full table may evict it.
    pub tx_sequence_evict_idle_s: u64,
    /// Seconds after which an idle sequence state is forgotten in any case; 0 = derived from
    /// the resend schedule (its ten intervals) plus `RemoveDuplicateCleanup`, as MSMQ keeps
    /// it until the sender can no longer be resending.
    pub tx_sequence_idle_max_s: u64,
    /// Bytes of each lane between two shards (a message arriving on one shard for a queue
    /// another owns crosses one); at least 4096.
    pub handoff_lane_bytes: usize,
    /// Bytes of hand-offs one shard keeps waiting while a lane is full; past it the session
    /// bringing more is closed (its sender keeps what was not acknowledged and resends).
    pub handoff_backlog_bytes_per_shard_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queues_max: 10_000,
            queue_messages_max: 10_000_000,
            connections_per_shard_max: 4_096,
            session_transmit_bytes_max: 8 << 20,
            outgoing_queue_messages_max: 1_000_000,
            reassembly_bytes_per_shard_max: 256 << 20,
            reassembly_bytes_per_session_max: crate::wire::base::MAX_PACKET_SIZE as usize
                + crate::wire::control::SESSION_HEADER_LEN,
            connections_per_ip_max: 256,
            handshake_timeout_ms: 5_000,
            fd_reserve: 1_024,
            srmp_connections_max: 4_096,
            srmp_header_timeout_ms: 10_000,
            srmp_body_timeout_ms: 60_000,
            srmp_body_bytes_in_flight_max: 64 << 20,
            api_connections_max: 256,
            api_requests_per_shard_max: 1_024,
            api_waiting_receives_per_shard_max: 4_096,
            tx_sequences_max: 65_536,
            tx_sequence_evict_idle_s: 600,
            tx_sequence_idle_max_s: 0,
            handoff_lane_bytes: crate::engine::mesh::DEFAULT_LANE_BYTES,
            handoff_backlog_bytes_per_shard_max: 64 << 20,
        }
    }
}

/// `HKLM\SOFTWARE\Microsoft\MSMQ\Parameters` values, with Windows defaults (DIGEST §12).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(non_snake_case)]
pub struct Parameters {
    /// Session window: messages sent before a SessionAck is required (Windows 64).
    pub MaxUnackedPacket: u16,
    /// Incoming sessions accepted at once; past it EstablishConnection is refused (CS=1).
    pub MaxInSessions: u32,
    /// Added to the session timers, in ms (Windows 0 on a LAN).
    pub RoundTripDelay: u32,
    /// Idle session cleanup, ms (Windows 300,000; 120,000 on routing servers).
    pub CleanupInterval: u32,
    /// Wait before reconnecting an outgoing session, ms (Windows 5,000 + RoundTripDelay).
    pub TryConnectInterval: u32,
    /// Multiplier of the Session Ack Wait Timer for direct-format sessions (Windows 2).
    pub QosCleanupIntervalMultiplier: u32,
    /// AckTimeout asked for in ConnectionParameters, ms (wire range 20,000..=120,000).
    pub AckTimeout: u32,
    /// Entries in the duplicate-message table (Windows 10,000).
    pub RemoveDuplicateSize: u32,
    /// How often old duplicate-table entries are purged, ms (Windows 1,800,000 = 30 min).
    pub RemoveDuplicateCleanup: u32,
    /// Transactional resend intervals, seconds: tries 1-3, 4-6, 7-9, and every later one.
    pub SeqResend13Time: u32,
    pub SeqResend46Time: u32,
    pub SeqResend79Time: u32,
    pub SeqResend10Time: u32,
    /// Longest debounce of an OrderAck, ms (Windows 10,000).
    pub SeqMaxAckDelay: u32,
    /// UDP port of the Ping responder (MS-MQQB 2.1.2).
    pub MsmqIpPingPort: u16,
    /// Machine-wide storage quota, KB (Windows Server default 8 GB).
    pub MachineQuota: u64,
    /// Size of the machine journal (`SYSTEM$;JOURNAL`), KB (Windows: INFINITE). Past it a
    /// journal copy is dropped and counted (`lior_journal_dropped_total`); the receive or
    /// FinalAck that made it still succeeds.
    pub MachineJournalQuota: u64,
    /// Size of each queue's journal (`NAME;journal`), KB (MSMQ's per-queue JournalQuota;
    /// Windows: INFINITE). Past it the copy of a received message is dropped and counted
    /// (`lior_journal_dropped_total`); the receive still succeeds.
    pub JournalQuota: u64,
    /// Hardened MSMQ mode: no raw listener, only SRMP (HTTP) in; non-HTTP outgoing queues lock.
    pub Hardened_MSMQ: bool,
    #[serde(rename = "Security")]
    pub security: Security,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            MaxUnackedPacket: 64,
            MaxInSessions: u32::MAX,
            RoundTripDelay: 0,
            CleanupInterval: 300_000,
            TryConnectInterval: 5_000,
            QosCleanupIntervalMultiplier: 2,
            AckTimeout: 20_000,
            RemoveDuplicateSize: 10_000,
            RemoveDuplicateCleanup: 1_800_000,
            SeqResend13Time: 30,
            SeqResend46Time: 300,
            SeqResend79Time: 1_800,
            SeqResend10Time: 21_600,
            SeqMaxAckDelay: 10_000,
            MsmqIpPingPort: 3527,
            MachineQuota: 8 * 1024 * 1024,
            MachineJournalQuota: 0xFFFF_FFFF,
            JournalQuota: 0xFFFF_FFFF,
            Hardened_MSMQ: false,
            security: Security::default(),
        }
    }
}

/// `HKLM\SOFTWARE\Microsoft\MSMQ\Parameters\Security` values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(non_snake_case)]
pub struct Security {
    /// Send the NACKs that leak information (BAD_DST_Q, ACCESS_DENIED, ...). Windows Vista SP1+
    /// default: off. This is the SendInsecureNacks switch of MS-MQQB 3.1.1.3.
    pub PermitInsecureNacks: bool,
    /// Answer UDP pings on `MsmqIpPingPort` (Windows Vista+ default: off).
    pub EnablePingService: bool,
    /// Hash algorithm lior signs with when `SigningCertificate` and `SigningKey` are set: MD5,
    /// SHA1, SHA256 or SHA512 (Windows 7+ generates SHA512). Arriving signatures use the hash
    /// their sender named; see `WeakHashAlgorithms`.
    pub HashAlgorithm: String,
    /// Weak hashes an arriving signature may use: any of "MD5", "SHA1". Empty (the default,
    /// as on Windows 7+): a message signed with MD5 or SHA-1 is refused with
    /// NACK_BAD_SIGNATURE. (Windows' registry value of this name enables every weak hash by
    /// being present; lior lists the ones it enables.)
    pub WeakHashAlgorithms: Vec<String>,
    /// PEM X.509 certificate (RSA key) sent in the SecurityHeader of the messages lior sends;
    /// with `SigningKey`, every message lior sends is signed (MSMQ 2.0 signature,
    /// `HashAlgorithm`). Unset: nothing is signed.
    pub SigningCertificate: Option<PathBuf>,
    /// PEM RSA private key (PKCS#8 or PKCS#1) of `SigningCertificate`.
    pub SigningKey: Option<PathBuf>,
    /// Certificates registered to Windows users, as MSMQ registers them in Active Directory
    /// (MQRegisterCertificate): a message signed with one of these (by its SHA-256) and
    /// verified is the user's (its SID is trusted for the queue rights); a verified message
    /// signed with any other certificate is authenticated but counts as Everyone.
    pub RegisteredCertificates: Vec<RegisteredCertificate>,
    /// Windows' body cipher for encrypted messages (RC2 or RC4, default RC4). lior neither
    /// encrypts nor decrypts MSMQ bodies: Windows encrypts only with the destination's exchange
    /// key from Active Directory, which lior has no part in, and an arriving encrypted message
    /// is refused with NACK_BAD_ENCRYPTION (`qm::rights`). The key is accepted so a
    /// configuration naming the Windows default loads, and takes only "RC4": any other value
    /// would promise a cipher lior never uses.
    pub EncryptionAlgorithm: String,
}

/// One certificate registered to a Windows user (`Parameters.Security.RegisteredCertificates`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct RegisteredCertificate {
    /// The user's SID, `S-1-5-21-...`.
    pub Sid: String,
    /// SHA-256 of the certificate's DER bytes, hex (as `lior decode` shows it).
    pub Sha256: String,
}

/// Certificates `RegisteredCertificates` holds at most.
pub const REGISTERED_CERTIFICATES_MAX: usize = 4_096;

impl Default for Security {
    fn default() -> Self {
        Security {
            PermitInsecureNacks: false,
            EnablePingService: false,
            HashAlgorithm: "SHA512".into(),
            WeakHashAlgorithms: Vec::new(),
            SigningCertificate: None,
            SigningKey: None,
            RegisteredCertificates: Vec::new(),
            EncryptionAlgorithm: "RC4".into(),
        }
    }
}

/// A configuration problem, said in words an operator can act on.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads a TOML file; every key is optional and defaults to the Windows behaviour.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Config::from_toml(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn to_toml(&self) -> String {
        let mut text = toml::to_string_pretty(self).expect("the configuration always serialises");
        let sec = &self.parameters.security;
        if sec.SigningCertificate.is_none() {
            // Unset signing files are named in comments too, at the end of their table.
            let note = "# SigningCertificate = \"/etc/lior/signing.crt\"  # PEM; with SigningKey, \
                        lior signs the messages it sends (HashAlgorithm)\n# SigningKey = \
                        \"/etc/lior/signing.key\"  # PEM RSA private key of SigningCertificate\n";
            let at = text
                .find("[Parameters.Security]\n")
                .map(|i| text[i..].find("\n\n").map_or(text.len(), |j| i + j + 1));
            match at {
                Some(i) => text.insert_str(i, note),
                None => text.push_str(note),
            }
        }
        // TOML has no "unset": name each optional setting in a comment, so `lior config` shows
        // that it exists.
        let mut note = String::new();
        if self.srmp_listen.is_none() {
            note.push_str(
                "# srmp_listen = \"0.0.0.0:80\"  # SRMP (MSMQ over HTTP) endpoint; off unless \
                 set (hardened mode: 0.0.0.0:80)\n",
            );
        }
        for (set, line) in [
            (
                self.srmp_tls_cert.is_some(),
                "# srmp_tls_cert = \"/etc/lior/srmp.pem\"  # HTTPS for SRMP: PEM chain; with \
                 srmp_tls_key\n# srmp_tls_key = \"/etc/lior/srmp.key\"\n",
            ),
            (
                self.srmp_tls_client_ca.is_some(),
                "# srmp_tls_client_ca = \"/etc/lior/clients-ca.pem\"  # require SRMP client \
                 certificates signed by these CAs\n",
            ),
            (
                self.srmp_tls_ca.is_some(),
                "# srmp_tls_ca = \"/etc/lior/peers-ca.pem\"  # CAs trusted when sending SRMP \
                 over HTTPS (default: the system bundle)\n",
            ),
            (
                self.api_tls_cert.is_some(),
                "# api_tls_cert = \"/etc/lior/api.pem\"  # HTTPS for the API (then every \
                 request needs the bearer token of DATA_DIR/api-token)\n# api_tls_key = \
                 \"/etc/lior/api.key\"\n",
            ),
        ] {
            if !set {
                note.push_str(line);
            }
        }
        if !note.is_empty() {
            text = match text.find("\ncores") {
                Some(i) => format!("{}{note}{}", &text[..=i], &text[i + 1..]),
                None => format!("{note}{text}"),
            };
        }
        if self.amqp.tls_listen.is_none() {
            let amqps = "# tls_listen = \"0.0.0.0:5671\"  # AMQPS; with tls_cert and tls_key \
                         (PEM)\n";
            if let Some(i) = text.find("[amqp]\n") {
                let at = i + "[amqp]\n".len();
                text = format!("{}{amqps}{}", &text[..at], &text[at..]);
            }
        }
        text
    }

    /// Checks ranges the wire or the product impose.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.amqp.validate().map_err(ConfigError)?;
        self.validate_tls()?;
        for (host, r) in &self.remotes {
            if host.trim().is_empty() {
                return Err(ConfigError("remotes: a remote machine needs a name".into()));
            }
            if r.port == Some(0) {
                return Err(ConfigError(format!(
                    "remotes.\"{host}\".port must be 1..=65535"
                )));
            }
        }
        crate::qm::fanout::DistributionLists::from_config(&self.distribution_lists)
            .map_err(ConfigError)?;
        let p = &self.parameters;
        if p.MaxUnackedPacket == 0 {
            return Err(ConfigError(
                "Parameters.MaxUnackedPacket must be 1..=65535".into(),
            ));
        }
        if !(20_000..=120_000).contains(&p.AckTimeout) {
            return Err(ConfigError(format!(
                "Parameters.AckTimeout is {} ms; the wire allows 20000..=120000",
                p.AckTimeout
            )));
        }
        if p.RemoveDuplicateSize == 0 {
            return Err(ConfigError(
                "Parameters.RemoveDuplicateSize must be at least 1".into(),
            ));
        }
        for (name, v) in [
            ("SeqResend13Time", p.SeqResend13Time),
            ("SeqResend46Time", p.SeqResend46Time),
            ("SeqResend79Time", p.SeqResend79Time),
            ("SeqResend10Time", p.SeqResend10Time),
        ] {
            if v == 0 {
                return Err(ConfigError(format!(
                    "Parameters.{name} must be at least 1 s"
                )));
            }
        }
        let s = &p.security;
        if !["MD5", "SHA1", "SHA256", "SHA512"].contains(&s.HashAlgorithm.as_str()) {
            return Err(ConfigError(format!(
                "Parameters.Security.HashAlgorithm {:?}: expected MD5, SHA1, SHA256 or SHA512",
                s.HashAlgorithm
            )));
        }
        for w in &s.WeakHashAlgorithms {
            if !["MD5", "SHA1"].contains(&w.as_str()) {
                return Err(ConfigError(format!(
                    "Parameters.Security.WeakHashAlgorithms {w:?}: expected \"MD5\" or \"SHA1\" \
                     (SHA256 and SHA512 are always accepted)"
                )));
            }
        }
        if s.RegisteredCertificates.len() > REGISTERED_CERTIFICATES_MAX {
            return Err(ConfigError(format!(
                "Parameters.Security.RegisteredCertificates: {} entries, at most \
                 {REGISTERED_CERTIFICATES_MAX}",
                s.RegisteredCertificates.len()
            )));
        }
        for c in &s.RegisteredCertificates {
            let sid_ok = c.Sid.starts_with("S-1-")
                && c.Sid[4..]
                    .split('-')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !sid_ok {
                return Err(ConfigError(format!(
                    "Parameters.Security.RegisteredCertificates: Sid {:?} is not a SID \
                     (S-1-5-21-...)",
                    c.Sid
                )));
            }
            if c.Sha256.len() != 64 || !c.Sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError(format!(
                    "Parameters.Security.RegisteredCertificates: Sha256 {:?} for {} is not 64 \
                     hex digits (the certificate's SHA-256, as `lior decode` prints it)",
                    c.Sha256, c.Sid
                )));
            }
        }
        if s.SigningCertificate.is_some() != s.SigningKey.is_some() {
            return Err(ConfigError(
                "Parameters.Security.SigningCertificate and SigningKey go together: set both \
                 (PEM files) to sign the messages lior sends, or neither"
                    .into(),
            ));
        }
        if s.EncryptionAlgorithm != "RC4" {
            return Err(ConfigError(format!(
                "Parameters.Security.EncryptionAlgorithm {:?}: lior neither encrypts nor \
                 decrypts MSMQ message bodies (Windows encrypts only with keys from Active \
                 Directory) and refuses encrypted messages with NACK_BAD_ENCRYPTION, so no \
                 cipher can be chosen; the setting takes only \"RC4\", the Windows default \
                 (remove the line or set \"RC4\")",
                s.EncryptionAlgorithm
            )));
        }
        let l = &self.limits;
        for (name, v) in [
            ("queues_max", l.queues_max),
            ("tx_sequences_max", l.tx_sequences_max),
            ("connections_per_shard_max", l.connections_per_shard_max),
            ("connections_per_ip_max", l.connections_per_ip_max),
            ("srmp_connections_max", l.srmp_connections_max),
            ("api_connections_max", l.api_connections_max),
            ("api_requests_per_shard_max", l.api_requests_per_shard_max),
            (
                "reassembly_bytes_per_session_max",
                l.reassembly_bytes_per_session_max,
            ),
            ("handshake_timeout_ms", l.handshake_timeout_ms as usize),
            ("srmp_header_timeout_ms", l.srmp_header_timeout_ms as usize),
            ("srmp_body_timeout_ms", l.srmp_body_timeout_ms as usize),
        ] {
            if v == 0 {
                return Err(ConfigError(format!("limits.{name} must be at least 1")));
            }
        }
        if l.srmp_body_bytes_in_flight_max < crate::http::srmp::SRMP_BODY_BYTES_MAX {
            return Err(ConfigError(format!(
                "limits.srmp_body_bytes_in_flight_max is {}; it must hold at least one largest \
                 body ({} bytes)",
                l.srmp_body_bytes_in_flight_max,
                crate::http::srmp::SRMP_BODY_BYTES_MAX
            )));
        }
        Ok(())
    }

    /// TLS keys come in pairs, and the API leaves loopback only with TLS (and its token).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        for (door, cert, key) in [
            ("srmp", &self.srmp_tls_cert, &self.srmp_tls_key),
            ("api", &self.api_tls_cert, &self.api_tls_key),
        ] {
            if cert.is_some() != key.is_some() {
                return Err(ConfigError(format!(
                    "{door}_tls_cert and {door}_tls_key go together: set both (a PEM \
                     certificate chain and its PEM private key) or neither"
                )));
            }
        }
        if self.srmp_tls_client_ca.is_some() && self.srmp_tls_cert.is_none() {
            return Err(ConfigError(
                "srmp_tls_client_ca asks SRMP clients for certificates, which needs TLS: set \
                 srmp_tls_cert and srmp_tls_key too"
                    .into(),
            ));
        }
        if self.srmp_tls_cert.is_some()
            && self.srmp_listen.is_none()
            && !self.parameters.Hardened_MSMQ
        {
            return Err(ConfigError(
                "srmp_tls_cert is set but the SRMP endpoint is off: set srmp_listen (or remove \
                 the srmp_tls_* keys)"
                    .into(),
            ));
        }
        if !self.api.ip().is_loopback() && self.api_tls_cert.is_none() {
            return Err(ConfigError(format!(
                "api = {} is not a loopback address: an API reachable from other machines needs \
                 TLS and a bearer token. Set api_tls_cert and api_tls_key (the token is then \
                 created in {}/api-token, mode 0600, and every request needs `Authorization: \
                 Bearer <token>`), or bind the API to 127.0.0.1",
                self.api,
                self.data_dir.display()
            )));
        }
        Ok(())
    }

    /// Whether every API request needs the bearer token of `DATA_DIR/api-token`: when the API
    /// is reachable beyond loopback, or served over TLS (TLS on the API is for remote use, say
    /// through a forwarded port, so it is never open without the token).
    pub fn api_needs_token(&self) -> bool {
        !self.api.ip().is_loopback() || self.api_tls_cert.is_some()
    }

    /// The resend schedule of MS-MQQB 3.1.3.1 in seconds: three tries at each of the first
    /// three intervals, then the last one forever.
    pub fn resend_schedule_s(&self) -> [u32; 10] {
        let p = &self.parameters;
        let (a, b, c, d) = (
            p.SeqResend13Time,
            p.SeqResend46Time,
            p.SeqResend79Time,
            p.SeqResend10Time,
        );
        [a, a, a, b, b, b, c, c, c, d]
    }

    /// Seconds an idle incoming transactional sequence state is kept (see
    /// [`Limits::tx_sequence_idle_max_s`]).
    pub fn tx_sequence_idle_s(&self) -> u64 {
        if self.limits.tx_sequence_idle_max_s > 0 {
            return self.limits.tx_sequence_idle_max_s;
        }
        let schedule: u64 = self.resend_schedule_s().iter().map(|&s| u64::from(s)).sum();
        schedule + u64::from(self.parameters.RemoveDuplicateCleanup) / 1000
    }

    /// The Session Initialization Timer: 60,000 + 2 × RoundTripDelay ms (MS-MQQB <43>).
    pub fn session_init_timeout_ms(&self) -> u64 {
        60_000 + 2 * u64::from(self.parameters.RoundTripDelay)
    }

    /// The handshake time-out of incoming sessions: `limits.handshake_timeout_ms` + 2 ×
    /// RoundTripDelay, never longer than the Session Initialization Timer.
    pub fn incoming_handshake_timeout_ms(&self) -> u64 {
        (self.limits.handshake_timeout_ms + 2 * u64::from(self.parameters.RoundTripDelay))
            .min(self.session_init_timeout_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_windows_product_behaviour() {
        let c = Config::default();
        let p = &c.parameters;
        assert_eq!(p.MaxUnackedPacket, 64);
        assert_eq!(p.RemoveDuplicateSize, 10_000);
        assert_eq!(p.RemoveDuplicateCleanup, 30 * 60 * 1000);
        assert_eq!(
            c.resend_schedule_s(),
            [30, 30, 30, 300, 300, 300, 1800, 1800, 1800, 21_600]
        );
        assert_eq!(p.MaxInSessions, 0xFFFF_FFFF);
        assert!(!p.security.PermitInsecureNacks);
        assert_eq!(c.session_init_timeout_ms(), 60_000);
        c.validate().unwrap();
    }

    #[test]
    fn registry_names_are_the_keys_and_round_trip() {
        let text = "listen = \"127.0.0.1:0\"\n[Parameters]\nMaxUnackedPacket = 32\n\
                    RoundTripDelay = 100\n[Parameters.Security]\nPermitInsecureNacks = true\n";
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.parameters.MaxUnackedPacket, 32);
        assert!(c.parameters.security.PermitInsecureNacks);
        assert_eq!(c.session_init_timeout_ms(), 60_200);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn every_setting_is_named_in_the_printed_file_even_when_unset() {
        let text = Config::default().to_toml();
        assert!(text.contains("# srmp_listen = "), "{text}");
        for key in [
            "srmp_tls_cert",
            "srmp_tls_key",
            "srmp_tls_client_ca",
            "srmp_tls_ca",
            "api_tls_cert",
            "api_tls_key",
            "tls_listen",
        ] {
            assert!(text.contains(&format!("# {key} = ")), "{key}: {text}");
        }
        assert_eq!(Config::from_toml(&text).unwrap(), Config::default());
        let c = Config {
            srmp_listen: Some("127.0.0.1:8080".parse().unwrap()),
            ..Config::default()
        };
        let text = c.to_toml();
        assert!(text.contains("srmp_listen = \"127.0.0.1:8080\""), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), c);
        let text = Config::default().to_toml();
        for key in [
            "# SigningCertificate = ",
            "# SigningKey = ",
            "WeakHashAlgorithms = []",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        let mut c = Config::default();
        c.parameters.security.SigningCertificate = Some("/x/c.pem".into());
        c.parameters.security.SigningKey = Some("/x/k.pem".into());
        c.parameters.security.WeakHashAlgorithms = vec!["SHA1".into()];
        let text = c.to_toml();
        assert!(text.contains("SigningKey = \"/x/k.pem\""), "{text}");
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn signing_keys_go_together_and_only_weak_hashes_are_listed_as_weak() {
        let e = Config::from_toml("[Parameters.Security]\nSigningCertificate = \"/c.pem\"\n")
            .unwrap_err();
        assert!(e.0.contains("SigningKey"), "{e}");
        let e = Config::from_toml("[Parameters.Security]\nWeakHashAlgorithms = [\"SHA512\"]\n")
            .unwrap_err();
        assert!(e.0.contains("WeakHashAlgorithms"), "{e}");
        let c =
            Config::from_toml("[Parameters.Security]\nWeakHashAlgorithms = [\"MD5\", \"SHA1\"]\n")
                .unwrap();
        assert_eq!(c.parameters.security.WeakHashAlgorithms, ["MD5", "SHA1"]);
    }

    #[test]
    fn typos_and_out_of_range_values_are_refused_with_the_key_named() {
        let e = Config::from_toml("[Parameters]\nMaxUnackedPackets = 3\n").unwrap_err();
        assert!(e.0.contains("MaxUnackedPackets"), "{e}");
        let e = Config::from_toml("[Parameters]\nAckTimeout = 5\n").unwrap_err();
        assert!(e.0.contains("AckTimeout"), "{e}");
        let e = Config::from_toml("[Parameters.Security]\nHashAlgorithm = \"MD4\"\n").unwrap_err();
        assert!(e.0.contains("HashAlgorithm"), "{e}");
    }

    #[test]
    fn encryption_algorithm_takes_only_the_windows_default_and_says_why() {
        let c =
            Config::from_toml("[Parameters.Security]\nEncryptionAlgorithm = \"RC4\"\n").unwrap();
        assert_eq!(c, Config::default());
        for other in ["RC2", "AES", "rc4", ""] {
            let e = Config::from_toml(&format!(
                "[Parameters.Security]\nEncryptionAlgorithm = {other:?}\n"
            ))
            .unwrap_err();
            assert!(
                e.0.contains("EncryptionAlgorithm") && e.0.contains("NACK_BAD_ENCRYPTION"),
                "{e}"
            );
        }
    }

    #[test]
    fn tls_keys_pair_up_and_the_api_leaves_loopback_only_with_tls() {
        let e = Config::from_toml("srmp_listen = \"127.0.0.1:0\"\nsrmp_tls_cert = \"c.pem\"\n")
            .unwrap_err();
        assert!(e.0.contains("srmp_tls_key"), "{e}");
        let e = Config::from_toml("api_tls_key = \"k.pem\"\n").unwrap_err();
        assert!(e.0.contains("api_tls_cert"), "{e}");
        let e = Config::from_toml("srmp_tls_client_ca = \"ca.pem\"\n").unwrap_err();
        assert!(e.0.contains("srmp_tls_cert"), "{e}");
        let e = Config::from_toml("api = \"0.0.0.0:1802\"\n").unwrap_err();
        assert!(
            e.0.contains("not a loopback address") && e.0.contains("api_tls_cert"),
            "{e}"
        );
        let c = Config::from_toml(
            "api = \"0.0.0.0:1802\"\napi_tls_cert = \"c.pem\"\napi_tls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert!(c.api_needs_token());
        assert!(!Config::default().api_needs_token());
        let c = Config {
            api_tls_cert: Some("c.pem".into()),
            api_tls_key: Some("k.pem".into()),
            ..Config::default()
        };
        assert!(
            c.api_needs_token(),
            "TLS on the API always comes with the token"
        );
        assert_eq!(Config::from_toml(&c.to_toml()).unwrap(), c);
    }
}
