//! [`ClusterStore`] on PostgreSQL: role leases, the node registry and the request ledger.
//! Where SQLite serialises writers with `BEGIN IMMEDIATE`, each of these transactions first
//! takes a transaction-scoped advisory lock on what it decides about (a role, a node id, a
//! budget), so two nodes deciding at once queue up instead of both winning; and a fenced commit
//! holds its leader row `FOR SHARE` until it commits, so the lease cannot change hands under it.

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Transaction};

use super::*;
use crate::model::{LeaderRow, Leadership, NodeRow, NodeTaken};

/// The first key of our advisory locks (the second is a hash of the role, node or budget).
const LOCK_CLASS: i32 = 0x4a4d_4131; // "JMA1"

/// What one advisory lock is about; kept apart so a role and a budget of one name never share.
#[derive(Clone, Copy)]
enum Subject {
    Role,
    Node,
    Budget,
}

/// Takes the advisory lock on `subject` `name` until the end of `tx`.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    subject: Subject,
    name: &str,
) -> Result<(), StoreError> {
    let prefix = match subject {
        Subject::Role => "role:",
        Subject::Node => "node:",
        Subject::Budget => "budget:",
    };
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2 || $3))")
        .bind(LOCK_CLASS)
        .bind(prefix)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Refuses a commit whose leadership is no longer current (inside the commit's transaction).
/// The leader row stays locked `FOR SHARE` until the commit ends, so a new leader cannot take
/// the role between this check and the commit.
pub(super) async fn check_fence(
    tx: &mut Transaction<'_, Postgres>,
    lead: &Leadership,
) -> Result<(), StoreError> {
    let current: Option<(String, i64)> =
        sqlx::query_as("SELECT node, fencing FROM leaders WHERE role = $1 FOR SHARE")
            .bind(&lead.role)
            .fetch_optional(&mut **tx)
            .await?;
    match current {
        Some((node, fencing)) if node == lead.node.as_str() && fencing == lead.fencing => Ok(()),
        _ => Err(StoreError::Fenced {
            role: lead.role.clone(),
            fencing: lead.fencing,
        }),
    }
}

fn leader_row(r: &PgRow) -> Result<LeaderRow, StoreError> {
    Ok(LeaderRow {
        role: r.try_get("role")?,
        node: r.try_get("node")?,
        fencing: r.try_get("fencing")?,
        acquired_ms: r.try_get("acquired_ms")?,
        renewed_ms: r.try_get("renewed_ms")?,
        until_ms: r.try_get("lease_until_ms")?,
    })
}

impl ClusterStore for PgStore {
    async fn lead(
        &self,
        role: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<Leadership>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock(&mut tx, Subject::Role, role).await?;
        let current: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT node, fencing, lease_until_ms FROM leaders WHERE role = $1 FOR UPDATE",
        )
        .bind(role)
        .fetch_optional(&mut *tx)
        .await?;
        let me = self.node.as_str();
        let fencing = match current {
            // Ours and live: a renewal keeps the token.
            Some((node, fencing, until)) if node == me && until >= now => {
                sqlx::query(
                    "UPDATE leaders SET renewed_ms = $1, lease_until_ms = $2 WHERE role = $3",
                )
                .bind(now)
                .bind(now + lease_ms)
                .bind(role)
                .execute(&mut *tx)
                .await?;
                fencing
            }
            Some((_, _, until)) if until >= now => {
                tx.rollback().await?;
                return Ok(None);
            }
            // Free (never held, given up, or run out): taken with a new token.
            current => {
                let fencing = current.map_or(1, |(_, f, _)| f + 1);
                sqlx::query(
                    "INSERT INTO leaders (role, node, fencing, acquired_ms, renewed_ms,
                                          lease_until_ms)
                     VALUES ($1, $2, $3, $4, $4, $5)
                     ON CONFLICT (role) DO UPDATE SET
                        node = excluded.node, fencing = excluded.fencing,
                        acquired_ms = excluded.acquired_ms, renewed_ms = excluded.renewed_ms,
                        lease_until_ms = excluded.lease_until_ms",
                )
                .bind(role)
                .bind(me)
                .bind(fencing)
                .bind(now)
                .bind(now + lease_ms)
                .execute(&mut *tx)
                .await?;
                fencing
            }
        };
        tx.commit().await?;
        Ok(Some(Leadership {
            role: role.to_owned(),
            node: self.node.clone(),
            fencing,
            until_ms: now + lease_ms,
        }))
    }

    async fn resign(&self, lead: &Leadership) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leaders SET lease_until_ms = 0 WHERE role = $1 AND node = $2 AND fencing = $3",
        )
        .bind(&lead.role)
        .bind(lead.node.as_str())
        .bind(lead.fencing)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn leaders(&self) -> Result<Vec<LeaderRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT role, node, fencing, acquired_ms, renewed_ms, lease_until_ms
             FROM leaders ORDER BY role COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(leader_row).collect()
    }

    async fn register_node(
        &self,
        instance: &str,
        now: i64,
        lease_ms: i64,
        force: bool,
    ) -> Result<Result<(), NodeTaken>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock(&mut tx, Subject::Node, self.node.as_str()).await?;
        let current: Option<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT instance, pid, seen_ms, lease_until_ms FROM nodes WHERE node = $1",
        )
        .bind(self.node.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((other, pid, seen_ms, until_ms)) = current
            && other != instance
            && until_ms >= now
            && !force
        {
            tx.rollback().await?;
            return Ok(Err(NodeTaken {
                instance: other,
                pid,
                seen_ms,
                until_ms,
            }));
        }
        sqlx::query(
            "INSERT INTO nodes (node, instance, started_ms, seen_ms, lease_until_ms, version, pid)
             VALUES ($1, $2, $3, $3, $4, $5, $6)
             ON CONFLICT (node) DO UPDATE SET
                instance = excluded.instance, started_ms = excluded.started_ms,
                seen_ms = excluded.seen_ms, lease_until_ms = excluded.lease_until_ms,
                version = excluded.version, pid = excluded.pid",
        )
        .bind(self.node.as_str())
        .bind(instance)
        .bind(now)
        .bind(now + lease_ms)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(i64::from(std::process::id()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn heartbeat_node(
        &self,
        instance: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE nodes SET seen_ms = $1, lease_until_ms = $2 WHERE node = $3 AND instance = $4",
        )
        .bind(now)
        .bind(now + lease_ms)
        .bind(self.node.as_str())
        .bind(instance)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    async fn deregister_node(&self, instance: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET lease_until_ms = 0 WHERE node = $1 AND instance = $2")
            .bind(self.node.as_str())
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT n.node, n.instance, n.started_ms, n.seen_ms, n.lease_until_ms, n.version,
                    n.pid,
                    (SELECT COUNT(*) FROM items i
                     WHERE i.state = 'fetching' AND i.owner = n.node) AS claims
             FROM nodes n ORDER BY n.node COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRow {
                    node: r.try_get("node")?,
                    instance: r.try_get("instance")?,
                    started_ms: r.try_get("started_ms")?,
                    seen_ms: r.try_get("seen_ms")?,
                    until_ms: r.try_get("lease_until_ms")?,
                    version: r.try_get("version")?,
                    pid: r.try_get("pid")?,
                    claims: r.try_get("claims")?,
                })
            })
            .collect()
    }

    /// One transaction holding the budget's advisory lock: nodes booking at once queue up, so
    /// the count they each see includes the others' bookings.
    async fn book_request(
        &self,
        budget: &str,
        now: i64,
        window_ms: i64,
        limit: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock(&mut tx, Subject::Budget, budget).await?;
        // Bookings older than two windows can never count again.
        sqlx::query("DELETE FROM request_ledger WHERE budget = $1 AND at_ms < $2")
            .bind(budget)
            .bind(now - 2 * window_ms)
            .execute(&mut *tx)
            .await?;
        let booked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM request_ledger WHERE budget = $1 AND at_ms > $2",
        )
        .bind(budget)
        .bind(now - window_ms)
        .fetch_one(&mut *tx)
        .await?;
        if booked >= limit {
            // The limit-th newest booking is the one whose leaving makes room.
            let oldest_that_counts: Option<i64> = sqlx::query_scalar(
                "SELECT at_ms FROM request_ledger WHERE budget = $1 AND at_ms > $2
                 ORDER BY at_ms DESC LIMIT 1 OFFSET $3",
            )
            .bind(budget)
            .bind(now - window_ms)
            .bind((limit - 1).max(0))
            .fetch_optional(&mut *tx)
            .await?;
            tx.rollback().await?;
            let frees_at = oldest_that_counts.map_or(now, |t| t + window_ms);
            return Ok(Some(frees_at.max(now + 1)));
        }
        sqlx::query("INSERT INTO request_ledger (budget, at_ms) VALUES ($1, $2)")
            .bind(budget)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(None)
    }
}
