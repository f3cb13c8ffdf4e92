//! Queue rights at the target (MS-MQQB 3.1.5.8.3): the check an arriving MS-MQQB or SRMP
//! message passes before it is stored (`qm::rights` decides; this file carries the verdict
//! out: counted, logged once per peer per interval, dead-lettered when the sender asked, a NACK
//! only where PermitInsecureNacks allows), and the local API's view and changes of a queue's
//! rights.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::qm::catalog::QueueDef;
use crate::qm::rights::{check_arrival, Principal, Refusal, RefusalLog, Rights, SenderId};
use crate::store::{QueueStore, Ticket};
use crate::wire::headers::SenderIdType;
use crate::wire::user::UserMessage;

use super::{bump, unix_now, ApiError, Broker, Delivered, Verdict};

std::thread_local! {
    /// When each peer's last refusal was logged, per thread (each shard logs a peer's refusals
    /// at most once per interval; no lock on the path of a refused message).
    static REFUSAL_LOG: std::cell::RefCell<RefusalLog> = const { std::cell::RefCell::new(RefusalLog::new()) };
}

/// Who an arriving message is, for the rights check, and whether it is authenticated: its
/// signature verified (`security::judge_arrival`). The SID it claims is trusted only when the
/// certificate that signed it is registered to that SID (`RegisteredCertificates`, lior's
/// stand-in for the certificates Active Directory holds): anyone can sign with a certificate
/// of their own and name any SID. A verified message signed with another certificate is
/// authenticated (an Authenticate queue takes it) but counts as Everyone.
pub fn arrival_identity(
    msg: &UserMessage<'_>,
    verified_cert_sha256: Option<&str>,
    security: &crate::config::Security,
) -> (SenderId, bool) {
    let claimed = sender_id(msg);
    let Some(cert) = verified_cert_sha256 else {
        return (claimed, false);
    };
    let mut registrations = security
        .RegisteredCertificates
        .iter()
        .filter(|c| c.Sha256.eq_ignore_ascii_case(cert));
    if let SenderId::Sid(sid) = &claimed {
        if registrations
            .clone()
            .any(|c| c.Sid.eq_ignore_ascii_case(sid))
        {
            return (claimed, true);
        }
    }
    // No SID claimed (or not this certificate's): the certificate's registered user, if any.
    match registrations.next() {
        Some(c) => (SenderId::Sid(c.Sid.clone()), true),
        None => (SenderId::QmGuid, true),
    }
}

/// The identity of a message already stored (a dead letter being explained): verified when
/// its stored SecurityHeader says so (AS), its certificate read again for the registration.
fn stored_identity(msg: &UserMessage<'_>, security: &crate::config::Security) -> (SenderId, bool) {
    let cert = crate::security::stored_authentication(msg).map(|_| {
        crate::security::sha256_hex(msg.security.as_ref().map_or(&[][..], |s| s.sender_cert))
    });
    arrival_identity(msg, cert.as_deref(), security)
}

/// The identity `msg` claims in its SecurityHeader.
pub fn sender_id(msg: &UserMessage<'_>) -> SenderId {
    let Some(sec) = msg.security else {
        return SenderId::None;
    };
    match sec.flags.sender_id_type() {
        SenderIdType::SID => match sec.sender_sid() {
            Some(sid) => SenderId::Sid(sid.to_string()),
            // ST = 1 with bytes that are no SID: no identity.
            None => SenderId::None,
        },
        SenderIdType::QM_GUID => SenderId::QmGuid,
        _ => SenderId::None,
    }
}

/// A queue as `lior queue show` presents it.
#[derive(Clone, Debug, Serialize)]
pub struct QueueDetail {
    pub name: String,
    pub id: u32,
    pub kind: crate::qm::catalog::QueueKind,
    pub transactional: bool,
    pub quota_bytes: Option<u64>,
    pub journal: bool,
    pub partition: u32,
    pub messages: u64,
    pub bytes: u64,
    pub authenticate: bool,
    pub rights: Vec<RightsEntry>,
}

