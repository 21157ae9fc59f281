//! Several nodes, one account. Nodes that share a state store (PostgreSQL) register under their
//! `cluster.node_id`, and take turns at each *role*: polling jmafile, polling archives, running
//! retention. A role is a lease in the store ([`ClusterStore::lead`]); its holder renews it every
//! third of `cluster.lease`, and every cursor commit carries the lease's fencing token, so a
//! node that was paused or cut off past its lease can never commit after the new leader. Every
//! node downloads (claims have their own leases). A single node takes the same paths and simply
//! always leads.
//!
//! Nothing here trusts memory across nodes: [`RoleLease`] is this node's belief, refreshed from
//! the store; the store's fencing check is what decides.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::model::{Leadership, NodeId, now_ms};
use crate::state::prelude::*;
use crate::state::{Store, StoreError};

/// The roles a node may lead. A source's poller runs only on its role's leader.
pub const ROLE_JMAFILE: &str = "jmafile";
pub const ROLE_ARCHIVE: &str = "archive";
pub const ROLE_RETENTION: &str = "retention";

/// This node's hold on one role, as last confirmed by the store.
#[derive(Debug)]
pub struct RoleLease {
    role: &'static str,
    current: watch::Sender<Option<Leadership>>,
}

impl RoleLease {
    pub fn new(role: &'static str) -> Arc<RoleLease> {
        Arc::new(RoleLease {
            role,
            current: watch::channel(None).0,
        })
    }

    pub fn role(&self) -> &'static str {
        self.role
    }

    /// The leadership to fence a commit with: refused (nothing committed) when this node does
    /// not lead the role, as a stale token would be by the store.
    /// A lease that ran out by this node's clock (it was paused, or could not renew) is not
    /// offered either: the store would most likely refuse it, and it is not ours to use.
    pub fn fence(&self) -> Result<Leadership, StoreError> {
        match self.current.borrow().clone() {
            Some(lead) if now_ms() <= lead.until_ms => Ok(lead),
            held => Err(StoreError::Fenced {
                role: self.role.to_owned(),
                fencing: held.map_or(0, |l| l.fencing),
            }),
        }
    }

    pub fn leading(&self) -> bool {
        self.current.borrow().is_some()
    }

    fn set(&self, lead: Option<Leadership>) {
        self.current.send_replace(lead);
    }

    /// Resolves once this node leads the role (at once if it does).
    async fn gained(&self) {
        let mut rx = self.current.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// Resolves once this node no longer leads the role.
    async fn lost(&self) {
        let mut rx = self.current.subscribe();
        let _ = rx.wait_for(Option::is_none).await;
    }
}

/// How often a lease (and the node's registration) is renewed: a third of its length, so two
/// renewals may fail before it runs out.
pub fn renew_every(lease: Duration) -> Duration {
    lease / 3
}

/// Takes and keeps `lease`'s role for this node until `cancel`, then gives it up at once, so a
/// clean stop hands over without waiting for the lease to run out. A standby asks again every
/// renewal period, so it takes over within `lease` + one period of the leader's death.
pub async fn keep_lease(
    store: Store,
    lease: Arc<RoleLease>,
    length: Duration,
    health: Arc<crate::health::Health>,
    cancel: CancellationToken,
) {
    let role = lease.role;
    let lease_ms = length.as_millis() as i64;
    let mut failing = false;
    loop {
        let now = now_ms();
        let before = lease.current.borrow().clone();
        let previous = if before.is_none() {
            holder(&store, role).await
        } else {
            None
        };
        match store.lead(role, now, lease_ms).await {
            Ok(Some(lead)) => {
                failing = false;
                if before.as_ref().map(|b| b.fencing) != Some(lead.fencing) {
                    took_role(&lead, previous.as_deref());
                }
                lease.set(Some(lead));
            }
            Ok(None) => {
                failing = false;
                if before.is_some() {
                    warn!(
                        event = "lease_lost",
                        role,
                        "another node took the lease on {role} (this node was too slow to renew it); standing by"
                    );
                    lease.set(None);
                }
            }
            Err(e) => {
                if !failing {
                    warn!(event = "lease_error", role, error = %e, "cannot renew the lease on {role}: {e}; retrying");
                }
                failing = true;
                // Without a renewal, stop acting once the lease has run out: the fencing
                // token would be refused by then anyway.
                if before.as_ref().is_some_and(|b| now_ms() >= b.until_ms) {
                    warn!(
                        event = "lease_lost",
                        role,
                        "the lease on {role} ran out while the database was unreachable; standing by"
                    );
                    lease.set(None);
                }
            }
        }
        metrics::gauge!(crate::metric::LEADER, "source" => role)
            .set(f64::from(u8::from(lease.leading())));
        health.set_role(role, lease.leading(), live_leader(&store, role).await);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(renew_every(length)) => {}
        }
    }
    let held = lease.current.borrow().clone();
    lease.set(None);
    if let Some(lead) = held {
        match store.resign(&lead).await {
            Ok(()) => info!(
                event = "lease_resigned",
                role, "gave up the lease on {role} (stopping)"
            ),
            Err(e) => {
                warn!(event = "lease_error", role, error = %e, "could not give up the lease on {role}: {e}; another node takes it when it runs out")
            }
        }
    }
    metrics::gauge!(crate::metric::LEADER, "source" => role).set(0.0);
}

/// Who held `role` last according to the store, if anyone ever did and did not give it up.
async fn holder(store: &Store, role: &str) -> Option<String> {
    store
        .leaders()
        .await
        .ok()?
        .into_iter()
        .find(|l| l.role == role && l.until_ms > 0)
        .map(|l| l.node)
}

