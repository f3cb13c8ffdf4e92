//! The AMQP 1.0 type system (OASIS AMQP 1.0 Part 1: Types): the encodings of §1.2, the
//! descriptors of §1.3, composite types as described lists (§1.5) and the primitive type
//! definitions of §1.6.
//!
//! Every encoded value is a *constructor* (a one-byte format code, or `0x00` followed by a
//! descriptor value and a constructor) and data whose length the format code's subcategory
//! (its high nibble, §1.2) tells:
//!
//! ```text
//! 0x4? fixed, 0 bytes    0x5? fixed, 1   0x6? fixed, 2   0x7? fixed, 4   0x8? fixed, 8   0x9? fixed, 16
//! 0xa? variable, 1-byte size            0xb? variable, 4-byte size
//! 0xc? compound, 1-byte size and count  0xd? compound, 4-byte size and count
//! 0xe? array, 1-byte size and count     0xf? array, 4-byte size and count (then one constructor)
//! ```
//!
//! [`Decoder`] splits values off a `&[u8]` without copying. Lists, maps and arrays are views
//! ([`Compound`], [`Array`]) whose elements decode as they are iterated; a described value keeps
//! its inner value undecoded ([`Raw`]) until asked. Nesting is bounded by
//! [`MAX_NESTING_DEPTH`](super::MAX_NESTING_DEPTH) and element counts by
//! [`MAX_ELEMENTS`](super::MAX_ELEMENTS). The `put_*` functions and [`ListWriter`] /
//! [`MapWriter`] encode into a caller's `Vec<u8>`, always in the smallest encoding.

use super::{CodecError, ErrorKind, Result, MAX_ELEMENTS, MAX_NESTING_DEPTH};

/// Format codes (Part 1 §1.6).
pub mod code {
    pub const DESCRIBED: u8 = 0x00;
    pub const NULL: u8 = 0x40;
    pub const TRUE: u8 = 0x41;
    pub const FALSE: u8 = 0x42;
    pub const BOOLEAN: u8 = 0x56;
    pub const UBYTE: u8 = 0x50;
    pub const USHORT: u8 = 0x60;
    pub const UINT: u8 = 0x70;
    pub const SMALLUINT: u8 = 0x52;
    pub const UINT0: u8 = 0x43;
    pub const ULONG: u8 = 0x80;
    pub const SMALLULONG: u8 = 0x53;
    pub const ULONG0: u8 = 0x44;
    pub const BYTE: u8 = 0x51;
    pub const SHORT: u8 = 0x61;
    pub const INT: u8 = 0x71;
    pub const SMALLINT: u8 = 0x54;
    pub const LONG: u8 = 0x81;
    pub const SMALLLONG: u8 = 0x55;
    pub const FLOAT: u8 = 0x72;
    pub const DOUBLE: u8 = 0x82;
    pub const DECIMAL32: u8 = 0x74;
    pub const DECIMAL64: u8 = 0x84;
    pub const DECIMAL128: u8 = 0x94;
    pub const CHAR: u8 = 0x73;
    pub const TIMESTAMP: u8 = 0x83;
    pub const UUID: u8 = 0x98;
    pub const VBIN8: u8 = 0xa0;
    pub const VBIN32: u8 = 0xb0;
    pub const STR8: u8 = 0xa1;
    pub const STR32: u8 = 0xb1;
    pub const SYM8: u8 = 0xa3;
    pub const SYM32: u8 = 0xb3;
    pub const LIST0: u8 = 0x45;
    pub const LIST8: u8 = 0xc0;
    pub const LIST32: u8 = 0xd0;
    pub const MAP8: u8 = 0xc1;
    pub const MAP32: u8 = 0xd1;
    pub const ARRAY8: u8 = 0xe0;
    pub const ARRAY32: u8 = 0xf0;
}

/// Descriptor codes (the low 32 bits of the ulong; the domain, high 32 bits, is 0 for the
/// OASIS types) and their symbolic names (Part 2 §2.7, §2.8.14; Part 3 §3.2, §3.4, §3.5;
/// Part 5 §5.3.3).
pub mod descriptor {
    pub const OPEN: u64 = 0x10;
    pub const BEGIN: u64 = 0x11;
    pub const ATTACH: u64 = 0x12;
    pub const FLOW: u64 = 0x13;
    pub const TRANSFER: u64 = 0x14;
    pub const DISPOSITION: u64 = 0x15;
    pub const DETACH: u64 = 0x16;
    pub const END: u64 = 0x17;
    pub const CLOSE: u64 = 0x18;
    pub const ERROR: u64 = 0x1d;
    pub const RECEIVED: u64 = 0x23;
    pub const ACCEPTED: u64 = 0x24;
    pub const REJECTED: u64 = 0x25;
    pub const RELEASED: u64 = 0x26;
    pub const MODIFIED: u64 = 0x27;
    pub const SOURCE: u64 = 0x28;
    pub const TARGET: u64 = 0x29;
    pub const SASL_MECHANISMS: u64 = 0x40;
    pub const SASL_INIT: u64 = 0x41;
    pub const SASL_CHALLENGE: u64 = 0x42;
    pub const SASL_RESPONSE: u64 = 0x43;
    pub const SASL_OUTCOME: u64 = 0x44;
    pub const HEADER: u64 = 0x70;
    pub const DELIVERY_ANNOTATIONS: u64 = 0x71;
    pub const MESSAGE_ANNOTATIONS: u64 = 0x72;
    pub const PROPERTIES: u64 = 0x73;
    pub const APPLICATION_PROPERTIES: u64 = 0x74;
    pub const DATA: u64 = 0x75;
    pub const AMQP_SEQUENCE: u64 = 0x76;
    pub const AMQP_VALUE: u64 = 0x77;
    pub const FOOTER: u64 = 0x78;

