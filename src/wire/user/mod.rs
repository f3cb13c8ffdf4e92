//! The UserMessage packet (MS-MQMQ 2.2.20). Its parts have files of their own: the UserHeader
//! (2.2.19.2) in `header`, the header's queue references in `queue_ref`, and the OrderAck and
//! FinalAck bodies it may carry (MS-MQQB 2.2.4.1, 2.2.5.1) in `tx_ack`. Callers name every type
//! through this module (`wire::user::X`).
//!
//! [`UserMessage::parse`] validates a whole framed packet once, in the reference order of
//! DIGEST §5.12, and accounts for every byte of PacketSize; [`UserMessage::encode`] writes the
//! same structure into a caller's buffer and computes PacketSize itself. Neither allocates;
//! the optional headers live in [`super::headers`].

mod header;
mod queue_ref;
mod tx_ack;

pub use header::{UserFlags, UserHeader};
pub use queue_ref::QueueRef;
pub use tx_ack::{FinalAckBody, OrderAckBody, ORDER_ACK_LABEL, ORDER_QUEUE_ID, TX_ACK_BODY_LEN};

use crate::wire::base::{BaseFlags, BaseHeader, BASE_HEADER_LEN, INFINITE, MAX_PACKET_SIZE};
use crate::wire::control::{SessionHeader, SESSION_HEADER_LEN};
use crate::wire::frame::expect_frame_len;
use crate::wire::headers::{
    body_type, AckFlags, CompoundMessageHeader, DebugHeader, ExtensionHeader, MessageClass,
    MessagePropertiesHeader, MqfAddressHeader, MultiQueueFormatHeader, SecurityHeader, SoapHeader,
    SrmpEnvelopeHeader, TransactionHeader,
};
use crate::wire::{pad4, ErrorKind, Guid, Reader, Result, Utf16, WireError, Writer};

/// A UserMessage packet (MS-MQMQ 2.2.20; DIGEST §5.1), as one validated, borrowed value.
///
/// ```text
/// BaseHeader (16, IN=0) | UserHeader | [TransactionHeader: TH] | [SecurityHeader: SH]
/// MessagePropertiesHeader (always; MP=1) | [DebugHeader: Base.DH]
/// [SRMPEnvelopeHeader + CompoundMessageHeader: AH] | [SoapHeader: HH] | [MultiQueueFormatHeader: MQ]
/// [ExtensionHeader (12): only with AH, announced by no flag: the bytes after the last header]
/// ...padding to 4, all counted in PacketSize...
/// [SessionHeader (16): Base.SH, after PacketSize]
/// ```
/// Each header starts on a 4-byte boundary. The presence flags stay in `base.flags` and
/// `user.flags`; [`UserMessage::encode`] refuses a value whose flags disagree with its
/// headers, and [`UserMessage::sync`] sets them from the headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserMessage<'a> {
    pub base: BaseHeader,
    pub user: UserHeader<'a>,
    pub transaction: Option<TransactionHeader>,
    pub security: Option<SecurityHeader<'a>>,
    pub properties: MessagePropertiesHeader<'a>,
    pub debug: Option<DebugHeader>,
    /// HTTP-only sections (UserHeader.AH): both present or both absent.
    pub srmp_envelope: Option<SrmpEnvelopeHeader<'a>>,
    pub compound_message: Option<CompoundMessageHeader<'a>>,
    pub soap: Option<SoapHeader<'a>>,
    pub multi_queue: Option<MultiQueueFormatHeader<'a>>,
    /// True only when both SoapHeader and MultiQueueFormatHeader are present and the MQF header
    /// came first on the wire (DIGEST §5.1, §17.1: the order is unconfirmed, so we keep it).
    pub multi_queue_before_soap: bool,
    /// The 12-byte MQRR ExtensionHeader (MS-MQRR 2.2.5.2) after the last header of an AH message,
    /// inside PacketSize: Windows' 1801 parser accepts it there (DIGEST §5.10). Only with the
    /// SRMP sections; [`UserMessage::encode`] refuses it without them.
    pub extension: Option<ExtensionHeader>,
    /// The piggy-backed SessionHeader after PacketSize, when BaseHeader.SH is set.
    pub session: Option<SessionHeader>,
}

