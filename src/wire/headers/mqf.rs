//! MultiQueueFormatHeader (MS-MQMQ 2.2.20.1), its MQFAddressHeader lists (2.2.20.2) of
//! MQFFormatNameElement (2.2.18.1.4) and its MQFSignatureHeader (2.2.20.3); DIGEST §5.9.

use super::{bad, len_u32};
use crate::wire::{pad4, ErrorKind, Guid, Reader, Result, Utf16, Writer};

/// One MQFFormatNameElement (MS-MQMQ 2.2.18.1.4): u16 FormatType, then the name.
///
/// | FormatType | FormatName | start of FormatName |
/// |---|---|---|
/// | 1 public | 16-byte queue GUID | right after FormatType (the spec gives no rounding) |
/// | 2 private | 16-byte QM GUID + u32 queue number | rounded up to 4 |
/// | 3 direct | NUL-terminated UTF-16, no length prefix | rounded up to 2 |
/// | 6 distribution list | 16-byte DL GUID | rounded up to 4 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqfElement<'a> {
    Public(Guid),
    Private {
        qm: Guid,
        id: u32,
    },
    /// The direct format name including its NUL (without `DIRECT=`).
    Direct(Utf16<'a>),
    DistributionList(Guid),
}

impl<'a> MqfElement<'a> {
    pub const PUBLIC: u16 = 0x0001;
    pub const PRIVATE: u16 = 0x0002;
    pub const DIRECT: u16 = 0x0003;
    pub const DISTRIBUTION_LIST: u16 = 0x0006;

    pub fn format_type(&self) -> u16 {
        match self {
            MqfElement::Public(_) => Self::PUBLIC,
            MqfElement::Private { .. } => Self::PRIVATE,
            MqfElement::Direct(_) => Self::DIRECT,
            MqfElement::DistributionList(_) => Self::DISTRIBUTION_LIST,
        }
    }

    /// Reads one element. The reader's absolute offsets must have the packet's alignment
    /// (a format-name list always starts on a 4-byte boundary, so a list-relative reader does).
    fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let at = r.abs();
        match r.u16("MQFFormatNameElement.FormatType")? {
            Self::PUBLIC => Ok(MqfElement::Public(
                r.guid("MQFFormatNameElement.PublicQueueIdentifier")?,
            )),
            Self::PRIVATE => {
                r.align4("MQFFormatNameElement.SourceQueueManager")?;
                let qm = r.guid("MQFFormatNameElement.SourceQueueManager")?;
                let id = r.u32("MQFFormatNameElement.PrivateQueueIdentifier")?;
                Ok(MqfElement::Private { qm, id })
            }
            Self::DIRECT => {
                r.align2("MQFDirectQueueFormatName")?;
                let start = *r;
                let mut n = 0usize;
                // Scan for the terminating NUL; every step consumes 2 bytes, so the loop is
                // bounded by the list length.
                loop {
                    n += 2;
                    if r.u16("MQFDirectQueueFormatName.DirectFormatName")? == 0 {
                        break;
                    }
                }
                let mut s = start;
                Ok(MqfElement::Direct(Utf16(
                    s.take(n, "MQFDirectQueueFormatName.DirectFormatName")?,
                )))
            }
            Self::DISTRIBUTION_LIST => {
                r.align4("MQFDistributionQueueFormatName")?;
                Ok(MqfElement::DistributionList(r.guid(
                    "MQFDistributionQueueFormatName.DistributionListIdentifier",
                )?))
            }
            _ => Err(bad(
                ErrorKind::BadValue,
                "MQFFormatNameElement.FormatType",
                at,
            )),
        }
    }

    /// Writes one element. `w` must be positioned relative to a 4-aligned origin.
    fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        w.u16(self.format_type(), "MQFFormatNameElement.FormatType")?;
        match self {
            MqfElement::Public(g) => w.guid(g, "MQFFormatNameElement.PublicQueueIdentifier"),
            MqfElement::Private { qm, id } => {
                w.align4("MQFFormatNameElement.SourceQueueManager")?;
                w.guid(qm, "MQFFormatNameElement.SourceQueueManager")?;
                w.u32(*id, "MQFFormatNameElement.PrivateQueueIdentifier")
            }
            MqfElement::Direct(s) => {
                let at = w.pos();
                // The name carries no length: it must end with its only NUL, or a reader
                // would see a different list.
                let units = s.byte_len() / 2;
                let nul_ok = s.byte_len() % 2 == 0
                    && units > 0
                    && s.units().position(|u| u == 0) == Some(units - 1);
                if !nul_ok {
                    return Err(bad(
                        ErrorKind::BadValue,
                        "MQFDirectQueueFormatName.DirectFormatName",
                        at,
                    ));
                }
                w.align2("MQFDirectQueueFormatName")?;
                w.put(s.0, "MQFDirectQueueFormatName.DirectFormatName")
            }
            MqfElement::DistributionList(g) => {
                w.align4("MQFDistributionQueueFormatName")?;
                w.guid(
                    g,
                    "MQFDistributionQueueFormatName.DistributionListIdentifier",
                )
            }
        }
    }
}

