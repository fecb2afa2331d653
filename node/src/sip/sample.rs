//! A stand-in phone for local overlays (devnet's sample users): one UDP socket that
//! answers every call `486 Busy Here` and every other request (MESSAGE, OPTIONS, ...)
//! `200 OK`, never an ACK. A call to a sample user thus shows the whole path: the
//! front-end finds the binding through the overlay and the device's own answer comes back.

use crate::sip::SipError;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// Starts the sample phone on 127.0.0.1; its address and its task.
pub async fn spawn() -> Result<(SocketAddr, tokio::task::JoinHandle<()>), SipError> {
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = s.local_addr()?;
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let method = head.split(' ').next().unwrap_or("");
            let status = match method {
                "INVITE" => "486 Busy Here",
                "ACK" => continue,
                m if m.starts_with("SIP/") => continue,
                _ => "200 OK",
            };
            if let Some(answer) = super::raw::answer(&head, status, "", "sample") {
                let _ = s.send_to(answer.as_bytes(), from).await;
            }
        }
    });
    Ok((addr, task))
}
