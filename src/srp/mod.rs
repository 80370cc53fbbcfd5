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

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use directory::NoReply;

/// What the responder counts, for the authority's `/metrics`.
#[derive(Debug, Default)]
pub struct SrpCounters {
    pub replies: AtomicU64,
    no_reply: [AtomicU64; NoReply::ALL.len()],
    /// 1 while this responder is the active one.
    pub active: AtomicU64,
    /// Times this responder became the active one.
    pub activations: AtomicU64,
    /// Peer messages dropped (malformed, forged, replayed, not from a peer).
    pub peer_dropped: AtomicU64,
}

impl SrpCounters {
    pub fn no_reply(&self, why: NoReply) {
        self.no_reply[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn no_replies(&self, why: NoReply) -> u64 {
        self.no_reply[why as usize].load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP vnamed_srp_replies_total SRP replies sent.\n# TYPE vnamed_srp_replies_total counter\nvnamed_srp_replies_total {}",
            self.replies.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP vnamed_srp_dropped_total SRP requests left without a reply, by reason.\n# TYPE vnamed_srp_dropped_total counter\n",
        );
        for why in NoReply::ALL {
            let _ = writeln!(out, "vnamed_srp_dropped_total{{reason=\"{}\"}} {}", why.label(), self.no_replies(why));
        }
        for (name, help, kind, v) in [
            ("vnamed_srp_active", "1 while this SRP responder is the active one.", "gauge", &self.active),
            ("vnamed_srp_activations_total", "Times this SRP responder became the active one.", "counter", &self.activations),
            (
                "vnamed_srp_peer_dropped_total",
                "SRP peer messages dropped (malformed, forged, replayed, not from a peer).",
                "counter",
                &self.peer_dropped,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", v.load(Ordering::Relaxed));
        }
    }
}
