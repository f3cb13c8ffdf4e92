//! The SRMP sections of a UserMessage that arrived over HTTP (UserHeader.Flags.AH; MS-MQRR
//! 2.2.5.1.2; DIGEST §5.10): SRMPEnvelopeHeader and CompoundMessageHeader. Never sent on 1801.
//! The MQRR ExtensionHeader that may follow them is in `extension`.

use super::{bad, len_u32};
use crate::wire::{ErrorKind, Reader, Result, Utf16, Writer};

/// SRMPEnvelopeHeader (MS-MQRR 2.2.5.1.2; DIGEST §5.10). Only in messages that arrived over
/// HTTP (UserHeader.AH); a spec-conforming 1801 peer never sends it, but CVE-2023-21554 was
/// exploited through exactly this path, so it is parsed with checked arithmetic and refused
/// by the protocol layer.
///
/// ```text
/// 0 u16 HeaderId   2 u16 Reserved   4 u32 DataLength (WCHARs, per the QueueJumper packet)
/// 8 Data[2*DataLength] (UTF-16 SOAP envelope incl. NUL), then padding to 4
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrmpEnvelopeHeader<'a> {
    pub header_id: u16,
    pub data: Utf16<'a>,
}

impl<'a> SrmpEnvelopeHeader<'a> {
    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let header_id = r.u16("SRMPEnvelopeHeader.HeaderId")?;
        r.u16("SRMPEnvelopeHeader.Reserved")?;
        let len_at = r.abs();
        let wchars = r.u32("SRMPEnvelopeHeader.DataLength")? as usize;
        let bytes = wchars.checked_mul(2).ok_or(bad(
            ErrorKind::Overflow,
            "SRMPEnvelopeHeader.DataLength",
            len_at,
        ))?;
        let data = Utf16(r.take(bytes, "SRMPEnvelopeHeader.Data")?);
        Ok(SrmpEnvelopeHeader { header_id, data })
    }

    pub fn encoded_len(&self) -> usize {
        8usize.saturating_add(self.data.byte_len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        if self.data.byte_len() % 2 != 0 {
            return Err(bad(
                ErrorKind::BadValue,
                "SRMPEnvelopeHeader.DataLength",
                at + 4,
            ));
        }
        let wchars = len_u32(
            self.data.byte_len() / 2,
            "SRMPEnvelopeHeader.DataLength",
            at + 4,
        )?;
        w.u16(self.header_id, "SRMPEnvelopeHeader.HeaderId")?;
        w.u16(0, "SRMPEnvelopeHeader.Reserved")?;
        w.u32(wchars, "SRMPEnvelopeHeader.DataLength")?;
        w.put(self.data.0, "SRMPEnvelopeHeader.Data")
    }
}

/// CompoundMessageHeader (MS-MQRR 2.2.5.1.2; DIGEST §5.10): the raw HTTP request of an SRMP
/// message, with the message body located inside it.
///
/// ```text
/// 0 u16 HeaderId  2 u16 Reserved  4 u32 HTTPBodySize  8 u32 MsgBodySize  12 u32 MsgBodyOffset
/// 16 Data[HTTPBodySize], then padding to 4
/// ```
/// Validated: `MsgBodyOffset + MsgBodySize <= HTTPBodySize`, computed without overflow. That
/// unchecked sum is the class of bug behind CVE-2023-21554.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompoundMessageHeader<'a> {
    pub header_id: u16,
    pub http_body: &'a [u8],
    pub msg_body_size: u32,
    pub msg_body_offset: u32,
}

impl<'a> CompoundMessageHeader<'a> {
    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let header_id = r.u16("CompoundMessageHeader.HeaderId")?;
        r.u16("CompoundMessageHeader.Reserved")?;
        let http_body_size = r.u32("CompoundMessageHeader.HTTPBodySize")? as usize;
        let size_at = r.abs();
        let msg_body_size = r.u32("CompoundMessageHeader.MsgBodySize")?;
        let msg_body_offset = r.u32("CompoundMessageHeader.MsgBodyOffset")?;
        let http_body = r.take(http_body_size, "CompoundMessageHeader.Data")?;
        let c = CompoundMessageHeader {
            header_id,
            http_body,
            msg_body_size,
            msg_body_offset,
        };
        if c.msg_body_range().is_none() {
            return Err(bad(
                ErrorKind::Overflow,
                "CompoundMessageHeader.MsgBodySize",
                size_at,
            ));
        }
        Ok(c)
    }

    fn msg_body_range(&self) -> Option<std::ops::Range<usize>> {
        let start = self.msg_body_offset as usize;
        let end = start.checked_add(self.msg_body_size as usize)?;
        (end <= self.http_body.len()).then_some(start..end)
    }

    /// The message body inside the HTTP request (empty if the header was built inconsistently;
    /// a parsed header is always consistent).
    pub fn msg_body(&self) -> &'a [u8] {
        match self.msg_body_range() {
            Some(range) => self.http_body.get(range).unwrap_or(&[]),
            None => &[],
        }
    }

    pub fn encoded_len(&self) -> usize {
        16usize.saturating_add(self.http_body.len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        let at = w.pos();
        if self.msg_body_range().is_none() {
            return Err(bad(
                ErrorKind::Overflow,
                "CompoundMessageHeader.MsgBodySize",
                at + 8,
            ));
        }
        let size = len_u32(
            self.http_body.len(),
            "CompoundMessageHeader.HTTPBodySize",
            at + 4,
        )?;
        w.u16(self.header_id, "CompoundMessageHeader.HeaderId")?;
        w.u16(0, "CompoundMessageHeader.Reserved")?;
        w.u32(size, "CompoundMessageHeader.HTTPBodySize")?;
        w.u32(self.msg_body_size, "CompoundMessageHeader.MsgBodySize")?;
        w.u32(self.msg_body_offset, "CompoundMessageHeader.MsgBodyOffset")?;
        w.put(self.http_body, "CompoundMessageHeader.Data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compound_message_offsets_are_overflow_checked() {
        let mut pkt = vec![0u8; 0];
        pkt.extend_from_slice(&[0xF4, 0x01, 0, 0]);
        pkt.extend_from_slice(&8u32.to_le_bytes());
        pkt.extend_from_slice(&7u32.to_le_bytes());
        pkt.extend_from_slice(&u32::MAX.to_le_bytes());
        pkt.extend_from_slice(&[0u8; 8]);
        let e = CompoundMessageHeader::parse(&mut Reader::new(&pkt)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Overflow);
        pkt[12..16].copy_from_slice(&1u32.to_le_bytes());
        let c = CompoundMessageHeader::parse(&mut Reader::new(&pkt)).expect("in range");
        assert_eq!(c.msg_body().len(), 7);
    }
}
