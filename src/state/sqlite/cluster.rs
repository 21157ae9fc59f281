//! [`ClusterStore`] on SQLite: role leases, the node registry and the request ledger. One node
//! uses them the same way a cluster does; `BEGIN IMMEDIATE` serialises writers, which is what
//! PostgreSQL gets from row locks.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::*;

/// Refuses a commit whose leadership is no longer current (inside the commit's transaction).
pub(super) async fn check_fence(
    tx: &mut Transaction<'_, Sqlite>,
    lead: &Leadership,
) -> Result<(), StoreError> {
    let current: Option<(String, i64)> =
        sqlx::query_as("SELECT node, fencing FROM leaders WHERE role = ?")
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

fn leader_row(r: &SqliteRow) -> LeaderRow {
    LeaderRow {
        role: r.get("role"),
        node: r.get("node"),
        fencing: r.get("fencing"),
        acquired_ms: r.get("acquired_ms"),
        renewed_ms: r.get("renewed_ms"),
        until_ms: r.get("lease_until_ms"),
    }
}

impl ClusterStore for SqliteStore {
    async fn lead(
        &self,
        role: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<Leadership>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<(String, i64, i64)> =
            sqlx::query_as("SELECT node, fencing, lease_until_ms FROM leaders WHERE role = ?")
                .bind(role)
                .fetch_optional(&mut *tx)
                .await?;
        let me = self.node.as_str();
        let fencing = match current {
            // Ours and live: a renewal keeps the token.
            Some((node, fencing, until)) if node == me && until >= now => {
                sqlx::query("UPDATE leaders SET renewed_ms = ?, lease_until_ms = ? WHERE role = ?")
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
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5)
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
            "UPDATE leaders SET lease_until_ms = 0 WHERE role = ? AND node = ? AND fencing = ?",
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
             FROM leaders ORDER BY role",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(leader_row).collect())
    }

    async fn register_node(
        &self,
        instance: &str,
        now: i64,
        lease_ms: i64,
        force: bool,
    ) -> Result<Result<(), NodeTaken>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT instance, pid, seen_ms, lease_until_ms FROM nodes WHERE node = ?",
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
             VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)
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
            "UPDATE nodes SET seen_ms = ?, lease_until_ms = ? WHERE node = ? AND instance = ?",
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
        sqlx::query("UPDATE nodes SET lease_until_ms = 0 WHERE node = ? AND instance = ?")
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
             FROM nodes n ORDER BY n.node",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| NodeRow {
                node: r.get("node"),
                instance: r.get("instance"),
                started_ms: r.get("started_ms"),
                seen_ms: r.get("seen_ms"),
                until_ms: r.get("lease_until_ms"),
                version: r.get("version"),
                pid: r.get("pid"),
                claims: r.get("claims"),
            })
            .collect())
    }

    async fn book_request(
        &self,
        budget: &str,
        now: i64,
        window_ms: i64,
        limit: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Bookings older than two windows can never count again.
        sqlx::query("DELETE FROM request_ledger WHERE budget = ? AND at_ms < ?")
            .bind(budget)
            .bind(now - 2 * window_ms)
            .execute(&mut *tx)
            .await?;
        let booked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM request_ledger WHERE budget = ? AND at_ms > ?",
        )
        .bind(budget)
        .bind(now - window_ms)
        .fetch_one(&mut *tx)
        .await?;
        if booked >= limit {
            // The limit-th newest booking is the one whose leaving makes room.
            let oldest_that_counts: Option<i64> = sqlx::query_scalar(
                "SELECT at_ms FROM request_ledger WHERE budget = ? AND at_ms > ?
                 ORDER BY at_ms DESC LIMIT 1 OFFSET ?",
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
        sqlx::query("INSERT INTO request_ledger (budget, at_ms) VALUES (?, ?)")
            .bind(budget)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(None)
    }
}
