//! The forwarding header: parsed zero-copy with nom by every hop (proto/SPEC.md section 2).
//!
//! A [`Header`] borrows the received buffer: its via list, destination list and options are
//! slices of that buffer, validated once during parsing so that iterating them cannot fail.

use crate::error::{ListKind, ParseError};
use crate::id::{Id, ID_LEN};
use crate::limits::*;
use nom::number::complete::{be_u16, be_u32, be_u64, be_u8};
use nom::IResult;

/// The four magic bytes that open every message: 0xD2 'P' '2' 'P'.
pub const MAGIC: u32 = 0xD250_3250;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed part of the forwarding header.
pub const FIXED_LEN: usize = 36;

/// Offsets of the fixed fields a forwarding hop rewrites.
pub(crate) const OFF_TTL: usize = 5;
pub(crate) const OFF_VIA_LEN: usize = 14;
pub(crate) const OFF_MSG_LEN: usize = 24;
pub(crate) const OFF_DEST_LEN: usize = 32;

/// Destination / via entry type codes.
pub const ENTRY_NODE: u8 = 0x01;
pub const ENTRY_RESOURCE: u8 = 0x02;
pub const ENTRY_OPAQUE: u8 = 0x03;

/// Header flags (message-level, proto/SPEC.md section 2.2).
pub mod flags {
    /// Every forwarding hop must understand every forwarding option, or refuse the message
    /// with Unsupported_Forwarding_Option.
    pub const FORWARD_CRITICAL: u8 = 0x01;
    /// The destination must understand every forwarding option, or refuse the message.
    pub const DESTINATION_CRITICAL: u8 = 0x02;
    /// Every hop on the path sends a copy of the answer back (diagnostics).
    pub const RESPONSE_COPY: u8 = 0x04;
}

/// A destination (or via) entry borrowed from a received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestRef<'a> {
    Node(Id),
    Resource(Id),
    Opaque(&'a [u8]),
}

/// An owned destination (or via) entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Node(Id),
    Resource(Id),
    /// 1..=255 bytes, e.g. a compressed route or a client's connection id.
    Opaque(Vec<u8>),
}

impl Destination {
    /// Bytes this entry takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Destination::Node(_) | Destination::Resource(_) => 1 + ID_LEN,
            Destination::Opaque(v) => 2 + v.len(),
        }
    }

    /// Appends the entry's wire encoding. Opaque ids must be 1..=255 bytes (checked by the
    /// message builder).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Destination::Node(id) => {
                out.push(ENTRY_NODE);
                out.extend_from_slice(&id.to_bytes());
            }
            Destination::Resource(id) => {
                out.push(ENTRY_RESOURCE);
                out.extend_from_slice(&id.to_bytes());
            }
            Destination::Opaque(v) => {
                out.push(ENTRY_OPAQUE);
                out.push(v.len() as u8);
                out.extend_from_slice(v);
            }
        }
    }

    /// The node or resource id, if this is not an opaque entry.
    pub fn id(&self) -> Option<Id> {
        match self {
            Destination::Node(id) | Destination::Resource(id) => Some(*id),
            Destination::Opaque(_) => None,
        }
    }
}

impl DestRef<'_> {
    /// An owned copy of the entry.
    pub fn to_owned(self) -> Destination {
        match self {
            DestRef::Node(id) => Destination::Node(id),
            DestRef::Resource(id) => Destination::Resource(id),
            DestRef::Opaque(b) => Destination::Opaque(b.to_vec()),
        }
    }

    /// The node or resource id, if this is not an opaque entry.
    pub fn id(self) -> Option<Id> {
        match self {
            DestRef::Node(id) | DestRef::Resource(id) => Some(id),
            DestRef::Opaque(_) => None,
        }
    }
}

/// A forwarding option borrowed from a received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionRef<'a> {
    pub kind: u8,
    pub flags: u8,
    pub value: &'a [u8],
}

/// A parsed forwarding header borrowing the message buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub version: u8,
    pub ttl: u8,
    pub flags: u8,
    pub overlay: u32,
    pub config_seq: u16,
    pub transaction_id: u64,
    /// Length of the whole message, header included.
    pub message_len: u32,
    /// Largest answer the sender accepts (0 = no limit beyond MAX_MESSAGE_LEN).
    pub max_response_len: u32,
    via_raw: &'a [u8],
    dest_raw: &'a [u8],
    options_raw: &'a [u8],
    via_count: u8,
    dest_count: u8,
}

impl<'a> Header<'a> {
    /// Bytes of the header on the wire; the message contents start there.
    pub fn header_len(&self) -> usize {
        FIXED_LEN + self.via_raw.len() + self.dest_raw.len() + self.options_raw.len()
    }

