//! Writing forwarding headers, and the forwarding step a hop performs without touching the
//! message body (proto/SPEC.md sections 2 and 8).

use crate::error::{ListKind, ParseError};
use crate::header::*;
use crate::limits::*;

/// A forwarding option (owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardingOption {
    pub kind: u8,
    pub flags: u8,
    pub value: Vec<u8>,
}

/// An owned forwarding header, as a sender builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedHeader {
    pub ttl: u8,
    pub flags: u8,
    pub overlay: u32,
    pub config_seq: u16,
    pub transaction_id: u64,
    pub max_response_len: u32,
    pub via: Vec<Destination>,
    pub destinations: Vec<Destination>,
    pub options: Vec<ForwardingOption>,
}

impl OwnedHeader {
    /// A request header to one destination with the default TTL and an empty via list.
    pub fn new(overlay: u32, transaction_id: u64, destination: Destination) -> Self {
        OwnedHeader {
            ttl: DEFAULT_TTL,
            flags: 0,
            overlay,
            config_seq: 0,
            transaction_id,
            max_response_len: 0,
            via: Vec::new(),
            destinations: vec![destination],
            options: Vec::new(),
        }
    }

    /// Bytes the header takes on the wire.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + self.via.iter().map(Destination::encoded_len).sum::<usize>()
            + self
                .destinations
                .iter()
                .map(Destination::encoded_len)
                .sum::<usize>()
            + self
                .options
                .iter()
                .map(|o| 4 + o.value.len())
                .sum::<usize>()
    }

    fn check(&self, list: &[Destination], kind: ListKind, max: usize) -> Result<usize, ParseError> {
        if list.len() > max {
            return Err(ParseError::ListTooLong { list: kind, max });
        }
        let mut len = 0;
        for d in list {
            if let Destination::Opaque(v) = d {
                if v.is_empty() || v.len() > u8::MAX as usize {
                    return Err(ParseError::EmptyOpaque { list: kind });
                }
            }
            len += d.encoded_len();
        }
        Ok(len)
    }

    /// Appends the header for a message whose contents (everything after the header) take
    /// `contents_len` bytes. Checks the same limits the parser enforces.
    pub fn encode(&self, contents_len: usize, out: &mut Vec<u8>) -> Result<(), ParseError> {
        if self.ttl > MAX_TTL {
            return Err(ParseError::TtlTooLarge {
                ttl: self.ttl,
                max: MAX_TTL,
            });
        }
        let via_len = self.check(&self.via, ListKind::Via, MAX_VIA_ENTRIES)?;
        let dest_len = self.check(
            &self.destinations,
            ListKind::Destination,
            MAX_DESTINATION_ENTRIES,
        )?;
        let mut opt_len = 0;
        for o in &self.options {
            if o.value.len() > u16::MAX as usize {
                return Err(ParseError::OptionTruncated);
            }
            opt_len += 4 + o.value.len();
        }
        if opt_len > MAX_OPTIONS_LEN {
            return Err(ParseError::MessageTooLarge {
                len: opt_len,
                max: MAX_OPTIONS_LEN,
            });
        }
        let total = FIXED_LEN + via_len + dest_len + opt_len + contents_len;
        if total > MAX_MESSAGE_LEN {
            return Err(ParseError::MessageTooLarge {
                len: total,
                max: MAX_MESSAGE_LEN,
            });
        }
        out.reserve(total);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.push(VERSION);
        out.push(self.ttl);
        out.push(self.flags);
        out.push(0);
        out.extend_from_slice(&self.overlay.to_be_bytes());
        out.extend_from_slice(&self.config_seq.to_be_bytes());
        out.extend_from_slice(&(via_len as u16).to_be_bytes());
        out.extend_from_slice(&self.transaction_id.to_be_bytes());
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&self.max_response_len.to_be_bytes());
        out.extend_from_slice(&(dest_len as u16).to_be_bytes());
        out.extend_from_slice(&(opt_len as u16).to_be_bytes());
        for d in &self.via {
            d.encode(out);
        }
        for d in &self.destinations {
            d.encode(out);
        }
        for o in &self.options {
            out.push(o.kind);
            out.push(o.flags);
            out.extend_from_slice(&(o.value.len() as u16).to_be_bytes());
            out.extend_from_slice(&o.value);
        }
        Ok(())
    }
}

