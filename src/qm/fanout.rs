//! Multiple-element format names and `DL=` distribution lists (MS-MQMQ 2.1.5, 2.1.7): a send to
//! one of them places one copy per distinct destination, each copy carrying the
//! MultiQueueFormatHeader (MS-MQMQ 2.2.20.1) that lists every destination.
//!
//! lior has no directory service, so a distribution list's members come from the configuration
//! (`[distribution_lists."<guid>"]`, see README "Distribution lists"). The expansion follows
//! MS-MQDMPR 3.1.7.3.8 (Expand Format Name): each `DL=` element is replaced by its members
//! (nested lists too, up to [`DL_NESTING_DEPTH_MAX`] deep), then the names are sorted without
//! case and names equal without case are kept once. What remains is what the copies' Destination
//! MQF lists name (MS-MQDMPR 3.1.7.3.9 sets the descriptor's format name, and so
//! `DestinationMultiQueueFormatName`, to that expanded name).
//!
//! This module is sans-IO: [`DistributionLists`] (validated at start), [`expand`], [`MqfLists`]
//! (the encoded lists a copy carries), and the outcome each destination gets. The API's send
//! ([`send_all`]) asks each destination's owning shard for its copy, as a single send does.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::wire::format_name::FormatName;
use crate::wire::headers::{MqfAddressHeader, MqfElement, MultiQueueFormatHeader};
use crate::wire::{Guid, Utf16};

/// Distribution lists one configuration may define.
pub const DISTRIBUTION_LISTS_MAX: usize = 1024;
/// Members one distribution list may name.
pub const DL_MEMBERS_MAX: usize = 1024;
/// How deep distribution lists may nest (a list naming a list naming a list...).
pub const DL_NESTING_DEPTH_MAX: usize = 8;
/// Distinct destinations one send fans out to (after expansion and duplicate removal); a
/// larger expansion is refused, nothing sent.
pub const FANOUT_DESTINATIONS_MAX: usize = 256;

/// One `[distribution_lists."<guid>"]` table of the configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionListConfig {
    /// A name for people (logs, `lior config`); the GUID is what `DL=` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Format names: `DIRECT=...` queues, or `DL=<guid>` of another configured list.
    pub members: Vec<String>,
}

/// The configured distribution lists, validated: every member parses, is a single name lior
/// can send to, every nested list exists, no loop, no deeper than [`DL_NESTING_DEPTH_MAX`].
#[derive(Clone, Debug, Default)]
pub struct DistributionLists {
    lists: HashMap<Guid, Vec<FormatName>>,
}

/// True when a send to `name` fans out (a multiple-element name or a `DL=` name).
pub fn is_fanout(name: &FormatName) -> bool {
    matches!(
        name,
        FormatName::Multiple(_) | FormatName::DistributionList { .. }
    )
}

/// [`is_fanout`] of the text, false when it does not parse.
pub fn is_fanout_text(to: &str) -> bool {
    to.contains('=') && FormatName::parse(to).is_ok_and(|f| is_fanout(&f))
}

fn dl_text(id: Guid) -> String {
    format!(
        "DL={}",
        FormatName::DistributionList { id, domain: None }
            .to_string()
            .trim_start_matches("DL=")
    )
}