    /// The via list, oldest hop first.
    pub fn via(&self) -> EntryIter<'a> {
        EntryIter { rest: self.via_raw }
    }

    /// Number of via entries.
    pub fn via_len(&self) -> usize {
        self.via_count as usize
    }

    /// The raw via list bytes.
    pub fn via_bytes(&self) -> &'a [u8] {
        self.via_raw
    }

    /// The destination list, next destination first.
    pub fn destinations(&self) -> EntryIter<'a> {
        EntryIter {
            rest: self.dest_raw,
        }
    }

    /// Number of destination entries.
    pub fn destination_len(&self) -> usize {
        self.dest_count as usize
    }

    /// The first destination, which decides where the message goes next.
    pub fn first_destination(&self) -> Option<DestRef<'a>> {
        self.destinations().next()
    }

    /// The raw destination list bytes.
    pub fn destination_bytes(&self) -> &'a [u8] {
        self.dest_raw
    }

    /// Forwarding options.
    pub fn options(&self) -> OptionIter<'a> {
        OptionIter {
            rest: self.options_raw,
        }
    }

    /// The raw option bytes.
    pub fn options_bytes(&self) -> &'a [u8] {
        self.options_raw
    }

    /// Whether a flag bit is set.
    pub fn has_flag(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Iterates validated destination / via entries.
#[derive(Debug, Clone)]
pub struct EntryIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = DestRef<'a>;
    fn next(&mut self) -> Option<DestRef<'a>> {
        // Entries were validated by `parse_header`; a failure here cannot happen, but is
        // handled by ending the iteration rather than panicking.
        let (rest, e) = entry(self.rest).ok()?;
        self.rest = rest;
        Some(e)
    }
}

/// Iterates validated forwarding options.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = OptionRef<'a>;
    fn next(&mut self) -> Option<OptionRef<'a>> {
        let (rest, o) = option(self.rest).ok()?;
        self.rest = rest;
        Some(o)
    }
}

fn take(input: &[u8], n: usize) -> IResult<&[u8], &[u8]> {
    if input.len() < n {
        return Err(nom::Err::Error(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Eof,
        )));
    }
    Ok((&input[n..], &input[..n]))
}

fn id16(input: &[u8]) -> IResult<&[u8], Id> {
    let (rest, b) = take(input, ID_LEN)?;
    Ok((rest, Id::from_slice(b).unwrap_or_default()))
}

/// One destination / via entry.
fn entry(input: &[u8]) -> IResult<&[u8], DestRef<'_>> {
    let (rest, ty) = be_u8(input)?;
    match ty {
        ENTRY_NODE => id16(rest).map(|(r, id)| (r, DestRef::Node(id))),
        ENTRY_RESOURCE => id16(rest).map(|(r, id)| (r, DestRef::Resource(id))),
        ENTRY_OPAQUE => {
            let (rest, n) = be_u8(rest)?;
            let (rest, b) = take(rest, n as usize)?;
            Ok((rest, DestRef::Opaque(b)))
        }
        _ => Err(nom::Err::Failure(nom::error::Error::new(
            input,
            nom::error::ErrorKind::Tag,
        ))),
    }
}

/// Length of the first entry of a validated list, `None` when the list is empty.
pub(crate) fn first_entry_len(raw: &[u8]) -> Option<usize> {
    entry(raw).ok().map(|(rest, _)| raw.len() - rest.len())
}

fn option(input: &[u8]) -> IResult<&[u8], OptionRef<'_>> {
    let (rest, kind) = be_u8(input)?;
    let (rest, flags) = be_u8(rest)?;
    let (rest, len) = be_u16(rest)?;
    let (rest, value) = take(rest, len as usize)?;
    Ok((rest, OptionRef { kind, flags, value }))
}

/// Validates a list and counts its entries.
fn validate_list(mut raw: &[u8], list: ListKind, max: usize) -> Result<u8, ParseError> {
    let mut count = 0usize;
    while !raw.is_empty() {
        if count == max {
            return Err(ParseError::ListTooLong { list, max });
        }
        match entry(raw) {
            Ok((rest, e)) => {
                if let DestRef::Opaque(b) = e {
                    if b.is_empty() {
                        return Err(ParseError::EmptyOpaque { list });
                    }
                }
                raw = rest;
                count += 1;
            }
            Err(nom::Err::Failure(_)) => {
                return Err(ParseError::BadEntryType { list, ty: raw[0] });
            }
            Err(_) => return Err(ParseError::EntryTruncated { list }),
        }
    }
    // max is at most 255 for both lists (see limits), so the count fits.
    Ok(count.min(u8::MAX as usize) as u8)
}

