//! The algorithm slot: the `Topology` trait every DHT implements, and the context through
//! which it acts. An algorithm is a pure state machine: it never touches a socket or a clock
//! and draws randomness only from the seeded RNG in its [`Ctx`].

use crate::id::{Id, NodeId};
use crate::time::Time;
use p2psip_proto::pb::ErrorCode;
use p2psip_proto::{pb, Body, Destination};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Where a message for a target goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// This node is responsible for the target.
    Local,
    /// Send the message to this node.
    Forward(NodeId),
}

/// How a request issued by an algorithm travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Straight to a node over a direct link (neighbour maintenance). A timeout means the
    /// node or the link failed.
    Direct(NodeId),
    /// Routed through the overlay along a destination list; a Node-ID entry is routed by
    /// id unless it is a neighbour.
    Route(Vec<Destination>),
    /// Sent straight to the first entry (a node known from earlier, not necessarily a
    /// neighbour), which routes the rest: used to join through a bootstrap peer and to
    /// look oneself up through a peer from another part of the overlay.
    SourceRoute(Vec<Destination>),
}

/// What the transport reports about a link to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link to the node is up.
    Up(NodeId),
    /// The link failed (the node crashed, or the network dropped it).
    Failed(NodeId),
}

/// Who sent a topology request: its originator, whose Node-ID is verified (the link's TLS
/// handshake or the message's signature proves it), and whether this node reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub id: NodeId,
    /// The request came straight over the originator's own link, whose handshake proved
    /// its Node-ID: this node reaches it. Otherwise it came through other peers, and the
    /// originator is only a hint until this node has reached it itself (a link, or a
    /// signed answer from it); it enters no table before (proto/SPEC.md 5.4).
    pub reached: bool,
}

/// A timer an algorithm sets; the value is the algorithm's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u64);

/// Events an algorithm reports to the overlay core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyEvent {
    /// The node's range or replica sets may have changed: storage re-checks replication.
    ResponsibilityChanged,
    /// The node has joined the overlay (or formed a new one).
    Joined,
    /// Joining failed; the reason is human readable.
    JoinFailed(String),
    /// A graceful leave has been announced to the neighbours.
    Left,
}

/// One action an algorithm asks the core to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum TopologyAction {
    Request {
        token: u64,
        target: Target,
        body: Body,
    },
    Timer {
        at: Time,
        timer: TimerId,
    },
    Event(TopologyEvent),
}

/// The context of one call into an algorithm: the time, the RNG, and the outbox.
pub struct Ctx<'a> {
    pub now: Time,
    pub rng: &'a mut ChaCha8Rng,
    actions: &'a mut Vec<TopologyAction>,
    next_token: &'a mut u64,
    /// Round trips the core measured to nodes it sent direct requests to.
    rtts: Option<&'a std::collections::HashMap<NodeId, std::time::Duration>>,
}

impl<'a> Ctx<'a> {
    /// A context writing actions into `actions`; tokens are drawn from `next_token`.
    pub fn new(
        now: Time,
        rng: &'a mut ChaCha8Rng,
        actions: &'a mut Vec<TopologyAction>,
        next_token: &'a mut u64,
    ) -> Self {
        Ctx {
            now,
            rng,
            actions,
            next_token,
            rtts: None,
        }
    }

    /// The same context, with the round trips the core has measured.
    pub fn with_rtts(
        mut self,
        rtts: &'a std::collections::HashMap<NodeId, std::time::Duration>,
    ) -> Self {
        self.rtts = Some(rtts);
        self
    }

    /// The round trip last measured to `node` by a direct request's first attempt.
    pub fn rtt(&self, node: NodeId) -> Option<std::time::Duration> {
        self.rtts.and_then(|m| m.get(&node).copied())
    }

    /// Sends a request; its answer (or failure) comes back to `Topology::on_answer` with the
    /// returned token.
    pub fn request(&mut self, target: Target, body: impl Into<Body>) -> u64 {
        *self.next_token += 1;
        let token = *self.next_token;
        self.actions.push(TopologyAction::Request {
            token,
            target,
            body: body.into(),
        });
        token
    }

    /// Arms a timer that fires `Topology::on_timer(timer)` after `after`.
    pub fn set_timer(&mut self, after: Duration, timer: TimerId) {
        self.actions.push(TopologyAction::Timer {
            at: self.now + after,
            timer,
        });
    }

    /// Arms a timer after `after` spread by ±10%, so that nodes do not act in lock-step.
    pub fn set_timer_jittered(&mut self, after: Duration, timer: TimerId) {
        let f: f64 = rand::Rng::random_range(&mut *self.rng, 0.9..1.1);
        self.set_timer(after.mul_f64(f), timer);
    }

