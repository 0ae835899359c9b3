//! One writer at a time, in the order they asked.
//!
//! SQLite has a single write lock, and a connection that finds it taken *polls* for it (the busy
//! handler sleeps and retries). Under a steady stream of short write transactions (scheduler,
//! provider and writeback workers, inbox worker, group-commit writer) a poller can keep missing
//! the moment the lock is free and give up with "database is locked" although no transaction
//! was long: the P4 benchmark showed claims failing that way behind back-to-back batch commits.
//! This process is the only one using the file (see the instance lock), so every writer first
//! queues here: a fair (FIFO) async mutex, so writers take turns in arrival order and SQLite's
//! busy handler is left for the rare foreign writer (tests, an operator's `sqlite3`).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{SqliteConnection, SqlitePool, SqliteTransaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::db_error;
use crate::store::StoreError;

/// The queue of this process's writers (cheap to clone: every clone is the same queue).
#[derive(Debug, Clone)]
pub(super) struct WriteGate {
    queue: Arc<Mutex<()>>,
    /// How long a writer waits for its turn before the store answers `Unavailable`, the same
    /// bound SQLite's busy timeout puts on waiting for the lock itself.
    patience: Duration,
}

/// The right to write until dropped.
#[derive(Debug)]
pub(super) struct WriteTurn(#[allow(dead_code)] OwnedMutexGuard<()>);

impl WriteGate {
    pub(super) fn new(patience: Duration) -> Self {
        Self {
            queue: Arc::new(Mutex::new(())),
            patience,
        }
    }

    /// Waits for this writer's turn (FIFO), at most the gate's patience. The wait is exported
    /// as `jitbridge_store_write_wait_seconds`: how much writers queue behind each other.
    pub(super) async fn turn(&self) -> Result<WriteTurn, StoreError> {
        let asked = std::time::Instant::now();
        let turn = tokio::time::timeout(self.patience, self.queue.clone().lock_owned()).await;
        metrics::histogram!("jitbridge_store_write_wait_seconds")
            .record(asked.elapsed().as_secs_f64());
        turn.map(WriteTurn).map_err(|_| {
            StoreError::Unavailable(format!(
                "database is busy: no turn to write within {} ms",
                self.patience.as_millis()
            ))
        })
    }

    /// Waits for a turn, then starts a transaction holding SQLite's write lock from its first
    /// statement (`BEGIN IMMEDIATE`).
    pub(super) async fn begin(&self, pool: &SqlitePool) -> Result<WriteTx, StoreError> {
        let turn = self.turn().await?;
        let tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)?;
        Ok(WriteTx { tx, _turn: turn })
    }
}

/// A write transaction that also holds this process's write turn. Dropping it without
/// [`WriteTx::commit`] rolls back (the transaction is dropped before the turn is released).
pub(super) struct WriteTx {
    tx: SqliteTransaction<'static>,
    _turn: WriteTurn,
}

impl WriteTx {
    /// Commits (one fsync), then gives the turn to the next writer.
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        let WriteTx { tx, _turn } = self;
        tx.commit().await.map_err(db_error)
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writers_take_turns_in_the_order_they_asked() {
        let gate = WriteGate::new(Duration::from_secs(5));
        let first = gate.turn().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for n in 0..5 {
            let (gate, order) = (gate.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let _turn = gate.turn().await.unwrap();
                order.lock().unwrap().push(n);
            }));
            // Let each waiter enqueue before the next one asks.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for w in waiting {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_writer_that_waits_too_long_for_its_turn_is_told_the_store_is_busy() {
        let gate = WriteGate::new(Duration::from_millis(50));
        let _held = gate.turn().await.unwrap();
        let err = gate.turn().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("busy")),
            "{err:?}"
        );
    }
}