    /// Symbolic descriptor names and their numeric codes.
    pub const NAMES: &[(&str, u64)] = &[
        ("amqp:open:list", OPEN),
        ("amqp:begin:list", BEGIN),
        ("amqp:attach:list", ATTACH),
        ("amqp:flow:list", FLOW),
        ("amqp:transfer:list", TRANSFER),
        ("amqp:disposition:list", DISPOSITION),
        ("amqp:detach:list", DETACH),
        ("amqp:end:list", END),
        ("amqp:close:list", CLOSE),
        ("amqp:error:list", ERROR),
        ("amqp:received:list", RECEIVED),
        ("amqp:accepted:list", ACCEPTED),
        ("amqp:rejected:list", REJECTED),
        ("amqp:released:list", RELEASED),
        ("amqp:modified:list", MODIFIED),
        ("amqp:source:list", SOURCE),
        ("amqp:target:list", TARGET),
        ("amqp:sasl-mechanisms:list", SASL_MECHANISMS),
        ("amqp:sasl-init:list", SASL_INIT),
        ("amqp:sasl-challenge:list", SASL_CHALLENGE),
        ("amqp:sasl-response:list", SASL_RESPONSE),
        ("amqp:sasl-outcome:list", SASL_OUTCOME),
        ("amqp:header:list", HEADER),
        ("amqp:delivery-annotations:map", DELIVERY_ANNOTATIONS),
        ("amqp:message-annotations:map", MESSAGE_ANNOTATIONS),
        ("amqp:properties:list", PROPERTIES),
        ("amqp:application-properties:map", APPLICATION_PROPERTIES),
        ("amqp:data:binary", DATA),
        ("amqp:amqp-sequence:list", AMQP_SEQUENCE),
        ("amqp:amqp-value:*", AMQP_VALUE),
        ("amqp:footer:map", FOOTER),
    ];

    /// The numeric code of a symbolic descriptor this codec knows.
    pub fn by_name(name: &str) -> Option<u64> {
        NAMES.iter().find(|(n, _)| *n == name).map(|&(_, c)| c)
    }
}

/// How many bytes follow a format code, by subcategory (§1.2).
#[derive(Clone, Copy)]
enum Layout {
    Fixed(usize),
    /// Variable, compound and array: a size of this many bytes, then `size` bytes.
    Sized(usize),
}

fn layout(c: u8) -> std::result::Result<Layout, ErrorKind> {
    if c & 0x0f == 0x0f {
        // 0x?F codes are followed by an extension byte (§1.2 grammar); none is defined.
        return Err(ErrorKind::Unsupported);
    }
    Ok(match c >> 4 {
        0x4 => Layout::Fixed(0),
        0x5 => Layout::Fixed(1),
        0x6 => Layout::Fixed(2),
        0x7 => Layout::Fixed(4),
        0x8 => Layout::Fixed(8),
        0x9 => Layout::Fixed(16),
        0xa | 0xc | 0xe => Layout::Sized(1),
        0xb | 0xd | 0xf => Layout::Sized(4),
        _ => return Err(ErrorKind::BadCode),
    })
}

/// The length of the data after a (non-described) format code at the front of `rest`.
fn data_len(c: u8, rest: &[u8]) -> std::result::Result<usize, ErrorKind> {
    match layout(c)? {
        Layout::Fixed(n) => Ok(n),
        Layout::Sized(1) => match rest.first() {
            Some(&n) => Ok(1 + usize::from(n)),
            None => Err(ErrorKind::Truncated),
        },
        Layout::Sized(_) => match rest.get(..4) {
            Some(b) => {
                let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_add(4))
                    .ok_or(ErrorKind::SizeMismatch)
            }
            None => Err(ErrorKind::Truncated),
        },
    }
}

/// The smallest number of bytes an element with this constructor takes (for count checks).
fn min_data_len(c: u8) -> usize {
    match layout(c) {
        Ok(Layout::Fixed(n)) => n,
        Ok(Layout::Sized(w)) => w,
        Err(_) => 0,
    }
}

/// Reads the size-or-count prefix of width `w` (1 or 4) at `at` in `data`.
fn prefix(data: &[u8], at: usize, w: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(w)?)?;
    Some(if w == 1 {
        u32::from(b[0])
    } else {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    })
}

fn array<const N: usize>(data: &[u8]) -> Option<[u8; N]> {
    data.get(..N)?.try_into().ok()
}

/// One encoded value, split off but not interpreted: its format code and exactly the bytes
/// that follow it (for a described value, `code` is `0x00` and `data` holds the descriptor and
/// the value). Equality compares the bytes, not where they came from.
#[derive(Clone, Copy, Debug)]
pub struct Raw<'a> {
    code: u8,
    data: &'a [u8],
    /// Offset of `data` in the decoder's input, for errors.
    offset: usize,
    depth: u32,
}

impl PartialEq for Raw<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code && self.data == other.data
    }
}

impl<'a> Raw<'a> {
    pub fn code(&self) -> u8 {
        self.code
    }
    /// The bytes after the format code.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }
    /// Offset of the data in the buffer the decoder was given.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Whether this is the null value (`0x40`).
    pub fn is_null(&self) -> bool {
        self.code == code::NULL
    }

    /// Writes the value back exactly as it was received.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.extend_from_slice(self.data);
    }

    fn err(&self, kind: ErrorKind, field: &'static str) -> CodecError {
        CodecError::new(kind, field, self.offset)
    }

    /// Interprets the value. Compounds and described values stay lazy views.
    pub fn decode(&self, field: &'static str) -> Result<Value<'a>> {
        use code::*;
        let d = self.data;
        let short = || self.err(ErrorKind::Truncated, field);
        let v = match self.code {
            NULL => Value::Null,
            TRUE => Value::Bool(true),
            FALSE => Value::Bool(false),
            BOOLEAN => match d.first() {
                Some(0) => Value::Bool(false),
                Some(1) => Value::Bool(true),
                Some(_) => return Err(self.err(ErrorKind::BadValue, field)),
                None => return Err(short()),
            },
            UBYTE => Value::Ubyte(*d.first().ok_or_else(short)?),
            USHORT => Value::Ushort(u16::from_be_bytes(array(d).ok_or_else(short)?)),
            UINT => Value::Uint(u32::from_be_bytes(array(d).ok_or_else(short)?)),
            SMALLUINT => Value::Uint(u32::from(*d.first().ok_or_else(short)?)),
            UINT0 => Value::Uint(0),
            ULONG => Value::Ulong(u64::from_be_bytes(array(d).ok_or_else(short)?)),
            SMALLULONG => Value::Ulong(u64::from(*d.first().ok_or_else(short)?)),
            ULONG0 => Value::Ulong(0),
            BYTE => Value::Byte(*d.first().ok_or_else(short)? as i8),
            SHORT => Value::Short(i16::from_be_bytes(array(d).ok_or_else(short)?)),
            INT => Value::Int(i32::from_be_bytes(array(d).ok_or_else(short)?)),
            SMALLINT => Value::Int(i32::from(*d.first().ok_or_else(short)? as i8)),
            LONG => Value::Long(i64::from_be_bytes(array(d).ok_or_else(short)?)),
            SMALLLONG => Value::Long(i64::from(*d.first().ok_or_else(short)? as i8)),
            FLOAT => Value::Float(f32::from_be_bytes(array(d).ok_or_else(short)?)),
            DOUBLE => Value::Double(f64::from_be_bytes(array(d).ok_or_else(short)?)),
            DECIMAL32 => Value::Decimal32(array(d).ok_or_else(short)?),
            DECIMAL64 => Value::Decimal64(array(d).ok_or_else(short)?),
            DECIMAL128 => Value::Decimal128(array(d).ok_or_else(short)?),
            CHAR => Value::Char(u32::from_be_bytes(array(d).ok_or_else(short)?)),
            TIMESTAMP => Value::Timestamp(i64::from_be_bytes(array(d).ok_or_else(short)?)),
            UUID => Value::Uuid(array(d).ok_or_else(short)?),
            VBIN8 | STR8 | SYM8 | VBIN32 | STR32 | SYM32 => {
                let w = if self.code >> 4 == 0xa { 1 } else { 4 };
                let bytes = d.get(w..).ok_or_else(short)?;
                match self.code & 0x0f {
                    0x0 => Value::Binary(bytes),
                    0x1 => Value::String(
                        std::str::from_utf8(bytes)
                            .map_err(|_| self.err(ErrorKind::BadValue, field))?,
                    ),
                    _ => {
                        if !bytes.is_ascii() {
                            return Err(self.err(ErrorKind::BadValue, field));
                        }
                        // ASCII is UTF-8; this cannot fail, but no unwrap on input paths.
                        Value::Symbol(
                            std::str::from_utf8(bytes)
                                .map_err(|_| self.err(ErrorKind::BadValue, field))?,
                        )
                    }
                }
            }
            LIST0 | LIST8 | LIST32 => Value::List(Compound::parse(self, field)?),
            MAP8 | MAP32 => Value::Map(Compound::parse(self, field)?),
            ARRAY8 | ARRAY32 => Value::Array(Array::parse(self, field)?),
            DESCRIBED => Value::Described(Described::parse(self, field)?),
            _ => match layout(self.code) {
                // A code of a known subcategory that §1.6 does not define: its size is known,
                // so it is kept as an opaque value (§1.2 allows skipping it).
                Ok(_) => Value::Unknown(*self),
                Err(k) => return Err(self.err(k, field)),
            },
        };
        Ok(v)
    }
}