impl Header<'_> {
    /// An owned copy of the header.
    pub fn to_owned(&self) -> OwnedHeader {
        OwnedHeader {
            ttl: self.ttl,
            flags: self.flags,
            overlay: self.overlay,
            config_seq: self.config_seq,
            transaction_id: self.transaction_id,
            max_response_len: self.max_response_len,
            via: self.via().map(DestRef::to_owned).collect(),
            destinations: self.destinations().map(DestRef::to_owned).collect(),
            options: self
                .options()
                .map(|o| ForwardingOption {
                    kind: o.kind,
                    flags: o.flags,
                    value: o.value.to_vec(),
                })
                .collect(),
        }
    }
}

/// What a forwarding hop changes in a message it passes on.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite<'d> {
    /// Push this entry (the hop's own Node-ID) onto the via list. Requests do, answers don't.
    pub push_via: Option<&'d Destination>,
    /// Remove the first destination (the hop itself, when source routing continues past it).
    pub pop_destination: bool,
}

/// The forwarding step: parse the header of `msg`, decrement its TTL, apply `rw`, and write
/// the resulting message into `out` (cleared first). The body and security block are copied
/// as they are, never decoded.
///
/// Fails with [`ParseError::TtlExceeded`] when the TTL is already 0, and with
/// [`ParseError::ListTooLong`] when the via list is full.
pub fn forward(msg: &[u8], rw: Rewrite<'_>, out: &mut Vec<u8>) -> Result<(), ParseError> {
    let h = parse_header(msg)?;
    forward_parsed(msg, &h, rw, out)
}

/// [`forward`] for a message whose header was already parsed from `msg`.
pub fn forward_parsed(
    msg: &[u8],
    h: &Header<'_>,
    rw: Rewrite<'_>,
    out: &mut Vec<u8>,
) -> Result<(), ParseError> {
    if h.ttl == 0 {
        return Err(ParseError::TtlExceeded);
    }
    let dest = h.destination_bytes();
    let dest_keep = if rw.pop_destination {
        let first_len = first_entry_len(dest).ok_or(ParseError::NoDestination)?;
        &dest[first_len..]
    } else {
        dest
    };
    let push_len = match rw.push_via {
        Some(d) => {
            if h.via_len() >= MAX_VIA_ENTRIES {
                return Err(ParseError::ListTooLong {
                    list: ListKind::Via,
                    max: MAX_VIA_ENTRIES,
                });
            }
            if let Destination::Opaque(v) = d {
                if v.is_empty() || v.len() > u8::MAX as usize {
                    return Err(ParseError::EmptyOpaque {
                        list: ListKind::Via,
                    });
                }
            }
            d.encoded_len()
        }
        None => 0,
    };
    let via = h.via_bytes();
    let new_via_len = via.len() + push_len;
    if new_via_len > u16::MAX as usize {
        return Err(ParseError::ListTooLong {
            list: ListKind::Via,
            max: MAX_VIA_ENTRIES,
        });
    }
    let new_len = msg.len() + push_len - (dest.len() - dest_keep.len());
    if new_len > MAX_MESSAGE_LEN {
        return Err(ParseError::MessageTooLarge {
            len: new_len,
            max: MAX_MESSAGE_LEN,
        });
    }
    out.clear();
    out.reserve(new_len);
    out.extend_from_slice(&msg[..FIXED_LEN]);
    out[OFF_TTL] = h.ttl - 1;
    out[OFF_VIA_LEN..OFF_VIA_LEN + 2].copy_from_slice(&(new_via_len as u16).to_be_bytes());
    out[OFF_MSG_LEN..OFF_MSG_LEN + 4].copy_from_slice(&(new_len as u32).to_be_bytes());
    out[OFF_DEST_LEN..OFF_DEST_LEN + 2].copy_from_slice(&(dest_keep.len() as u16).to_be_bytes());
    out.extend_from_slice(via);
    if let Some(d) = rw.push_via {
        d.encode(out);
    }
    out.extend_from_slice(dest_keep);
    out.extend_from_slice(&msg[FIXED_LEN + via.len() + dest.len()..]);
    Ok(())
}