    /// Reports an event to the core.
    pub fn event(&mut self, e: TopologyEvent) {
        self.actions.push(TopologyAction::Event(e));
    }
}

/// A view of an algorithm's routing state, for metrics, Stat and diagnostics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingSnapshot {
    pub algorithm: &'static str,
    pub node: NodeId,
    pub predecessors: Vec<NodeId>,
    pub successors: Vec<NodeId>,
    /// Distinct long-range entries (Chord fingers, Kademlia bucket entries, ...).
    pub fingers: Vec<NodeId>,
}

/// An answer to a request an algorithm sent.
pub type Answer<'a> = Result<&'a Body, &'a pb::ErrorAns>;

/// One overlay algorithm: Chord, Kademlia, ... Pure: no IO, no clock, no global RNG.
pub trait Topology: Send {
    /// The algorithm's name as used in configuration (`algorithm = "chord"`).
    fn name(&self) -> &'static str;
    /// This node's id.
    fn local_id(&self) -> NodeId;
    /// Whether the node is part of an overlay (joined, or the first node of one).
    fn is_joined(&self) -> bool;
    /// Where should a message for `target` go next? `Local` when this node is responsible.
    fn next_hop(&self, target: Id) -> NextHop;
    /// Whether the node is one this algorithm keeps a direct link to.
    fn is_neighbor(&self, node: NodeId) -> bool;
    /// Other first hops towards `target` than `next_hop`'s, best first. The originator of
    /// a request sends its retransmissions through them in turn, so that one neighbour
    /// that drops what it should forward cannot stop every attempt (proto/SPEC.md
    /// section 8). Default: none (retransmissions take the same route).
    fn next_hop_alternatives(&self, _target: Id) -> Vec<NodeId> {
        Vec::new()
    }
    /// Whether `responder` can be the node responsible for `target` as seen from this
    /// node, by the algorithm's geometry alone (no table, so no stale entry, enters it):
    /// an answer to a request routed to `target` from a responder that cannot be is
    /// dropped, as a peer on the path answering in the responsible peer's place would be
    /// (proto/SPEC.md 5.4). Default: any responder.
    fn plausible_responder(&self, _target: Id, _responder: NodeId) -> bool {
        true
    }
    /// The nodes that must hold copies of data stored at `resource` (responsible first,
    /// then replicas), as far as this node knows.
    fn replica_set(&self, resource: Id) -> Vec<NodeId>;
    /// Whether `node` may push copies of data at `resource` to this node (replication,
    /// hand-over at a join or leave): it belongs to the resource's replica neighbourhood
    /// as this node sees it. A copy from anyone else is refused (proto/SPEC.md 6).
    fn may_copy_to_me(&self, node: NodeId, resource: Id) -> bool {
        self.replica_set(resource).contains(&node) || self.is_neighbor(node)
    }
    /// Starts the algorithm: join through `bootstrap`, or form a new overlay if it is empty.
    fn start(&mut self, ctx: &mut Ctx<'_>, bootstrap: &[NodeId]);
    /// Starts already joined, from a complete snapshot of the overlay's members (sorted,
    /// this node included): a node restoring a full membership cache, or a simulation
    /// starting from a converged overlay. The default joins through the first other member.
    fn start_with_members(&mut self, ctx: &mut Ctx<'_>, members: &[NodeId]) {
        let me = self.local_id();
        let boot: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|m| *m != me)
            .take(1)
            .collect();
        self.start(ctx, &boot);
    }
    /// A topology request (Join, Update, Leave, Probe, RouteQuery) for this node from the
    /// node `from`; returns the answer body or an error. Node-IDs the body lists are hints:
    /// an algorithm takes one into its tables only once it has reached it itself, and
    /// contacts no more of them than its tables hold.
    fn on_request(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: Origin,
        body: &Body,
    ) -> Result<Body, (ErrorCode, String)>;
    /// The answer to a request this algorithm sent, with the node that answered.
    fn on_answer(
        &mut self,
        ctx: &mut Ctx<'_>,
        token: u64,
        responder: Option<NodeId>,
        answer: Answer<'_>,
    );
    /// A link event from the transport.
    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent);
    /// A timer this algorithm set has fired.
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId);
    /// Leaves gracefully: tells the neighbours, then reports `TopologyEvent::Left`.
    fn leave(&mut self, ctx: &mut Ctx<'_>);
    /// The routing table, for metrics and diagnostics.
    fn routing_table(&self) -> RoutingSnapshot;
    /// Whether this node routes and stores for others (peers do, clients do not).
    fn is_peer(&self) -> bool {
        true
    }
}
