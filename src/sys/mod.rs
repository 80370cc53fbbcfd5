//! The Linux system calls vnamed uses beyond what std, tokio and socket2
//! offer. All unsafe code lives under this module.

pub mod mmsg;
