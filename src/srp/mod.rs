//! The SRP responder and the client-side resolver: `CLUSTER\INSTANCE`
//! resolved to live endpoints over the SQL Server Resolution Protocol
//! (UDP 1434), so that unmodified SQL clients find the server a pool
//! prefers right now.
//!
//! `codec` (the wire format), `directory` (what is answered), `limit` (per
//! source rate limit) and `peer` (active and passive responders) are pure;
//! `server` owns the sockets; `resolver` is the client side.

pub mod cli;
pub mod codec;
pub mod directory;
pub mod limit;
pub mod peer;
pub mod resolver;
pub mod server;
pub mod tds;

use crate::metrics::{Count, Expose, Writer};
use directory::NoReply;

/// What the responder counts.
#[derive(Debug, Default)]
pub struct SrpCounters {
    pub replies: Count,
    no_reply: [Count; NoReply::ALL.len()],
    /// 1 while this responder is the active one.
    pub active: Count,
    /// Times this responder became the active one.
    pub activations: Count,
    /// Peer messages dropped (malformed, forged, replayed, not from a peer).
    pub peer_dropped: Count,
}

impl SrpCounters {
    pub fn no_reply(&self, why: NoReply) {
        self.no_reply[why as usize].inc();
    }

    pub fn no_replies(&self, why: NoReply) -> u64 {
        self.no_reply[why as usize].get()
    }
}

impl Expose for SrpCounters {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        w.counter("vnamed_srp_replies", "SRP replies sent.", self.replies.get())?;
        let dropped = NoReply::ALL.iter().map(|why| (vec![("reason", why.label().into())], self.no_replies(*why))).collect();
        w.counters("vnamed_srp_dropped", "SRP requests left without a reply, by reason.", dropped)?;
        w.gauge("vnamed_srp_active", "1 while this SRP responder is the active one.", self.active.get() as i64)?;
        w.counter("vnamed_srp_activations", "Times this SRP responder became the active one.", self.activations.get())?;
        w.counter(
            "vnamed_srp_peer_dropped",
            "SRP peer messages dropped (malformed, forged, replayed, not from a peer).",
            self.peer_dropped.get(),
        )
    }
}
