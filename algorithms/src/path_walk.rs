//! The originator's side of PathTrack (proto/SPEC.md 4.1): ask the first peer where it
//! passes a request for the target, then ask that peer, and so on until one says it is
//! responsible. Sans-IO: the caller sends each PathTrack and feeds the answers in.

use crate::id::{Id, NodeId};
use p2psip_proto::pb;

/// One peer on the path, as it answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    pub node: NodeId,
    /// Where it passes a request for the target (itself when responsible).
    pub next: NodeId,
    pub responsible: bool,
    pub diagnostics: Vec<pb::DiagnosticInfo>,
}

/// How a walk ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The last hop is responsible for the target.
    Responsible,
    /// A peer named a next hop already on the path (the tables disagree).
    Loop(NodeId),
    /// More hops than the walk allows.
    TooLong,
    /// An answer that does not make sense (a next hop that is not 16 bytes).
    Invalid(String),
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send a PathTrack for the target to this node.
    Ask(NodeId),
    Done(End),
}

/// A walk in progress.
#[derive(Debug, Clone)]
pub struct PathWalk {
    pub target: Id,
    pub hops: Vec<Hop>,
    max_hops: usize,
    asked: NodeId,
    end: Option<End>,
}

impl PathWalk {
    /// A walk for `target` that starts at `first` (a client's admitting peer, or the node
    /// itself) and gives up after `max_hops` answers.
    pub fn new(target: Id, first: NodeId, max_hops: usize) -> (PathWalk, Step) {
        let w = PathWalk {
            target,
            hops: Vec::new(),
            max_hops: max_hops.max(1),
            asked: first,
            end: None,
        };
        (w, Step::Ask(first))
    }

    /// The node whose answer is awaited (None once the walk has ended).
    pub fn asking(&self) -> Option<NodeId> {
        self.end.is_none().then_some(self.asked)
    }

    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// The answer of the node asked last.
    pub fn on_answer(&mut self, ans: pb::PathTrackAns) -> Step {
        if let Some(e) = &self.end {
            return Step::Done(e.clone());
        }
        let Some(next) = Id::from_slice(&ans.next_hop) else {
            return self.finish(End::Invalid(format!(
                "{} named a next hop of {} bytes",
                self.asked,
                ans.next_hop.len()
            )));
        };
        let node = self.asked;
        self.hops.push(Hop {
            node,
            next,
            responsible: ans.responsible,
            diagnostics: ans.diagnostics,
        });
        if ans.responsible {
            return self.finish(End::Responsible);
        }
        if next == node || self.hops.iter().any(|h| h.node == next) {
            return self.finish(End::Loop(next));
        }
        if self.hops.len() >= self.max_hops {
            return self.finish(End::TooLong);
        }
        self.asked = next;
        Step::Ask(next)
    }

    fn finish(&mut self, e: End) -> Step {
        self.end = Some(e.clone());
        Step::Done(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(next: u128, responsible: bool) -> pb::PathTrackAns {
        pb::PathTrackAns {
            next_hop: Id(next).to_bytes().to_vec(),
            responsible,
            ..Default::default()
        }
    }

    #[test]
    fn a_walk_follows_next_hops_until_the_responsible_peer() {
        let (mut w, s) = PathWalk::new(Id(99), Id(1), 8);
        assert_eq!(s, Step::Ask(Id(1)));
        assert_eq!(w.on_answer(ans(5, false)), Step::Ask(Id(5)));
        assert_eq!(w.on_answer(ans(7, false)), Step::Ask(Id(7)));
        assert_eq!(w.on_answer(ans(7, true)), Step::Done(End::Responsible));
        let nodes: Vec<Id> = w.hops.iter().map(|h| h.node).collect();
        assert_eq!(nodes, vec![Id(1), Id(5), Id(7)]);
        assert_eq!(w.asking(), None);
    }

    #[test]
    fn loops_long_paths_and_garbage_end_the_walk() {
        let (mut w, _) = PathWalk::new(Id(99), Id(1), 8);
        w.on_answer(ans(5, false));
        assert_eq!(w.on_answer(ans(1, false)), Step::Done(End::Loop(Id(1))));
        let (mut w, _) = PathWalk::new(Id(99), Id(1), 2);
        w.on_answer(ans(5, false));
        assert_eq!(w.on_answer(ans(6, false)), Step::Done(End::TooLong));
        let (mut w, _) = PathWalk::new(Id(99), Id(1), 2);
        let bad = pb::PathTrackAns {
            next_hop: vec![1, 2, 3],
            ..Default::default()
        };
        assert!(matches!(w.on_answer(bad), Step::Done(End::Invalid(_))));
    }
}
