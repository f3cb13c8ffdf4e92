//! SASL negotiation (OASIS AMQP 1.0 Part 5 §5.3): the SASL frame bodies (§5.3.3) and the
//! initial responses of the two mechanisms lior accepts, ANONYMOUS (RFC 4505) and PLAIN
//! (RFC 4616).
//!
//! The exchange, after both sides sent `AMQP 3 1 0 0`: the server sends sasl-mechanisms, the
//! client sasl-init (mechanism and initial response), optionally challenge/response rounds,
//! and the server sasl-outcome. Then both sides start over with `AMQP 0 1 0 0`.

use super::types::{descriptor as d, put_descriptor, Decoder, Fields, ListWriter, Symbols, Value};
use super::{CodecError, ErrorKind, Result};

pub const ANONYMOUS: &str = "ANONYMOUS";
pub const PLAIN: &str = "PLAIN";

/// sasl-code (§5.3.3.6).
pub mod code {
    pub const OK: u8 = 0;
    /// Authentication failed (bad credentials).
    pub const AUTH: u8 = 1;
    /// A system error.
    pub const SYS: u8 = 2;
    /// A permanent system error.
    pub const SYS_PERM: u8 = 3;
    /// A transient system error.
    pub const SYS_TEMP: u8 = 4;
}

/// sasl-init (§5.3.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaslInit<'a> {
    pub mechanism: &'a str,
    pub initial_response: Option<&'a [u8]>,
    pub hostname: Option<&'a str>,
}

/// sasl-outcome (§5.3.3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaslOutcome<'a> {
    /// [`code`].
    pub code: u8,
    pub additional_data: Option<&'a [u8]>,
}

