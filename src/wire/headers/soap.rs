//! SoapHeader (MS-MQMQ 2.2.20.7; DIGEST §5.8).

use super::{bad, len_u32};
use crate::wire::{pad4, ErrorKind, Reader, Result, Utf16, Writer};

/// SoapHeader: two sections (MS-MQMQ 2.2.20.7; DIGEST §5.8). Present iff UserHeader.Flags.HH.
///
/// ```text
/// 0 u16 HeaderSectionID (0x0320)  2 u16 Reserved  4 u32 HeaderDataLength (WCHARs incl. NUL)
/// 8 Header[2*HeaderDataLength]    .. padding to 4
/// + u16 BodySectionID (0x0384)    u16 Reserved1   u32 BodyDataLength (WCHARs incl. NUL)
///   Body[2*BodyDataLength]        .. padding to 4
/// ```
/// The spec is silent on padding inside this header; we pad each section to 4 as DIGEST §5.8
/// infers from the general rule that headers start on 4-byte boundaries [UNCONFIRMED].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoapHeader<'a> {
    /// The application's SOAP header fragment (PROPID_M_SOAP_HEADER), UTF-16LE incl. NUL.
    pub header: Utf16<'a>,
    /// The application's SOAP body (PROPID_M_SOAP_BODY), UTF-16LE incl. NUL.
    pub body: Utf16<'a>,
}

impl<'a> SoapHeader<'a> {
    pub const HEADER_SECTION_ID: u16 = 0x0320;
    pub const BODY_SECTION_ID: u16 = 0x0384;

    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let header = Self::section(
            r,
            Self::HEADER_SECTION_ID,
            "SoapHeader.HeaderSectionID",
            "SoapHeader.HeaderDataLength",
            "SoapHeader.Header",
        )?;
        r.align4("SoapHeader.Header")?;
        let body = Self::section(
            r,
            Self::BODY_SECTION_ID,
            "SoapHeader.BodySectionID",
            "SoapHeader.BodyDataLength",
            "SoapHeader.Body",
        )?;
        Ok(SoapHeader { header, body })
    }

    fn section(
        r: &mut Reader<'a>,
        id: u16,
        id_field: &'static str,
        len_field: &'static str,
        data_field: &'static str,
    ) -> Result<Utf16<'a>> {
        let at = r.abs();
        if r.u16(id_field)? != id {
            return Err(bad(ErrorKind::BadValue, id_field, at));
        }
        r.u16("SoapHeader.Reserved")?;
        let len_at = r.abs();
        let wchars = r.u32(len_field)? as usize;
        let bytes = wchars
            .checked_mul(2)
            .ok_or(bad(ErrorKind::Overflow, len_field, len_at))?;
        Ok(Utf16(r.take(bytes, data_field)?))
    }

    /// Bytes from the header start to the end of Body (without the final padding).
    pub fn encoded_len(&self) -> usize {
        pad4(8usize.saturating_add(self.header.byte_len()))
            .saturating_add(8)
            .saturating_add(self.body.byte_len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        for (id, s, len_field, data_field) in [
            (
                Self::HEADER_SECTION_ID,
                self.header,
                "SoapHeader.HeaderDataLength",
                "SoapHeader.Header",
            ),
            (
                Self::BODY_SECTION_ID,
                self.body,
                "SoapHeader.BodyDataLength",
                "SoapHeader.Body",
            ),
        ] {
            let at = w.pos();
            if s.byte_len() % 2 != 0 {
                return Err(bad(ErrorKind::BadValue, len_field, at + 4));
            }
            let wchars = len_u32(s.byte_len() / 2, len_field, at + 4)?;
            if id == Self::BODY_SECTION_ID {
                w.align4("SoapHeader.Header")?;
            }
            w.u16(id, "SoapHeader.SectionID")?;
            w.u16(0, "SoapHeader.Reserved")?;
            w.u32(wchars, len_field)?;
            w.put(s.0, data_field)?;
        }
        Ok(())
    }
}
