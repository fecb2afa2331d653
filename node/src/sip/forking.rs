//! Forking (RFC 3261 section 16): an INVITE or MESSAGE for an AOR with several bindings —
//! devices here, other front-ends holding some — goes to all of them at once. This is the
//! proxy's one piece of transaction state: per forked request its branches (as sent) and
//! the [`Fork`] deciding what goes upstream; the caller's CANCEL cancels every pending
//! branch, the first 2xx cancels the others, each non-2xx final answer of a branch is
//! ACKed here and the best one goes upstream when all are in. Everything else stays
//! stateless. Bounded: past [`MAX_FORKS`] at once a request goes to its first target only.

use super::fork::{Fork, Step};
use super::{Hop, Inner};
use crate::sip::SipError;
use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::prelude::HeadersExt;
use rsip::{Header, Headers, Method, Request, Response};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Forked requests tracked at once.
pub const MAX_FORKS: usize = 8192;
/// A branch that sent nothing for this long counts as 408 (Timer B, 64 x T1).
const SILENT_BRANCH: Duration = Duration::from_secs(32);
/// A forked INVITE not answered within this is cancelled (Timer C, more than 3 minutes).
const UNANSWERED: Duration = Duration::from_secs(181);
/// State is kept this long after the final answer (to absorb the caller's ACK and
/// retransmissions).
const LINGER: Duration = Duration::from_secs(32);

/// One forked request.
pub struct ForkCtx {
    fork: Fork,
    /// The request as it came (its Vias are the caller's path).
    upstream: Request,
    src: Hop,
    /// Each branch: our Via branch, where it went, the request as sent.
    branches: Vec<(String, Hop, Request)>,
    /// Final non-2xx answers held, by branch, with their status lines.
    held: Vec<Option<(Response, String)>>,
    key: String,
}

/// What names a request from upstream for matching its CANCEL, ACK and retransmissions:
/// Call-ID and its top Via (a CANCEL and a non-2xx ACK carry the INVITE's).
pub fn upstream_key(req: &Request) -> Option<String> {
    let call_id = req.call_id_header().ok()?.value().to_string();
    let via = req.via_header().ok()?.value().to_string();
    let top = via.split(',').next().unwrap_or("").trim().to_string();
    Some(format!("{call_id}|{top}"))
}

/// The branch parameter of a top Via value.
pub fn top_branch(via: &str) -> Option<String> {
    let top = via.split(',').next()?;
    top.split(';').map(str::trim).find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case("branch")
            .then(|| v.trim().to_string())
    })
}

/// A CANCEL or ACK for a branch request `sent` (RFC 3261 sections 9.1 and 17.1.1.3): its
/// Request-URI, its top Via (ours) and Route set, From, Call-ID, the CSeq number with
/// `method`; To as sent, or `to` (the answer's, with its tag) for an ACK.
fn for_branch(sent: &Request, method: Method, to: Option<String>) -> Option<Request> {
    let mut headers = Headers::default();
    let via = sent.via_header().ok()?.value().to_string();
    headers.push(Header::Via(rsip::headers::Via::new(
        via.split(',').next()?.trim(),
    )));
    for h in sent.headers.iter() {
        if let Header::Route(_) = h {
            headers.push(h.clone());
        }
    }
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
    headers.push(Header::From(sent.from_header().ok()?.clone()));
    headers.push(Header::To(match to {
        Some(t) => rsip::headers::To::new(t),
        None => sent.to_header().ok()?.clone(),
    }));
    headers.push(Header::CallId(sent.call_id_header().ok()?.clone()));
    let seq = sent.cseq_header().ok()?.typed().ok()?.seq;
    headers.push(Header::CSeq(rsip::headers::CSeq::new(format!(
        "{seq} {method}"
    ))));
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(
        "0",
    )));
    Some(Request {
        method,
        uri: sent.uri.clone(),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    })
}

