//! The authority's ring registry: the server table plus the members
//! reported dead and not back yet, and the text form it is kept in on disk
//! so that it survives a restart. Pure: the caller does the file I/O.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;

use super::table::{Buddies, ServerTable, TableError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub table: ServerTable<SocketAddr>,
    pub dead: BTreeSet<SocketAddr>,
    /// The member that last said the ring elected it dispatcher, while it
    /// is in the table.
    pub dispatcher: Option<SocketAddr>,
}

/// Operations on the server table, as ring members report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingOp {
    Announce(SocketAddr),
    /// A member says the ring elected it dispatcher, or no longer.
    Elected {
        member: SocketAddr,
        elected: bool,
    },
    /// `reporter` is the member itself on a normal shutdown.
    Delete {
        dead: SocketAddr,
        reporter: SocketAddr,
    },
    Table,
}

#[derive(Debug, Clone)]
pub enum RingReply {
    Buddies([SocketAddr; 2]),
    Done,
    Table(Registry),
}

/// What an operation does: the registry after it (`None`: unchanged),
/// the answer to the member, and what the log says of it.
#[derive(Debug, Clone)]
pub struct Step {
    pub next: Option<Registry>,
    pub reply: RingReply,
    pub said: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RegistryError {
    pub line: usize,
    pub message: String,
}

impl Registry {
    /// A member joins (or comes back).
    pub fn announce(&mut self, member: SocketAddr) -> Result<Buddies<SocketAddr>, TableError> {
        let buddies = self.table.announce(member)?;
        self.dead.remove(&member);
        Ok(buddies)
    }

    /// A member died or left.
    pub fn delete(&mut self, member: SocketAddr, died: bool) -> Result<Buddies<SocketAddr>, TableError> {
        let buddies = self.table.delete(member)?;
        if died {
            self.dead.insert(member);
        }
        if self.dispatcher == Some(member) {
            self.dispatcher = None;
        }
        Ok(buddies)
    }

    /// `member` says the ring elected it dispatcher, or no longer.
    /// Returns whether that changed anything; a stranger is refused.
    pub fn elected(&mut self, member: SocketAddr, elected: bool) -> Result<bool, TableError> {
        if !self.table.contains(&member) {
            return Err(TableError::Absent(member.to_string()));
        }
        let before = self.dispatcher;
        if elected {
            self.dispatcher = Some(member);
        } else if self.dispatcher == Some(member) {
            self.dispatcher = None;
        }
        Ok(before != self.dispatcher)
    }

    /// The hosts of the members reported dead: out of every answer.
    pub fn dead_hosts(&self) -> Vec<std::net::IpAddr> {
        self.dead.iter().map(|a| a.ip()).collect()
    }

    /// What `op` would do to this registry; the registry itself is left
    /// as it is (the caller keeps the result once it is saved).
    pub fn step(&self, op: &RingOp) -> Result<Step, TableError> {
        let mut next = self.clone();
        let (reply, said) = match *op {
            RingOp::Table => return Ok(Step { next: None, reply: RingReply::Table(self.clone()), said: String::new() }),
            RingOp::Announce(member) => {
                let b = next.announce(member)?;
                (RingReply::Buddies(b), format!("ring member {member} joined (buddies {} and {})", b[0], b[1]))
            }
            RingOp::Elected { member, elected } => {
                if !next.elected(member, elected)? {
                    return Ok(Step { next: None, reply: RingReply::Done, said: String::new() });
                }
                let said = if elected {
                    format!("ring dispatcher is {member}")
                } else {
                    format!("ring member {member} is no longer the dispatcher")
                };
                (RingReply::Done, said)
            }
            RingOp::Delete { dead, reporter } => {
                let left = dead == reporter;
                let b = next.delete(dead, !left)?;
                let said = if left {
                    format!("ring member {dead} left")
                } else {
                    format!("ring member {dead} dead (reported by {reporter}); out of every answer")
                };
                (RingReply::Buddies(b), said)
            }
        };
        Ok(Step { next: Some(next), reply, said })
    }

