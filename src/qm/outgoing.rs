//! Outgoing queues: messages for remote queue managers wait here until a session to the
//! destination carries them and the peer acknowledges them (MS-MQQB 3.1.7.1). Opening a remote
//! queue for sending makes no contact with the remote machine; the message is stored at once.
//!
//! One outgoing queue per destination machine (protocol and address of a direct format name).
//! Its messages live in the store partition of the shard that owns the destination, under a
//! store queue id from this table, so recoverable outgoing messages survive a crash and are
//! sent again after a restart. The table is persisted (`outgoing.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::identity::write_atomic;
use crate::wire::format_name::{DirectAddress, DirectName};

/// File of the table in the data directory.
pub const OUTGOING_FILE: &str = "outgoing.json";
/// Store queue ids of outgoing queues start here (outside private numbers and system ids).
pub const OUTGOING_ID_BASE: u32 = 0xFFFE_0000;
/// Outgoing queues at most (a named bound: one per remote machine).
pub const OUTGOING_QUEUES_MAX: usize = 4_096;

/// How an outgoing queue can be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// MS-MQQB over TCP to an address or a host name, port 1801 (`remote_port`).
    Mqqb,
    /// SRMP over HTTP or HTTPS (`qm::srmp_out`): one POST per message.
    Http,
    /// IPX/SPX: not supported on Linux; kept, never sent.
    Ipx,
}

/// One outgoing queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingDef {
    /// Store queue id.
    pub id: u32,
    /// `TCP:192.0.2.10`, `OS:winbox`, `HTTP:host` (lower case).
    pub key: String,
    /// The host part, as given (an IP literal or a name to resolve).
    pub host: String,
    pub transport: Transport,
    /// The shard (and store partition) that owns it.
    pub shard: usize,
    /// The last outgoing transactional sequence id used for this destination: a new sequence
    /// must be higher than every earlier one (the receiver refuses a lower or equal one), even
    /// after a restart within the same second or a clock step back.
    #[serde(default)]
    pub tx_sequence_id: u64,
    /// Paused by an administrator (`lior outgoing pause`): nothing is sent, the session is
    /// closed, messages keep waiting; kept across restarts.
    #[serde(default)]
    pub paused: bool,
    /// HTTP and HTTPS: the port the format name gives (part of the key), if any.
    #[serde(default)]
    pub port: Option<u16>,
}

impl OutgoingDef {
    /// Whether SRMP to this destination goes over HTTPS.
    pub fn https(&self) -> bool {
        self.key.starts_with("HTTPS:")
    }
}

/// Why a destination cannot get an outgoing queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingError {
    Full(usize),
    Io(String),
}

impl std::fmt::Display for OutgoingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutgoingError::Full(n) => write!(f, "too many outgoing queues ({n})"),
            OutgoingError::Io(e) => write!(f, "cannot save the outgoing queue table: {e}"),
        }
    }
}

/// The key and transport of a direct name's machine.
pub fn destination_of(d: &DirectName) -> (String, String, Transport) {
    let host = d.host().to_string();
    // HTTP(S) names carry their own port: one outgoing queue per host and port.
    let port = match &d.address {
        DirectAddress::Http { port: Some(p), .. } | DirectAddress::Https { port: Some(p), .. } => {
            format!(":{p}")
        }
        _ => String::new(),
    };
    let (proto, transport) = match &d.address {
        DirectAddress::Tcp(_) => ("TCP", Transport::Mqqb),
        DirectAddress::Os(_) => ("OS", Transport::Mqqb),
        DirectAddress::Http { .. } => ("HTTP", Transport::Http),
        DirectAddress::Https { .. } => ("HTTPS", Transport::Http),
        DirectAddress::Ipx(_) | DirectAddress::Spx(_) => ("IPX", Transport::Ipx),
    };
    (
        format!("{proto}:{}{port}", host.to_ascii_lowercase()),
        host,
        transport,
    )
}

/// The persisted table of outgoing queues.
#[derive(Debug)]
pub struct OutgoingTable {
    path: PathBuf,
    shards: usize,
    by_key: BTreeMap<String, OutgoingDef>,
}

#[derive(Serialize, Deserialize, Default)]
struct TableFile {
    queues: Vec<OutgoingDef>,
}