struct Fixed {
    magic: u32,
    version: u8,
    ttl: u8,
    flags: u8,
    reserved: u8,
    overlay: u32,
    config_seq: u16,
    via_len: u16,
    transaction_id: u64,
    message_len: u32,
    max_response_len: u32,
    dest_len: u16,
    options_len: u16,
}

fn fixed(i: &[u8]) -> IResult<&[u8], Fixed> {
    let (i, magic) = be_u32(i)?;
    let (i, version) = be_u8(i)?;
    let (i, ttl) = be_u8(i)?;
    let (i, flags) = be_u8(i)?;
    let (i, reserved) = be_u8(i)?;
    let (i, overlay) = be_u32(i)?;
    let (i, config_seq) = be_u16(i)?;
    let (i, via_len) = be_u16(i)?;
    let (i, transaction_id) = be_u64(i)?;
    let (i, message_len) = be_u32(i)?;
    let (i, max_response_len) = be_u32(i)?;
    let (i, dest_len) = be_u16(i)?;
    let (i, options_len) = be_u16(i)?;
    Ok((
        i,
        Fixed {
            magic,
            version,
            ttl,
            flags,
            reserved,
            overlay,
            config_seq,
            via_len,
            transaction_id,
            message_len,
            max_response_len,
            dest_len,
            options_len,
        },
    ))
}

/// Parses and validates the forwarding header of a complete message.
///
/// `input` must hold exactly one message (as delimited by the transport). Everything that
/// a hop relies on is checked here: magic, version, reserved byte, TTL bound, message length
/// against the limit and the buffer, list lengths, every list entry, and critical options.
pub fn parse_header(input: &[u8]) -> Result<Header<'_>, ParseError> {
    if input.len() < FIXED_LEN {
        return Err(ParseError::Truncated {
            needed: FIXED_LEN,
            have: input.len(),
        });
    }
    let (rest, f) = fixed(input).map_err(|_| ParseError::Truncated {
        needed: FIXED_LEN,
        have: input.len(),
    })?;
    if f.magic != MAGIC {
        return Err(ParseError::BadMagic(f.magic));
    }
    if f.version != VERSION {
        return Err(ParseError::UnsupportedVersion(f.version));
    }
    if f.reserved != 0 {
        return Err(ParseError::ReservedNonZero(f.reserved));
    }
    if f.ttl > MAX_TTL {
        return Err(ParseError::TtlTooLarge {
            ttl: f.ttl,
            max: MAX_TTL,
        });
    }
    let message_len = f.message_len as usize;
    if message_len > MAX_MESSAGE_LEN {
        return Err(ParseError::MessageTooLarge {
            len: message_len,
            max: MAX_MESSAGE_LEN,
        });
    }
    if message_len != input.len() {
        return Err(ParseError::LengthMismatch {
            declared: message_len,
            actual: input.len(),
        });
    }
    let (via_len, dest_len, options_len) = (
        f.via_len as usize,
        f.dest_len as usize,
        f.options_len as usize,
    );
    let lists = via_len + dest_len + options_len;
    if FIXED_LEN + lists > message_len {
        return Err(ParseError::ListsPastEnd {
            lists,
            message: message_len,
        });
    }
    if options_len > MAX_OPTIONS_LEN {
        return Err(ParseError::MessageTooLarge {
            len: options_len,
            max: MAX_OPTIONS_LEN,
        });
    }
    let (via_raw, rest) = rest.split_at(via_len);
    let (dest_raw, rest) = rest.split_at(dest_len);
    let options_raw = &rest[..options_len];
    let via_count = validate_list(via_raw, ListKind::Via, MAX_VIA_ENTRIES)?;
    let dest_count = validate_list(dest_raw, ListKind::Destination, MAX_DESTINATION_ENTRIES)?;
    let mut opts = options_raw;
    while !opts.is_empty() {
        match option(opts) {
            Ok((r, o)) => {
                if f.flags & flags::FORWARD_CRITICAL != 0 {
                    // No forwarding option types are defined yet, so under FORWARD_CRITICAL
                    // any option is one this hop does not understand.
                    return Err(ParseError::UnsupportedCriticalOption(o.kind));
                }
                opts = r;
            }
            Err(_) => return Err(ParseError::OptionTruncated),
        }
    }
    Ok(Header {
        version: f.version,
        ttl: f.ttl,
        flags: f.flags,
        overlay: f.overlay,
        config_seq: f.config_seq,
        transaction_id: f.transaction_id,
        message_len: f.message_len,
        max_response_len: f.max_response_len,
        via_raw,
        dest_raw,
        options_raw,
        via_count,
        dest_count,
    })
}