/// A decoded value. Scalars are by value; strings, binaries and symbols borrow the input;
/// lists, maps, arrays and described values are lazy views over it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// IEEE 754 decimal32 (BID), kept opaque.
    Decimal32([u8; 4]),
    /// IEEE 754 decimal64 (BID), kept opaque.
    Decimal64([u8; 8]),
    /// IEEE 754 decimal128 (BID), kept opaque.
    Decimal128([u8; 16]),
    /// A UTF-32BE code unit, not checked to be a Unicode scalar value.
    Char(u32),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
    Binary(&'a [u8]),
    String(&'a str),
    /// ASCII, checked.
    Symbol(&'a str),
    List(Compound<'a>),
    /// A map: its elements alternate key, value (the count is even).
    Map(Compound<'a>),
    Array(Array<'a>),
    Described(Described<'a>),
    /// A format code §1.6 does not define, in a subcategory whose size rule is known.
    Unknown(Raw<'a>),
}

impl<'a> Value<'a> {
    /// The AMQP type name, for error descriptions and `lior decode`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Ubyte(_) => "ubyte",
            Value::Ushort(_) => "ushort",
            Value::Uint(_) => "uint",
            Value::Ulong(_) => "ulong",
            Value::Byte(_) => "byte",
            Value::Short(_) => "short",
            Value::Int(_) => "int",
            Value::Long(_) => "long",
            Value::Float(_) => "float",
            Value::Double(_) => "double",
            Value::Decimal32(_) => "decimal32",
            Value::Decimal64(_) => "decimal64",
            Value::Decimal128(_) => "decimal128",
            Value::Char(_) => "char",
            Value::Timestamp(_) => "timestamp",
            Value::Uuid(_) => "uuid",
            Value::Binary(_) => "binary",
            Value::String(_) => "string",
            Value::Symbol(_) => "symbol",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Array(_) => "array",
            Value::Described(_) => "described",
            Value::Unknown(_) => "unknown",
        }
    }

    /// Encodes the value: scalars in their smallest encoding, compounds, described values and
    /// unknown codes exactly as they were received.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        use code::*;
        match *self {
            Value::Null => out.push(NULL),
            Value::Bool(b) => put_bool(out, b),
            Value::Ubyte(v) => put_ubyte(out, v),
            Value::Ushort(v) => put_ushort(out, v),
            Value::Uint(v) => put_uint(out, v),
            Value::Ulong(v) => put_ulong(out, v),
            Value::Byte(v) => {
                out.push(BYTE);
                out.push(v as u8);
            }
            Value::Short(v) => {
                out.push(SHORT);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Int(v) => match i8::try_from(v) {
                Ok(b) => out.extend_from_slice(&[SMALLINT, b as u8]),
                Err(_) => {
                    out.push(INT);
                    out.extend_from_slice(&v.to_be_bytes());
                }
            },
            Value::Long(v) => match i8::try_from(v) {
                Ok(b) => out.extend_from_slice(&[SMALLLONG, b as u8]),
                Err(_) => {
                    out.push(LONG);
                    out.extend_from_slice(&v.to_be_bytes());
                }
            },
            Value::Float(v) => {
                out.push(FLOAT);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Double(v) => {
                out.push(DOUBLE);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Decimal32(b) => {
                out.push(DECIMAL32);
                out.extend_from_slice(&b);
            }
            Value::Decimal64(b) => {
                out.push(DECIMAL64);
                out.extend_from_slice(&b);
            }
            Value::Decimal128(b) => {
                out.push(DECIMAL128);
                out.extend_from_slice(&b);
            }
            Value::Char(v) => {
                out.push(CHAR);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Timestamp(v) => put_timestamp(out, v),
            Value::Uuid(b) => put_uuid(out, &b),
            Value::Binary(b) => put_binary(out, b)?,
            Value::String(s) => put_str(out, s)?,
            Value::Symbol(s) => put_sym(out, s)?,
            Value::List(c) | Value::Map(c) => c.encode(out),
            Value::Array(a) => a.encode(out),
            Value::Described(d) => d.encode(out)?,
            Value::Unknown(r) => r.encode(out),
        }
        Ok(())
    }

    /// Walks the whole value, decoding every element of every compound and described value,
    /// so that a value that validates can be walked later without errors. Bounded by
    /// [`MAX_NESTING_DEPTH`] (through the views' depth) and [`MAX_ELEMENTS`].
    pub fn validate(&self, field: &'static str) -> Result<()> {
        match self {
            Value::List(c) | Value::Map(c) => {
                for v in c.iter(field) {
                    v?.validate(field)?;
                }
            }
            Value::Array(a) => {
                for v in a.iter(field) {
                    v?.validate(field)?;
                }
            }
            Value::Described(d) => d.value.decode(field)?.validate(field)?,
            _ => {}
        }
        Ok(())
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::String(s) | Value::Symbol(s) => Some(s),
            _ => None,
        }
    }
}

/// A list or map view (§1.6.22, §1.6.23): the element count and the encoded elements.
#[derive(Clone, Copy, Debug)]
pub struct Compound<'a> {
    code: u8,
    /// Everything after the format code (size, count, elements), for re-encoding.
    data: &'a [u8],
    /// Where the elements start in `data`.
    items_at: usize,
    count: u32,
    offset: usize,
    depth: u32,
}

impl PartialEq for Compound<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.items() == other.items()
    }
}

impl<'a> Compound<'a> {
    fn parse(raw: &Raw<'a>, field: &'static str) -> Result<Self> {
        let data = raw.data;
        let (w, is_map) = match raw.code {
            code::LIST0 => {
                return Ok(Compound {
                    code: raw.code,
                    data,
                    items_at: 0,
                    count: 0,
                    offset: raw.offset,
                    depth: raw.depth,
                })
            }
            code::LIST8 => (1, false),
            code::LIST32 => (4, false),
            code::MAP8 => (1, true),
            _ => (4, true),
        };
        let size = prefix(data, 0, w).ok_or(raw.err(ErrorKind::Truncated, field))?;
        let count = prefix(data, w, w).ok_or(raw.err(ErrorKind::SizeMismatch, field))?;
        if (size as usize) < w {
            return Err(raw.err(ErrorKind::SizeMismatch, field));
        }
        let items = data.len() - 2 * w;
        if count > MAX_ELEMENTS {
            return Err(raw.err(ErrorKind::TooMany, field));
        }
        // Every element takes at least its one-byte constructor.
        if count as usize > items || (is_map && count % 2 != 0) {
            return Err(raw.err(ErrorKind::SizeMismatch, field));
        }
        Ok(Compound {
            code: raw.code,
            data,
            items_at: 2 * w,
            count,
            offset: raw.offset,
            depth: raw.depth,
        })
    }

    /// Number of elements (for a map, keys plus values).
    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The encoded elements.
    pub fn items(&self) -> &'a [u8] {
        self.data.get(self.items_at..).unwrap_or(&[])
    }
    /// Iterates the elements (for a map: key, value, key, value...).
    pub fn iter(&self, field: &'static str) -> Items<'a> {
        Items {
            dec: Decoder::nested(self.items(), self.offset + self.items_at, self.depth + 1),
            left: self.count,
            field,
            done: false,
        }
    }
    /// Iterates a map's entries as (key, value) pairs.
    pub fn entries(&self, field: &'static str) -> Entries<'a> {
        Entries(self.iter(field))
    }
    /// The value of the first entry whose key is the symbol or string `key`.
    pub fn get(&self, key: &str, field: &'static str) -> Result<Option<Value<'a>>> {
        for e in self.entries(field) {
            let (k, v) = e?;
            if k.as_str() == Some(key) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.extend_from_slice(self.data);
    }
}

/// The elements of a [`Compound`]. Yields an error (once, then stops) when the elements
/// overrun the compound's size or leave bytes over after `count` elements.
pub struct Items<'a> {
    dec: Decoder<'a>,
    left: u32,
    field: &'static str,
    done: bool,
}

impl<'a> Items<'a> {
    /// The next element undecoded; `None` at the end.
    pub fn next_raw(&mut self) -> Option<Result<Raw<'a>>> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            if !self.dec.is_empty() {
                return Some(Err(self.dec.err(ErrorKind::SizeMismatch, self.field)));
            }
            return None;
        }
        self.left -= 1;
        let r = self.dec.raw(self.field);
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
    /// Offset of the next element in the decoder's input.
    pub fn offset(&self) -> usize {
        self.dec.offset()
    }
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<Value<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        let field = self.field;
        match self.next_raw()? {
            Ok(r) => {
                let v = r.decode(field);
                if v.is_err() {
                    self.done = true;
                }
                Some(v)
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// A map's entries, as (key, value).
pub struct Entries<'a>(Items<'a>);

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(Value<'a>, Value<'a>)>;
    fn next(&mut self) -> Option<Self::Item> {
        let k = match self.0.next()? {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        match self.0.next() {
            Some(Ok(v)) => Some(Ok((k, v))),
            Some(Err(e)) => Some(Err(e)),
            // Unreachable for a parsed map (its count is even); kept total.
            None => Some(Err(self.0.dec.err(ErrorKind::SizeMismatch, self.0.field))),
        }
    }
}

/// An array view (§1.6.24): `count` elements sharing one constructor.
#[derive(Clone, Copy, Debug)]
pub struct Array<'a> {
    code: u8,
    data: &'a [u8],
    /// The elements' format code (after the descriptor, if any).
    elem_code: u8,
    descriptor: Option<Descriptor<'a>>,
    elems_at: usize,
    count: u32,
    offset: usize,
    depth: u32,
}

impl PartialEq for Array<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count
            && self.elem_code == other.elem_code
            && self.descriptor == other.descriptor
            && self.elements() == other.elements()
    }
}

impl<'a> Array<'a> {
    fn parse(raw: &Raw<'a>, field: &'static str) -> Result<Self> {
        let data = raw.data;
        let w = if raw.code == code::ARRAY8 { 1 } else { 4 };
        let size = prefix(data, 0, w).ok_or(raw.err(ErrorKind::Truncated, field))?;
        let count = prefix(data, w, w).ok_or(raw.err(ErrorKind::SizeMismatch, field))?;
        if (size as usize) < w + 1 {
            return Err(raw.err(ErrorKind::SizeMismatch, field));
        }
        if count > MAX_ELEMENTS {
            return Err(raw.err(ErrorKind::TooMany, field));
        }
        let mut dec = Decoder::nested(
            data.get(2 * w..).unwrap_or(&[]),
            raw.offset + 2 * w,
            raw.depth + 1,
        );
        let mut elem_code = dec.u8(field)?;
        let mut descriptor = None;
        if elem_code == code::DESCRIBED {
            let d = dec.raw(field)?;
            descriptor = Some(Descriptor::from_raw(&d, field)?);
            elem_code = dec.u8(field)?;
            if elem_code == code::DESCRIBED {
                return Err(dec.err(ErrorKind::Unsupported, field));
            }
        }
        layout(elem_code).map_err(|k| dec.err(k, field))?;
        let elems_at = 2 * w + dec.pos;
        let room = data.len().saturating_sub(elems_at);
        let min = min_data_len(elem_code);
        if (count as usize).saturating_mul(min) > room {
            return Err(raw.err(ErrorKind::SizeMismatch, field));
        }
        Ok(Array {
            code: raw.code,
            data,
            elem_code,
            descriptor,
            elems_at,
            count,
            offset: raw.offset,
            depth: raw.depth,
        })
    }

    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// The elements' format code.
    pub fn element_code(&self) -> u8 {
        self.elem_code
    }
    pub fn descriptor(&self) -> Option<Descriptor<'a>> {
        self.descriptor
    }
    fn elements(&self) -> &'a [u8] {
        self.data.get(self.elems_at..).unwrap_or(&[])
    }
    pub fn iter(&self, field: &'static str) -> ArrayItems<'a> {
        ArrayItems {
            arr: *self,
            pos: 0,
            left: self.count,
            field,
            done: false,
        }
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.code);
        out.extend_from_slice(self.data);
    }
}

/// The elements of an [`Array`]; like [`Items`], errors once and stops on a size mismatch.
pub struct ArrayItems<'a> {
    arr: Array<'a>,
    pos: usize,
    left: u32,
    field: &'static str,
    done: bool,
}

