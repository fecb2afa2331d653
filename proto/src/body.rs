//! Message codes and the typed bodies they carry (proto/SPEC.md section 4).

use crate::error::ParseError;
use crate::pb;
use prost::Message as _;

/// The code that marks an Error answer.
pub const ERROR_CODE: u16 = 0xffff;

macro_rules! bodies {
    ($($name:ident = $code:expr),* $(,)?) => {
        /// A decoded message body. The variant fixes the message code.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Body {
            $($name(pb::$name),)*
        }

        impl Body {
            /// The message code of this body.
            pub fn code(&self) -> u16 {
                match self {
                    $(Body::$name(_) => $code,)*
                }
            }

            /// The method's name as used in logs and metric labels.
            pub fn method_name(&self) -> &'static str {
                method_name(self.code())
            }

            /// The protobuf encoding of the body.
            pub fn encode_to_vec(&self) -> Vec<u8> {
                match self {
                    $(Body::$name(b) => b.encode_to_vec(),)*
                }
            }

            /// Length of the protobuf encoding.
            pub fn encoded_len(&self) -> usize {
                match self {
                    $(Body::$name(b) => b.encoded_len(),)*
                }
            }

            /// Decodes the body of a message with the given code.
            pub fn decode(code: u16, bytes: &[u8]) -> Result<Body, ParseError> {
                match code {
                    $($code => pb::$name::decode(bytes)
                        .map(Body::$name)
                        .map_err(|e| ParseError::BadBody { code, reason: e.to_string() }),)*
                    other => Err(ParseError::UnknownCode(other)),
                }
            }
        }

        $(impl From<pb::$name> for Body {
            fn from(b: pb::$name) -> Body { Body::$name(b) }
        })*
    };
}

bodies! {
    ProbeReq = 1, ProbeAns = 2,
    AttachReq = 3, AttachAns = 4,
    StoreReq = 7, StoreAns = 8,
    FetchReq = 9, FetchAns = 10,
    FindReq = 13, FindAns = 14,
    JoinReq = 15, JoinAns = 16,
    LeaveReq = 17, LeaveAns = 18,
    UpdateReq = 19, UpdateAns = 20,
    RouteQueryReq = 21, RouteQueryAns = 22,
    PingReq = 23, PingAns = 24,
    StatReq = 25, StatAns = 26,
    AppAttachReq = 29, AppAttachAns = 30,
    ConfigUpdateReq = 33, ConfigUpdateAns = 34,
    PathTrackReq = 39, PathTrackAns = 40,
    ErrorAns = 0xffff,
}

/// Whether a code is a request (odd) rather than an answer (even, or Error).
pub fn is_request(code: u16) -> bool {
    code != ERROR_CODE && code % 2 == 1
}

/// The method name of a code (requests and answers share it).
pub fn method_name(code: u16) -> &'static str {
    match code {
        1 | 2 => "probe",
        3 | 4 => "attach",
        7 | 8 => "store",
        9 | 10 => "fetch",
        13 | 14 => "find",
        15 | 16 => "join",
        17 | 18 => "leave",
        19 | 20 => "update",
        21 | 22 => "route_query",
        23 | 24 => "ping",
        25 | 26 => "stat",
        29 | 30 => "app_attach",
        33 | 34 => "config_update",
        39 | 40 => "path_track",
        ERROR_CODE => "error",
        _ => "unknown",
    }
}

impl Body {
    /// An Error answer with a code and a human-readable reason.
    pub fn error(code: pb::ErrorCode, info: impl Into<String>) -> Body {
        Body::ErrorAns(pb::ErrorAns {
            code: code as i32,
            info: info.into().into_bytes(),
        })
    }
}
