//! # p2psip-proto: the p2psip wire format
//!
//! Every peer-protocol and client-protocol message is a fixed-layout **forwarding header**
//! (parsed zero-copy with `nom` by every hop), then the **contents** (a 16-bit message code
//! and a protobuf body decoded only at the destination), then an optional **security block**.
//! `SPEC.md` beside this crate is the normative description, with test vectors that
//! `tests/vectors.rs` checks byte for byte.
//!
//! - [`header`]: parsing the forwarding header ([`parse_header`]) into a borrowed [`Header`].
//! - [`write`]: building headers ([`OwnedHeader`]) and the forwarding step ([`forward`]).
//! - [`body`]: message codes and the typed [`Body`] enum over the prost messages in [`pb`].
//! - [`message`]: whole messages ([`Message`]).
//! - [`security`]: Ed25519 signatures over messages and stored data.

pub mod body;
pub mod control;
pub mod diagnostics;
pub mod error;
pub mod header;
pub mod id;
pub mod limits;
pub mod message;
pub mod options;
pub mod security;
#[doc(hidden)]
pub mod test_vectors;
pub mod write;

/// The prost types generated from `proto/*.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/p2psip.v1.rs"));
}

pub use body::{is_request, Body, ERROR_CODE};
pub use error::{ListKind, ParseError};
pub use header::{flags, parse_header, DestRef, Destination, Header};
pub use id::{overlay_id, Id};
pub use message::{encode_parts, split_contents, Contents, Message};
pub use write::{forward, forward_parsed, ForwardingOption, OwnedHeader, Rewrite};