/// The SOAP and MQF headers found after the fixed part of the packet, and the ExtensionHeader.
type Tail<'a> = (
    Option<SoapHeader<'a>>,
    Option<MultiQueueFormatHeader<'a>>,
    Option<ExtensionHeader>,
);

impl<'a> UserMessage<'a> {
    /// Parses one framed UserMessage: `frame` is exactly PacketSize bytes, plus the 16-byte
    /// SessionHeader trailer when BaseHeader.SH is set (what [`super::frame_len`] returns).
    ///
    /// Every byte of PacketSize must be used by the headers, except for fewer than 4 bytes of
    /// trailing alignment padding; anything else is an error naming the field and offset.
    pub fn parse(frame: &'a [u8]) -> Result<Self> {
        let base = BaseHeader::parse(frame)?;
        if base.flags.internal() {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "BaseHeader.Flags.IN",
                2,
            ));
        }
        let packet_size = expect_frame_len(frame, &base)?;
        Self::parse_framed(frame, base, packet_size)
    }

    /// [`Self::parse`] after its first steps: `base` is the BaseHeader parsed from `frame`, not
    /// internal, and `packet_size` what [`expect_frame_len`] returned for them (so
    /// [`super::parse_packet`] parses the BaseHeader once per packet).
    pub(crate) fn parse_framed(
        frame: &'a [u8],
        base: BaseHeader,
        packet_size: usize,
    ) -> Result<Self> {
        debug_assert!(!base.flags.internal());
        debug_assert_eq!(expect_frame_len(frame, &base), Ok(packet_size));
        // Headers are read from the PacketSize bytes only: a header that overruns PacketSize
        // is reported as truncated at its own field, never read from the trailer.
        let mut r = Reader::new(&frame[..packet_size]);
        r.take(BASE_HEADER_LEN, "BaseHeader")?;

        let user = UserHeader::parse(&mut r)?;
        let flags_at = BASE_HEADER_LEN + UserHeader::FLAGS_OFFSET;
        if !user.flags.properties() {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "UserHeader.Flags.MP",
                flags_at,
            ));
        }
        if user.flags.transactional() && !user.flags.recoverable() {
            // "If this flag [TH] is set the DM flag MUST NOT be 0x0."
            return Err(WireError::new(
                ErrorKind::BadValue,
                "UserHeader.Flags.DM",
                flags_at,
            ));
        }

        let transaction = if user.flags.transactional() {
            r.align4("TransactionHeader")?;
            Some(TransactionHeader::parse(&mut r)?)
        } else {
            None
        };
        let security = if user.flags.security() {
            r.align4("SecurityHeader")?;
            Some(SecurityHeader::parse(&mut r)?)
        } else {
            None
        };
        r.align4("MessagePropertiesHeader")?;
        let properties = MessagePropertiesHeader::parse(&mut r)?;
        let debug = if base.flags.debug() {
            r.align4("DebugHeader")?;
            Some(DebugHeader::parse(&mut r)?)
        } else {
            None
        };
        let (srmp_envelope, compound_message) = if user.flags.http() {
            r.align4("SRMPEnvelopeHeader")?;
            let envelope = SrmpEnvelopeHeader::parse(&mut r)?;
            r.align4("CompoundMessageHeader")?;
            let compound = CompoundMessageHeader::parse(&mut r)?;
            (Some(envelope), Some(compound))
        } else {
            (None, None)
        };

        let ((soap, multi_queue, extension), multi_queue_before_soap) = Self::parse_soap_and_mqf(
            r,
            user.flags.soap(),
            user.flags.multi_queue(),
            user.flags.http(),
        )?;

        let session = if base.flags.session() {
            let mut tr = Reader::with_base(&frame[packet_size..], packet_size);
            Some(SessionHeader::parse(&mut tr)?)
        } else {
            None
        };

        Ok(UserMessage {
            base,
            user,
            transaction,
            security,
            properties,
            debug,
            srmp_envelope,
            compound_message,
            soap,
            multi_queue,
            multi_queue_before_soap,
            extension,
            session,
        })
    }

    /// Parses the SoapHeader and MultiQueueFormatHeader in whichever order they came, then
    /// checks that PacketSize ends where the headers do (after an ExtensionHeader, if `http`).
    ///
    /// The spec orders SOAP before MQF; a non-authoritative source suggests Windows may write
    /// MQF first (DIGEST §17.1). With both present we peek: a SoapHeader starts with u16
    /// 0x0320, an MQF Destination header has u16 0x0064 at +4. The spec order is tried first,
    /// and MQF-first only if that fails, so the choice is deterministic.
    fn parse_soap_and_mqf(
        r: Reader<'a>,
        soap: bool,
        mqf: bool,
        http: bool,
    ) -> Result<(Tail<'a>, bool)> {
        if !(soap && mqf) {
            return Ok((Self::parse_tail(r, soap, mqf, false, http)?, false));
        }
        let mut peek = r;
        peek.align4("SoapHeader")?;
        let at = peek.abs();
        let id0 = peek.u16("SoapHeader.HeaderSectionID")?;
        peek.u16("SoapHeader.Reserved")?;
        let id4 = peek.u16("MQFAddressHeader.HeaderID")?;
        let soap_first = if id0 == SoapHeader::HEADER_SECTION_ID {
            Self::parse_tail(r, true, true, false, http)
        } else {
            Err(WireError::new(
                ErrorKind::BadValue,
                "SoapHeader.HeaderSectionID",
                at,
            ))
        };
        match soap_first {
            Ok(tail) => Ok((tail, false)),
            Err(e) if id4 == MqfAddressHeader::DESTINATION_ID => {
                let tail = Self::parse_tail(r, true, true, true, http).map_err(|e2| {
                    // Report the error of the order the bytes claimed to be in.
                    if id0 == SoapHeader::HEADER_SECTION_ID {
                        e
                    } else {
                        e2
                    }
                })?;
                Ok((tail, true))
            }
            Err(e) => Err(e),
        }
    }

    fn parse_tail(
        mut r: Reader<'a>,
        soap: bool,
        mqf: bool,
        mqf_first: bool,
        http: bool,
    ) -> Result<Tail<'a>> {
        let mut s = None;
        let mut m = None;
        for step in 0..2 {
            let want_mqf = (step == 0) == mqf_first;
            if want_mqf && mqf {
                r.align4("MultiQueueFormatHeader")?;
                m = Some(MultiQueueFormatHeader::parse(&mut r)?);
            } else if !want_mqf && soap {
                r.align4("SoapHeader")?;
                s = Some(SoapHeader::parse(&mut r)?);
            }
        }
        // Only alignment padding (< 4 bytes, up to the next boundary) may follow the headers,
        // except in an AH message: there the bytes after the last header are read as the MQRR
        // ExtensionHeader (no flag announces it), and only padding may follow that.
        let mut extension = None;
        let mut field = "BaseHeader.PacketSize";
        if http && Self::more_than_padding(&r) {
            r.align4("ExtensionHeader")?;
            extension = Some(ExtensionHeader::parse(&mut r)?);
            // It said no header follows (RemainingHeadersSize 0): a second ExtensionHeader or
            // any other bytes contradict it.
            field = "ExtensionHeader.RemainingHeadersSize";
        }
        if Self::more_than_padding(&r) {
            return Err(WireError::new(ErrorKind::SizeMismatch, field, r.abs()));
        }
        Ok((s, m, extension))
    }

    /// True when more than the alignment padding up to the next 4-byte boundary is left.
    fn more_than_padding(r: &Reader<'a>) -> bool {
        let end = r.pos();
        r.remaining() > pad4(end) - end
    }

    /// The PacketSize this message encodes to (headers and padding, not the SessionHeader).
    pub fn packet_size(&self) -> usize {
        let mut n = BASE_HEADER_LEN.saturating_add(self.user.encoded_len());
        let mut add = |len: usize| n = pad4(pad4(n).saturating_add(len));
        if let Some(t) = &self.transaction {
            add(t.encoded_len());
        }
        if let Some(s) = &self.security {
            add(s.encoded_len());
        }
        add(self.properties.encoded_len());
        if let Some(d) = &self.debug {
            add(d.encoded_len());
        }
        if let Some(e) = &self.srmp_envelope {
            add(e.encoded_len());
        }
        if let Some(c) = &self.compound_message {
            add(c.encoded_len());
        }
        if let Some(s) = &self.soap {
            add(s.encoded_len());
        }
        if let Some(m) = &self.multi_queue {
            add(m.encoded_len());
        }
        if let Some(x) = &self.extension {
            add(x.encoded_len());
        }
        n
    }

    /// Bytes [`Self::encode`] writes: PacketSize plus the SessionHeader trailer if any.
    pub fn frame_len(&self) -> usize {
        let trailer = if self.session.is_some() {
            SESSION_HEADER_LEN
        } else {
            0
        };
        self.packet_size().saturating_add(trailer)
    }

    /// Checks that the presence flags agree with the headers, as the parser would see them.
    fn check_flags(&self) -> Result<()> {
        let f = self.user.flags;
        let flags_at = BASE_HEADER_LEN + UserHeader::FLAGS_OFFSET;
        let checks: [(bool, &'static str, usize); 13] = [
            (!self.base.flags.internal(), "BaseHeader.Flags.IN", 2),
            (
                self.base.flags.session() == self.session.is_some(),
                "BaseHeader.Flags.SH",
                2,
            ),
            (
                self.base.flags.debug() == self.debug.is_some(),
                "BaseHeader.Flags.DH",
                2,
            ),
            (f.properties(), "UserHeader.Flags.MP", flags_at),
            (
                f.transactional() == self.transaction.is_some(),
                "UserHeader.Flags.TH",
                flags_at,
            ),
            (
                !f.transactional() || f.recoverable(),
                "UserHeader.Flags.DM",
                flags_at,
            ),
            (
                f.security() == self.security.is_some(),
                "UserHeader.Flags.SH",
                flags_at,
            ),
            (
                f.http() == self.srmp_envelope.is_some(),
                "UserHeader.Flags.AH",
                flags_at,
            ),
            (
                f.http() == self.compound_message.is_some(),
                "UserHeader.Flags.AH",
                flags_at,
            ),
            (
                self.extension.is_none() || f.http(),
                "UserMessage.extension",
                flags_at,
            ),
            (
                f.soap() == self.soap.is_some(),
                "UserHeader.Flags.HH",
                flags_at,
            ),
            (
                f.multi_queue() == self.multi_queue.is_some(),
                "UserHeader.Flags.MQ",
                flags_at,
            ),
            (
                !self.multi_queue_before_soap
                    || (self.soap.is_some() && self.multi_queue.is_some()),
                "UserMessage.multi_queue_before_soap",
                flags_at,
            ),
        ];
        for (ok, field, at) in checks {
            if !ok {
                return Err(WireError::new(ErrorKind::BadValue, field, at));
            }
        }
        Ok(())
    }

    /// Encodes into `out` and returns the bytes written (PacketSize + SessionHeader trailer).
    ///
    /// PacketSize is computed here; `self.base.packet_size` is ignored. The value must be
    /// consistent (flags agree with headers; see [`Self::sync`]), or this returns `BadValue`.
    /// In debug builds the output is parsed back and must equal `self` (with the computed
    /// PacketSize): a mismatch is a programmer error and panics.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        self.check_flags()?;
        let mut w = Writer::new(out);
        let base = BaseHeader {
            packet_size: 0,
            ..self.base
        };
        base.encode(&mut w)?;
        self.user.encode(&mut w)?;
        if let Some(t) = &self.transaction {
            w.align4("TransactionHeader")?;
            t.encode(&mut w)?;
        }
        if let Some(s) = &self.security {
            w.align4("SecurityHeader")?;
            s.encode(&mut w)?;
        }
        w.align4("MessagePropertiesHeader")?;
        self.properties.encode(&mut w)?;
        if let Some(d) = &self.debug {
            w.align4("DebugHeader")?;
            d.encode(&mut w)?;
        }
        if let (Some(e), Some(c)) = (&self.srmp_envelope, &self.compound_message) {
            w.align4("SRMPEnvelopeHeader")?;
            e.encode(&mut w)?;
            w.align4("CompoundMessageHeader")?;
            c.encode(&mut w)?;
        }
        for step in 0..2 {
            let want_mqf = (step == 0) == self.multi_queue_before_soap;
            match (want_mqf, &self.multi_queue, &self.soap) {
                (true, Some(m), _) => {
                    w.align4("MultiQueueFormatHeader")?;
                    m.encode(&mut w)?;
                }
                (false, _, Some(s)) => {
                    w.align4("SoapHeader")?;
                    s.encode(&mut w)?;
                }
                _ => {}
            }
        }
        if let Some(x) = &self.extension {
            w.align4("ExtensionHeader")?;
            x.encode(&mut w)?;
        }
        w.align4("UserMessage")?;
        let packet_size = w.pos();
        if packet_size > MAX_PACKET_SIZE as usize {
            return Err(WireError::new(
                ErrorKind::Overflow,
                "BaseHeader.PacketSize",
                8,
            ));
        }
        w.patch_u32(8, packet_size as u32, "BaseHeader.PacketSize")?;
        if let Some(s) = &self.session {
            s.encode(&mut w)?;
        }
        let n = w.pos();
        debug_assert_eq!(packet_size, self.packet_size(), "packet_size() disagrees");
        let expected = UserMessage {
            base: BaseHeader {
                packet_size: packet_size as u32,
                ..self.base
            },
            ..*self
        };
        if self.multi_queue_before_soap {
            // MQF-before-SOAP is only recognisable by peeking; refuse (in every build) a value
            // whose bytes would read back in the other order rather than send something else.
            if UserMessage::parse(&out[..n]).ok() != Some(expected) {
                return Err(WireError::new(
                    ErrorKind::Unsupported,
                    "UserMessage.multi_queue_before_soap",
                    packet_size,
                ));
            }
        }
        #[cfg(debug_assertions)]
        {
            let back = UserMessage::parse(&out[..n]);
            assert_eq!(
                back,
                Ok(expected),
                "UserMessage::encode output does not parse back"
            );
        }
        Ok(n)
    }

    /// Sets every presence flag from the headers actually present (UserHeader DQ/AQ/RQ/CQ,
    /// SH/TH/MP/MQ/AH/HH; BaseHeader SH/DH), clears `multi_queue_before_soap` unless both
    /// headers are there, and stores the computed PacketSize in `base.packet_size`.
    pub fn sync(&mut self) {
        let f = self
            .user
            .synced_flags()
            .with(UserFlags::MP, true)
            .with(UserFlags::SH, self.security.is_some())
            .with(UserFlags::TH, self.transaction.is_some())
            .with(UserFlags::MQ, self.multi_queue.is_some())
            .with(UserFlags::HH, self.soap.is_some())
            .with(
                UserFlags::AH,
                self.srmp_envelope.is_some() || self.compound_message.is_some(),
            );
        self.user.flags = f;
        self.base.flags = self
            .base
            .flags
            .with(BaseFlags::INTERNAL, false)
            .with(BaseFlags::SESSION, self.session.is_some())
            .with(BaseFlags::DEBUG, self.debug.is_some());
        if self.soap.is_none() || self.multi_queue.is_none() {
            self.multi_queue_before_soap = false;
        }
        self.base.packet_size = u32::try_from(self.packet_size()).unwrap_or(u32::MAX);
    }

    /// The common case for senders and tests: an express message from `source_queue_manager`
    /// to `destination`, with `label` (UTF-16LE incl. NUL, or empty) and `body`.
    ///
    /// Defaults: priority 3 (MQ_PRIORITY default), TimeToReachQueue and TimeToBeReceived
    /// infinite, SentTime 0, QueueManagerAddress NULL (right for direct names; set it for DQ 3
    /// or 5), class NORMAL, BodyType VT_UI1|VT_VECTOR. Chain the `with_*` methods for more.
    pub fn new(
        source_queue_manager: Guid,
        message_id: u32,
        destination: QueueRef<'a>,
        label: Utf16<'a>,
        body: &'a [u8],
    ) -> Self {
        let mut m = UserMessage {
            base: BaseHeader {
                reserved: 0,
                flags: BaseFlags::default().with_priority(3),
                packet_size: 0,
                time_to_reach_queue: INFINITE,
            },
            user: UserHeader {
                source_queue_manager,
                queue_manager_address: Guid::NULL,
                time_to_be_received: INFINITE,
                sent_time: 0,
                message_id,
                flags: UserFlags(UserFlags::MP),
                destination,
                admin: QueueRef::None,
                response: QueueRef::None,
                connector_type: None,
            },
            transaction: None,
            security: None,
            properties: MessagePropertiesHeader::new(label, body),
            debug: None,
            srmp_envelope: None,
            compound_message: None,
            soap: None,
            multi_queue: None,
            multi_queue_before_soap: false,
            extension: None,
            session: None,
        };
        m.sync();
        m
    }

    /// A transactional acknowledgment packet (MS-MQQB 2.2.4 / 2.2.5): BaseHeader.Flags 0,
    /// Label "QM Ordering Ack", BodyType VT_EMPTY, MPH.Flags 0, TTRQ/TTBR infinite.
    /// `destination` is `DestinationPrivate(ORDER_QUEUE_ID)` (DQ 3, then set
    /// `user.queue_manager_address`) or `Direct("TCP:<ip>\PRIVATE$\order_queue$")` (DQ 7).
    fn tx_ack(
        source_queue_manager: Guid,
        message_id: u32,
        destination: QueueRef<'a>,
        class: MessageClass,
        recoverable: bool,
        body: &'a [u8; TX_ACK_BODY_LEN],
    ) -> Self {
        let mut m = UserMessage::new(
            source_queue_manager,
            message_id,
            destination,
            Utf16(ORDER_ACK_LABEL),
            body,
        );
        m.base.flags = BaseFlags(0);
        m.properties.message_class = class;
        m.properties.body_type = body_type::VT_EMPTY;
        m.user.flags = m.user.flags.with_delivery_mode(u8::from(recoverable));
        m.sync();
        m
    }

    /// An OrderAck (class ORDER_ACK, DM 0); `body` is [`OrderAckBody::to_bytes`].
    pub fn order_ack(
        source_queue_manager: Guid,
        message_id: u32,
        destination: QueueRef<'a>,
        body: &'a [u8; TX_ACK_BODY_LEN],
    ) -> Self {
        Self::tx_ack(
            source_queue_manager,
            message_id,
            destination,
            MessageClass::ORDER_ACK,
            false,
            body,
        )
    }

    /// A FinalAck (ACK_RECEIVE or a NACK class, DM 1); `body` is [`FinalAckBody::to_bytes`].
    pub fn final_ack(
        source_queue_manager: Guid,
        message_id: u32,
        destination: QueueRef<'a>,
        class: MessageClass,
        body: &'a [u8; TX_ACK_BODY_LEN],
    ) -> Self {
        Self::tx_ack(
            source_queue_manager,
            message_id,
            destination,
            class,
            true,
            body,
        )
    }

    /// DM=1 (recoverable) or DM=0 (express).
    pub fn with_recoverable(mut self, on: bool) -> Self {
        self.user.flags = self.user.flags.with_delivery_mode(u8::from(on));
        self
    }

    /// BaseHeader.Flags.PR (0..=7).
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.base.flags = self.base.flags.with_priority(priority);
        self
    }

    pub fn with_sent_time(mut self, sent_time: u32) -> Self {
        self.user.sent_time = sent_time;
        self
    }

    pub fn with_time_to_reach_queue(mut self, seconds: u32) -> Self {
        self.base.time_to_reach_queue = seconds;
        self
    }

    pub fn with_time_to_be_received(mut self, seconds: u32) -> Self {
        self.user.time_to_be_received = seconds;
        self
    }

    pub fn with_queue_manager_address(mut self, qm: Guid) -> Self {
        self.user.queue_manager_address = qm;
        self
    }

    /// Makes the message transactional: adds the header, sets DM=1 and PR=0 (transactional
    /// messages carry priority 0, MS-MQMQ 2.2.19.1).
    pub fn with_transaction(mut self, tx: TransactionHeader) -> Self {
        self.transaction = Some(tx);
        self.user.flags = self.user.flags.with_delivery_mode(1);
        self.base.flags = self.base.flags.with_priority(0);
        self.sync();
        self
    }

    /// Names the admin queue and the acknowledgments wanted there.
    pub fn with_admin_queue(mut self, admin: QueueRef<'a>, acks: AckFlags) -> Self {
        self.user.admin = admin;
        self.properties.flags = acks;
        self.sync();
        self
    }

    pub fn with_response_queue(mut self, response: QueueRef<'a>) -> Self {
        self.user.response = response;
        self.sync();
        self
    }

    pub fn with_security(mut self, security: SecurityHeader<'a>) -> Self {
        self.security = Some(security);
        self.sync();
        self
    }

    /// Piggy-backs a SessionHeader (sets BaseHeader.SH).
    pub fn with_session(mut self, session: SessionHeader) -> Self {
        self.session = Some(session);
        self.sync();
        self
    }

    /// The message body (the first MessageSize bytes of the body area).
    pub fn body(&self) -> &'a [u8] {
        self.properties.body()
    }

    /// The label, UTF-16LE including its NUL (empty when LabelLength is 0).
    pub fn label(&self) -> Utf16<'a> {
        self.properties.label
    }

    pub fn message_class(&self) -> MessageClass {
        self.properties.message_class
    }

    /// The message identity: (SourceQueueManager, MessageID), MS-MQMQ 2.2.18.1.3.
    pub fn message_id(&self) -> (Guid, u32) {
        (self.user.source_queue_manager, self.user.message_id)
    }

    /// The 20-byte MessageIdentifier as it appears in an admin ack's CorrelationID.
    pub fn message_identifier_bytes(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..16].copy_from_slice(&self.user.source_queue_manager.0);
        b[16..].copy_from_slice(&self.user.message_id.to_le_bytes());
        b
    }

    pub fn priority(&self) -> u8 {
        self.base.flags.priority()
    }

    pub fn is_recoverable(&self) -> bool {
        self.user.flags.recoverable()
    }

    pub fn is_transactional(&self) -> bool {
        self.transaction.is_some()
    }

    /// An OrderAck: class MQMSG_CLASS_ORDER_ACK (MS-MQQB 3.1.5.1.1).
    pub fn is_order_ack(&self) -> bool {
        self.properties.message_class == MessageClass::ORDER_ACK
    }

    /// A FinalAck: label "QM Ordering Ack" and a class >= 0x4000 (MS-MQQB 3.1.5.1.1). The
    /// label tells it apart from an ordinary admin ACK_RECEIVE / NACK.
    pub fn is_final_ack(&self) -> bool {
        self.properties.message_class.is_final_ack_class()
            && self.properties.label.0 == ORDER_ACK_LABEL
    }

    /// The OrderAck body, when this is an OrderAck with a well-formed 36-byte body.
    pub fn order_ack_body(&self) -> Option<OrderAckBody> {
        if !self.is_order_ack() {
            return None;
        }
        OrderAckBody::parse(self.body()).ok()
    }

    /// The FinalAck body, when this is a FinalAck with a well-formed 36-byte body.
    pub fn final_ack_body(&self) -> Option<FinalAckBody> {
        if !self.is_final_ack() {
            return None;
        }
        FinalAckBody::parse(self.body()).ok()
    }
}