impl<'a> Iterator for ArrayItems<'a> {
    type Item = Result<Value<'a>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let elems = self.arr.elements();
        let offset = self.arr.offset + self.arr.elems_at + self.pos;
        let rest = elems.get(self.pos..).unwrap_or(&[]);
        if self.left == 0 {
            self.done = true;
            if !rest.is_empty() {
                return Some(Err(CodecError::new(
                    ErrorKind::SizeMismatch,
                    self.field,
                    offset,
                )));
            }
            return None;
        }
        self.left -= 1;
        let c = self.arr.elem_code;
        let len = match data_len(c, rest) {
            Ok(n) if n <= rest.len() => Ok(n),
            Ok(_) => Err(ErrorKind::Truncated),
            Err(k) => Err(k),
        };
        let len = match len {
            Ok(n) => n,
            Err(k) => {
                self.done = true;
                return Some(Err(CodecError::new(k, self.field, offset)));
            }
        };
        self.pos += len;
        let raw = Raw {
            code: c,
            data: &rest[..len],
            offset,
            depth: self.arr.depth + 1,
        };
        let v = match self.arr.descriptor {
            Some(descriptor) => Ok(Value::Described(Described {
                descriptor,
                value: raw,
            })),
            None => raw.decode(self.field),
        };
        if v.is_err() {
            self.done = true;
        }
        Some(v)
    }
}