impl Inner {
    /// Sends `req` on every target at once and tracks the branches.
    pub(super) async fn fork(
        self: &Arc<Self>,
        req: Request,
        src: Hop,
        targets: Vec<super::Target>,
    ) -> Result<(), SipError> {
        let key = upstream_key(&req).ok_or_else(|| request_err!("no Call-ID or Via"))?;
        let invite = req.method == Method::Invite;
        let mut branches = Vec::with_capacity(targets.len());
        for t in targets {
            let hop = t.hop;
            if self.forks_in.len() >= MAX_FORKS && !branches.is_empty() {
                tracing::debug!("SIP: fork limit reached, one target only");
                break;
            }
            if let Hop::Node(n) = hop {
                if let Err(e) = self.stream_to(n).await {
                    tracing::debug!(node = %n, error = %e, "SIP: fork branch to a node dropped");
                    continue;
                }
            }
            let mut r = req.clone();
            t.apply(&mut r);
            let (branch, sent) = self.prepare(r, hop, Some(src))?;
            branches.push((branch, hop, sent));
        }
        if branches.is_empty() {
            self.reply(&req, 480, vec![], src).await;
            refuse!("no branch of the fork could be sent");
        }
        let n = branches.len();
        let sends: Vec<(Hop, Vec<u8>)> = branches
            .iter()
            .map(|(_, hop, r)| (*hop, r.to_string().into_bytes()))
            .collect();
        let ids: Vec<String> = branches.iter().map(|(b, _, _)| b.clone()).collect();
        let ctx = Arc::new(Mutex::new(ForkCtx {
            fork: Fork::new(n, invite),
            upstream: req,
            src,
            branches,
            held: vec![None; n],
            key: key.clone(),
        }));
        self.forks_in.insert(key, ctx.clone());
        for (i, id) in ids.iter().enumerate() {
            self.forks.insert(id.clone(), (ctx.clone(), i));
        }
        tracing::debug!(branches = n, "SIP: request forked");
        for (hop, bytes) in sends {
            if let Err(e) = self.send(bytes, hop).await {
                tracing::debug!(%hop, error = %e, "SIP: fork branch not sent");
            }
        }
        let me = self.clone();
        tokio::spawn(async move { me.fork_timers(ctx, ids).await });
        Ok(())
    }