/// One principal's rights, with their names.
#[derive(Clone, Debug, Serialize)]
pub struct RightsEntry {
    pub principal: String,
    pub rights: Vec<&'static str>,
    /// The MQSEC_* access mask.
    pub mask: u32,
}

/// A change of a queue's rights (`POST /v1/queues/{name}/rights`).
#[derive(Clone, Debug)]
pub enum RightsChange {
    Grant(Principal, Rights),
    Revoke(Principal, Rights),
    Authenticate(bool),
    /// The queue's journal setting (a copy of every received message in `NAME;journal`).
    Journal(bool),
}

impl<S: QueueStore> Broker<S> {
    /// The check at the target for an arriving message (MS-MQQB 3.1.5.8.3): None when `msg`
    /// may be stored in `queue`, else what happened to it. A refused message is not stored in
    /// `queue`: it is counted (`access_denied` or `encrypted_refused`), logged once per
    /// sending queue manager per minute, and stored in the dead-letter queue with its NACK
    /// class when its sender asked for negative journaling (JN); the admin NACK the sender
    /// asked for (NA) is the caller's, and `admin_ack_record` builds it only where
    /// PermitInsecureNacks allows. Either way the session acknowledges the message as handled.
    /// A transactional message's negative FinalAck is the caller's too ([`Delivered::final_nack`]).
    pub(super) fn refuse_at_target(
        &self,
        here: super::delivery::Here<'_>,
        frame: &[u8],
        msg: &UserMessage<'_>,
        queue: &QueueDef,
        partition: usize,
        verified: Option<&crate::security::Authenticated>,
    ) -> Option<Delivered> {
        let encrypted = msg.security.is_some_and(|s| s.flags.body_encrypted());
        let (sender, authenticated) = arrival_identity(
            msg,
            verified.map(|a| a.cert_sha256.as_str()),
            &self.config.parameters.security,
        );
        let refusal = check_arrival(&queue.security(), &sender, authenticated, encrypted).err()?;
        let class = refusal.class();
        let why = refusal_text(&refusal, &sender, &queue.name);
        if refusal == Refusal::Encrypted {
            bump(&self.counters.encrypted_refused);
        } else {
            bump(&self.counters.access_denied);
        }
        let peer = msg.user.source_queue_manager;
        let log = REFUSAL_LOG.with(|l| {
            l.try_borrow_mut()
                .is_ok_and(|mut l| l.allow(peer, u64::from(unix_now())))
        });
        if log {
            tracing::warn!(
                source = %peer,
                id = msg.user.message_id,
                nack = class.name(),
                dead_lettered = msg.user.flags.journal_negative(),
                "message refused at its target: {why} (further refusals from this queue \
                 manager are counted in lior_access_denied_total / \
                 lior_encrypted_refused_total, logged again after a minute)"
            );
        }
        if msg.user.flags.journal_negative() {
            return Some(self.dead_letter(here, frame, msg, class, &why));
        }
        let acks = msg.properties.flags;
        Some(Delivered {
            // Not stored anywhere: nothing to wait for, the session acknowledges it at once.
            verdict: Verdict::DeadLettered {
                queue: queue.id,
                ticket: Ticket::IMMEDIATE,
                class,
            },
            order_ack: None,
            admin_ack: acks.negative_arrival().then_some(class),
            partition,
            forward: None,
        })
    }

    /// Whether the rights of queue `name` as they are now refuse `msg` (as an arrival from the
    /// network), with the class and why: for explaining a dead letter.
    pub fn refusal_now(
        &self,
        name: &str,
        msg: &UserMessage<'_>,
    ) -> Option<(crate::wire::headers::MessageClass, String)> {
        let q = self.catalog().lookup(name).cloned()?;
        let encrypted = msg.security.is_some_and(|s| s.flags.body_encrypted());
        let (sender, authenticated) = stored_identity(msg, &self.config.parameters.security);
        let r = check_arrival(&q.security(), &sender, authenticated, encrypted).err()?;
        Some((r.class(), refusal_text(&r, &sender, &q.name)))
    }

