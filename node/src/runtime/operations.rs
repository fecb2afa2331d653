//! Typed operations of a [`NodeClient`]: each runs one overlay operation within a time
//! limit and returns its answer, or an [`OpError`] saying why there is none, so that the
//! CLI, devnet, the bench, services and the SIP front-end do not each match the core's
//! events.

use super::NodeClient;
use p2psip_algorithms::core::all_of_kind;
use p2psip_algorithms::{Event, Id, OpId, OverlayNode, Time};
use p2psip_proto::pb;
use p2psip_proto::Body;
use std::time::Duration;

/// Why an operation gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The node's driver is gone (stopped, or stopping).
    #[error("the node has stopped")]
    Stopped,
    /// Nothing came back within the operation's time limit.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The overlay answered with an error (Not_Found, Forbidden, ...) or the node gave up
    /// (its retransmissions ran out).
    #[error("{0}")]
    Refused(p2psip_algorithms::OpError),
    /// An answer of another method than the request's.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl OpError {
    /// The protocol error code of a refusal.
    pub fn code(&self) -> Option<pb::ErrorCode> {
        match self {
            OpError::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

impl NodeClient {
    /// Runs operation `f` on the node and waits at most `limit` for its answer.
    pub async fn run(
        &self,
        limit: Duration,
        f: impl FnOnce(&mut OverlayNode, Time) -> OpId + Send + 'static,
    ) -> Result<Body, OpError> {
        let event = tokio::time::timeout(limit, self.op(f))
            .await
            .map_err(|_| OpError::TimedOut(limit))?
            .map_err(|_| OpError::Stopped)?;
        match event {
            Event::Completed {
                outcome: Ok(body), ..
            } => Ok(body),
            Event::Completed {
                outcome: Err(e), ..
            } => Err(OpError::Refused(e)),
            other => Err(OpError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Stores `values` of `kind` at `resource` (no compare-and-swap).
    pub async fn store(
        &self,
        resource: Id,
        kind: u32,
        values: Vec<pb::StoredData>,
        limit: Duration,
    ) -> Result<pb::StoreAns, OpError> {
        let body = self
            .run(limit, move |n, t| n.store(t, resource, kind, values, 0))
            .await?;
        store_answer(body)
    }

    /// Fetches what `specifiers` select at `resource`.
    pub async fn fetch(
        &self,
        resource: Id,
        specifiers: Vec<pb::StoredDataSpecifier>,
        limit: Duration,
    ) -> Result<pb::FetchAns, OpError> {
        match self
            .run(limit, move |n, t| n.fetch(t, resource, specifiers))
            .await?
        {
            Body::FetchAns(a) => Ok(a),
            other => Err(OpError::Unexpected(other.method_name().to_string())),
        }
    }

    /// Fetches every value of `kind` at `resource`.
    pub async fn fetch_kind(
        &self,
        resource: Id,
        kind: u32,
        limit: Duration,
    ) -> Result<pb::FetchAns, OpError> {
        self.fetch(resource, vec![all_of_kind(kind)], limit).await
    }
}

/// The StoreAns of a store's answer.
pub fn store_answer(body: Body) -> Result<pb::StoreAns, OpError> {
    match body {
        Body::StoreAns(a) => Ok(a),
        other => Err(OpError::Unexpected(other.method_name().to_string())),
    }
}
