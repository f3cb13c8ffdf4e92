//! Session-control packets: EstablishConnection (MS-MQQB 2.2.3), ConnectionParameters (2.2.2),
//! SessionAck with its SessionHeader (2.2.6, MS-MQMQ 2.2.20.4) and the UDP Ping (2.2.7).
//! All fixed-size, so they decode into `Copy` values; parse validates the exact PacketSize.

use super::base::{
    BaseFlags, BaseHeader, InternalHeader, PacketType, BASE_HEADER_LEN, INFINITE,
    INTERNAL_HEADER_LEN,
};
use super::{ErrorKind, Guid, Reader, Result, WireError, Writer};

pub const ESTABLISH_CONNECTION_LEN: usize = 572;
pub const CONNECTION_PARAMETERS_LEN: usize = 32;
pub const SESSION_HEADER_LEN: usize = 16;
pub const SESSION_ACK_LEN: usize = BASE_HEADER_LEN + INTERNAL_HEADER_LEN + SESSION_HEADER_LEN;
pub const PING_LEN: usize = 24;
/// Bytes of EstablishConnectionHeader.Padding.
pub const EC_PADDING_LEN: usize = 512;
/// The byte an acceptor must fill the EstablishConnection response padding with (MS-MQQB 2.2.3.1).
pub const EC_PADDING_BYTE: u8 = 0x5A;
/// The BaseHeader.Reserved byte Windows puts in its EstablishConnection response (DIGEST §4.1).
pub const WINDOWS_RESPONSE_RESERVED: u8 = 0x5A;

fn expect_size(base: &BaseHeader, want: usize, what: &'static str) -> Result<()> {
    if base.packet_size as usize != want {
        return Err(WireError::new(ErrorKind::SizeMismatch, what, 8));
    }
    Ok(())
}

fn expect_len(buf: &[u8], want: usize, what: &'static str) -> Result<()> {
    if buf.len() < want {
        return Err(WireError::new(ErrorKind::Truncated, what, buf.len()));
    }
    if buf.len() > want {
        return Err(WireError::new(ErrorKind::SizeMismatch, what, want));
    }
    Ok(())
}

/// EstablishConnectionHeader.OperatingSystem (u16): RE bits 0-7 (0x10), SE bit 8 (no Ping was
/// sent), OS bit 9 (server OS), QS bit 10 (GQoS). The spec example's annotation contradicts its
/// own bytes (`10 03`); we follow the bytes (DIGEST §4.1, §17.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperatingSystem(pub u16);

impl OperatingSystem {
    pub const RE: u16 = 0x0010;
    pub const SE: u16 = 0x0100;
    pub const OS: u16 = 0x0200;
    pub const QS: u16 = 0x0400;
    /// What a Linux initiator sends: RE=0x10, SE=1 (it never pings first).
    pub const LINUX_INITIATOR: OperatingSystem = OperatingSystem(Self::RE | Self::SE);

    pub fn no_ping_sent(self) -> bool {
        self.0 & Self::SE != 0
    }
    pub fn server_os(self) -> bool {
        self.0 & Self::OS != 0
    }
    pub fn qos(self) -> bool {
        self.0 & Self::QS != 0
    }
}

/// EstablishConnection packet, 572 bytes (MS-MQQB 2.2.3).
///
/// ```text
/// 0   BaseHeader (IN=1, PacketSize 572)   16  InternalHeader (PT=2, CS)
/// 20  ClientGuid[16]   36 ServerGuid[16]   52 u32 TimeStamp (ms since boot)
/// 56  u16 OperatingSystem   58 u16 Reserved   60 Padding[512]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EstablishConnection {
    pub base: BaseHeader,
    pub internal: InternalHeader,
    pub client_guid: Guid,
    pub server_guid: Guid,
    pub time_stamp: u32,
    pub operating_system: OperatingSystem,
    pub reserved: u16,
    /// Kept so a parsed packet re-encodes byte for byte; senders use 0x5A (or zero) bytes.
    pub padding: [u8; EC_PADDING_LEN],
}