impl DistributionLists {
    /// The lists of the configuration, each member parsed and checked alone (what a send needs
    /// of a configuration [`DistributionLists::from_config`] accepted at start).
    pub fn parse(
        map: &BTreeMap<String, DistributionListConfig>,
    ) -> Result<DistributionLists, String> {
        if map.len() > DISTRIBUTION_LISTS_MAX {
            return Err(format!(
                "distribution_lists: {} lists, limit {DISTRIBUTION_LISTS_MAX} \
                 (DISTRIBUTION_LISTS_MAX)",
                map.len()
            ));
        }
        let mut lists = HashMap::new();
        for (key, dl) in map {
            let at = format!("distribution_lists.\"{key}\"");
            let id = match FormatName::parse(&format!("DL={}", key.trim())) {
                Ok(FormatName::DistributionList { id, domain: None }) => id,
                _ => {
                    return Err(format!(
                        "{at}: the table's name must be the list's GUID \
                         (e.g. [distribution_lists.\"7f2c0a3e-5b7d-4c1e-9a61-0d5e3f2b8c41\"])"
                    ))
                }
            };
            if dl.members.is_empty() {
                return Err(format!("{at}: no members; list at least one format name"));
            }
            if dl.members.len() > DL_MEMBERS_MAX {
                return Err(format!(
                    "{at}: {} members, limit {DL_MEMBERS_MAX} (DL_MEMBERS_MAX)",
                    dl.members.len()
                ));
            }
            let mut members = Vec::with_capacity(dl.members.len());
            for m in &dl.members {
                let f = FormatName::parse(m)
                    .map_err(|e| format!("{at}: member {m:?} is not a format name: {e}"))?;
                match &f {
                    FormatName::Multiple(_) => {
                        return Err(format!(
                            "{at}: member {m:?} is a multiple-element name; list its elements \
                             as members, one each"
                        ))
                    }
                    FormatName::Direct(d) if f.is_read_only() || d.queue.subqueue().is_some() => {
                        return Err(format!(
                            "{at}: member {m:?} cannot be sent to (a journal, dead-letter or \
                             machine queue, or a subqueue)"
                        ))
                    }
                    FormatName::Direct(_) | FormatName::DistributionList { .. } => {}
                    _ => {
                        return Err(format!(
                            "{at}: member {m:?}: lior sends only to DIRECT= names and DL= lists \
                             (PUBLIC=, PRIVATE= and the rest need a directory service)"
                        ))
                    }
                }
                members.push(f);
            }
            if lists.insert(id, members).is_some() {
                return Err(format!("{at}: {} is defined twice", dl_text(id)));
            }
        }
        Ok(DistributionLists { lists })
    }

    /// Builds and checks the lists of the configuration. The error names the list, the member
    /// and what to do.
    pub fn from_config(
        map: &BTreeMap<String, DistributionListConfig>,
    ) -> Result<DistributionLists, String> {
        let dls = Self::parse(map)?;
        // Every nested list exists; no loop; depth and size bounded.
        for id in dls.lists.keys() {
            let mut path = vec![*id];
            dls.check_nested(*id, &mut path)?;
            let n = dls.expand_list(*id)?.len();
            if n > FANOUT_DESTINATIONS_MAX {
                return Err(format!(
                    "distribution_lists: {} expands to {n} destinations, limit \
                     {FANOUT_DESTINATIONS_MAX} (FANOUT_DESTINATIONS_MAX)",
                    dl_text(*id)
                ));
            }
        }
        Ok(dls)
    }

    fn check_nested(&self, id: Guid, path: &mut Vec<Guid>) -> Result<(), String> {
        let Some(members) = self.lists.get(&id) else {
            return Ok(());
        };
        for m in members {
            let FormatName::DistributionList { id: inner, .. } = m else {
                continue;
            };
            let chain = |path: &[Guid], last: Guid| {
                path.iter()
                    .chain(std::iter::once(&last))
                    .map(|g| dl_text(*g))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            };
            if !self.lists.contains_key(inner) {
                return Err(format!(
                    "distribution_lists.\"{}\": member {} names no configured distribution list \
                     (define [distribution_lists.\"{}\"] or remove the member)",
                    dl_text(id).trim_start_matches("DL="),
                    dl_text(*inner),
                    dl_text(*inner).trim_start_matches("DL=")
                ));
            }
            if path.contains(inner) {
                return Err(format!(
                    "distribution_lists: loop {}; a list may not contain itself",
                    chain(path, *inner)
                ));
            }
            if path.len() >= DL_NESTING_DEPTH_MAX {
                return Err(format!(
                    "distribution_lists: {} nests deeper than {DL_NESTING_DEPTH_MAX} lists \
                     (DL_NESTING_DEPTH_MAX)",
                    chain(path, *inner)
                ));
            }
            path.push(*inner);
            self.check_nested(*inner, path)?;
            path.pop();
        }
        Ok(())
    }