/// The node holding a live lease on `role`, if any.
async fn live_leader(store: &Store, role: &str) -> Option<String> {
    let now = now_ms();
    store
        .leaders()
        .await
        .ok()?
        .into_iter()
        .find(|l| l.role == role && l.until_ms >= now)
        .map(|l| l.node)
}

/// Logs (and counts) this node taking a role: a failover when another node held it and did
/// not give it up (it died, stalled or lost the database).
fn took_role(lead: &Leadership, previous: Option<&str>) {
    let role = lead.role.as_str();
    let me = lead.node.as_str();
    match previous {
        Some(prev) if prev != me => {
            metrics::counter!(crate::metric::FAILOVERS, "source" => role.to_owned()).increment(1);
            warn!(
                event = "failover",
                role,
                node = me,
                previous = prev,
                fencing = lead.fencing,
                "took over {role} from node {prev}, whose lease ran out (fencing token {})",
                lead.fencing
            );
        }
        _ => info!(
            event = "leading",
            role,
            node = me,
            fencing = lead.fencing,
            "leading {role} (fencing token {})",
            lead.fencing
        ),
    }
}

/// Runs `start` while this node leads `lease`'s role: started when the lease is gained,
/// cancelled (at its next wait) when it is lost, started again on the next gain. Ends with the
/// first error `start` returns, or when `cancel` fires.
pub async fn while_leading<F, Fut, E>(
    lease: Arc<RoleLease>,
    cancel: CancellationToken,
    mut start: F,
) -> Result<(), E>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = lease.gained() => {}
        }
        let run_cancel = cancel.child_token();
        let run = start(run_cancel.clone());
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => {
                result?;
                if cancel.is_cancelled() {
                    return Ok(());
                }
                // The task ended on its own while leading (it had nothing more to do).
                lease.lost().await;
            }
            _ = lease.lost() => {
                info!(event = "standby", role = lease.role, "no longer leading {}: stopping its poller", lease.role);
                run_cancel.cancel();
                run.await?;
            }
        }
    }
}

/// This process's registration as a node: refused while another live process holds the same
/// `cluster.node_id`.
#[derive(Debug, Clone)]
pub struct Membership {
    pub node: NodeId,
    pub instance: String,
    pub lease: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(
        "cluster.node_id {node:?} is in use by another live process (pid {pid}, last seen {ago_s}s ago); give every node its own cluster.node_id, or stop the other one"
    )]
    Taken { node: String, pid: i64, ago_s: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Membership {
    /// Registers this process. `exclusive` says the caller already holds the only way in (the
    /// SQLite data dir's lock): a registration left by a killed predecessor is taken at once.
    /// Otherwise one left by a dead process is waited out (at most one lease); a live one
    /// refuses the start.
    pub async fn join(
        store: &Store,
        lease: Duration,
        exclusive: bool,
    ) -> Result<Membership, MembershipError> {
        let instance = instance_id();
        let lease_ms = lease.as_millis() as i64;
        let deadline = now_ms() + lease_ms + renew_every(lease).as_millis() as i64;
        let mut waited = false;
        loop {
            let now = now_ms();
            match store
                .register_node(&instance, now, lease_ms, exclusive)
                .await?
            {
                Ok(()) => break,
                Err(taken) if now >= deadline => {
                    return Err(MembershipError::Taken {
                        node: store.node().to_string(),
                        pid: taken.pid,
                        ago_s: (now - taken.seen_ms) / 1000,
                    });
                }
                Err(taken) => {
                    if !waited {
                        info!(event = "node_id_busy", node = %store.node(), pid = taken.pid, "cluster.node_id {} was registered by pid {} until {}s from now; waiting to see whether it is still alive", store.node(), taken.pid, (taken.until_ms - now).max(0) / 1000);
                        waited = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        metrics::gauge!(crate::metric::NODE_INFO, "node_id" => store.node().to_string(), "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(Membership {
            node: store.node().clone(),
            instance,
            lease,
        })
    }

    /// Renews the registration until `cancel`, then ends it. Returns an error if another
    /// process took the node id meanwhile: two processes must never act as one node.
    pub async fn keep(
        self,
        store: Store,
        cancel: CancellationToken,
    ) -> Result<(), MembershipError> {
        let lease_ms = self.lease.as_millis() as i64;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(renew_every(self.lease)) => {}
            }
            match store
                .heartbeat_node(&self.instance, now_ms(), lease_ms)
                .await
            {
                Ok(true) => failing = false,
                Ok(false) => {
                    error!(event = "node_id_taken", node = %self.node, "another process registered as node {} while this one was unresponsive; stopping so that two processes never act as one node", self.node);
                    return Err(MembershipError::Taken {
                        node: self.node.to_string(),
                        pid: -1,
                        ago_s: 0,
                    });
                }
                Err(e) => {
                    if !failing {
                        warn!(event = "node_heartbeat_error", error = %e, "cannot renew this node's registration: {e}; retrying");
                    }
                    failing = true;
                }
            }
        }
        if let Err(e) = store.deregister_node(&self.instance).await {
            warn!(event = "node_heartbeat_error", error = %e, "could not end this node's registration: {e}");
        }
        Ok(())
    }
}

/// Random per process, so two processes claiming one node id are told apart.
fn instance_id() -> String {
    format!(
        "{}-{:x}-{:08x}",
        std::process::id(),
        now_ms(),
        fastrand::u32(..)
    )
}