impl EstablishConnection {
    /// The initiator's request.
    pub fn request(client: Guid, server: Guid, time_stamp: u32) -> Self {
        EstablishConnection {
            base: BaseHeader::internal(ESTABLISH_CONNECTION_LEN as u32, 0, false),
            internal: InternalHeader::new(PacketType::ESTABLISH_CONNECTION, false),
            client_guid: client,
            server_guid: server,
            time_stamp,
            operating_system: OperatingSystem::LINUX_INITIATOR,
            reserved: 0,
            padding: [EC_PADDING_BYTE; EC_PADDING_LEN],
        }
    }

    /// The acceptor's response to `req`, as Windows builds it: ClientGuid and TimeStamp echoed,
    /// our GUID as ServerGuid, SE echoed, padding 0x5A, BaseHeader.Reserved 0x5A.
    pub fn response(req: &EstablishConnection, own: Guid, refused: bool) -> Self {
        EstablishConnection {
            base: BaseHeader::internal(
                ESTABLISH_CONNECTION_LEN as u32,
                WINDOWS_RESPONSE_RESERVED,
                false,
            ),
            internal: InternalHeader::new(PacketType::ESTABLISH_CONNECTION, refused),
            client_guid: req.client_guid,
            server_guid: own,
            time_stamp: req.time_stamp,
            operating_system: OperatingSystem(
                OperatingSystem::RE | (req.operating_system.0 & OperatingSystem::SE),
            ),
            reserved: 0,
            padding: [EC_PADDING_BYTE; EC_PADDING_LEN],
        }
    }

    /// Parses a whole 572-byte frame.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let base = BaseHeader::parse(buf)?;
        expect_size(&base, ESTABLISH_CONNECTION_LEN, "BaseHeader.PacketSize")?;
        expect_len(buf, ESTABLISH_CONNECTION_LEN, "EstablishConnection")?;
        let mut r = Reader::new(buf);
        r.take(BASE_HEADER_LEN, "BaseHeader")?;
        let internal = InternalHeader::parse(&mut r)?;
        if internal.flags.packet_type() != PacketType::ESTABLISH_CONNECTION {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "InternalHeader.Flags.PT",
                18,
            ));
        }
        Ok(EstablishConnection {
            base,
            internal,
            client_guid: r.guid("EstablishConnection.ClientGuid")?,
            server_guid: r.guid("EstablishConnection.ServerGuid")?,
            time_stamp: r.u32("EstablishConnection.TimeStamp")?,
            operating_system: OperatingSystem(r.u16("EstablishConnection.OperatingSystem")?),
            reserved: r.u16("EstablishConnection.Reserved")?,
            padding: r.array("EstablishConnection.Padding")?,
        })
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(out);
        self.base.encode(&mut w)?;
        self.internal.encode(&mut w)?;
        w.guid(&self.client_guid, "EstablishConnection.ClientGuid")?;
        w.guid(&self.server_guid, "EstablishConnection.ServerGuid")?;
        w.u32(self.time_stamp, "EstablishConnection.TimeStamp")?;
        w.u16(
            self.operating_system.0,
            "EstablishConnection.OperatingSystem",
        )?;
        w.u16(self.reserved, "EstablishConnection.Reserved")?;
        w.put(&self.padding, "EstablishConnection.Padding")?;
        Ok(w.pos())
    }
}

/// ConnectionParameters packet, 32 bytes (MS-MQQB 2.2.2).
///
/// ```text
/// 0 BaseHeader   16 InternalHeader (PT=3)   20 u32 RecoverableAckTimeout (ms)
/// 24 u32 AckTimeout (ms)   28 u16 Reserved   30 u16 WindowSize
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionParameters {
    pub base: BaseHeader,
    pub internal: InternalHeader,
    pub recoverable_ack_timeout: u32,
    pub ack_timeout: u32,
    pub reserved: u16,
    pub window_size: u16,
}

impl ConnectionParameters {
    /// Wire range of RecoverableAckTimeout, in ms.
    pub const RECOVERABLE_ACK_TIMEOUT_RANGE: (u32, u32) = (500, 120_000);
    /// Wire range of AckTimeout, in ms.
    pub const ACK_TIMEOUT_RANGE: (u32, u32) = (20_000, 120_000);

