//! Typed errors of the codec, each mapped to the protocol error code a peer answers with.

use crate::pb::ErrorCode;
use thiserror::Error;

/// Why a forwarding header or message could not be parsed, or a forwarding step refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("truncated: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("reserved byte is {0:#04x}, must be 0")]
    ReservedNonZero(u8),
    #[error("TTL {ttl} above the maximum {max}")]
    TtlTooLarge { ttl: u8, max: u8 },
    #[error("TTL exceeded: the message cannot be forwarded further")]
    TtlExceeded,
    #[error("message length {len} above the limit {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error("declared message length {declared} but {actual} bytes received")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("header lists ({lists} bytes) run past the message length {message}")]
    ListsPastEnd { lists: usize, message: usize },
    #[error("{list} list has more than {max} entries")]
    ListTooLong { list: ListKind, max: usize },
    #[error("{list} list: unknown entry type {ty:#04x}")]
    BadEntryType { list: ListKind, ty: u8 },
    #[error("{list} list: entry runs past the end of the list")]
    EntryTruncated { list: ListKind },
    #[error("{list} list: opaque id of length 0")]
    EmptyOpaque { list: ListKind },
    #[error("options: entry runs past the end of the options")]
    OptionTruncated,
    #[error("unsupported critical forwarding option {0:#04x}")]
    UnsupportedCriticalOption(u8),
    #[error("message contents truncated or inconsistent")]
    BadContents,
    #[error("security block length {0} runs past the end of the message")]
    BadSecurityBlock(usize),
    #[error("body of message code {code:#06x} does not decode: {reason}")]
    BadBody { code: u16, reason: String },
    #[error("unknown message code {0:#06x}")]
    UnknownCode(u16),
    #[error("destination list is empty")]
    NoDestination,
}

/// Which list of the header an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Via,
    Destination,
}

impl std::fmt::Display for ListKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ListKind::Via => "via",
            ListKind::Destination => "destination",
        })
    }
}

impl ParseError {
    /// The protocol error code a peer answers with (when it answers at all: a message whose
    /// header cannot be parsed has no via list to answer along and is dropped).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ParseError::TtlExceeded => ErrorCode::TtlExceeded,
            ParseError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            ParseError::UnsupportedCriticalOption(_) => ErrorCode::UnsupportedForwardingOption,
            ParseError::UnsupportedVersion(_) => ErrorCode::IncompatibleWithOverlay,
            _ => ErrorCode::InvalidMessage,
        }
    }
}
