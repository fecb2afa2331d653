//! A client's admitting peer (proto/SPEC.md 2.8), as pure state: a node behind a NAT
//! joins as a client through a bootstrap peer, then looks up the peer responsible for its
//! own Node-ID (through which requests addressed to it are routed) and moves there; it
//! checks again every [`LOCATE_INTERVAL`] and whenever it gets a new admitting peer, and
//! reconnects when it loses it. The daemon's runtime and the simulator's NAT experiment
//! drive the same [`Admission`].

use crate::core::OpId;
use crate::id::NodeId;
use crate::time::Time;
use std::time::Duration;

/// How often a client checks that its admitting peer is still the peer responsible for
/// its Node-ID.
pub const LOCATE_INTERVAL: Duration = Duration::from_secs(30);

/// What the lookup of the responsible peer means for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Located {
    /// The admitting peer is the responsible one.
    Confirmed,
    /// Another peer is responsible and a link to it is open: make it the admitting peer
    /// ([`Admission::readmit`]).
    Readmit(NodeId),
    /// Another peer is responsible: Attach to it through the admitting peer `via`; when
    /// the link to it comes up, it admits this client.
    Move { to: NodeId, via: NodeId },
    /// Nothing to do (the lookup failed, or answered with this node or nothing new).
    Nothing,
}

/// A client's admitting peer and its search for the responsible one.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    admitting: Option<NodeId>,
    located: bool,
    locating: Option<OpId>,
    moving_to: Option<NodeId>,
    next_locate: Time,
}

impl Admission {
    /// The peer this client reaches the overlay through (its relay).
    pub fn admitting(&self) -> Option<NodeId> {
        self.admitting
    }
    /// Whether the admitting peer was confirmed to be responsible for this Node-ID.
    pub fn located(&self) -> bool {
        self.located
    }
    /// The peer this client is moving to, while the Attach and the link are under way.
    pub fn moving_to(&self) -> Option<NodeId> {
        self.moving_to
    }
    /// Whether `op` is the lookup of the responsible peer.
    pub fn is_locating(&self, op: OpId) -> bool {
        self.locating == Some(op)
    }

    /// The client starts, admitted by its first bootstrap peer.
    pub fn start(&mut self, first: Option<NodeId>) {
        self.admitting = first;
    }

    /// Whether to look up the responsible peer now (no lookup or move under way, and the
    /// interval is over); if so, the next is due [`LOCATE_INTERVAL`] later. The driver
    /// starts a lookup of the node's own id and reports it with [`Admission::locating`].
    pub fn locate_due(&mut self, now: Time) -> bool {
        if self.locating.is_some() || self.moving_to.is_some() || now < self.next_locate {
            return false;
        }
        self.next_locate = now + LOCATE_INTERVAL;
        true
    }

    /// The lookup `op` of the responsible peer was started.
    pub fn locating(&mut self, op: OpId) {
        self.locating = Some(op);
    }

    /// The lookup answered: `responder` (None if it failed) is responsible for `me`.
    /// `linked` says whether a link to a node is open.
    pub fn on_located(
        &mut self,
        me: NodeId,
        responder: Option<NodeId>,
        linked: impl Fn(NodeId) -> bool,
    ) -> Located {
        self.locating = None;
        if responder.is_some() && responder == self.admitting {
            self.located = true;
            return Located::Confirmed;
        }
        let Some(r) = responder.filter(|r| *r != me) else {
            return Located::Nothing;
        };
        if linked(r) {
            return Located::Readmit(r);
        }
        match self.admitting {
            Some(via) => {
                self.moving_to = Some(r);
                Located::Move { to: r, via }
            }
            None => Located::Nothing,
        }
    }

    /// `peer`, linked, admits this client from now on; the next lookup checks at once
    /// that it is the responsible peer.
    pub fn readmit(&mut self, peer: NodeId, now: Time) {
        self.admitting = Some(peer);
        self.moving_to = None;
        self.located = false;
        self.next_locate = now;
    }

