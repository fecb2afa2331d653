//! The echo application (number 7, after RFC 862's port): whatever an application stream
//! sends comes back, then the stream ends. Nodes serve it when `nat.echo` is on; `p2psip
//! client app-echo` calls it to show that an application connection between two nodes
//! (direct through their NATs, or relayed) carries data both ways.

use crate::runtime::NodeClient;
use crate::transport::AppPath;
use p2psip_algorithms::NodeId;
use std::time::{Duration, Instant};

/// Application number of the echo service.
pub const APP_ECHO: u32 = 7;
/// Longest message an echo call sends.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Serves the echo application on `node` until the node stops.
pub async fn serve(node: &NodeClient) {
    let mut incoming = node.serve_app(APP_ECHO).await;
    tokio::spawn(async move {
        while let Some(mut s) = incoming.recv().await {
            tokio::spawn(async move {
                let mut limited = tokio::io::AsyncReadExt::take(&mut s.recv, MAX_MESSAGE as u64);
                let n = tokio::io::copy(&mut limited, &mut s.send).await;
                let _ = s.send.finish();
                tracing::debug!(from = %s.from, bytes = ?n.ok(), "echo");
            });
        }
    });
}

/// What an echo call measured.
#[derive(Debug, Clone)]
pub struct EchoReport {
    pub path: AppPath,
    /// AppAttach, connection (punch or relay) and the first stream.
    pub connect: Duration,
    /// Round trip of each message (the first one's stream was opened in `connect`).
    pub rounds: Vec<Duration>,
}

/// Why an echo exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("the message is longer than {MAX_MESSAGE} bytes")]
    TooLong,
    #[error(transparent)]
    Node(#[from] crate::runtime::NodeError),
    #[error(transparent)]
    App(#[from] crate::transport::AppError),
    #[error("sending to {to}: {error}")]
    Send { to: NodeId, error: String },
    #[error("reading the echo of {to}: {error}")]
    Read { to: NodeId, error: String },
    #[error("round {round}: {to} echoed {got} bytes that differ from the {sent} sent")]
    Differs {
        round: usize,
        to: NodeId,
        got: usize,
        sent: usize,
    },
}

/// Sends `message` to `to`'s echo application `rounds` times, one stream each, and checks
/// every answer.
pub async fn call(
    node: &NodeClient,
    to: NodeId,
    message: &[u8],
    rounds: usize,
) -> Result<EchoReport, EchoError> {
    if message.len() > MAX_MESSAGE {
        return Err(EchoError::TooLong);
    }
    let began = Instant::now();
    let reach = node.attach_app(to, APP_ECHO).await?;
    let (mut send, mut recv, path) = node.open_app(to, &reach, APP_ECHO).await?;
    let connect = began.elapsed();
    let mut times = Vec::with_capacity(rounds);
    for round in 0..rounds.max(1) {
        if round > 0 {
            (send, recv, _) = node.open_app(to, &reach, APP_ECHO).await?;
        }
        let t = Instant::now();
        let sending = |e: &dyn std::fmt::Display| EchoError::Send {
            to,
            error: e.to_string(),
        };
        send.write_all(message).await.map_err(|e| sending(&e))?;
        send.finish().map_err(|e| sending(&e))?;
        let back = recv
            .read_to_end(message.len() + 1)
            .await
            .map_err(|e| EchoError::Read {
                to,
                error: e.to_string(),
            })?;
        times.push(t.elapsed());
        if back != message {
            return Err(EchoError::Differs {
                round,
                to,
                got: back.len(),
                sent: message.len(),
            });
        }
    }
    Ok(EchoReport {
        path,
        connect,
        rounds: times,
    })
}