    /// The list's members with nested lists replaced by theirs (not yet sorted).
    fn expand_list(&self, id: Guid) -> Result<Vec<FormatName>, String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        self.expand_into(id, 0, &mut seen, &mut out)?;
        Ok(out)
    }

    fn expand_into(
        &self,
        id: Guid,
        depth: usize,
        seen: &mut HashSet<Guid>,
        out: &mut Vec<FormatName>,
    ) -> Result<(), String> {
        let members = self.lists.get(&id).ok_or_else(|| {
            format!(
                "{}: no such distribution list in the configuration \
                 ([distribution_lists.\"<guid>\"]); nothing was sent",
                dl_text(id)
            )
        })?;
        if depth >= DL_NESTING_DEPTH_MAX {
            return Err(format!(
                "{}: nests deeper than {DL_NESTING_DEPTH_MAX} lists (DL_NESTING_DEPTH_MAX)",
                dl_text(id)
            ));
        }
        // A list reached twice (two paths to it) adds its members once; a loop cannot pass
        // `from_config`, and this stops one anyway.
        if !seen.insert(id) {
            return Ok(());
        }
        for m in members {
            match m {
                FormatName::DistributionList { id: inner, .. } => {
                    self.expand_into(*inner, depth + 1, seen, out)?
                }
                other => out.push(other.clone()),
            }
            if out.len() > FANOUT_DESTINATIONS_MAX * 4 {
                break;
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

/// MS-MQDMPR 3.1.7.3.8: the single names a send to `name` goes to, `DL=` elements replaced by
/// their members, sorted without case, names equal without case kept once. A name that is not
/// multiple nor a list is itself. Refused (nothing is sent) when a list is unknown, an element
/// cannot be sent to, or more than [`FANOUT_DESTINATIONS_MAX`] remain.
pub fn expand(name: &FormatName, dls: &DistributionLists) -> Result<Vec<FormatName>, String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for e in name.elements() {
        match e {
            FormatName::DistributionList { id, .. } => {
                dls.expand_into(*id, 0, &mut seen, &mut out)?
            }
            other => out.push(other.clone()),
        }
    }
    let mut keyed: Vec<(String, FormatName)> =
        out.into_iter().map(|f| (f.normalized_key(), f)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    if keyed.len() > FANOUT_DESTINATIONS_MAX {
        return Err(format!(
            "{name}: {} destinations, limit {FANOUT_DESTINATIONS_MAX} (FANOUT_DESTINATIONS_MAX); \
             nothing was sent",
            keyed.len()
        ));
    }
    Ok(keyed.into_iter().map(|(_, f)| f).collect())
}

/// Keeps the first of the names that `key` says are the same queue (`DIRECT=OS:.\private$\a` and
/// `DIRECT=TCP:127.0.0.1\private$\a` are one local queue): one copy per queue.
pub fn distinct_by<K: Eq + std::hash::Hash>(
    names: Vec<FormatName>,
    key: impl Fn(&FormatName) -> K,
) -> Vec<FormatName> {
    let mut seen = HashSet::new();
    names.into_iter().filter(|f| seen.insert(key(f))).collect()
}

/// One MQFAddressHeader list, encoded (MS-MQMQ 2.2.20.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MqfList {
    pub element_count: u32,
    pub list: Vec<u8>,
}

impl MqfList {
    /// The list of `names` (direct, public, private or DL names; MS-MQMQ 2.2.18.1.4).
    pub fn build(names: &[FormatName]) -> Result<MqfList, String> {
        let wires: Vec<Option<Vec<u8>>> = names.iter().map(|f| f.direct_wire_string()).collect();
        let mut elements = Vec::with_capacity(names.len());
        let mut cap = 0usize;
        for (f, w) in names.iter().zip(&wires) {
            let e = match (f, w) {
                (_, Some(w)) => MqfElement::Direct(Utf16(w)),
                (
                    FormatName::Public {
                        queue,
                        journal: false,
                    },
                    _,
                ) => MqfElement::Public(*queue),
                (
                    FormatName::Private {
                        qm,
                        id,
                        journal: false,
                    },
                    _,
                ) => MqfElement::Private { qm: *qm, id: *id },
                (FormatName::DistributionList { id, .. }, _) => MqfElement::DistributionList(*id),
                _ => return Err(format!("{f}: cannot be listed in a MultiQueueFormatHeader")),
            };
            cap += 2 + 3 + 20 + w.as_ref().map_or(0, Vec::len);
            elements.push(e);
        }
        let mut buf = vec![0u8; cap];
        let h = MqfAddressHeader::build(&elements, &mut buf)
            .map_err(|e| format!("MultiQueueFormatHeader list: {e}"))?;
        Ok(MqfList {
            element_count: h.element_count,
            list: h.list.to_vec(),
        })
    }

    pub fn header(&self) -> MqfAddressHeader<'_> {
        MqfAddressHeader {
            element_count: self.element_count,
            list: &self.list,
        }
    }
}

/// The MultiQueueFormatHeader lists every copy of one fanned-out message carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MqfLists {
    pub destination: MqfList,
    pub admin: MqfList,
    pub response: MqfList,
}