    /// `member A B` lines, then `dead ADDRESS` lines.
    pub fn to_text(&self) -> String {
        let mut out = String::from("# vnamed ring server table: member buddy-A buddy-B; dead members\n");
        for (m, [a, b]) in self.table.entries() {
            let _ = writeln!(out, "{m} {a} {b}");
        }
        for d in &self.dead {
            let _ = writeln!(out, "dead {d}");
        }
        if let Some(d) = self.dispatcher {
            let _ = writeln!(out, "dispatcher {d}");
        }
        out
    }

    pub fn from_text(text: &str) -> Result<Self, RegistryError> {
        let mut entries = Vec::new();
        let mut dead = BTreeSet::new();
        let mut dispatcher = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| RegistryError { line: i + 1, message };
            let words: Vec<&str> = line.split_whitespace().collect();
            let addr = |w: &str| w.parse::<SocketAddr>().map_err(|_| err(format!("{w:?} is not an ip:port")));
            match words.as_slice() {
                ["dead", d] => {
                    dead.insert(addr(d)?);
                }
                ["dispatcher", d] => dispatcher = Some(addr(d)?),
                [m, a, b] => entries.push((addr(m)?, [addr(a)?, addr(b)?])),
                _ => return Err(err("expected `member buddyA buddyB` or `dead member`".into())),
            }
        }
        let table = ServerTable::from_entries(entries);
        // Every buddy must be a member: a table that does not close is not ours.
        for (m, [a, b]) in table.entries() {
            for x in [a, b] {
                if !table.contains(x) {
                    return Err(RegistryError { line: 0, message: format!("{m}'s buddy {x} is not in the table") });
                }
            }
        }
        let dispatcher = dispatcher.filter(|d| table.contains(d));
        Ok(Self { table, dead, dispatcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_leaves_the_registry_as_it_is_and_says_what_it_would_do() {
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.2:7946".parse().unwrap(), "127.0.0.3:7946".parse().unwrap());
        let mut r = Registry::default();
        r.announce(a).unwrap();
        let step = r.step(&RingOp::Announce(b)).unwrap();
        assert!(step.said.contains("127.0.0.3:7946 joined"), "{}", step.said);
        let next = step.next.unwrap();
        assert!(next.table.contains(&b) && !r.table.contains(&b), "only the step's registry has it");
        let step = next.step(&RingOp::Delete { dead: a, reporter: b }).unwrap();
        assert!(step.next.unwrap().dead.contains(&a));
        // Nothing to change: no next registry, nothing to commit.
        assert!(next.step(&RingOp::Elected { member: a, elected: false }).unwrap().next.is_none());
        assert!(next.step(&RingOp::Table).unwrap().next.is_none());
        assert!(r.step(&RingOp::Delete { dead: b, reporter: a }).is_err(), "a stranger cannot die");
    }

    #[test]
    fn round_trips_and_refuses_broken_text() {
        let mut r = Registry::default();
        for a in ["127.0.0.2:7946", "127.0.0.5:7946", "127.0.0.6:7946"] {
            r.announce(a.parse().unwrap()).unwrap();
        }
        r.delete("127.0.0.5:7946".parse().unwrap(), true).unwrap();
        assert_eq!(r.elected("127.0.0.6:7946".parse().unwrap(), true), Ok(true));
        assert!(r.elected("127.0.0.9:7946".parse().unwrap(), true).is_err(), "a stranger is not the dispatcher");
        let again = Registry::from_text(&r.to_text()).unwrap();
        assert_eq!(again, r);
        assert_eq!(again.dead.len(), 1);
        assert_eq!(Registry::from_text("127.0.0.1:1 nonsense 127.0.0.1:2\n").unwrap_err().line, 1);
        assert!(Registry::from_text("127.0.0.1:1 127.0.0.1:2 127.0.0.1:2\n").is_err(), "buddies must be members");
        // A member that comes back is no longer dead.
        r.announce("127.0.0.5:7946".parse().unwrap()).unwrap();
        assert!(r.dead.is_empty());
        // The dispatcher that stops being one, or leaves, is no longer shown.
        assert_eq!(r.dispatcher, Some("127.0.0.6:7946".parse().unwrap()));
        assert_eq!(r.elected("127.0.0.6:7946".parse().unwrap(), false), Ok(true));
        r.elected("127.0.0.2:7946".parse().unwrap(), true).unwrap();
        r.delete("127.0.0.2:7946".parse().unwrap(), false).unwrap();
        assert_eq!(r.dispatcher, None);
    }
}
