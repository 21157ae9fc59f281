//! `state copy` on PostgreSQL: reading a table's rows, and writing them into an empty store in
//! one transaction (see [`crate::state::copy`]).

use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row, Transaction};

use super::PgStore;
use crate::state::StoreError;
use crate::state::copy::{Cell, Kind, Rows, Table};

/// Bound values per INSERT, under PostgreSQL's limit of 65535.
const MAX_PARAMS: usize = 30_000;

impl PgStore {
    /// The rows of `table` that `rows` selects, in column order.
    pub async fn export_rows(
        &self,
        table: &Table,
        rows: Rows,
    ) -> Result<Vec<Vec<Cell>>, StoreError> {
        // Table and column names are constants of `copy`, the tail numbers only.
        let sql = format!(
            "SELECT {} FROM {}{}",
            table.select_list(),
            table.name,
            rows.sql_tail()
        );
        let found = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        found.iter().map(|r| cells(table, r)).collect()
    }

    /// Starts the import transaction (items are inserted with their own seq; the identity moves past them at commit).
    pub async fn begin_import(&self) -> Result<PgImport, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The counts triggers update the same few rows once per inserted row; in one
        // transaction every update leaves a dead version PostgreSQL must step over, which made
        // 100 000 items take minutes. Off for the import (DDL is transactional: a rollback
        // turns them back on), the counts are recomputed at commit.
        sqlx::raw_sql(
            "ALTER TABLE items DISABLE TRIGGER items_counts;
             ALTER TABLE hooks DISABLE TRIGGER hooks_counts;",
        )
        .execute(&mut *tx)
        .await?;
        Ok(PgImport { tx })
    }
}

fn cells(table: &Table, row: &PgRow) -> Result<Vec<Cell>, StoreError> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| {
            Ok(match kind {
                Kind::Int => Cell::Int(row.try_get(i)?),
                Kind::Text => Cell::Text(row.try_get(i)?),
            })
        })
        .collect()
}

/// The target's side of a copy: one transaction, committed at the end or rolled back.
pub struct PgImport {
    tx: Transaction<'static, Postgres>,
}

impl PgImport {
    /// What the store already holds that a copy would mix with, if anything.
    pub async fn contents(&mut self) -> Result<Option<String>, StoreError> {
        let (items, cursors): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM items), (SELECT COUNT(*) FROM cursors)")
                .fetch_one(&mut *self.tx)
                .await?;
        Ok(super::super::copy_contents(items, cursors))
    }

    /// Inserts `rows` of `table` through the schema (counts: see [`PgStore::begin_import`]).
    pub async fn insert_rows(
        &mut self,
        table: &Table,
        rows: &[Vec<Cell>],
    ) -> Result<(), StoreError> {
        let per_insert = (MAX_PARAMS / table.columns.len()).max(1);
        for chunk in rows.chunks(per_insert) {
            let mut insert = QueryBuilder::<Postgres>::new(format!(
                "INSERT INTO {} ({}) ",
                table.name,
                table.column_list()
            ));
            insert.push_values(chunk, |mut b, row| {
                for cell in row {
                    match cell {
                        Cell::Int(v) => b.push_bind(*v),
                        Cell::Text(v) => b.push_bind(v.clone()),
                    };
                }
            });
            insert.build().execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Moves the items' identity past the copied seqs (they were inserted explicitly),
    /// recomputes the counts the disabled triggers did not keep, turns them back on, commits.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        sqlx::raw_sql(
            "SELECT setval(pg_get_serial_sequence('items', 'seq'), COALESCE(MAX(seq), 0) + 1, false)
             FROM items;
             DELETE FROM counts;
             INSERT INTO counts (source, state, items, bytes, last_ms)
             SELECT source, state, COUNT(*), COALESCE(SUM(bytes), 0), MAX(finished_ms)
             FROM items GROUP BY source, state;
             DELETE FROM hook_counts;
             INSERT INTO hook_counts (state, runs) SELECT state, COUNT(*) FROM hooks GROUP BY state;
             ALTER TABLE items ENABLE TRIGGER items_counts;
             ALTER TABLE hooks ENABLE TRIGGER hooks_counts;",
        )
        .execute(&mut *self.tx)
        .await?;
        Ok(self.tx.commit().await?)
    }

    pub async fn rollback(self) {
        let _ = self.tx.rollback().await;
    }
}