    pub fn new(recoverable_ack_timeout: u32, ack_timeout: u32, window_size: u16) -> Self {
        ConnectionParameters {
            base: BaseHeader::internal(CONNECTION_PARAMETERS_LEN as u32, 0, false),
            internal: InternalHeader::new(PacketType::CONNECTION_PARAMETERS, false),
            recoverable_ack_timeout,
            ack_timeout,
            reserved: 0,
            window_size,
        }
    }

    pub fn parse(buf: &[u8]) -> Result<Self> {
        let base = BaseHeader::parse(buf)?;
        expect_size(&base, CONNECTION_PARAMETERS_LEN, "BaseHeader.PacketSize")?;
        expect_len(buf, CONNECTION_PARAMETERS_LEN, "ConnectionParameters")?;
        let mut r = Reader::new(buf);
        r.take(BASE_HEADER_LEN, "BaseHeader")?;
        let internal = InternalHeader::parse(&mut r)?;
        if internal.flags.packet_type() != PacketType::CONNECTION_PARAMETERS {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "InternalHeader.Flags.PT",
                18,
            ));
        }
        Ok(ConnectionParameters {
            base,
            internal,
            recoverable_ack_timeout: r.u32("ConnectionParameters.RecoverableAckTimeout")?,
            ack_timeout: r.u32("ConnectionParameters.AckTimeout")?,
            reserved: r.u16("ConnectionParameters.Reserved")?,
            window_size: r.u16("ConnectionParameters.WindowSize")?,
        })
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(out);
        self.base.encode(&mut w)?;
        self.internal.encode(&mut w)?;
        w.u32(
            self.recoverable_ack_timeout,
            "ConnectionParameters.RecoverableAckTimeout",
        )?;
        w.u32(self.ack_timeout, "ConnectionParameters.AckTimeout")?;
        w.u16(self.reserved, "ConnectionParameters.Reserved")?;
        w.u16(self.window_size, "ConnectionParameters.WindowSize")?;
        Ok(w.pos())
    }
}

/// SessionHeader, 16 bytes (MS-MQMQ 2.2.20.4): either inside a SessionAck packet or appended to
/// a UserMessage outside its PacketSize.
///
/// ```text
/// 0 u16 AckSequenceNumber   2 u16 RecoverableMsgAckSeqNumber   4 u32 RecoverableMsgAckFlags
/// 8 u16 UserMsgSequenceNumber   10 u16 RecoverableMsgSeqNumber   12 u16 WindowSize  14 u16 Reserved
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SessionHeader {
    pub ack_sequence_number: u16,
    pub recoverable_msg_ack_seq_number: u16,
    pub recoverable_msg_ack_flags: u32,
    pub user_msg_sequence_number: u16,
    pub recoverable_msg_seq_number: u16,
    pub window_size: u16,
    pub reserved: u16,
}

impl SessionHeader {
    pub fn parse(r: &mut Reader<'_>) -> Result<Self> {
        Ok(SessionHeader {
            ack_sequence_number: r.u16("SessionHeader.AckSequenceNumber")?,
            recoverable_msg_ack_seq_number: r.u16("SessionHeader.RecoverableMsgAckSeqNumber")?,
            recoverable_msg_ack_flags: r.u32("SessionHeader.RecoverableMsgAckFlags")?,
            user_msg_sequence_number: r.u16("SessionHeader.UserMsgSequenceNumber")?,
            recoverable_msg_seq_number: r.u16("SessionHeader.RecoverableMsgSeqNumber")?,
            window_size: r.u16("SessionHeader.WindowSize")?,
            reserved: r.u16("SessionHeader.Reserved")?,
        })
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        w.u16(self.ack_sequence_number, "SessionHeader.AckSequenceNumber")?;
        w.u16(
            self.recoverable_msg_ack_seq_number,
            "SessionHeader.RecoverableMsgAckSeqNumber",
        )?;
        w.u32(
            self.recoverable_msg_ack_flags,
            "SessionHeader.RecoverableMsgAckFlags",
        )?;
        w.u16(
            self.user_msg_sequence_number,
            "SessionHeader.UserMsgSequenceNumber",
        )?;
        w.u16(
            self.recoverable_msg_seq_number,
            "SessionHeader.RecoverableMsgSeqNumber",
        )?;
        w.u16(self.window_size, "SessionHeader.WindowSize")?;
        w.u16(self.reserved, "SessionHeader.Reserved")
    }
}

