//! vnamed: a DNS-centric load-balancing authority. Virtual names answer with
//! the servers their pool's policy prefers right now; see `DESIGN.md` for
//! how the parts fit.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod authority;
pub mod backoff;
pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod dns;
pub mod envelope;
pub mod farm;
pub mod files;
pub mod grpc;
pub mod init;
pub mod logs;
pub mod metrics;
pub mod monitor;
pub mod page;
pub mod pool;
pub mod ring;
pub mod srp;
pub mod state;
pub mod sys;
pub mod updater;
pub mod zone;