/// A descriptor (§1.3): numeric (domain:code as one ulong) or symbolic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor<'a> {
    Code(u64),
    Symbol(&'a str),
}

impl<'a> Descriptor<'a> {
    fn from_raw(raw: &Raw<'a>, field: &'static str) -> Result<Self> {
        match raw.decode(field)? {
            Value::Ulong(c) => Ok(Descriptor::Code(c)),
            Value::Symbol(s) => Ok(Descriptor::Symbol(s)),
            // §1.3: other descriptor values are reserved.
            _ => Err(raw.err(ErrorKind::Unsupported, field)),
        }
    }
    /// The numeric code, also for a symbolic descriptor this codec knows.
    pub fn code(&self) -> Option<u64> {
        match *self {
            Descriptor::Code(c) => Some(c),
            Descriptor::Symbol(s) => descriptor::by_name(s),
        }
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match *self {
            Descriptor::Code(c) => put_ulong(out, c),
            Descriptor::Symbol(s) => put_sym(out, s)?,
        }
        Ok(())
    }
}

/// A described value (§1.3): the descriptor, and the value still undecoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Described<'a> {
    pub descriptor: Descriptor<'a>,
    pub value: Raw<'a>,
}

impl<'a> Described<'a> {
    fn parse(raw: &Raw<'a>, field: &'static str) -> Result<Self> {
        let mut dec = Decoder::nested(raw.data, raw.offset, raw.depth + 1);
        let d = dec.raw(field)?;
        let descriptor = Descriptor::from_raw(&d, field)?;
        let value = dec.raw(field)?;
        if !dec.is_empty() {
            return Err(dec.err(ErrorKind::SizeMismatch, field));
        }
        Ok(Described { descriptor, value })
    }
    /// The descriptor's numeric code (see [`Descriptor::code`]).
    pub fn code(&self) -> Option<u64> {
        self.descriptor.code()
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(code::DESCRIBED);
        self.descriptor.encode(out)?;
        self.value.encode(out);
        Ok(())
    }
}