impl MqfLists {
    /// The lists for copies sent to `destinations` (the expanded names), with the admin and
    /// response queues listed when they are multiple (else empty lists, ElementCount 0).
    pub fn new(
        destinations: &[FormatName],
        admin: &[FormatName],
        response: &[FormatName],
    ) -> Result<MqfLists, String> {
        Ok(MqfLists {
            destination: MqfList::build(destinations)?,
            admin: MqfList::build(admin)?,
            response: MqfList::build(response)?,
        })
    }

    /// The header a copy carries (no MQFSignatureHeader signature: lior signs with the MSMQ 2.0
    /// signature of the SecurityHeader).
    pub fn header(&self) -> MultiQueueFormatHeader<'_> {
        MultiQueueFormatHeader {
            destination: self.destination.header(),
            administration: self.admin.header(),
            response: self.response.header(),
            signature: &[],
        }
    }
}

/// The format-name text of an MQF list element, as `lior receive --json` and `lior decode` show.
pub fn element_text(e: &MqfElement<'_>) -> String {
    match e {
        MqfElement::Public(g) => FormatName::Public {
            queue: *g,
            journal: false,
        }
        .to_string(),
        MqfElement::Private { qm, id } => FormatName::Private {
            qm: *qm,
            id: *id,
            journal: false,
        }
        .to_string(),
        MqfElement::Direct(s) => format!("DIRECT={}", s.to_string_lossy().trim_end_matches('\0')),
        MqfElement::DistributionList(g) => dl_text(*g),
    }
}

/// The texts of one MQF list.
pub fn list_texts(h: &MqfAddressHeader<'_>) -> Vec<String> {
    h.elements().map(|e| element_text(&e)).collect()
}

/// What one destination of a fanned-out send got.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DestinationOutcome {
    /// The single format name the copy went to.
    pub destination: String,
    /// `stored` (in a local queue), `queued` (in the outgoing queue of the remote machine),
    /// `locked` or `paused` (in an outgoing queue that keeps it unsent; `held` says why), or
    /// `refused` (no copy kept for it; `error` says why).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DestinationOutcome {
    pub fn refused(destination: String, why: String) -> Self {
        DestinationOutcome {
            destination,
            outcome: "refused",
            queue: None,
            message_id: None,
            held: None,
            error: Some(why),
        }
    }

    pub fn placed(destination: String, o: crate::qm::broker::SendOutcome) -> Self {
        let outcome = match (&o.held, o.placed) {
            (Some(h), _) if h.contains("paused") => "paused",
            (Some(_), _) => "locked",
            (None, "local") => "stored",
            (None, _) => "queued",
        };
        DestinationOutcome {
            destination,
            outcome,
            queue: Some(o.queue),
            message_id: Some(o.message_id),
            held: o.held,
            error: None,
        }
    }
}

/// The answer to a fanned-out send: one entry per distinct destination, in the expanded order.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FanoutOutcome {
    /// Always `fanout`, so a client tells this answer from a single send's.
    pub placed: &'static str,
    /// The name the application sent to.
    pub to: String,
    pub destinations: Vec<DestinationOutcome>,
    /// Set when no destination took a copy (the API answers 400 then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FanoutOutcome {
    pub fn refused_count(&self) -> usize {
        self.destinations
            .iter()
            .filter(|d| d.outcome == "refused")
            .count()
    }
}

/// The key two names share when they are the same queue: a local queue by its id, a remote one
/// by its name without case.
pub fn destination_key<S: crate::store::QueueStore>(
    broker: &crate::qm::broker::Broker<S>,
    f: &FormatName,
) -> String {
    if let Some(d) = f.as_direct() {
        if broker.identity.is_local(&d.address) {
            if let Some(q) = d.queue.name() {
                if let Ok(def) = broker.lookup(q.as_str()) {
                    return format!("local:{}", def.id);
                }
            }
        }
    }
    f.normalized_key()
}

