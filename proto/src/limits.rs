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
