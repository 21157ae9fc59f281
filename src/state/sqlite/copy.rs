//! `state copy` on SQLite: reading a table's rows, and writing them into an empty store in
//! one transaction (see [`crate::state::copy`]).

use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::SqliteStore;
use crate::state::StoreError;
use crate::state::copy::{Cell, Kind, Rows, Table};

/// Bound values per INSERT, under SQLite's limit of 32766.
const MAX_PARAMS: usize = 30_000;

impl SqliteStore {
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

    /// Starts the import transaction (the writer lock is taken now).
    pub async fn begin_import(&self) -> Result<SqliteImport, StoreError> {
        Ok(SqliteImport {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
        })
    }
}

fn cells(table: &Table, row: &SqliteRow) -> Result<Vec<Cell>, StoreError> {
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
pub struct SqliteImport {
    tx: Transaction<'static, Sqlite>,
}

impl SqliteImport {
    /// What the store already holds that a copy would mix with, if anything.
    pub async fn contents(&mut self) -> Result<Option<String>, StoreError> {
        let (items, cursors): (i64, i64) =
            sqlx::query_as("SELECT (SELECT COUNT(*) FROM items), (SELECT COUNT(*) FROM cursors)")
                .fetch_one(&mut *self.tx)
                .await?;
        Ok(super::super::copy_contents(items, cursors))
    }

    /// Inserts `rows` of `table` through the schema (its triggers keep the counts).
    pub async fn insert_rows(
        &mut self,
        table: &Table,
        rows: &[Vec<Cell>],
    ) -> Result<(), StoreError> {
        let per_insert = (MAX_PARAMS / table.columns.len()).max(1);
        for chunk in rows.chunks(per_insert) {
            let mut insert = QueryBuilder::<Sqlite>::new(format!(
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

    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }

    pub async fn rollback(self) {
        let _ = self.tx.rollback().await;
    }
}
