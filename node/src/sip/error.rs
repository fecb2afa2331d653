//! Why the front-end did not start or did not carry a request through, and the macros its
//! handlers return those with.

/// Returns [`SipError::Request`]: why a request was not carried through (logged).
macro_rules! refuse {
    ($($arg:tt)*) => {
        return Err($crate::sip::SipError::Request(format!($($arg)*)))
    };
}

/// [`SipError::Request`] as a value.
macro_rules! request_err {
    ($($arg:tt)*) => {
        $crate::sip::SipError::Request(format!($($arg)*))
    };
}

/// Returns [`SipError::Setting`]: a setting or file the front-end cannot start with.
macro_rules! setting {
    ($($arg:tt)*) => {
        return Err($crate::sip::SipError::Setting(format!($($arg)*)))
    };
}

/// Why the front-end did not start, or did not carry a request through.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// A setting or file it cannot start with.
    #[error("{0}")]
    Setting(String),
    /// A socket: what it was for, and the error.
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    /// Why a request was not carried through (logged; the sender got an answer if one
    /// was due).
    #[error("{0}")]
    Request(String),
    /// A message or header rsip could not parse.
    #[error("{0}")]
    Parse(#[from] rsip::Error),
    #[error("SIP socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error(transparent)]
    Op(#[from] crate::runtime::OpError),
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Node(#[from] crate::runtime::NodeError),
    #[error(transparent)]
    PrivateFile(#[from] crate::security::private_files::PrivateFileError),
}

/// `map_err` for a socket operation: what it was for.
pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SipError {
    let what = what.into();
    move |error| SipError::Io { what, error }
}