/// Iterator over a validated format-name list.
#[derive(Clone, Debug)]
pub struct MqfElements<'a> {
    r: Reader<'a>,
    left: u32,
}

impl<'a> Iterator for MqfElements<'a> {
    type Item = MqfElement<'a>;

    fn next(&mut self) -> Option<MqfElement<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match MqfElement::parse(&mut self.r) {
            Ok(e) => Some(e),
            Err(_) => {
                // Unreachable for a list that came through `MqfAddressHeader::parse`; a
                // hand-built list that is malformed simply ends early.
                self.left = 0;
                None
            }
        }
    }
}

/// MQFAddressHeader (MS-MQMQ 2.2.20.2): one of the three format-name lists of a
/// MultiQueueFormatHeader.
///
/// ```text
/// 0 u32 HeaderSize (12 + list incl. its end padding)   4 u16 HeaderID   6 u16 Reserved
/// 8 u32 ElementCount                                   12 FormatNameList, end padded to 4
/// ```
/// `list` holds the elements' bytes exactly (interior alignment included, end padding not).
/// A HeaderSize with or without the end padding is accepted; the encoder includes it, since
/// the spec makes the padding part of FormatNameList.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MqfAddressHeader<'a> {
    pub element_count: u32,
    pub list: &'a [u8],
}

impl<'a> MqfAddressHeader<'a> {
    pub const FIXED_LEN: usize = 12;
    pub const DESTINATION_ID: u16 = 0x0064;
    pub const ADMIN_ID: u16 = 0x00C8;
    pub const RESPONSE_ID: u16 = 0x012C;
    pub const SIGNATURE_ID: u16 = 0x015E;

    /// An empty list (ElementCount 0).
    pub const EMPTY: MqfAddressHeader<'static> = MqfAddressHeader {
        element_count: 0,
        list: &[],
    };

    pub fn elements(&self) -> MqfElements<'a> {
        MqfElements {
            r: Reader::new(self.list),
            left: self.element_count,
        }
    }

    /// Builds a list: writes `elements` into `out` and returns the header that borrows it.
    pub fn build(elements: &[MqfElement<'_>], out: &'a mut [u8]) -> Result<MqfAddressHeader<'a>> {
        let mut w = Writer::new(out);
        for e in elements {
            e.encode(&mut w)?;
        }
        let n = w.pos();
        let element_count = len_u32(elements.len(), "MQFAddressHeader.ElementCount", 0)?;
        Ok(MqfAddressHeader {
            element_count,
            list: &out[..n],
        })
    }

    /// Parses a header whose HeaderID must be `id`; the elements must fit inside HeaderSize.
    pub fn parse(r: &mut Reader<'a>, id: u16) -> Result<Self> {
        let start = r.abs();
        let header_size = r.u32("MQFAddressHeader.HeaderSize")? as usize;
        let id_at = r.abs();
        if r.u16("MQFAddressHeader.HeaderID")? != id {
            return Err(bad(ErrorKind::BadValue, "MQFAddressHeader.HeaderID", id_at));
        }
        r.u16("MQFAddressHeader.Reserved")?;
        let element_count = r.u32("MQFAddressHeader.ElementCount")?;
        let list_len = header_size.checked_sub(Self::FIXED_LEN).ok_or(bad(
            ErrorKind::SizeMismatch,
            "MQFAddressHeader.HeaderSize",
            start,
        ))?;
        let list_at = r.abs();
        let region = r.take(list_len, "MQFAddressHeader.FormatNameList")?;
        // Elements are parsed inside the region HeaderSize declares, never past it.
        let mut lr = Reader::with_base(region, list_at);
        for _ in 0..element_count {
            MqfElement::parse(&mut lr)?;
        }
        let used = lr.pos();
        if pad4(used) < list_len {
            return Err(bad(
                ErrorKind::SizeMismatch,
                "MQFAddressHeader.HeaderSize",
                start,
            ));
        }
        Ok(MqfAddressHeader {
            element_count,
            list: &region[..used],
        })
    }

    pub fn encoded_len(&self) -> usize {
        Self::FIXED_LEN.saturating_add(pad4(self.list.len()))
    }

    pub fn encode(&self, w: &mut Writer<'_>, id: u16) -> Result<()> {
        let at = w.pos();
        // The list is raw bytes; check it is exactly `element_count` valid elements so the
        // receiver reads back the same list.
        let mut lr = Reader::new(self.list);
        for _ in 0..self.element_count {
            MqfElement::parse(&mut lr)
                .map_err(|e| bad(e.kind, e.field, at + Self::FIXED_LEN + e.offset))?;
        }
        if lr.remaining() != 0 {
            return Err(bad(
                ErrorKind::SizeMismatch,
                "MQFAddressHeader.ElementCount",
                at + 8,
            ));
        }
        let header_size = len_u32(self.encoded_len(), "MQFAddressHeader.HeaderSize", at)?;
        w.u32(header_size, "MQFAddressHeader.HeaderSize")?;
        w.u16(id, "MQFAddressHeader.HeaderID")?;
        w.u16(0, "MQFAddressHeader.Reserved")?;
        w.u32(self.element_count, "MQFAddressHeader.ElementCount")?;
        w.put(self.list, "MQFAddressHeader.FormatNameList")?;
        w.align4("MQFAddressHeader.FormatNameList")
    }
}

