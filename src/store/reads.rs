//! The read-only queries both SQL backends share word for word: the schemas have the same
//! tables and columns and both accept `$n` parameters, so the grant, job and audit listings are
//! written once here, generic over the sqlx database. Writes, claims and locking stay in each
//! backend, where they really differ.

use jiff::{SignedDuration, Timestamp};
use sqlx::{Database, Decode, Encode, Executor, Pool, Row, Type};
use uuid::Uuid;

use crate::audit::AuditRecord;
use crate::grants::state::ALL_STATES;
use crate::grants::{Grant, GrantState};
use crate::store::rows::{self, Columns, ms};
use crate::store::{GrantFilter, Job, JobState, Lane, LiveGrantCounts, OutboxStats, StoreError};

/// Upper bound on rows returned by any one claim or listing.
pub(super) const MAX_ROWS: u32 = 1000;
/// Rows listed when a filter does not say.
const DEFAULT_LIST_LIMIT: u32 = 100;

/// A caller's limit, bounded.
pub(super) fn bounded_limit(limit: u32) -> i64 {
    i64::from(limit.min(MAX_ROWS))
}

/// Live grants of a subject (`$1`) and on a target (`$2`), compared case-insensitively: two
/// counts, each answered from its own partial expression index (both schemas have them), so
/// the cost follows the grants counted, not every live grant.
pub(super) const COUNT_LIVE_GRANTS: &str = "SELECT \
     (SELECT COUNT(*) FROM grants \
       WHERE state IN ('approved', 'active', 'expiring', 'revoking', 'revoke_failed') \
       AND lower(trim(subject)) = lower(trim($1))) AS by_subject, \
     (SELECT COUNT(*) FROM grants \
       WHERE state IN ('approved', 'active', 'expiring', 'revoking', 'revoke_failed') \
       AND lower(trim(target)) = lower(trim($2))) AS by_target";

/// Decodes grant rows of either backend.
fn grants_from<R: Columns>(rows: Vec<R>) -> Result<Vec<Grant>, StoreError> {
    rows.iter().map(rows::grant).collect()
}

/// Decodes job rows of either backend.
pub(super) fn jobs_from<R: Columns>(rows: Vec<R>) -> Result<Vec<Job>, StoreError> {
    rows.iter().map(rows::job).collect()
}

/// The shared reads over one backend's pool; `db_error` is that backend's error mapping.
pub(super) struct Reads<'a, DB: Database> {
    pub pool: &'a Pool<DB>,
    pub db_error: fn(sqlx::Error) -> StoreError,
}