/// The destinations a send to `to` goes to and the MQF lists each copy carries: expanded,
/// duplicates removed, [`FANOUT_DESTINATIONS_MAX`] at most. `admin` and `response` are the
/// message's admin and response queues (listed in the copies when they are multiple).
pub fn plan<S: crate::store::QueueStore>(
    broker: &crate::qm::broker::Broker<S>,
    to: &FormatName,
    admin: Option<&FormatName>,
    response: Option<&FormatName>,
) -> Result<(Vec<FormatName>, MqfLists), String> {
    // The configuration was checked at start; a send only parses it.
    let dls = DistributionLists::parse(&broker.config.distribution_lists)?;
    let names = expand(to, &dls)?;
    let mqf_of = |q: Option<&FormatName>| -> Result<Vec<FormatName>, String> {
        match q {
            Some(q) if is_fanout(q) => expand(q, &dls),
            _ => Ok(Vec::new()),
        }
    };
    let lists = MqfLists::new(&names, &mqf_of(admin)?, &mqf_of(response)?)?;
    let names = distinct_by(names, |f| destination_key(broker, f));
    Ok((names, lists))
}

/// The API's send to a multiple-element or `DL=` name: one [`crate::qm::requests::Request::Send`]
/// per distinct destination, each to the shard owning that destination (all asked at once),
/// each copy with the MultiQueueFormatHeader. Every destination is in the answer with its
/// outcome; none is dropped silently.
pub async fn send_all<S: crate::store::QueueStore>(
    broker: &crate::qm::broker::Broker<S>,
    shards: &crate::qm::requests::ShardClient,
    to: &str,
    message: crate::qm::requests::SendOwned,
) -> Result<FanoutOutcome, crate::qm::broker::ApiError> {
    use crate::qm::broker::ApiError;
    let fname = FormatName::parse(to).map_err(|e| ApiError::Send(format!("{to}: {e}")))?;
    let (names, lists) =
        plan(broker, &fname, None, None).map_err(|e| ApiError::Send(format!("{to}: {e}")))?;
    let lists = std::sync::Arc::new(lists);
    let mut asks = Vec::with_capacity(names.len());
    for f in &names {
        let text = f.to_string();
        let mut m = message.clone();
        m.mqf = Some(lists.clone());
        let shard = shards.shard_of(broker.owner_for_send(&text));
        let client = shards.clone();
        let dest = text.clone();
        asks.push((
            text,
            tokio::spawn(async move {
                client
                    .ask(shard, |reply| crate::qm::requests::Request::Send {
                        to: dest,
                        message: m,
                        reply,
                    })
                    .await
            }),
        ));
    }
    let mut destinations = Vec::with_capacity(asks.len());
    for (text, h) in asks {
        destinations.push(match h.await {
            Ok(Ok(o)) => DestinationOutcome::placed(text, o),
            Ok(Err(e)) => DestinationOutcome::refused(text, e.to_string()),
            Err(e) => DestinationOutcome::refused(text, format!("the send did not finish: {e}")),
        });
    }
    let mut out = FanoutOutcome {
        placed: "fanout",
        to: to.to_string(),
        destinations,
        error: None,
    };
    if out.refused_count() == out.destinations.len() {
        let whys: Vec<String> = out
            .destinations
            .iter()
            .map(|d| d.error.clone().unwrap_or_default())
            .collect();
        out.error = Some(format!(
            "{to}: no destination took a copy; nothing was sent: {}",
            whys.join("; ")
        ));
    }
    Ok(out)
}

/// The source half of a message's duplicate-table key. A copy of a message sent to several
/// queues (MultiQueueFormatHeader present) may share its message id with its sibling copies
/// (the sender made them from one message); two of them for two queues of this machine are not
/// duplicates of each other. So for such a copy the destination queue is folded into the key
/// (XORed into the source GUID's last four bytes and a marker bit): the same copy sent again to
/// the same queue still is a duplicate. Other messages keep their source GUID.
pub fn dedup_source(msg: &crate::wire::user::UserMessage<'_>, queue: u32) -> Guid {
    let mut g = msg.user.source_queue_manager;
    if msg.multi_queue.is_some() {
        for (b, q) in g.0[12..].iter_mut().zip(queue.to_le_bytes()) {
            *b ^= q;
        }
        g.0[8] ^= 0x01;
    }
    g
}

