//! Hard limits enforced by the parser (proto/SPEC.md section 3).

/// Largest message a peer accepts or sends, header included (1 MiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 20;
/// Largest TTL a sender may set; a larger one is refused as malformed.
pub const MAX_TTL: u8 = 100;
/// Default initial TTL of a new request.
pub const DEFAULT_TTL: u8 = 100;
/// Most entries in a via list. A request that would need more is answered TTL_Exceeded.
pub const MAX_VIA_ENTRIES: usize = 64;
/// Most entries in a destination list.
pub const MAX_DESTINATION_ENTRIES: usize = 16;
/// Most bytes of forwarding options.
pub const MAX_OPTIONS_LEN: usize = 1024;
/// Most specifiers of a Fetch or Stat, and kinds of a Find, after identical ones are
/// merged; more are refused with Error_Invalid_Message before any answer is built.
pub const MAX_SPECIFIERS: usize = 32;
/// Room left for the header and framing of an answer: its body must fit in
/// `MAX_MESSAGE_LEN - ANSWER_HEADROOM` bytes.
pub const ANSWER_HEADROOM: usize = 4096;
/// Candidates a node uses from one Attach or AppAttach (request or answer): the first
/// this many usable ones, without repeats; the rest are ignored (never dialled).
pub const MAX_CANDIDATES: usize = 8;
