//! The group's state in the catalog (`[cluster] backend = "etcd"`): an
//! operator's change or a ring member's report is staged here and
//! proposed to the group instead of saved (it is applied when the commit
//! holds); the group's news and the outcomes of this authority's requests
//! are reconciled (`cluster::reconcile`, pure) and what that asks is done
//! here: the group's overrides, ring table, decisions and views applied,
//! requests handed to the etcd driver.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::warn;

use super::{Answer, Catalog, Command, Output, PoolChange, Reply, UpdateError};
use crate::clock::Now;
use crate::cluster::reconcile::{Proposal, Reconcile, Step};
use crate::cluster::{ClusterError, ClusterStatus};
use crate::ring::registry::{RingOp, RingReply};
use crate::state::Put;

/// Where a proposal to the group is answered.
pub(super) enum GroupReply {
    Pool { pool: String, answer: Answer },
    Ring { answer: RingReply, tx: oneshot::Sender<Result<RingReply, UpdateError>> },
}

fn refused(e: ClusterError) -> UpdateError {
    UpdateError::Cluster(e.to_string())
}

impl Catalog {
    /// Serves the group's decisions from now on and shares this
    /// authority's changes with it: `name` is this authority's in the
    /// group, `fingerprint` its pools'.
    pub fn join_group(&mut self, name: String, fingerprint: String, status: Arc<ClusterStatus>) {
        self.table.join_group();
        self.cluster = Some(status.clone());
        self.group = Some(Reconcile::new(name, fingerprint, status));
    }

    /// A command in a group: changes are proposed to it; the rest, and
    /// everything without a group, are given back.
    pub(super) fn group_command(&mut self, cmd: Command, now: Now) -> Option<Command> {
        if self.group.is_none() {
            return Some(cmd);
        }
        match cmd {
            Command::SetMember { pool, id, admin, weight, reply } => {
                self.propose_pool(pool, PoolChange::Member { id, admin, weight }, 0, Answer::Done(reply), now)
            }
            Command::Pool { pool, change, reply } => self.propose_pool(pool, change, 0, Answer::Addresses(reply), now),
            Command::Ring { op, reply } if op != RingOp::Table => self.propose_ring(op, 0, reply),
            Command::Reconfigure { pools, reply } => {
                let r = self.reconfigure(&pools, now);
                if let (Ok(()), Some(g)) = (&r, self.group.as_mut()) {
                    g.reconfigured(crate::cluster::fingerprint(&pools));
                }
                self.reply(Reply::new(reply, r));
            }
            other => return Some(other),
        }
        self.group_steps(now);
        None
    }

    fn propose_pool(&mut self, pool: String, change: PoolChange, attempt: u32, answer: Answer, now: Now) {
        let staged = match self.stage(&pool, change.clone(), now) {
            Ok(s) => s,
            Err(e) => return self.out.push_back(Output::Reply(answer.reply(Err(e)))),
        };
        let (key, overrides) = staged.overrides();
        let overrides = overrides.clone();
        if let Some(g) = self.group.as_mut() {
            g.propose_pool(key, pool.clone(), change, overrides, attempt, GroupReply::Pool { pool, answer });
        }
    }

    fn propose_ring(&mut self, op: RingOp, attempt: u32, tx: oneshot::Sender<Result<RingReply, UpdateError>>) {
        let step = match self.ring.step(&op) {
            Ok(s) => s,
            Err(e) => return self.out.push_back(Output::Reply(Reply::new(tx, Err(e.into())))),
        };
        let next = step.next.map(|n| (n, step.said));
        if let Some(g) = self.group.as_mut() {
            g.propose_ring(op, next, attempt, GroupReply::Ring { answer: step.reply, tx });
        }
    }

    /// The group's news: a watch event, or a request's outcome.
    pub(super) fn group_input(&mut self, input: GroupInput, now: Now) {
        let Some(g) = self.group.as_mut() else { return };
        match input {
            GroupInput::Event(e) => g.event(e, &self.ring, now.instant),
            GroupInput::Outcome(o) => g.outcome(o, &self.ring, now.instant),
        }
        self.group_steps(now);
    }

    /// Offers this authority's own decisions (while it decides), before a publish.
    pub(super) fn group_offer(&mut self, now: Now) {
        let Some(g) = self.group.as_mut() else { return };
        if g.wants_all() {
            self.table.offer_all(now.instant);
        }
        let offers = self.take_offers();
        if !offers.is_empty() {
            let local: HashMap<String, u32> = self.zone_serials().into_iter().collect();
            if let Some(g) = self.group.as_mut() {
                g.offer(offers, &local);
            }
        }
        self.group_steps(now);
    }

    /// Now and then: raises, retries and views.
    pub(super) fn group_tick(&mut self, now: Now) {
        if self.group.is_none() {
            return;
        }
        let (serials, views) = (self.zone_serials(), self.own_views(now.instant));
        if let Some(g) = self.group.as_mut() {
            g.tick(now.instant, &serials, views);
        }
        self.group_steps(now);
    }

    /// Does what reconciling asks.
    fn group_steps(&mut self, now: Now) {
        loop {
            let Some(step) = self.group.as_mut().and_then(|g| g.poll()) else { return };
            match step {
                Step::Send(request) => self.out.push_back(Output::Cluster(request)),
                Step::ApplyOverrides { pool, overrides } => match self.stage(&pool, PoolChange::Replace(overrides), now) {
                    Ok(staged) => {
                        // Kept in the embedded store too: with etcd out of reach
                        // at the next start, the last state is served.
                        self.saves.extend(staged.saves().into_iter().cloned());
                        if let Err(e) = self.commit(staged, now) {
                            warn!(%pool, error = %e, "the group's overrides could not be applied");
                        }
                    }
                    Err(e) => warn!(%pool, error = %e, "the group's overrides name a pool this authority does not serve"),
                },
                Step::ApplyRing(ring) => {
                    self.saves.push(Put::Ring(ring.to_text()));
                    self.set_ring(ring, now.instant);
                }
                Step::Impose { decisions, serials } => self.impose(decisions, serials, now.instant),
                Step::RemoteViews(words) => self.remote_views(words, now.instant),
                Step::OfferAll => self.table.offer_all(now.instant),
                Step::Again { proposal: Proposal::Pool { change, .. }, attempt, reply: GroupReply::Pool { pool, answer } } => {
                    self.propose_pool(pool, change, attempt, answer, now)
                }
                Step::Again { proposal: Proposal::Ring { op }, attempt, reply: GroupReply::Ring { tx, .. } } => {
                    self.propose_ring(op, attempt, tx)
                }
                Step::Again { reply, .. } => {
                    self.group_done(reply, Err(ClusterError::Unavailable("internal: a retry of another kind".into())))
                }
                Step::Done { reply, result } => self.group_done(reply, result),
            }
        }
    }

    fn group_done(&mut self, reply: GroupReply, result: Result<(), ClusterError>) {
        let r = match (reply, result) {
            (GroupReply::Pool { pool, answer }, Ok(())) => answer.reply(self.served(&pool)),
            (GroupReply::Pool { answer, .. }, Err(e)) => answer.reply(Err(refused(e))),
            (GroupReply::Ring { answer, tx }, Ok(())) => Reply::new(tx, Ok(answer)),
            (GroupReply::Ring { tx, .. }, Err(e)) => Reply::new(tx, Err(refused(e))),
        };
        self.reply(r);
    }
}

/// What the etcd driver brings.
pub enum GroupInput {
    Event(crate::cluster::Event),
    Outcome(crate::cluster::reconcile::Outcome),
}