    /// Timer B for silent branches, Timer C for the whole fork, then the state goes.
    async fn fork_timers(self: Arc<Self>, ctx: Arc<Mutex<ForkCtx>>, ids: Vec<String>) {
        let start = Instant::now();
        tokio::time::sleep(SILENT_BRANCH).await;
        let silent = lock(&ctx).fork.silent();
        for i in silent {
            self.branch_timed_out(&ctx, i).await;
        }
        while !lock(&ctx).fork.answered() && start.elapsed() < UNANSWERED {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if !lock(&ctx).fork.answered() {
            let pending = lock(&ctx).fork.pending();
            self.cancel_branches(&ctx, &pending).await;
            for i in pending {
                self.branch_timed_out(&ctx, i).await;
            }
        }
        tokio::time::sleep(LINGER).await;
        let key = lock(&ctx).key.clone();
        self.forks_in.remove(&key);
        for id in ids {
            self.forks.remove(&id);
        }
    }

    async fn branch_timed_out(self: &Arc<Self>, ctx: &Arc<Mutex<ForkCtx>>, i: usize) {
        let step = lock(ctx).fork.timed_out(i);
        if let Step::ForwardHeld(j) = step {
            self.send_held(ctx, j).await;
        }
    }

    /// Sends upstream the final answer held for branch `i` (a 408 of ours when the branch
    /// never answered).
    async fn send_held(self: &Arc<Self>, ctx: &Arc<Mutex<ForkCtx>>, i: usize) {
        let (held, upstream, src) = {
            let c = lock(ctx);
            (c.held.get(i).cloned().flatten(), c.upstream.clone(), c.src)
        };
        match held {
            Some((r, line)) => self.relay_response(r, &line).await,
            None => self.reply(&upstream, 408, vec![], src).await,
        }
    }

    /// CANCELs branches `which` of a fork.
    async fn cancel_branches(self: &Arc<Self>, ctx: &Arc<Mutex<ForkCtx>>, which: &[usize]) {
        let out: Vec<(Hop, Request)> = {
            let c = lock(ctx);
            which
                .iter()
                .filter_map(|i| c.branches.get(*i))
                .filter_map(|(_, hop, sent)| Some((*hop, for_branch(sent, Method::Cancel, None)?)))
                .collect()
        };
        for (hop, r) in out {
            if let Err(e) = self.send(r.to_string().into_bytes(), hop).await {
                tracing::debug!(%hop, error = %e, "SIP: CANCEL of a fork branch not sent");
            }
        }
    }

    /// A request from upstream that belongs to a fork: the caller's CANCEL (200, and every
    /// pending branch cancelled), its ACK of our non-2xx answer (absorbed), a
    /// retransmission of the request (sent again on the branches that said nothing yet).
    /// True if it was taken here.
    pub(super) async fn fork_request(self: &Arc<Self>, req: &Request, src: Hop) -> bool {
        let Some(key) = upstream_key(req) else {
            return false;
        };
        let Some(ctx) = self.forks_in.get(&key).map(|c| c.clone()) else {
            return false;
        };
        match req.method {
            Method::Cancel => {
                self.reply(req, 200, vec![], src).await;
                let pending = lock(&ctx).fork.pending();
                self.cancel_branches(&ctx, &pending).await;
                true
            }
            Method::Ack => true,
            m if m == lock(&ctx).upstream.method => {
                let again: Vec<(Hop, Vec<u8>)> = {
                    let c = lock(&ctx);
                    c.fork
                        .silent()
                        .into_iter()
                        .filter_map(|i| c.branches.get(i))
                        .filter(|(_, hop, _)| matches!(hop, Hop::Udp(_)))
                        .map(|(_, hop, r)| (*hop, r.to_string().into_bytes()))
                        .collect()
                };
                for (hop, bytes) in again {
                    let _ = self.send(bytes, hop).await;
                }
                true
            }
            _ => false,
        }
    }

    /// A response whose top Via is one of a fork's branches. True if it was taken here
    /// (held, dropped, or sent upstream by the fork); false: relay it as any other.
    pub(super) async fn fork_response(self: &Arc<Self>, r: &Response, status_line: &str) -> bool {
        let Some(branch) = r.via_header().ok().and_then(|v| top_branch(v.value())) else {
            return false;
        };
        let Some((ctx, i)) = self.forks.get(&branch).map(|e| e.clone()) else {
            return false;
        };
        let Some(cseq) = r.cseq_header().ok().and_then(|c| c.typed().ok()) else {
            return true;
        };
        if cseq.method == Method::Cancel {
            return true; // the answer to our own CANCEL
        }
        let code = r.status_code.code();
        let (step, ack) = {
            let mut c = lock(&ctx);
            let invite = c.upstream.method == Method::Invite;
            let step = c.fork.response(i, code);
            if matches!(step, Step::Hold | Step::ForwardHeld(_)) {
                if let Some(h) = c.held.get_mut(i) {
                    *h = Some((r.clone(), status_line.to_string()));
                }
            }
            // Every non-2xx final answer of an INVITE branch is ACKed here (hop by hop).
            let ack = (invite && code >= 300)
                .then(|| {
                    let (_, hop, sent) = c.branches.get(i)?;
                    let to = r.to_header().ok()?.value().to_string();
                    Some((*hop, for_branch(sent, Method::Ack, Some(to))?))
                })
                .flatten();
            (step, ack)
        };
        if let Some((hop, a)) = ack {
            let _ = self.send(a.to_string().into_bytes(), hop).await;
        }
        match step {
            Step::Forward => false,
            Step::ForwardAndCancel(others) => {
                self.cancel_branches(&ctx, &others).await;
                false
            }
            Step::Hold | Step::Drop => true,
            Step::ForwardHeld(j) => {
                self.send_held(&ctx, j).await;
                true
            }
        }
    }
}

fn lock(ctx: &Mutex<ForkCtx>) -> std::sync::MutexGuard<'_, ForkCtx> {
    ctx.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_and_ack_copy_what_rfc_3261_says() {
        let sent = rsip::SipMessage::try_from(
            "INVITE sip:alice@10.0.0.5:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKours\r\n\
             Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKcaller\r\n\
             Route: <sip:10.0.0.7;lr>\r\n\
             Max-Forwards: 69\r\nFrom: <sip:bob@p2psip>;tag=b\r\nTo: <sip:alice@p2psip>\r\n\
             Call-ID: c1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let rsip::SipMessage::Request(sent) = sent else {
            panic!()
        };
        let c = for_branch(&sent, Method::Cancel, None).unwrap().to_string();
        assert!(
            c.starts_with("CANCEL sip:alice@10.0.0.5:5060 SIP/2.0\r\n"),
            "{c}"
        );
        assert!(
            c.contains("branch=z9hG4bKours") && !c.contains("caller"),
            "{c}"
        );
        assert!(
            c.contains("CSeq: 7 CANCEL") && c.contains("Route: <sip:10.0.0.7;lr>"),
            "{c}"
        );
        let a = for_branch(&sent, Method::Ack, Some("<sip:alice@p2psip>;tag=x".into()))
            .unwrap()
            .to_string();
        assert!(a.contains("CSeq: 7 ACK") && a.contains("tag=x"), "{a}");
        assert_eq!(
            top_branch("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKours;rport, SIP/2.0/UDP x;branch=y")
                .as_deref(),
            Some("z9hG4bKours")
        );
    }
}
