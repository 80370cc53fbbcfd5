//! The ring layer: hosts that watch each other. So far the server table
//! the authority keeps (who is in the ring and who watches whom); the
//! token-passing state machine and its UDP driver build on it.

pub mod driver;
pub mod member;
pub mod registry;
pub mod table;
pub mod wire;
