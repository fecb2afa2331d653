//! Whole messages: forwarding header, contents (code + body) and security block
//! (proto/SPEC.md section 2.5).

use crate::body::Body;
use crate::error::ParseError;
use crate::header::{parse_header, Header};
use crate::pb;
use crate::write::OwnedHeader;
use prost::Message as _;

/// The parts of a received message after the forwarding header, still undecoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contents<'a> {
    pub code: u16,
    pub body: &'a [u8],
    /// Encoded [`pb::SecurityBlock`], empty for unsigned messages.
    pub security: &'a [u8],
}

/// Splits the bytes after the header into code, body and security block.
pub fn split_contents<'a>(header: &Header<'_>, msg: &'a [u8]) -> Result<Contents<'a>, ParseError> {
    let rest = msg
        .get(header.header_len()..)
        .ok_or(ParseError::BadContents)?;
    if rest.len() < 10 {
        return Err(ParseError::BadContents);
    }
    let code = u16::from_be_bytes([rest[0], rest[1]]);
    let body_len = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
    let rest = &rest[6..];
    if body_len > rest.len() - 4 {
        return Err(ParseError::BadContents);
    }
    let (body, rest) = rest.split_at(body_len);
    let sec_len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let security = &rest[4..];
    if sec_len != security.len() {
        return Err(ParseError::BadSecurityBlock(sec_len));
    }
    Ok(Contents {
        code,
        body,
        security,
    })
}

/// A whole message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub header: OwnedHeader,
    pub body: Body,
    pub security: Option<pb::SecurityBlock>,
}

impl Message {
    /// Encodes the message. Fails when a limit of the protocol would be broken.
    pub fn encode(&self) -> Result<Vec<u8>, ParseError> {
        let body = self.body.encode_to_vec();
        let sec = self
            .security
            .as_ref()
            .map(|s| s.encode_to_vec())
            .unwrap_or_default();
        encode_parts(&self.header, self.body.code(), &body, &sec)
    }

    /// Decodes a whole message (header, body and security block).
    pub fn decode(msg: &[u8]) -> Result<Message, ParseError> {
        let h = parse_header(msg)?;
        let c = split_contents(&h, msg)?;
        let body = Body::decode(c.code, c.body)?;
        // A block that carries nothing (empty, or only fields this version does not know)
        // is no block: it encodes to zero bytes, so a re-encoded message decodes the same
        // (found by the `message` fuzz target, tests/fuzz-regressions).
        let security = if c.security.is_empty() {
            None
        } else {
            Some(
                pb::SecurityBlock::decode(c.security)
                    .map_err(|_| ParseError::BadSecurityBlock(c.security.len()))?,
            )
            .filter(|b| *b != pb::SecurityBlock::default())
        };
        Ok(Message {
            header: h.to_owned(),
            body,
            security,
        })
    }
}

/// Encodes a message from its parts, with the body already encoded.
pub fn encode_parts(
    header: &OwnedHeader,
    code: u16,
    body: &[u8],
    security: &[u8],
) -> Result<Vec<u8>, ParseError> {
    let contents_len = 2 + 4 + body.len() + 4 + security.len();
    let mut out = Vec::with_capacity(header.encoded_len() + contents_len);
    header.encode(contents_len, &mut out)?;
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&(security.len() as u32).to_be_bytes());
    out.extend_from_slice(security);
    Ok(out)
}