/// SessionAck packet, 36 bytes (MS-MQQB 2.2.6): BaseHeader (IN, SH) + InternalHeader (PT=1) +
/// SessionHeader. Unlike a piggy-backed SessionHeader, this one is counted in PacketSize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionAck {
    pub base: BaseHeader,
    pub internal: InternalHeader,
    pub session: SessionHeader,
}

impl SessionAck {
    pub fn new(session: SessionHeader) -> Self {
        SessionAck {
            base: BaseHeader::internal(SESSION_ACK_LEN as u32, 0, true),
            internal: InternalHeader::new(PacketType::SESSION_ACK, false),
            session,
        }
    }

    pub fn parse(buf: &[u8]) -> Result<Self> {
        let base = BaseHeader::parse(buf)?;
        expect_size(&base, SESSION_ACK_LEN, "BaseHeader.PacketSize")?;
        expect_len(buf, SESSION_ACK_LEN, "SessionAck")?;
        if !base.flags.session() {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "BaseHeader.Flags.SH",
                2,
            ));
        }
        let mut r = Reader::new(buf);
        r.take(BASE_HEADER_LEN, "BaseHeader")?;
        let internal = InternalHeader::parse(&mut r)?;
        if internal.flags.packet_type() != PacketType::SESSION_ACK {
            return Err(WireError::new(
                ErrorKind::BadValue,
                "InternalHeader.Flags.PT",
                18,
            ));
        }
        let session = SessionHeader::parse(&mut r)?;
        Ok(SessionAck {
            base,
            internal,
            session,
        })
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(out);
        self.base.encode(&mut w)?;
        self.internal.encode(&mut w)?;
        self.session.encode(&mut w)?;
        Ok(w.pos())
    }
}

/// Ping packet, 24 bytes, UDP 3527 (MS-MQQB 2.2.7). No BaseHeader.
///
/// ```text
/// 0 u16 Flags (bit0 RC, bit1 RF, rest garbage)   2 u16 Signature 0x5548
/// 4 u32 Cookie   8 QMGuid[16]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ping {
    pub flags: u16,
    pub cookie: u32,
    pub qm_guid: Guid,
}

impl Ping {
    pub const SIGNATURE: u16 = 0x5548;
    /// RC: the initiator is not a server edition (echoed by the acceptor).
    pub const RC: u16 = 0x0001;
    /// RF: the acceptor would refuse a TCP session now.
    pub const RF: u16 = 0x0002;

    pub fn parse(buf: &[u8]) -> Result<Self> {
        expect_len(buf, PING_LEN, "Ping")?;
        let mut r = Reader::new(buf);
        let flags = r.u16("Ping.Flags")?;
        if r.u16("Ping.Signature")? != Self::SIGNATURE {
            return Err(WireError::new(ErrorKind::BadValue, "Ping.Signature", 2));
        }
        Ok(Ping {
            flags,
            cookie: r.u32("Ping.Cookie")?,
            qm_guid: r.guid("Ping.QMGuid")?,
        })
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize> {
        let mut w = Writer::new(out);
        w.u16(self.flags, "Ping.Flags")?;
        w.u16(Self::SIGNATURE, "Ping.Signature")?;
        w.u32(self.cookie, "Ping.Cookie")?;
        w.guid(&self.qm_guid, "Ping.QMGuid")?;
        Ok(w.pos())
    }

    /// The acceptor's answer: cookie and RC echoed, RF set when it would refuse, our GUID.
    pub fn response(req: &Ping, own: Guid, refuse: bool) -> Ping {
        Ping {
            flags: (req.flags & Self::RC) | if refuse { Self::RF } else { 0 },
            cookie: req.cookie,
            qm_guid: own,
        }
    }
}

/// A BaseHeader for internal packets must announce TTRQ infinite; we accept anything on receipt
/// (Windows is lenient), but this constant documents what we send.
pub const INTERNAL_TTRQ: u32 = INFINITE;

/// Flags lior puts in internal packets: PR=3 | IN (what Windows sends).
pub const INTERNAL_FLAGS: BaseFlags = BaseFlags(3 | BaseFlags::INTERNAL);
