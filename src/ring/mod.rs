//! The ring layer: hosts that watch each other. `member` (the
//! token-passing state machine), `wire` (its messages), `table` and
//! `registry` (the authority's server table) are pure; `store` keeps the
//! registry on disk; `driver` owns the UDP socket.

pub mod driver;
pub mod member;
pub mod registry;
pub mod store;
pub mod table;
pub mod wire;
