//! What vnamed needs from the operating system beyond std, tokio and
//! socket2: batched UDP system calls, atomic file replacement, directory
//! watching. All unsafe code lives under this module.

pub mod fs;
pub mod mmsg;
pub mod thread;
pub mod watch;