impl<DB> Reads<'_, DB>
where
    DB: Database,
    DB::Row: Columns,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'c> &'c str: sqlx::ColumnIndex<DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    i64: for<'t> Encode<'t, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    Option<i64>: for<'r> Decode<'r, DB> + Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    pub(super) async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.pool)
        .await
        .map_err(self.db_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    pub(super) async fn live_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE connector = $1 AND ticket_id = $2 AND mapping = $3 AND ",
            live_grant_predicate!()
        ))
        .bind(connector)
        .bind(ticket_id)
        .bind(mapping)
        .fetch_optional(self.pool)
        .await
        .map_err(self.db_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    pub(super) async fn latest_grant(
        &self,
        connector: &str,
        ticket_id: &str,
        mapping: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE connector = $1 AND ticket_id = $2 AND mapping = $3 \
             ORDER BY requested_at DESC, id DESC LIMIT 1"
        ))
        .bind(connector)
        .bind(ticket_id)
        .bind(mapping)
        .fetch_optional(self.pool)
        .await
        .map_err(self.db_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    pub(super) async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR connector = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR ticket_key = $3) ORDER BY requested_at DESC, id DESC LIMIT $4"
        ))
        .bind(filter.state.map(GrantState::as_str))
        .bind(filter.connector.as_deref())
        .bind(filter.ticket_key.as_deref())
        .bind(bounded_limit(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT)))
        .fetch_all(self.pool)
        .await
        .map_err(self.db_error)?;
        grants_from(rows)
    }

    /// Every state, in [`ALL_STATES`] order, zeros included (so gauges drop back to 0).
    pub(super) async fn count_grants_by_state(&self) -> Result<Vec<(GrantState, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM grants GROUP BY state")
            .fetch_all(self.pool)
            .await
            .map_err(self.db_error)?;
        let mut counts: Vec<(GrantState, i64)> = ALL_STATES.iter().map(|s| (*s, 0)).collect();
        for row in &rows {
            let state =
                rows::grant_state(&row.try_get::<String, _>("state").map_err(self.db_error)?)?;
            let n: i64 = row.try_get("n").map_err(self.db_error)?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = n;
            }
        }
        Ok(counts)
    }

    pub(super) async fn due_grants(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE state = 'active' AND expires_at <= $1 \
             ORDER BY expires_at, id LIMIT $2"
        ))
        .bind(ms(now))
        .bind(bounded_limit(limit))
        .fetch_all(self.pool)
        .await
        .map_err(self.db_error)?;
        grants_from(rows)
    }

    pub(super) async fn next_deadline(&self) -> Result<Option<Timestamp>, StoreError> {
        let min: Option<i64> =
            sqlx::query_scalar("SELECT MIN(expires_at) FROM grants WHERE state = 'active'")
                .fetch_one(self.pool)
                .await
                .map_err(self.db_error)?;
        min.map(|v| {
            Timestamp::from_millisecond(v)
                .map_err(|e| StoreError::Corrupt(format!("grants.expires_at: {v}: {e}")))
        })
        .transpose()
    }

    pub(super) async fn count_live_grants(
        &self,
        subject: &str,
        target: &str,
    ) -> Result<LiveGrantCounts, StoreError> {
        // `lower` folds ASCII only, which is what the contract promises. `requested` grants hold
        // nothing yet and are not counted.
        let row = sqlx::query(COUNT_LIVE_GRANTS)
            .bind(subject)
            .bind(target)
            .fetch_one(self.pool)
            .await
            .map_err(self.db_error)?;
        let count = |column: &str| -> Result<u64, StoreError> {
            let n: i64 = row.try_get(column).map_err(self.db_error)?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{column}: {n}")))
        };
        Ok(LiveGrantCounts {
            by_subject: count("by_subject")?,
            by_target: count("by_target")?,
        })
    }

    /// The oldest `revoke_failed` grant of `subject` or on `target`, compared as
    /// [`Self::count_live_grants`] compares them.
    pub(super) async fn unresolved_revoke(
        &self,
        subject: &str,
        target: &str,
    ) -> Result<Option<Grant>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            grant_columns!(),
            " FROM grants WHERE state = 'revoke_failed' \
             AND (lower(trim(subject)) = lower(trim($1)) OR lower(trim(target)) = lower(trim($2))) \
             ORDER BY requested_at, id LIMIT 1"
        ))
        .bind(subject)
        .bind(target)
        .fetch_optional(self.pool)
        .await
        .map_err(self.db_error)?;
        row.as_ref().map(rows::grant).transpose()
    }

    pub(super) async fn list_jobs(
        &self,
        state: JobState,
        limit: u32,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE state = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(state.as_str())
        .bind(bounded_limit(limit))
        .fetch_all(self.pool)
        .await
        .map_err(self.db_error)?;
        jobs_from(rows)
    }

    pub(super) async fn outbox_stats(
        &self,
        lane: Lane,
        now: Timestamp,
    ) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS pending, \
             COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0) AS dead, \
             MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest \
             FROM jobs WHERE lane = $1 AND state IN ('pending', 'dead')",
        )
        .bind(lane.as_str())
        .fetch_one(self.pool)
        .await
        .map_err(self.db_error)?;
        let oldest: Option<i64> = row.try_get("oldest").map_err(self.db_error)?;
        Ok(OutboxStats {
            pending: row.try_get("pending").map_err(self.db_error)?,
            dead: row.try_get("dead").map_err(self.db_error)?,
            // A job stamped by a clock ahead of `now` is not negatively old.
            oldest_pending_age: oldest
                .map(|created| SignedDuration::from_millis(ms(now).saturating_sub(created).max(0))),
        })
    }

    pub(super) async fn audit_records(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after)
        .bind(bounded_limit(limit))
        .fetch_all(self.pool)
        .await
        .map_err(self.db_error)?;
        rows.iter().map(rows::audit).collect()
    }
}