/// Where one copy of a fanned-out message produced on a shard (AMQP) goes.
#[derive(Clone, Debug)]
pub enum CopyTarget {
    /// A private, non-transactional queue of this machine.
    Local(crate::qm::catalog::QueueDef),
    /// The outgoing queue of another machine.
    Remote(crate::wire::format_name::DirectName),
}

/// Stores one copy (`frame`: a whole UserMessage addressed to remote destination `d`, with
/// its MultiQueueFormatHeader) in the outgoing queue for `d`, signed when a signing key is
/// configured, without waiting for the disk. For the shard that runs that outgoing queue's
/// partition (a copy for another shard's queue, local or remote, goes there by mail). Returns
/// the `(partition, ticket)` to wait for, or why this destination has no copy.
pub fn store_remote_copy_nowait<S: crate::store::QueueStore>(
    broker: &crate::qm::broker::Broker<S>,
    d: &crate::wire::format_name::DirectName,
    frame: Vec<u8>,
) -> Result<(usize, crate::store::Ticket), String> {
    use crate::wire::user::UserMessage;
    let frame = match &broker.signer {
        Some(s) => s.sign_frame(&frame)?,
        None => frame,
    };
    let msg = UserMessage::parse(&frame)
        .map_err(|e| format!("the copy does not encode as an MSMQ packet: {e}"))?;
    broker
        .enqueue_outgoing_nowait(d, &frame, &crate::qm::broker::message_meta(&msg))
        .map(|(_, p, t)| (p, t))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "11111111-1111-1111-1111-111111111111";
    const B: &str = "22222222-2222-2222-2222-222222222222";
    const C: &str = "33333333-3333-3333-3333-333333333333";

    fn cfg(lists: &[(&str, &[&str])]) -> BTreeMap<String, DistributionListConfig> {
        lists
            .iter()
            .map(|(id, members)| {
                (
                    id.to_string(),
                    DistributionListConfig {
                        name: None,
                        members: members.iter().map(|m| m.to_string()).collect(),
                    },
                )
            })
            .collect()
    }

    fn texts(v: &[FormatName]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    fn parse(s: &str) -> FormatName {
        FormatName::parse(s).unwrap()
    }

    #[test]
    fn multiple_element_names_expand_sorted_and_without_case_duplicates() {
        let dls = DistributionLists::default();
        let got = expand(
            &parse(r"DIRECT=OS:.\private$\b,DIRECT=OS:.\private$\a,DIRECT=os:.\PRIVATE$\A"),
            &dls,
        )
        .unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(texts(&got)[0].to_lowercase().ends_with(r"\a"));
        assert!(texts(&got)[1].ends_with(r"\b"));
    }

    #[test]
    fn nested_lists_expand_and_a_list_reached_twice_counts_once() {
        let a_dl = format!("DL={A}");
        let b_dl = format!("DL={B}");
        let c_dl = format!("DL={C}");
        let map = cfg(&[
            (A, &[r"DIRECT=TCP:10.0.0.7\private$\x", &b_dl, &c_dl]),
            (B, &[r"DIRECT=OS:.\private$\y", &c_dl]),
            (C, &[r"DIRECT=OS:.\private$\z", r"DIRECT=OS:.\private$\y"]),
        ]);
        let dls = DistributionLists::from_config(&map).unwrap();
        assert_eq!(dls.len(), 3);
        let got = expand(&parse(&a_dl), &dls).unwrap();
        assert_eq!(got.len(), 3, "{:?}", texts(&got));
        // A multiple-element name mixing a list and a plain name.
        let got = expand(&parse(&format!(r"{c_dl},DIRECT=OS:.\private$\w")), &dls).unwrap();
        assert_eq!(got.len(), 3, "{:?}", texts(&got));
    }

    #[test]
    fn loops_unknown_lists_and_bad_members_are_refused_naming_them() {
        let a_dl = format!("DL={A}");
        let b_dl = format!("DL={B}");
        let e = DistributionLists::from_config(&cfg(&[(A, &[&b_dl]), (B, &[&a_dl])])).unwrap_err();
        assert!(e.contains("loop"), "{e}");
        assert!(e.contains(A) && e.contains(B), "{e}");
        let e = DistributionLists::from_config(&cfg(&[(A, &[&a_dl])])).unwrap_err();
        assert!(e.contains("loop"), "{e}");
        let e = DistributionLists::from_config(&cfg(&[(A, &[&b_dl])])).unwrap_err();
        assert!(e.contains("names no configured distribution list"), "{e}");
        let e = DistributionLists::from_config(&cfg(&[(A, &["nonsense"])])).unwrap_err();
        assert!(e.contains("not a format name"), "{e}");
        let e = DistributionLists::from_config(&cfg(&[(
            A,
            &[r"DIRECT=OS:.\private$\a,DIRECT=OS:.\private$\b"],
        )]))
        .unwrap_err();
        assert!(e.contains("multiple-element"), "{e}");
        let e = DistributionLists::from_config(&cfg(&[("not-a-guid", &[r"DIRECT=OS:.\q"])]))
            .unwrap_err();
        assert!(e.contains("GUID"), "{e}");
        let e = DistributionLists::from_config(&cfg(&[(A, &[])])).unwrap_err();
        assert!(e.contains("no members"), "{e}");
        let e = DistributionLists::from_config(&cfg(&[(A, &[r"DIRECT=OS:.\SYSTEM$;DEADLETTER"])]))
            .unwrap_err();
        assert!(e.contains("cannot be sent to"), "{e}");
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let ids: Vec<String> = (0..=DL_NESTING_DEPTH_MAX)
            .map(|i| format!("{:08x}-0000-0000-0000-000000000000", i + 1))
            .collect();
        let mut map = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            let members = match ids.get(i + 1) {
                Some(next) => vec![format!("DL={next}")],
                None => vec![r"DIRECT=OS:.\private$\a".to_string()],
            };
            map.insert(
                id.clone(),
                DistributionListConfig {
                    name: None,
                    members,
                },
            );
        }
        let e = DistributionLists::from_config(&map).unwrap_err();
        assert!(e.contains("DL_NESTING_DEPTH_MAX"), "{e}");
    }

    #[test]
    fn an_unknown_list_at_send_is_refused() {
        let e = expand(&parse(&format!("DL={A}")), &DistributionLists::default()).unwrap_err();
        assert!(e.contains("no such distribution list"), "{e}");
    }

    #[test]
    fn too_many_destinations_are_refused() {
        let names: Vec<String> = (0..=FANOUT_DESTINATIONS_MAX)
            .map(|i| format!(r"DIRECT=OS:.\private$\q{i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let e = DistributionLists::from_config(&cfg(&[(A, &refs)])).unwrap_err();
        assert!(e.contains("FANOUT_DESTINATIONS_MAX"), "{e}");
    }

    #[test]
    fn distinct_by_keeps_one_per_key() {
        let v = vec![
            parse(r"DIRECT=OS:.\private$\a"),
            parse(r"DIRECT=TCP:127.0.0.1\private$\a"),
            parse(r"DIRECT=OS:.\private$\b"),
        ];
        let got = distinct_by(v, |f| f.queue_name().map(|q| q.as_str().to_lowercase()));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn mqf_lists_round_trip_through_the_header_codec() {
        let names = vec![
            parse(r"DIRECT=OS:.\private$\a"),
            parse(r"DIRECT=TCP:10.0.0.7\private$\b"),
            parse(&format!("DL={A}")),
        ];
        let lists = MqfLists::new(&names, &[], &[]).unwrap();
        let h = lists.header();
        let got = list_texts(&h.destination);
        assert_eq!(got.len(), 3);
        assert!(
            got[0].eq_ignore_ascii_case(r"DIRECT=OS:.\private$\a"),
            "{got:?}"
        );
        assert!(
            got[1].eq_ignore_ascii_case(r"DIRECT=TCP:10.0.0.7\private$\b"),
            "{got:?}"
        );
        assert!(got[2].eq_ignore_ascii_case(&format!("DL={A}")), "{got:?}");
        assert_eq!(h.administration.element_count, 0);
    }
}