/// MultiQueueFormatHeader (MS-MQMQ 2.2.20.1-2.2.20.3; DIGEST §5.9). Present iff
/// UserHeader.Flags.MQ.
///
/// ```text
/// Destination MQFAddressHeader (HeaderID 0x0064), padded to 4
/// Administration MQFAddressHeader (0x00C8), padded to 4
/// Response MQFAddressHeader (0x012C), padded to 4
/// MQFSignatureHeader: u16 ID (0x015E), u16 Reserved, u32 Size, Signature[Size]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiQueueFormatHeader<'a> {
    pub destination: MqfAddressHeader<'a>,
    pub administration: MqfAddressHeader<'a>,
    pub response: MqfAddressHeader<'a>,
    /// MQFSignatureHeader.Signature.
    pub signature: &'a [u8],
}

impl<'a> MultiQueueFormatHeader<'a> {
    pub fn parse(r: &mut Reader<'a>) -> Result<Self> {
        let destination = MqfAddressHeader::parse(r, MqfAddressHeader::DESTINATION_ID)?;
        r.align4("MQFAddressHeader")?;
        let administration = MqfAddressHeader::parse(r, MqfAddressHeader::ADMIN_ID)?;
        r.align4("MQFAddressHeader")?;
        let response = MqfAddressHeader::parse(r, MqfAddressHeader::RESPONSE_ID)?;
        r.align4("MQFAddressHeader")?;
        let at = r.abs();
        if r.u16("MQFSignatureHeader.ID")? != MqfAddressHeader::SIGNATURE_ID {
            return Err(bad(ErrorKind::BadValue, "MQFSignatureHeader.ID", at));
        }
        r.u16("MQFSignatureHeader.Reserved")?;
        let size = r.u32("MQFSignatureHeader.Size")? as usize;
        let signature = r.take(size, "MQFSignatureHeader.Signature")?;
        Ok(MultiQueueFormatHeader {
            destination,
            administration,
            response,
            signature,
        })
    }

    /// Bytes from the header start to the end of the signature (without final padding).
    pub fn encoded_len(&self) -> usize {
        self.destination
            .encoded_len()
            .saturating_add(self.administration.encoded_len())
            .saturating_add(self.response.encoded_len())
            .saturating_add(8)
            .saturating_add(self.signature.len())
    }

    pub fn encode(&self, w: &mut Writer<'_>) -> Result<()> {
        self.destination
            .encode(w, MqfAddressHeader::DESTINATION_ID)?;
        self.administration.encode(w, MqfAddressHeader::ADMIN_ID)?;
        self.response.encode(w, MqfAddressHeader::RESPONSE_ID)?;
        let at = w.pos();
        let size = len_u32(self.signature.len(), "MQFSignatureHeader.Size", at + 4)?;
        w.u16(MqfAddressHeader::SIGNATURE_ID, "MQFSignatureHeader.ID")?;
        w.u16(0, "MQFSignatureHeader.Reserved")?;
        w.u32(size, "MQFSignatureHeader.Size")?;
        w.put(self.signature, "MQFSignatureHeader.Signature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqf_list_round_trips_with_alignment() {
        let name = crate::wire::utf16z("TCP:1.2.3.4\\q");
        let g = Guid([7; 16]);
        let elements = [
            MqfElement::Public(g),
            MqfElement::Direct(Utf16(&name)),
            MqfElement::Private { qm: g, id: 9 },
            MqfElement::Direct(Utf16(&name)),
            MqfElement::DistributionList(g),
        ];
        let mut buf = [0u8; 256];
        let h = MqfAddressHeader::build(&elements, &mut buf).expect("fits");
        let got: Vec<_> = h.elements().collect();
        assert_eq!(got, elements);
        // Public GUID right after its FormatType: 2 + 16 = 18; the direct name starts at 20.
        assert_eq!(&h.list[20..22], &name[..2]);
    }
}
