//! Membership events and their spread by EDRA (D1HT): applying an event, queueing it for
//! the levels a copy covers, the gossip messages, and the probe that reports from other
//! peers wait for (proto/SPEC.md 5.1).

use super::*;

impl OneHop {
    /// Applies a membership change; reports a change of our neighbourhood to the core.
    pub(super) fn change(&mut self, ctx: &mut Ctx<'_>, node: Id, alive: bool) {
        let near = if alive {
            if !self.members.insert(node) {
                return;
            }
            self.in_window(node)
        } else {
            if !self.members.contains(&node) {
                return;
            }
            let near = self.in_window(node);
            self.members.remove(&node);
            if self.departed.len() == DEPARTED_CAP {
                self.departed.pop_front();
            }
            self.departed.push_back(node);
            near
        };
        if self.joined && near {
            ctx.event(TopologyEvent::ResponsibilityChanged);
        }
    }

    /// Whether member `node` is in our neighbourhood: among the `replicas` members after
    /// us or the `replicas + 1` before us (two ranks, instead of listing the neighbourhood
    /// before and after every change).
    pub(super) fn in_window(&self, node: Id) -> bool {
        let n = self.members.len();
        let d = (self.members.rank(node) + n - self.members.rank(self.me)) % n.max(1);
        d <= self.cfg.replicas || d + self.cfg.replicas + 1 >= n
    }

    /// Queues an event for the part of the ring after us that we cover: `cover` ring
    /// positions, ours included. Level l goes to our 2^l-th successor, which covers
    /// min(2^l, cover - 2^l) positions; levels already queued for `covered` are skipped.
    pub(super) fn spread(&mut self, ev: Ev, cover: usize, covered: usize) {
        for l in 0..MAX_LEVELS {
            let step = 1usize << l;
            if step >= cover {
                break;
            }
            let child = step.min(cover - step);
            let before = if step < covered {
                step.min(covered - step)
            } else {
                0
            };
            if child > before {
                if self.outgoing.len() <= l {
                    self.outgoing.resize_with(l + 1, Vec::new);
                }
                self.outgoing[l].push(Ev {
                    span: child as u32,
                    ..ev
                });
            }
        }
    }

    /// An event whose copy asks us to cover `cover` ring positions (ours included; `None`
    /// for one we noticed ourselves, which covers the whole ring): applied if it is news,
    /// and passed on where it has not been yet.
    pub(super) fn learn(&mut self, ctx: &mut Ctx<'_>, ev: Ev, cover: Option<usize>) {
        if ev.node == self.me {
            if !ev.alive && self.joined {
                // Declared gone while alive: refute with a newer event.
                self.announce(ctx, self.me, true, ev.stamp.max(ctx.now.as_millis()) + 1);
            }
            return;
        }
        let mut ev = ev;
        let covered = match self.known.get(&ev.node) {
            Some(k) if k.stamp > ev.stamp && k.alive != ev.alive => return,
            // The same news again (another witness of the same failure, say): spread it only
            // where it has not gone yet, under the newest stamp.
            Some(k) if k.alive == ev.alive => {
                ev.stamp = ev.stamp.max(k.stamp);
                k.cover
            }
            _ => 0,
        };
        if covered == 0 {
            self.change(ctx, ev.node, ev.alive);
            self.recent.push_back((ctx.now, ev));
        }
        let cover = cover.unwrap_or(usize::MAX).min(self.members.len()).max(1);
        self.known.insert(
            ev.node,
            Known {
                alive: ev.alive,
                stamp: ev.stamp,
                seen: ctx.now,
                cover: cover.max(covered),
            },
        );
        self.spread(ev, cover, covered);
    }

    /// An event of our own making: applied and sent round the whole ring.
    pub(super) fn announce(&mut self, ctx: &mut Ctx<'_>, node: Id, alive: bool, stamp: u64) {
        let ev = Ev {
            node,
            alive,
            stamp,
            span: 0,
        };
        if node == self.me {
            self.recent.push_back((ctx.now, ev));
            self.spread(ev, self.members.len(), 0);
        } else {
            self.learn(ctx, ev, None);
        }
    }

    /// Events of a message M(`level`).
    pub(super) fn receive_events(
        &mut self,
        ctx: &mut Ctx<'_>,
        events: &[pb::MembershipEvent],
        level: usize,
    ) {
        let full = 1usize << level.min(MAX_LEVELS);
        for e in events {
            let Some(node) = Id::from_slice(&e.node) else {
                continue;
            };
            let ev = Ev {
                node,
                alive: e.alive,
                stamp: e.stamp,
                span: 0,
            };
            let cover = if e.span == 0 {
                full
            } else {
                (e.span as usize).min(full)
            };
            self.hear(ctx, ev, cover);
        }
    }

