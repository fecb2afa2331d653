//! The signed overlay configuration document: sent to peers, taken from them when newer.

use super::*;

impl Runtime {
    /// Sends our overlay configuration document (if any) to a linked node: a new neighbour
    /// with an older one takes ours, one with a newer one sends us its own.
    pub(super) fn send_config(&mut self, to: NodeId) {
        if let Some((sequence, bytes)) = &self.docs.current {
            let update = crate::overlay_config::update_req(*sequence, bytes.clone());
            self.core.config_update(now(), to, update);
        }
    }

    /// A peer's ConfigUpdate: a newer document that verifies is applied, kept and passed on
    /// to every other link; an older one is answered with ours.
    pub(super) fn on_config_update(&mut self, from: NodeId, update: pb::ConfigUpdateReq) {
        use crate::overlay_config::Offer;
        if update.r#type != pb::config_update_req::Type::Config as i32 {
            return;
        }
        match self.docs.offer(update.sequence, &update.config_data) {
            Offer::Taken(doc) => {
                tracing::info!(sequence = doc.sequence, %from, "new overlay configuration document");
                if let Some(l) = &doc.limits {
                    let c = self.core.config();
                    let mut limits = crate::config::Limits {
                        origin_requests_per_s: c.origin_rate,
                        origin_burst: c.origin_burst,
                        origin_max_in_flight: c.origin_max_in_flight,
                        writer_kind_bytes: c.writer_kind_bytes,
                        ..Default::default()
                    };
                    crate::overlay_config::apply_limits(&mut limits, l);
                    self.core.set_limits(
                        limits.origin_requests_per_s,
                        limits.origin_burst,
                        limits.origin_max_in_flight,
                        limits.writer_kind_bytes,
                    );
                }
                for k in &doc.kinds {
                    if let Ok(k) = k.to_kind() {
                        self.core.define_kind(k);
                    }
                }
                if let Ok(ops) = doc.operator_ids() {
                    if doc.operators.is_some() {
                        self.core.set_diagnostics_access(false, ops);
                    }
                }
                metrics::config_sequence(&self.label, doc.sequence);
                for n in self.transport.linked_nodes() {
                    if n != from {
                        self.send_config(n);
                    }
                }
            }
            Offer::Old => {
                if update.sequence < self.docs.sequence() {
                    self.send_config(from);
                }
            }
            Offer::Refused(why) => {
                crate::remote_log!(warn, "config_refused", %from, sequence = update.sequence, "overlay configuration document refused: {why}");
                metrics::config_refused(&self.label);
            }
        }
    }
}