    /// Queue `name` with its rights, for `lior queue show`; its length from `lens` (what each
    /// shard answered to a `Lens` request: no partition is touched here).
    pub fn queue_detail_from(
        &self,
        name: &str,
        lens: &super::QueueLens,
    ) -> Result<QueueDetail, ApiError> {
        let q = self
            .catalog()
            .lookup(name)
            .cloned()
            .ok_or_else(|| ApiError::NoSuchQueue(name.to_string()))?;
        let (messages, bytes) = lens.queues.get(&q.id).copied().unwrap_or((0, 0));
        Ok(detail(&q, messages, bytes))
    }

    /// Changes queue `name`'s rights or Authenticate setting, persisted in the catalog, and
    /// makes every shard see it for the next message (the route caches start over).
    pub fn change_rights(&self, name: &str, change: RightsChange) -> Result<QueueDef, ApiError> {
        let q = {
            let mut cat = self.catalog.write().unwrap_or_else(|p| p.into_inner());
            let q = if let RightsChange::Journal(on) = change {
                cat.set_journal(name, on)?
            } else {
                cat.update_security(name, |s| match &change {
                    RightsChange::Grant(p, r) => s.grant(p.clone(), *r).map_err(|e| e.to_string()),
                    RightsChange::Revoke(p, r) => {
                        s.revoke(p, *r);
                        Ok(())
                    }
                    RightsChange::Authenticate(on) => {
                        s.authenticate = *on;
                        Ok(())
                    }
                    RightsChange::Journal(_) => Ok(()),
                })?
            };
            self.catalog_generation.fetch_add(1, Ordering::AcqRel);
            q
        };
        tracing::info!(queue = %q.name, change = ?change, "queue rights changed");
        Ok(q)
    }
}

/// Why `refusal` refused a message of `sender` for queue `queue`.
fn refusal_text(refusal: &Refusal, sender: &SenderId, queue: &str) -> String {
    let class = refusal.class().name();
    match refusal {
        Refusal::Encrypted => format!(
            "encrypted body for queue {queue}: lior holds no key to decrypt MSMQ bodies \
             (Active Directory exchange keys); refused with {class}"
        ),
        Refusal::NotAuthenticated => format!(
            "queue {queue} takes only authenticated messages (Authenticate) and lior verifies \
             no signatures yet; refused with {class}"
        ),
        Refusal::AccessDenied => format!(
            "sender {} may not send to queue {queue} (no send right for {}); refused with \
             {class} (lior queue show {queue} lists its rights)",
            sender_text(sender),
            match sender {
                SenderId::Sid(_) => "Everyone: the SID is not authenticated",
                SenderId::None => "Anonymous",
                SenderId::QmGuid => "Everyone",
            },
        ),
    }
}

fn sender_text(s: &SenderId) -> String {
    match s {
        SenderId::None => "without identity (Anonymous)".into(),
        SenderId::Sid(sid) => format!("SID {sid} (not authenticated)"),
        SenderId::QmGuid => "identified by its queue manager only (Everyone)".into(),
    }
}

fn detail(q: &QueueDef, messages: u64, bytes: u64) -> QueueDetail {
    let sec = q.security();
    QueueDetail {
        name: q.name.clone(),
        id: q.id,
        kind: q.kind,
        transactional: q.transactional,
        quota_bytes: q.quota_bytes,
        journal: q.journal,
        partition: q.partition,
        messages,
        bytes,
        authenticate: sec.authenticate,
        rights: sec
            .acl
            .iter()
            .map(|e| RightsEntry {
                principal: e.principal.to_string(),
                rights: e.rights.names(),
                mask: e.rights.0,
            })
            .collect(),
    }
}