/// Splits encoded values off the front of a byte slice.
#[derive(Clone, Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the caller's input, for errors.
    base: usize,
    depth: u32,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Decoder::nested(buf, 0, 0)
    }
    /// A decoder whose errors report offsets from `base` (where `buf` starts in the caller's
    /// input).
    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Decoder::nested(buf, base, 0)
    }
    fn nested(buf: &'a [u8], base: usize, depth: u32) -> Self {
        Decoder {
            buf,
            pos: 0,
            base,
            depth,
        }
    }
    /// Offset of the next byte in the caller's input.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }
    /// The bytes not consumed yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn err(&self, kind: ErrorKind, field: &'static str) -> CodecError {
        CodecError::new(kind, field, self.offset())
    }
    fn u8(&mut self, field: &'static str) -> Result<u8> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(self.err(ErrorKind::Truncated, field))?;
        self.pos += 1;
        Ok(b)
    }

    /// Splits the next value off without interpreting it (its size is checked).
    pub fn raw(&mut self, field: &'static str) -> Result<Raw<'a>> {
        if self.depth > MAX_NESTING_DEPTH {
            return Err(self.err(ErrorKind::TooDeep, field));
        }
        let c = self.u8(field)?;
        let start = self.pos;
        if c == code::DESCRIBED {
            let mut inner = Decoder::nested(self.remaining(), self.offset(), self.depth + 1);
            inner.raw(field)?;
            inner.raw(field)?;
            self.pos += inner.pos;
        } else {
            let rest = self.remaining();
            let len = data_len(c, rest).map_err(|k| self.err(k, field))?;
            if len > rest.len() {
                return Err(self.err(ErrorKind::Truncated, field));
            }
            self.pos += len;
        }
        Ok(Raw {
            code: c,
            data: &self.buf[start..self.pos],
            offset: self.base + start,
            depth: self.depth,
        })
    }

    /// Decodes the next value (compounds stay lazy).
    pub fn value(&mut self, field: &'static str) -> Result<Value<'a>> {
        self.raw(field)?.decode(field)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding: smallest encodings, into a caller's Vec.

pub fn put_null(out: &mut Vec<u8>) {
    out.push(code::NULL);
}
pub fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { code::TRUE } else { code::FALSE });
}
pub fn put_ubyte(out: &mut Vec<u8>, v: u8) {
    out.extend_from_slice(&[code::UBYTE, v]);
}
pub fn put_ushort(out: &mut Vec<u8>, v: u16) {
    out.push(code::USHORT);
    out.extend_from_slice(&v.to_be_bytes());
}
pub fn put_uint(out: &mut Vec<u8>, v: u32) {
    match v {
        0 => out.push(code::UINT0),
        1..=255 => out.extend_from_slice(&[code::SMALLUINT, v as u8]),
        _ => {
            out.push(code::UINT);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}
pub fn put_ulong(out: &mut Vec<u8>, v: u64) {
    match v {
        0 => out.push(code::ULONG0),
        1..=255 => out.extend_from_slice(&[code::SMALLULONG, v as u8]),
        _ => {
            out.push(code::ULONG);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}
pub fn put_timestamp(out: &mut Vec<u8>, ms: i64) {
    out.push(code::TIMESTAMP);
    out.extend_from_slice(&ms.to_be_bytes());
}
pub fn put_uuid(out: &mut Vec<u8>, v: &[u8; 16]) {
    out.push(code::UUID);
    out.extend_from_slice(v);
}
fn put_variable(out: &mut Vec<u8>, c8: u8, c32: u8, b: &[u8]) -> Result<()> {
    if let Ok(n) = u8::try_from(b.len()) {
        out.extend_from_slice(&[c8, n]);
    } else {
        let n = u32::try_from(b.len())
            .map_err(|_| CodecError::new(ErrorKind::TooMany, "variable-width value", out.len()))?;
        out.push(c32);
        out.extend_from_slice(&n.to_be_bytes());
    }
    out.extend_from_slice(b);
    Ok(())
}
pub fn put_binary(out: &mut Vec<u8>, b: &[u8]) -> Result<()> {
    put_variable(out, code::VBIN8, code::VBIN32, b)
}
pub fn put_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    put_variable(out, code::STR8, code::STR32, s.as_bytes())
}
/// Encodes a symbol; refuses non-ASCII (a peer would reject it).
pub fn put_sym(out: &mut Vec<u8>, s: &str) -> Result<()> {
    if !s.is_ascii() {
        return Err(CodecError::new(ErrorKind::BadValue, "symbol", out.len()));
    }
    put_variable(out, code::SYM8, code::SYM32, s.as_bytes())
}
/// Writes the constructor of a described value with a numeric descriptor: `0x00`, the code.
pub fn put_descriptor(out: &mut Vec<u8>, code: u64) {
    out.push(code::DESCRIBED);
    put_ulong(out, code);
}
/// A `symbol multiple="true"` field (§1.4 "multiple"): one symbol as itself, several as an
/// array of symbols, none as null.
pub fn put_symbols(out: &mut Vec<u8>, syms: &[&str]) -> Result<()> {
    match syms {
        [] => put_null(out),
        [one] => put_sym(out, one)?,
        _ => {
            let wide = syms.iter().any(|s| s.len() > 255);
            let start = out.len();
            out.push(code::ARRAY32);
            out.extend_from_slice(&[0; 8]);
            out.push(if wide { code::SYM32 } else { code::SYM8 });
            for s in syms {
                if !s.is_ascii() {
                    return Err(CodecError::new(ErrorKind::BadValue, "symbol", out.len()));
                }
                if wide {
                    let n = u32::try_from(s.len())
                        .map_err(|_| CodecError::new(ErrorKind::TooMany, "symbol", out.len()))?;
                    out.extend_from_slice(&n.to_be_bytes());
                } else {
                    out.push(s.len() as u8);
                }
                out.extend_from_slice(s.as_bytes());
            }
            let count = u32::try_from(syms.len()).ok();
            let size = u32::try_from(out.len() - start - 5).ok();
            match (size, count) {
                (Some(size), Some(count)) => {
                    out[start + 1..start + 5].copy_from_slice(&size.to_be_bytes());
                    out[start + 5..start + 9].copy_from_slice(&count.to_be_bytes());
                    shrink_compound(out, start, code::ARRAY8, size, count);
                }
                _ => return Err(CodecError::new(ErrorKind::TooMany, "symbol array", start)),
            }
        }
    }
    Ok(())
}

/// Rewrites a 32-bit compound at `start` (code, size, count, body) in its 8-bit form when
/// both fit.
fn shrink_compound(out: &mut Vec<u8>, start: usize, code8: u8, size32: u32, count: u32) {
    // size8 counts one count byte instead of four.
    if size32 - 3 <= 255 && count <= 255 {
        out[start] = code8;
        out[start + 1] = (size32 - 3) as u8;
        out[start + 2] = count as u8;
        out.copy_within(start + 9.., start + 3);
        out.truncate(out.len() - 6);
    }
}

/// Encodes a list (the fields of a composite type, §1.5) field by field, dropping trailing
/// nulls and choosing list0, list8 or list32 at [`ListWriter::finish`].
pub struct ListWriter {
    start: usize,
    count: u32,
    kept_len: usize,
    kept_count: u32,
}

impl ListWriter {
    pub fn begin(out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.push(code::LIST32);
        out.extend_from_slice(&[0; 8]);
        ListWriter {
            start,
            count: 0,
            kept_len: out.len(),
            kept_count: 0,
        }
    }
    fn mark(&mut self, out: &[u8], null: bool) {
        self.count += 1;
        if !null {
            self.kept_len = out.len();
            self.kept_count = self.count;
        }
    }
    pub fn null(&mut self, out: &mut Vec<u8>) {
        put_null(out);
        self.mark(out, true);
    }
    pub fn bool(&mut self, out: &mut Vec<u8>, v: bool) {
        put_bool(out, v);
        self.mark(out, false);
    }
    /// A boolean field with a default: written as null when it equals the default.
    pub fn bool_default(&mut self, out: &mut Vec<u8>, v: bool, default: bool) {
        if v == default {
            self.null(out)
        } else {
            self.bool(out, v)
        }
    }
    pub fn opt_bool(&mut self, out: &mut Vec<u8>, v: Option<bool>) {
        match v {
            Some(v) => self.bool(out, v),
            None => self.null(out),
        }
    }
    pub fn ubyte(&mut self, out: &mut Vec<u8>, v: u8) {
        put_ubyte(out, v);
        self.mark(out, false);
    }
    pub fn opt_ubyte(&mut self, out: &mut Vec<u8>, v: Option<u8>) {
        match v {
            Some(v) => self.ubyte(out, v),
            None => self.null(out),
        }
    }
    pub fn ushort(&mut self, out: &mut Vec<u8>, v: u16) {
        put_ushort(out, v);
        self.mark(out, false);
    }
    pub fn opt_ushort(&mut self, out: &mut Vec<u8>, v: Option<u16>) {
        match v {
            Some(v) => self.ushort(out, v),
            None => self.null(out),
        }
    }
    pub fn uint(&mut self, out: &mut Vec<u8>, v: u32) {
        put_uint(out, v);
        self.mark(out, false);
    }
    pub fn opt_uint(&mut self, out: &mut Vec<u8>, v: Option<u32>) {
        match v {
            Some(v) => self.uint(out, v),
            None => self.null(out),
        }
    }
    pub fn ulong(&mut self, out: &mut Vec<u8>, v: u64) {
        put_ulong(out, v);
        self.mark(out, false);
    }
    pub fn opt_ulong(&mut self, out: &mut Vec<u8>, v: Option<u64>) {
        match v {
            Some(v) => self.ulong(out, v),
            None => self.null(out),
        }
    }
    pub fn opt_timestamp(&mut self, out: &mut Vec<u8>, v: Option<i64>) {
        match v {
            Some(v) => {
                put_timestamp(out, v);
                self.mark(out, false);
            }
            None => self.null(out),
        }
    }
    pub fn binary(&mut self, out: &mut Vec<u8>, v: &[u8]) -> Result<()> {
        put_binary(out, v)?;
        self.mark(out, false);
        Ok(())
    }
    pub fn opt_binary(&mut self, out: &mut Vec<u8>, v: Option<&[u8]>) -> Result<()> {
        match v {
            Some(v) => self.binary(out, v),
            None => {
                self.null(out);
                Ok(())
            }
        }
    }
    pub fn str(&mut self, out: &mut Vec<u8>, v: &str) -> Result<()> {
        put_str(out, v)?;
        self.mark(out, false);
        Ok(())
    }
    pub fn opt_str(&mut self, out: &mut Vec<u8>, v: Option<&str>) -> Result<()> {
        match v {
            Some(v) => self.str(out, v),
            None => {
                self.null(out);
                Ok(())
            }
        }
    }
    pub fn sym(&mut self, out: &mut Vec<u8>, v: &str) -> Result<()> {
        put_sym(out, v)?;
        self.mark(out, false);
        Ok(())
    }
    pub fn opt_sym(&mut self, out: &mut Vec<u8>, v: Option<&str>) -> Result<()> {
        match v {
            Some(v) => self.sym(out, v),
            None => {
                self.null(out);
                Ok(())
            }
        }
    }
    /// Any value (a null value counts as null).
    pub fn value(&mut self, out: &mut Vec<u8>, v: &Value<'_>) -> Result<()> {
        v.encode(out)?;
        self.mark(out, matches!(v, Value::Null));
        Ok(())
    }
    pub fn opt_value(&mut self, out: &mut Vec<u8>, v: Option<&Value<'_>>) -> Result<()> {
        match v {
            Some(v) => self.value(out, v),
            None => {
                self.null(out);
                Ok(())
            }
        }
    }
    /// A field written by `f` (never null).
    pub fn with(
        &mut self,
        out: &mut Vec<u8>,
        f: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        f(out)?;
        self.mark(out, false);
        Ok(())
    }
    /// Closes the list: drops trailing nulls and picks the smallest list encoding.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<()> {
        out.truncate(self.kept_len);
        let count = self.kept_count;
        if count == 0 {
            out.truncate(self.start);
            out.push(code::LIST0);
            return Ok(());
        }
        let size = u32::try_from(out.len() - self.start - 5)
            .map_err(|_| CodecError::new(ErrorKind::TooMany, "list", self.start))?;
        let s = self.start;
        out[s + 1..s + 5].copy_from_slice(&size.to_be_bytes());
        out[s + 5..s + 9].copy_from_slice(&count.to_be_bytes());
        shrink_compound(out, s, code::LIST8, size, count);
        Ok(())
    }
}

/// Encodes a map entry by entry, choosing map8 or map32 at [`MapWriter::finish`].
pub struct MapWriter {
    start: usize,
    count: u32,
}

impl MapWriter {
    pub fn begin(out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.push(code::MAP32);
        out.extend_from_slice(&[0; 8]);
        MapWriter { start, count: 0 }
    }
    pub fn entry(&mut self, out: &mut Vec<u8>, k: &Value<'_>, v: &Value<'_>) -> Result<()> {
        k.encode(out)?;
        v.encode(out)?;
        self.count = self.count.checked_add(2).ok_or(CodecError::new(
            ErrorKind::TooMany,
            "map",
            self.start,
        ))?;
        Ok(())
    }
    pub fn finish(self, out: &mut Vec<u8>) -> Result<()> {
        let size = u32::try_from(out.len() - self.start - 5)
            .map_err(|_| CodecError::new(ErrorKind::TooMany, "map", self.start))?;
        let s = self.start;
        out[s + 1..s + 5].copy_from_slice(&size.to_be_bytes());
        out[s + 5..s + 9].copy_from_slice(&self.count.to_be_bytes());
        shrink_compound(out, s, code::MAP8, size, self.count);
        Ok(())
    }
}

/// Reads the fields of a composite type's list one by one, with the typed accessors the
/// performatives need. Absent trailing fields read as null (§1.5); extra fields are ignored.
pub struct Fields<'a> {
    items: Items<'a>,
    /// Offset of the field last read, for errors.
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn new(list: &Compound<'a>, field: &'static str) -> Self {
        let items = list.iter(field);
        let at = items.offset();
        Fields { items, at }
    }
    /// Reads the fields of the described list in `value` (the `value` of a [`Described`]).
    pub fn of(value: &Raw<'a>, field: &'static str) -> Result<Self> {
        match value.decode(field)? {
            Value::List(l) => Ok(Fields::new(&l, field)),
            _ => Err(value.err(ErrorKind::BadCode, field)),
        }
    }
    fn err(&self, kind: ErrorKind, field: &'static str) -> CodecError {
        CodecError::new(kind, field, self.at)
    }
    /// Offset of the next field in the decoder's input.
    pub fn offset(&self) -> usize {
        self.items.offset()
    }
    /// The next field undecoded; `None` when absent or null.
    pub fn raw(&mut self, field: &'static str) -> Result<Option<Raw<'a>>> {
        self.at = self.items.offset();
        match self.items.next_raw() {
            None => Ok(None),
            Some(Err(mut e)) => {
                e.field = field;
                Err(e)
            }
            Some(Ok(r)) if r.is_null() => Ok(None),
            Some(Ok(r)) => Ok(Some(r)),
        }
    }
    /// The next field decoded; `None` when absent or null.
    pub fn value(&mut self, field: &'static str) -> Result<Option<Value<'a>>> {
        match self.raw(field)? {
            None => Ok(None),
            Some(r) => r.decode(field).map(Some),
        }
    }
    fn typed<T>(
        &mut self,
        field: &'static str,
        f: impl FnOnce(Value<'a>) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.value(field)? {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or(self.err(ErrorKind::BadCode, field)),
        }
    }
    /// Turns an absent mandatory field into [`ErrorKind::Missing`].
    pub fn required<T>(&self, v: Option<T>, field: &'static str) -> Result<T> {
        v.ok_or(self.err(ErrorKind::Missing, field))
    }
    /// A mandatory uint field.
    pub fn required_uint(&mut self, field: &'static str) -> Result<u32> {
        let v = self.uint(field)?;
        self.required(v, field)
    }
    pub fn bool(&mut self, field: &'static str) -> Result<Option<bool>> {
        self.typed(field, |v| match v {
            Value::Bool(b) => Some(b),
            _ => None,
        })
    }
    pub fn ubyte(&mut self, field: &'static str) -> Result<Option<u8>> {
        self.typed(field, |v| match v {
            Value::Ubyte(b) => Some(b),
            _ => None,
        })
    }
    pub fn ushort(&mut self, field: &'static str) -> Result<Option<u16>> {
        self.typed(field, |v| match v {
            Value::Ushort(b) => Some(b),
            _ => None,
        })
    }
    pub fn uint(&mut self, field: &'static str) -> Result<Option<u32>> {
        self.typed(field, |v| match v {
            Value::Uint(b) => Some(b),
            _ => None,
        })
    }
    pub fn ulong(&mut self, field: &'static str) -> Result<Option<u64>> {
        self.typed(field, |v| match v {
            Value::Ulong(b) => Some(b),
            _ => None,
        })
    }
    pub fn timestamp(&mut self, field: &'static str) -> Result<Option<i64>> {
        self.typed(field, |v| match v {
            Value::Timestamp(b) => Some(b),
            _ => None,
        })
    }
    pub fn binary(&mut self, field: &'static str) -> Result<Option<&'a [u8]>> {
        self.typed(field, |v| match v {
            Value::Binary(b) => Some(b),
            _ => None,
        })
    }
    pub fn string(&mut self, field: &'static str) -> Result<Option<&'a str>> {
        self.typed(field, |v| match v {
            Value::String(b) => Some(b),
            _ => None,
        })
    }
    pub fn symbol(&mut self, field: &'static str) -> Result<Option<&'a str>> {
        self.typed(field, |v| match v {
            Value::Symbol(b) => Some(b),
            _ => None,
        })
    }
    /// A map field (`fields`, `filter-set`, annotations...).
    pub fn map(&mut self, field: &'static str) -> Result<Option<Compound<'a>>> {
        self.typed(field, |v| match v {
            Value::Map(m) => Some(m),
            _ => None,
        })
    }
    /// A `symbol multiple="true"` field: one symbol or an array of symbols.
    pub fn symbols(&mut self, field: &'static str) -> Result<Symbols<'a>> {
        let at = self.items.offset();
        match self.value(field)? {
            None => Ok(Symbols::None),
            Some(Value::Symbol(s)) => Ok(Symbols::One(s)),
            Some(Value::Array(a))
                if matches!(a.element_code(), code::SYM8 | code::SYM32)
                    && a.descriptor.is_none() =>
            {
                Ok(Symbols::Array(a))
            }
            Some(_) => Err(CodecError::new(ErrorKind::BadCode, field, at)),
        }
    }
    /// A described field (`source`, `target`, delivery state, error...).
    pub fn described(&mut self, field: &'static str) -> Result<Option<Described<'a>>> {
        self.typed(field, |v| match v {
            Value::Described(d) => Some(d),
            _ => None,
        })
    }
}

/// A `symbol multiple="true"` field: absent, one symbol, an array view (as received), or a
/// slice the caller provides for encoding.
#[derive(Clone, Copy, Debug, Default)]
pub enum Symbols<'a> {
    #[default]
    None,
    One(&'a str),
    Array(Array<'a>),
    Slice(&'a [&'a str]),
}

impl<'a> Symbols<'a> {
    pub fn is_empty(&self) -> bool {
        match self {
            Symbols::None => true,
            Symbols::One(_) => false,
            Symbols::Array(a) => a.is_empty(),
            Symbols::Slice(s) => s.is_empty(),
        }
    }
    /// Calls `f` with each symbol, in order; stops at the first element that is not one.
    pub fn for_each(&self, mut f: impl FnMut(&'a str)) -> Result<()> {
        match *self {
            Symbols::None => {}
            Symbols::One(s) => f(s),
            Symbols::Array(a) => {
                for v in a.iter("symbol array") {
                    if let Value::Symbol(s) = v? {
                        f(s);
                    }
                }
            }
            Symbols::Slice(s) => s.iter().for_each(|s| f(s)),
        }
        Ok(())
    }
    /// Whether `sym` is one of the symbols.
    pub fn contains(&self, sym: &str) -> bool {
        let mut found = false;
        let _ = self.for_each(|s| found |= s == sym);
        found
    }
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match *self {
            Symbols::None => put_null(out),
            Symbols::One(s) => put_sym(out, s)?,
            Symbols::Array(a) => a.encode(out),
            Symbols::Slice(s) => put_symbols(out, s)?,
        }
        Ok(())
    }
    /// As a list field of a composite (null when empty).
    pub fn field(&self, w: &mut ListWriter, out: &mut Vec<u8>) -> Result<()> {
        if self.is_empty() {
            w.null(out);
            Ok(())
        } else {
            w.with(out, |out| self.encode(out))
        }
    }
}

/// Symbols compare by their sequence, whatever their encoding.
impl PartialEq for Symbols<'_> {
    fn eq(&self, other: &Self) -> bool {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let ra = self.for_each(|s| a.push(s));
        let rb = other.for_each(|s| b.push(s));
        ra.is_ok() && rb.is_ok() && a == b
    }
}
