//! Schema migrations: versioned SQL files per backend
//! (`collector/migrations/{sqlite,postgres}/V<n>__<name>.sql`), embedded at
//! build time and applied by refinery, each in its own transaction, in
//! refinery's `refinery_schema_history` table.
//!
//! Databases made before refinery kept their version in `schema_migrations`
//! (versions 1 to 4, the same SQL as V1 to V4 here): they are adopted in
//! place by recording those versions as applied without running them.

use super::StoreError;
use refinery::{Migration, Runner, Target};
use refinery_core::traits::sync::{Migrate, Query, Transaction};

mod sqlite_files {
    refinery::embed_migrations!("migrations/sqlite");
}

mod postgres_files {
    refinery::embed_migrations!("migrations/postgres");
}

/// The SQLite migrations.
pub(super) fn sqlite() -> Runner {
    sqlite_files::migrations::runner()
}

/// The PostgreSQL migrations.
pub(super) fn postgres() -> Runner {
    postgres_files::migrations::runner()
}

/// What the backend found in the database before migrating.
pub(super) struct Found {
    /// refinery's history table exists.
    pub history: bool,
    /// The version in the pre-refinery `schema_migrations` table, if any.
    pub legacy: Option<u32>,
}

impl From<refinery::Error> for StoreError {
    fn from(e: refinery::Error) -> Self {
        StoreError::Migration(e.to_string())
    }
}

/// The newest schema version `runner` knows.
pub(super) fn newest(runner: &Runner) -> u32 {
    runner
        .get_migrations()
        .iter()
        .map(|m| m.version().max(0) as u32)
        .max()
        .unwrap_or(0)
}

/// Bring the database to the newest schema: refuse one a newer server
/// wrote, adopt a pre-refinery one, apply what is pending. `found.history`
/// means the history table has rows (an empty one, left by an adoption that
/// was interrupted, counts as none).
pub(super) fn run<C: Migrate>(
    conn: &mut C,
    runner: Runner,
    found: Found,
) -> Result<(), StoreError> {
    let supported = newest(&runner);
    let too_new = |found: u32| {
        if found > supported {
            Err(StoreError::TooNew { found, supported })
        } else {
            Ok(())
        }
    };
    if found.history {
        let last = runner.get_last_applied_migration(conn)?;
        too_new(last.map_or(0, |m: Migration| m.version().max(0) as u32))?;
    } else if let Some(legacy) = found.legacy {
        too_new(legacy)?;
        if legacy > 0 {
            let adopt = version_runner(&runner).set_target(Target::FakeVersion(legacy as _));
            adopt.run(conn)?;
        }
    }
    // Grouped: the pending migrations and their history rows commit in one
    // transaction (both databases run DDL in transactions), so a crash
    // cannot leave a migration applied but unrecorded.
    runner.set_grouped(true).run(conn)?;
    Ok(())
}

/// A runner over the same migrations (refinery's builder consumes itself).
fn version_runner(runner: &Runner) -> Runner {
    Runner::new(runner.get_migrations())
}

/// refinery's sync driver traits for rusqlite 0.43 (refinery's own rusqlite
/// driver supports rusqlite up to 0.40).
pub(super) struct SqliteConn<'a>(pub &'a mut rusqlite::Connection);

impl Transaction for SqliteConn<'_> {
    type Error = rusqlite::Error;

    fn execute<'a, T: Iterator<Item = &'a str>>(
        &mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let tx = self.0.transaction()?;
        let mut count = 0;
        for query in queries {
            tx.execute_batch(query)?;
            count += 1;
        }
        tx.commit()?;
        Ok(count)
    }
}

impl Query<Vec<Migration>> for SqliteConn<'_> {
    fn query(&mut self, query: &str) -> Result<Vec<Migration>, Self::Error> {
        let damaged = |what: String| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("refinery_schema_history: {what}").into(),
            )
        };
        let mut stmt = self.0.prepare(query)?;
        let mut rows = stmt.query([])?;
        let mut applied = Vec::new();
        while let Some(row) = rows.next()? {
            let version: i32 = row.get(0)?;
            let name: String = row.get(1)?;
            let on: String = row.get(2)?;
            let checksum: String = row.get(3)?;
            let on =
                time::OffsetDateTime::parse(&on, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| damaged(format!("applied_on `{on}`: {e}")))?;
            let checksum = checksum
                .parse::<u64>()
                .map_err(|e| damaged(format!("checksum `{checksum}`: {e}")))?;
            applied.push(Migration::applied(version, name, on, checksum));
        }
        Ok(applied)
    }
}

impl Migrate for SqliteConn<'_> {}