impl OutgoingTable {
    pub fn open(data_dir: &Path, shards: usize) -> Result<OutgoingTable, OutgoingError> {
        let path = data_dir.join(OUTGOING_FILE);
        let file: TableFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| OutgoingError::Io(format!("{} is damaged: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TableFile::default(),
            Err(e) => return Err(OutgoingError::Io(e.to_string())),
        };
        let by_key = file
            .queues
            .into_iter()
            .map(|mut q| {
                // A queue keeps its partition; with fewer shards now, the shard that owns
                // the partition index modulo the count sends it.
                q.shard %= shards.max(1);
                (q.key.clone(), q)
            })
            .collect();
        Ok(OutgoingTable {
            path,
            shards: shards.max(1),
            by_key,
        })
    }

    /// The outgoing queue of a destination, created (and saved) on first use.
    pub fn get_or_create(&mut self, d: &DirectName) -> Result<OutgoingDef, OutgoingError> {
        let (key, host, transport) = destination_of(d);
        let port = match &d.address {
            DirectAddress::Http { port, .. } | DirectAddress::Https { port, .. } => *port,
            _ => None,
        };
        if let Some(q) = self.by_key.get(&key) {
            return Ok(q.clone());
        }
        if self.by_key.len() >= OUTGOING_QUEUES_MAX {
            return Err(OutgoingError::Full(OUTGOING_QUEUES_MAX));
        }
        let n = self.by_key.len() as u32;
        let q = OutgoingDef {
            id: OUTGOING_ID_BASE + n,
            key: key.clone(),
            host,
            transport,
            shard: (n as usize) % self.shards,
            tx_sequence_id: 0,
            paused: false,
            port,
        };
        self.by_key.insert(key, q.clone());
        self.save()?;
        Ok(q)
    }

    /// Records (durably) the transactional sequence id now used for outgoing queue `id`.
    pub fn set_tx_sequence_id(&mut self, id: u32, seq_id: u64) -> Result<(), OutgoingError> {
        let Some(q) = self.by_key.values_mut().find(|q| q.id == id) else {
            return Ok(());
        };
        if q.tx_sequence_id >= seq_id {
            return Ok(());
        }
        q.tx_sequence_id = seq_id;
        self.save()
    }

    /// Pauses or resumes the outgoing queue whose key is `key` (`TCP:10.0.0.7`, `OS:winbox`,
    /// any case); saved at once.
    pub fn set_paused(
        &mut self,
        key: &str,
        paused: bool,
    ) -> Option<Result<OutgoingDef, OutgoingError>> {
        let key = match key.split_once(':') {
            Some((proto, host)) => format!(
                "{}:{}",
                proto.to_ascii_uppercase(),
                host.to_ascii_lowercase()
            ),
            None => key.to_string(),
        };
        let q = self.by_key.get_mut(&key)?;
        q.paused = paused;
        let def = q.clone();
        Some(self.save().map(|()| def))
    }

    fn save(&self) -> Result<(), OutgoingError> {
        let file = TableFile {
            queues: self.by_key.values().cloned().collect(),
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| OutgoingError::Io(e.to_string()))?;
        write_atomic(&self.path, &bytes).map_err(|e| OutgoingError::Io(e.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &OutgoingDef> {
        self.by_key.values()
    }

    pub fn by_id(&self, id: u32) -> Option<&OutgoingDef> {
        self.by_key.values().find(|q| q.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::format_name::FormatName;

    #[test]
    fn one_queue_per_machine_persisted_with_a_stable_id() {
        let d = tempfile::tempdir().unwrap();
        let mut t = OutgoingTable::open(d.path(), 2).unwrap();
        let a = FormatName::parse("DIRECT=OS:WinBox\\private$\\a").unwrap();
        let b = FormatName::parse("DIRECT=OS:winbox\\private$\\b").unwrap();
        let c = FormatName::parse("DIRECT=TCP:192.0.2.10\\private$\\a").unwrap();
        let qa = t.get_or_create(a.as_direct().unwrap()).unwrap();
        let qb = t.get_or_create(b.as_direct().unwrap()).unwrap();
        let qc = t.get_or_create(c.as_direct().unwrap()).unwrap();
        assert_eq!(qa, qb, "same machine, same outgoing queue");
        assert_eq!(qa.key, "OS:winbox");
        assert_ne!(qa.id, qc.id);
        assert_ne!(qa.shard, qc.shard, "spread over shards");
        drop(t);
        let mut t = OutgoingTable::open(d.path(), 2).unwrap();
        assert_eq!(t.get_or_create(c.as_direct().unwrap()).unwrap(), qc);
        let h = FormatName::parse("DIRECT=HTTP://web/msmq/private$/q").unwrap();
        assert_eq!(
            t.get_or_create(h.as_direct().unwrap()).unwrap().transport,
            Transport::Http
        );
    }
}