    /// Whether a link that came up to `node` makes it the admitting peer: the peer being
    /// moved to, or any peer when the client has none.
    pub fn takes_link(&self, node: NodeId) -> bool {
        self.moving_to == Some(node) || self.admitting.is_none()
    }

    /// The link to `node` went down. True if it was the admitting peer: the client has
    /// none now and reconnects through its bootstrap peers.
    pub fn on_link_down(&mut self, node: NodeId) -> bool {
        if self.admitting != Some(node) {
            return false;
        }
        self.admitting = None;
        self.located = false;
        true
    }

    /// The move to `node` failed (no usable address, or the connection failed): the next
    /// lookup tries again.
    pub fn move_failed(&mut self, node: NodeId) {
        if self.moving_to == Some(node) {
            self.moving_to = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    const ME: NodeId = Id(1);
    const BOOT: NodeId = Id(100);
    const RESP: NodeId = Id(200);

    #[test]
    fn a_client_moves_from_its_bootstrap_peer_to_the_responsible_one_and_confirms_it() {
        let mut a = Admission::default();
        a.start(Some(BOOT));
        let t = Time(5_000_000);
        assert!(a.locate_due(t));
        a.locating(OpId(7));
        assert!(!a.locate_due(t), "one lookup at a time");
        assert!(a.is_locating(OpId(7)));
        assert_eq!(
            a.on_located(ME, Some(RESP), |_| false),
            Located::Move {
                to: RESP,
                via: BOOT
            }
        );
        assert_eq!(a.moving_to(), Some(RESP));
        assert!(!a.locate_due(t + LOCATE_INTERVAL), "not while moving");
        assert!(a.takes_link(RESP) && !a.takes_link(Id(300)));
        a.readmit(RESP, t + Duration::from_secs(1));
        assert_eq!(a.admitting(), Some(RESP));
        assert!(!a.located());
        // Checked again at once, and confirmed.
        assert!(a.locate_due(t + Duration::from_secs(1)));
        a.locating(OpId(8));
        assert_eq!(a.on_located(ME, Some(RESP), |_| true), Located::Confirmed);
        assert!(a.located());
        // The next check is an interval later.
        assert!(!a.locate_due(t + Duration::from_secs(2)));
        assert!(a.locate_due(t + Duration::from_secs(1) + LOCATE_INTERVAL));
    }

    #[test]
    fn a_linked_responsible_peer_is_taken_at_once_and_failures_change_nothing() {
        let mut a = Admission::default();
        a.start(Some(BOOT));
        assert_eq!(
            a.on_located(ME, Some(RESP), |n| n == RESP),
            Located::Readmit(RESP)
        );
        assert_eq!(a.on_located(ME, None, |_| true), Located::Nothing);
        assert_eq!(a.on_located(ME, Some(ME), |_| true), Located::Nothing);
        assert_eq!(a.admitting(), Some(BOOT));
        // A failed move lets the next lookup try again.
        assert_eq!(
            a.on_located(ME, Some(RESP), |_| false),
            Located::Move {
                to: RESP,
                via: BOOT
            }
        );
        a.move_failed(Id(999));
        assert_eq!(a.moving_to(), Some(RESP));
        a.move_failed(RESP);
        assert_eq!(a.moving_to(), None);
    }

    #[test]
    fn losing_the_admitting_peer_leaves_the_client_without_one_until_a_link_comes_up() {
        let mut a = Admission::default();
        a.start(Some(BOOT));
        assert!(!a.on_link_down(RESP), "not the admitting peer");
        assert!(a.on_link_down(BOOT));
        assert_eq!(a.admitting(), None);
        assert!(!a.located());
        // Any peer that links now admits it; without one, a lookup has nowhere to move from.
        assert!(a.takes_link(Id(300)));
        assert_eq!(a.on_located(ME, Some(RESP), |_| false), Located::Nothing);
    }
}
