//! What vnamed needs from the operating system beyond std, tokio and
//! socket2: batched UDP system calls, atomic file replacement, directory
//! watching, packet rings. All unsafe code lives under this module.

pub mod accept;
pub mod fs;
pub mod mmsg;
pub mod packet;
pub mod service;
pub mod thread;
pub mod watch;
