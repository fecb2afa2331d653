//! Diagnostic kinds (proto/SPEC.md 4.1): what a diagnostic Ping or a PathTrack may ask a
//! peer for. Kinds 1 to 11 take RFC 7851's numbers; ours start at 0x8001.

/// Where a request for the destination goes next, as a load figure: messages received per
/// second over the last ten seconds (`number`). RFC 7851 STATUS_INFO.
pub const STATUS_INFO: u32 = 0x0001;
/// Entries in the routing table: successors, predecessors and long-range entries, distinct
/// (`number`).
pub const ROUTING_TABLE_SIZE: u32 = 0x0002;
/// The software and its version (`text`).
pub const SOFTWARE_VERSION: u32 = 0x0005;
/// Seconds since the machine started (`number`).
pub const MACHINE_UPTIME: u32 = 0x0006;
/// Seconds since the node started (`number`).
pub const APP_UPTIME: u32 = 0x0007;
/// Resident memory of the node's process in bytes (`number`).
pub const MEMORY_FOOTPRINT: u32 = 0x0008;
/// Bytes of stored values (`number`).
pub const DATASIZE_STORED: u32 = 0x0009;
/// Stored values, every kind (`number`).
pub const INSTANCES_STORED: u32 = 0x000a;
/// Message counters (`messages`).
pub const MESSAGES_SENT_RCVD: u32 = 0x000b;
/// The routing table itself (`routing_table`).
pub const ROUTING_TABLE: u32 = 0x8001;
/// Stored data per kind (`storage`).
pub const STORAGE: u32 = 0x8002;
/// Round-trip times to linked nodes (`neighbor_rtts`).
pub const NEIGHBOR_RTT: u32 = 0x8003;
/// Reflexive address and NAT state (`nat`).
pub const NAT_STATE: u32 = 0x8004;
/// The addresses the node is reached at (`addresses`).
pub const ADDRESSES: u32 = 0x8005;

/// Every kind, with its name as the CLI and JSON spell it, and whether any member may ask
/// for it (`true`) or only the overlay's operators (`false`).
pub const KINDS: &[(u32, &str, bool)] = &[
    (STATUS_INFO, "status", true),
    (ROUTING_TABLE_SIZE, "routing-table-size", true),
    (SOFTWARE_VERSION, "software-version", true),
    (MACHINE_UPTIME, "machine-uptime", false),
    (APP_UPTIME, "uptime", true),
    (MEMORY_FOOTPRINT, "memory", false),
    (DATASIZE_STORED, "stored-bytes", false),
    (INSTANCES_STORED, "stored-values", false),
    (MESSAGES_SENT_RCVD, "messages", false),
    (ROUTING_TABLE, "routing-table", false),
    (STORAGE, "storage", false),
    (NEIGHBOR_RTT, "neighbor-rtt", false),
    (NAT_STATE, "nat", false),
    (ADDRESSES, "addresses", true),
];

/// The most kinds one request may name (more: Error_Invalid_Message).
pub const MAX_KINDS: usize = 32;

/// What a PathTrack asks each hop for when the caller names nothing.
pub const PATH_TRACK_DEFAULT: &[u32] = &[ADDRESSES, APP_UPTIME, STATUS_INFO];

/// The name of a kind (None: not one of ours).
pub fn kind_name(kind: u32) -> Option<&'static str> {
    KINDS.iter().find(|k| k.0 == kind).map(|k| k.1)
}

/// The kind a name (or a number, decimal or 0x-hex) stands for.
pub fn kind_by_name(name: &str) -> Option<u32> {
    if let Some(k) = KINDS.iter().find(|k| k.1 == name) {
        return Some(k.0);
    }
    match name.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => name.parse().ok(),
    }
}

/// Whether any member may ask for `kind` (unknown kinds are answered by no one, so asking
/// for them needs no right).
pub fn is_public(kind: u32) -> bool {
    KINDS.iter().find(|k| k.0 == kind).is_none_or(|k| k.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_map_both_ways() {
        for (k, name, _) in KINDS {
            assert_eq!(kind_by_name(name), Some(*k));
            assert_eq!(kind_name(*k), Some(*name));
        }
        assert_eq!(kind_by_name("0x8001"), Some(ROUTING_TABLE));
        assert_eq!(kind_by_name("7"), Some(APP_UPTIME));
        assert_eq!(kind_by_name("no-such-kind"), None);
        assert!(is_public(APP_UPTIME) && !is_public(ROUTING_TABLE) && is_public(0x7777));
    }
}