    /// An event another peer sent. One that would change our membership is only a
    /// report: a peer can sign only as itself, so it could make up anyone's failure or a
    /// node that does not exist. We probe the node and take the event (and pass it on)
    /// only if the probe agrees: an answer the node signed for an arrival, none for a
    /// failure. Events that change nothing here are taken as they come.
    pub(super) fn hear(&mut self, ctx: &mut Ctx<'_>, ev: Ev, cover: usize) {
        if !self.cfg.confirm_reports
            || ev.node == self.me
            || ev.alive == self.members.contains(&ev.node)
        {
            return self.learn(ctx, ev, Some(cover));
        }
        if self
            .known
            .get(&ev.node)
            .is_some_and(|k| k.alive != ev.alive && k.stamp > ev.stamp)
        {
            return; // older than what we know
        }
        if let Some((e, c)) = self.confirming.get_mut(&ev.node) {
            if e.alive == ev.alive {
                e.stamp = e.stamp.max(ev.stamp);
                *c = (*c).max(cover);
            }
            return;
        }
        if self.confirming.len() >= CONFIRM_MAX {
            return;
        }
        let tok = ctx.request(
            Target::Direct(ev.node),
            pb::ProbeReq {
                requested_info: vec![],
            },
        );
        self.pending.insert(tok, Pending::Confirm(ev.node));
        self.confirming.insert(ev.node, (ev, cover));
    }

    /// The outcome of our probe of `x` (`answered`: an answer `x` signed came back): the
    /// reported event is applied and passed on if the probe agrees with it.
    pub(super) fn confirmed(&mut self, ctx: &mut Ctx<'_>, x: Id, answered: bool) {
        let Some((ev, cover)) = self.confirming.remove(&x) else {
            return;
        };
        if answered == ev.alive && self.members.contains(&x) != ev.alive {
            self.learn(ctx, ev, Some(cover));
        }
    }

    pub(super) fn recent_events(&self) -> Vec<pb::MembershipEvent> {
        self.recent
            .iter()
            .rev()
            .take(MAX_EVENTS)
            .map(|(_, e)| e.wire())
            .collect()
    }

    pub(super) fn update(&self, ctx: &Ctx<'_>) -> pb::OneHopUpdate {
        pb::OneHopUpdate {
            uptime: ctx
                .now
                .since(self.started)
                .as_secs()
                .min(u64::from(u32::MAX)) as u32,
            ..Default::default()
        }
    }

    pub(super) fn update_req(u: pb::OneHopUpdate) -> pb::UpdateReq {
        pb::UpdateReq {
            algorithm: NAME.into(),
            overlay_specific: u.encode_to_vec(),
        }
    }

    /// One EDRA interval: message M(l) to the 2^l-th successor for every level with events.
    pub(super) fn gossip(&mut self, ctx: &mut Ctx<'_>) {
        // A node's newest event orders later copies of events about it; every copy arrives
        // within a spread, so it is kept as long as recent events are (three spreads).
        let keep = self.recent_window();
        self.known.retain(|_, k| ctx.now.since(k.seen) < keep);
        self.hinted.retain(|_, t| ctx.now.since(*t) < keep);
        while let Some((t, _)) = self.recent.front() {
            if ctx.now.since(*t) < keep {
                break;
            }
            self.recent.pop_front();
        }
        let levels = self.levels();
        // Levels the ring has shrunk below: their receivers are covered by lower levels.
        self.outgoing.truncate(levels);
        let me = self.members.rank(self.me);
        for l in 0..self.outgoing.len() {
            if self.outgoing[l].is_empty() {
                continue;
            }
            let Some(t) = self.members.get_wrapping(me + (1usize << l)) else {
                continue;
            };
            if t == self.me {
                self.outgoing[l].clear();
                continue;
            }
            let q = &mut self.outgoing[l];
            let events: Vec<Ev> = q.drain(..q.len().min(MAX_EVENTS)).collect();
            let full = 1u32 << l;
            let u = pb::OneHopUpdate {
                ttl: l as u32,
                events: events
                    .iter()
                    .map(|e| Ev {
                        span: if e.span == full { 0 } else { e.span },
                        ..*e
                    })
                    .map(|e| e.wire())
                    .collect(),
                ..self.update(ctx)
            };
            let tok = ctx.request(Target::Direct(t), Self::update_req(u));
            self.pending.insert(tok, Pending::Gossip(t, l));
            self.in_flight.insert(tok, events);
        }
    }
}
