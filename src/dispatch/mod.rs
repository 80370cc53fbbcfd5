//! The packet dispatcher for virtual IPs: frames to a virtual IP are
//! switched at layer 4 in application space, with layer 2 (L4/2) or
//! layer 3 (L4/3) address translation, and every connection stays with the
//! server it was given.
//!
//! `frame` (parsing, rewriting, checksums), `conntrack` (the connection
//! map), `engine` (the decisions) and `steer` (which capture thread owns a
//! connection) are pure; `driver` (the capture threads) and `control`
//! (following pools, rebuilding the map after a take-over) run them.

pub mod conntrack;
mod control;
pub mod driver;
pub mod engine;
pub mod frame;
pub mod splice;
pub mod steer;