/// One SASL frame body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SaslFrame<'a> {
    /// sasl-mechanisms (§5.3.3.1): what the server offers.
    Mechanisms(Symbols<'a>),
    Init(SaslInit<'a>),
    /// sasl-challenge (§5.3.3.3).
    Challenge(&'a [u8]),
    /// sasl-response (§5.3.3.4).
    Response(&'a [u8]),
    Outcome(SaslOutcome<'a>),
}

impl<'a> SaslFrame<'a> {
    pub fn decode(body: &'a [u8]) -> Result<Self> {
        Self::decode_at(body, 0)
    }

    /// Decodes a SASL frame body (error offsets counted from `base`). Bytes after the
    /// described list are an error: SASL frames carry no payload.
    pub fn decode_at(body: &'a [u8], base: usize) -> Result<Self> {
        let mut dec = Decoder::with_base(body, base);
        let dv = match dec.value("sasl frame")? {
            Value::Described(dv) => dv,
            _ => return Err(CodecError::new(ErrorKind::BadCode, "sasl frame", base)),
        };
        if !dec.is_empty() {
            return Err(CodecError::new(
                ErrorKind::SizeMismatch,
                "sasl frame",
                dec.offset(),
            ));
        }
        let v = &dv.value;
        Ok(match dv.code() {
            Some(d::SASL_MECHANISMS) => {
                let mut f = Fields::of(v, "sasl-mechanisms")?;
                let m = f.symbols("sasl-mechanisms.sasl-server-mechanisms")?;
                if m.is_empty() {
                    return Err(CodecError::new(
                        ErrorKind::Missing,
                        "sasl-mechanisms.sasl-server-mechanisms",
                        v.offset(),
                    ));
                }
                SaslFrame::Mechanisms(m)
            }
            Some(d::SASL_INIT) => {
                let mut f = Fields::of(v, "sasl-init")?;
                let m = f.symbol("sasl-init.mechanism")?;
                SaslFrame::Init(SaslInit {
                    mechanism: f.required(m, "sasl-init.mechanism")?,
                    initial_response: f.binary("sasl-init.initial-response")?,
                    hostname: f.string("sasl-init.hostname")?,
                })
            }
            Some(d::SASL_CHALLENGE) => {
                let mut f = Fields::of(v, "sasl-challenge")?;
                let c = f.binary("sasl-challenge.challenge")?;
                SaslFrame::Challenge(f.required(c, "sasl-challenge.challenge")?)
            }
            Some(d::SASL_RESPONSE) => {
                let mut f = Fields::of(v, "sasl-response")?;
                let c = f.binary("sasl-response.response")?;
                SaslFrame::Response(f.required(c, "sasl-response.response")?)
            }
            Some(d::SASL_OUTCOME) => {
                let mut f = Fields::of(v, "sasl-outcome")?;
                let c = f.ubyte("sasl-outcome.code")?;
                SaslFrame::Outcome(SaslOutcome {
                    code: f.required(c, "sasl-outcome.code")?,
                    additional_data: f.binary("sasl-outcome.additional-data")?,
                })
            }
            _ => {
                return Err(CodecError::new(
                    ErrorKind::BadValue,
                    "sasl frame descriptor",
                    base,
                ))
            }
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            SaslFrame::Mechanisms(m) => {
                put_descriptor(out, d::SASL_MECHANISMS);
                let mut w = ListWriter::begin(out);
                w.with(out, |out| m.encode(out))?;
                w.finish(out)
            }
            SaslFrame::Init(i) => {
                put_descriptor(out, d::SASL_INIT);
                let mut w = ListWriter::begin(out);
                w.sym(out, i.mechanism)?;
                w.opt_binary(out, i.initial_response)?;
                w.opt_str(out, i.hostname)?;
                w.finish(out)
            }
            SaslFrame::Challenge(c) => {
                put_descriptor(out, d::SASL_CHALLENGE);
                let mut w = ListWriter::begin(out);
                w.binary(out, c)?;
                w.finish(out)
            }
            SaslFrame::Response(c) => {
                put_descriptor(out, d::SASL_RESPONSE);
                let mut w = ListWriter::begin(out);
                w.binary(out, c)?;
                w.finish(out)
            }
            SaslFrame::Outcome(o) => {
                put_descriptor(out, d::SASL_OUTCOME);
                let mut w = ListWriter::begin(out);
                w.ubyte(out, o.code);
                w.opt_binary(out, o.additional_data)?;
                w.finish(out)
            }
        }
    }
}

/// What a client's sasl-init says about who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslCredentials<'a> {
    /// ANONYMOUS (RFC 4505): an optional trace string (an email address or token).
    Anonymous { trace: Option<&'a str> },
    /// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`.
    Plain {
        /// Who to act as; `None` (empty) means the authenticated user itself.
        authzid: Option<&'a str>,
        authcid: &'a str,
        password: &'a str,
    },
}

/// Longest authcid, authzid and password PLAIN accepts (RFC 4616 §2: 255 octets each).
pub const MAX_PLAIN_FIELD: usize = 255;

/// Parses the initial response of a sasl-init for ANONYMOUS or PLAIN. Other mechanisms are
/// [`ErrorKind::Unsupported`] (answer with sasl-outcome code [`code::AUTH`]).
pub fn parse_initial_response<'a>(init: &SaslInit<'a>) -> Result<SaslCredentials<'a>> {
    let resp = init.initial_response.unwrap_or(&[]);
    let bad = |kind| CodecError::new(kind, "sasl-init.initial-response", 0);
    if init.mechanism == ANONYMOUS {
        let trace = if resp.is_empty() {
            None
        } else {
            // RFC 4505 §2: at most 255 UTF-8 characters.
            let s = std::str::from_utf8(resp).map_err(|_| bad(ErrorKind::BadValue))?;
            if s.chars().count() > 255 {
                return Err(bad(ErrorKind::TooMany));
            }
            Some(s)
        };
        return Ok(SaslCredentials::Anonymous { trace });
    }
    if init.mechanism != PLAIN {
        return Err(CodecError::new(
            ErrorKind::Unsupported,
            "sasl-init.mechanism",
            0,
        ));
    }
    let mut parts = resp.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(ErrorKind::BadValue));
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(bad(ErrorKind::Missing));
    }
    if [authzid, authcid, password]
        .iter()
        .any(|p| p.len() > MAX_PLAIN_FIELD)
    {
        return Err(bad(ErrorKind::TooMany));
    }
    let utf8 = |b| std::str::from_utf8(b).map_err(|_| bad(ErrorKind::BadValue));
    Ok(SaslCredentials::Plain {
        authzid: if authzid.is_empty() {
            None
        } else {
            Some(utf8(authzid)?)
        },
        authcid: utf8(authcid)?,
        password: utf8(password)?,
    })
}
