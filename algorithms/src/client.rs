//! The topology of a client: a node that talks only to its admitting peer and never routes
//! or stores for others. It fills the same slot as a DHT, so clients run the same core.

use crate::id::{Id, NodeId};
use crate::topology::*;
use p2psip_proto::pb::ErrorCode;
use p2psip_proto::Body;

/// Configuration name of the client role.
pub const NAME: &str = "client";

pub struct ClientTopology {
    me: NodeId,
    peer: Option<NodeId>,
    joined: bool,
}

impl ClientTopology {
    pub fn new(me: NodeId) -> Self {
        ClientTopology {
            me,
            peer: None,
            joined: false,
        }
    }
}

impl Topology for ClientTopology {
    fn name(&self) -> &'static str {
        NAME
    }
    fn local_id(&self) -> NodeId {
        self.me
    }
    fn is_joined(&self) -> bool {
        self.joined
    }
    /// Everything goes to the admitting peer, even a Resource-ID equal to the client's own
    /// Node-ID (a client holds no range: a client behind a NAT looks up the peer
    /// responsible for its Node-ID that way).
    fn next_hop(&self, _target: Id) -> NextHop {
        match self.peer {
            Some(p) => NextHop::Forward(p),
            None => NextHop::Local,
        }
    }
    fn is_neighbor(&self, node: NodeId) -> bool {
        self.peer == Some(node)
    }
    fn replica_set(&self, _resource: Id) -> Vec<NodeId> {
        Vec::new()
    }
    /// The first bootstrap entry is the admitting peer.
    fn start(&mut self, ctx: &mut Ctx<'_>, bootstrap: &[NodeId]) {
        self.peer = bootstrap.first().copied();
        self.joined = self.peer.is_some();
        if self.joined {
            ctx.event(TopologyEvent::Joined);
        } else {
            ctx.event(TopologyEvent::JoinFailed(
                "a client needs an admitting peer".into(),
            ));
        }
    }
    fn on_request(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _from: Origin,
        body: &Body,
    ) -> Result<Body, (ErrorCode, String)> {
        Err((
            ErrorCode::Forbidden,
            format!("a client does not serve {}", body.method_name()),
        ))
    }
    fn on_answer(&mut self, _: &mut Ctx<'_>, _: u64, _: Option<NodeId>, _: Answer<'_>) {}
    fn on_link(&mut self, ctx: &mut Ctx<'_>, event: LinkEvent) {
        if event == LinkEvent::Failed(self.peer.unwrap_or(self.me)) {
            self.joined = false;
            ctx.event(TopologyEvent::JoinFailed("lost the admitting peer".into()));
        }
    }
    fn on_timer(&mut self, _: &mut Ctx<'_>, _: TimerId) {}
    fn leave(&mut self, ctx: &mut Ctx<'_>) {
        self.joined = false;
        ctx.event(TopologyEvent::Left);
    }
    fn routing_table(&self) -> RoutingSnapshot {
        RoutingSnapshot {
            algorithm: NAME,
            node: self.me,
            successors: self.peer.into_iter().collect(),
            ..RoutingSnapshot::default()
        }
    }
    fn is_peer(&self) -> bool {
        false
    }
}
