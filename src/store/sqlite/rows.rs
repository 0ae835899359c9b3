//! Conversions between the domain types and SQLite columns, kept apart from the SQL so the
//! storage conventions live in one place: instants are unix milliseconds, durations whole
//! seconds, ids hyphenated UUID text, structured values JSON text. Every decode failure is a
//! [`StoreError::Corrupt`] naming the table and column, never a panic.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Row, Sqlite, Type};
use uuid::Uuid;

use crate::audit::{AuditRecord, NewAudit};
use crate::grants::{Grant, GrantState, RevokeCause};
use crate::store::{Delivery, Job, JobState, Lane, StoreError};
use crate::ticket::{Person, TicketRef};

/// Unix milliseconds of an instant (sub-millisecond precision is dropped).
pub(super) fn ms(ts: Timestamp) -> i64 {
    ts.as_millisecond()
}

/// Unix milliseconds of an optional instant.
pub(super) fn opt_ms(ts: Option<Timestamp>) -> Option<i64> {
    ts.map(ms)
}

/// The instant as it will read back from the database: truncated to whole milliseconds.
/// Audit records are hashed in this form, so the chain verifies after a round trip.
pub(super) fn at_storage_precision(ts: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(ts.as_millisecond()).unwrap_or(ts)
}

/// Milliseconds of a duration, saturated into `i64` (a lease of centuries is still a lease).
pub(super) fn duration_ms(d: SignedDuration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(if d.is_negative() { i64::MIN } else { i64::MAX })
}

/// Serializes a value for a JSON TEXT column.
pub(super) fn to_json<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

/// Reads one column, reporting the table and column when the stored value has the wrong type.
fn get<'r, T>(row: &'r SqliteRow, table: &str, col: &str) -> Result<T, StoreError>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get::<T, _>(col)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{col}: {e}")))
}

fn timestamp(table: &str, col: &str, millis: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(millis).map_err(|e| {
        StoreError::Corrupt(format!(
            "{table}.{col}: {millis} is not a valid instant: {e}"
        ))
    })
}

fn get_ts(row: &SqliteRow, table: &str, col: &str) -> Result<Timestamp, StoreError> {
    timestamp(table, col, get::<i64>(row, table, col)?)
}

fn get_opt_ts(row: &SqliteRow, table: &str, col: &str) -> Result<Option<Timestamp>, StoreError> {
    get::<Option<i64>>(row, table, col)?
        .map(|v| timestamp(table, col, v))
        .transpose()
}

fn parse_uuid(table: &str, col: &str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{col}: not a UUID: {e}")))
}

fn get_uuid(row: &SqliteRow, table: &str, col: &str) -> Result<Uuid, StoreError> {
    parse_uuid(table, col, &get::<String>(row, table, col)?)
}

fn get_json<T: DeserializeOwned>(row: &SqliteRow, table: &str, col: &str) -> Result<T, StoreError> {
    let text = get::<String>(row, table, col)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{col}: invalid JSON: {e}")))
}

/// Parses a stored grant state.
pub(super) fn grant_state(text: &str) -> Result<GrantState, StoreError> {
    text.parse::<GrantState>()
        .map_err(|e| StoreError::Corrupt(format!("grants.state: {e}")))
}

/// Stored name of a revoke cause.
pub(super) fn revoke_cause_str(cause: RevokeCause) -> &'static str {
    match cause {
        RevokeCause::Deadline => "deadline",
        RevokeCause::Early => "early",
    }
}

fn revoke_cause(text: &str) -> Result<RevokeCause, StoreError> {
    match text {
        "deadline" => Ok(RevokeCause::Deadline),
        "early" => Ok(RevokeCause::Early),
        other => Err(StoreError::Corrupt(format!(
            "grants.revoke_cause: unknown cause {other:?}"
        ))),
    }
}

/// Parses a stored lane name.
pub(super) fn lane(text: &str) -> Result<Lane, StoreError> {
    match text {
        "provider" => Ok(Lane::Provider),
        "writeback" => Ok(Lane::Writeback),
        other => Err(StoreError::Corrupt(format!(
            "jobs.lane: unknown lane {other:?}"
        ))),
    }
}

/// Parses a stored job state.
pub(super) fn job_state(text: &str) -> Result<JobState, StoreError> {
    match text {
        "pending" => Ok(JobState::Pending),
        "done" => Ok(JobState::Done),
        "dead" => Ok(JobState::Dead),
        other => Err(StoreError::Corrupt(format!(
            "jobs.state: unknown state {other:?}"
        ))),
    }
}

/// A grant encoded for binding, so INSERT and UPDATE bind exactly the same values.
pub(super) struct GrantColumns<'g> {
    pub grant: &'g Grant,
    pub requester: Option<String>,
    pub approvers: String,
    pub context: String,
}

impl<'g> GrantColumns<'g> {
    /// Encodes the JSON columns of `grant`.
    pub fn new(grant: &'g Grant) -> Result<Self, StoreError> {
        Ok(Self {
            grant,
            requester: grant
                .requester
                .as_ref()
                .map(|p| to_json("grant requester", p))
                .transpose()?,
            approvers: to_json("grant approvers", &grant.approvers)?,
            context: to_json("grant context", &grant.context)?,
        })
    }

    /// Binds `$1..$24` in `grant_columns!` order.
    pub fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
        let g = self.grant;
        q.bind(g.id.to_string())
            .bind(g.ticket.connector.as_str())
            .bind(g.ticket.id.as_str())
            .bind(g.ticket.key.as_str())
            .bind(g.ticket.url.as_deref())
            .bind(g.mapping.as_str())
            .bind(g.state.as_str())
            .bind(g.subject.as_str())
            .bind(g.target.as_str())
            .bind(g.scope.as_str())
            .bind(g.provider.as_str())
            .bind(g.duration.as_secs())
            .bind(self.requester.as_deref())
            .bind(self.approvers.as_str())
            .bind(ms(g.requested_at))
            .bind(opt_ms(g.approved_at))
            .bind(opt_ms(g.starts_at))
            .bind(opt_ms(g.expires_at))
            .bind(opt_ms(g.ended_at))
            .bind(g.revoke_cause.map(revoke_cause_str))
            .bind(g.reason.as_deref())
            .bind(ms(g.last_event_at))
            .bind(self.context.as_str())
            .bind(g.version)
    }
}

/// Decodes a row selected with `grant_columns!`.
pub(super) fn grant(row: &SqliteRow) -> Result<Grant, StoreError> {
    const T: &str = "grants";
    let requester: Option<String> = get(row, T, "requester")?;
    let requester: Option<Person> = requester
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("grants.requester: invalid JSON: {e}")))
        })
        .transpose()?;
    let cause: Option<String> = get(row, T, "revoke_cause")?;
    Ok(Grant {
        id: get_uuid(row, T, "id")?,
        ticket: TicketRef {
            connector: get(row, T, "connector")?,
            id: get(row, T, "ticket_id")?,
            key: get(row, T, "ticket_key")?,
            url: get(row, T, "ticket_url")?,
        },
        mapping: get(row, T, "mapping")?,
        state: grant_state(&get::<String>(row, T, "state")?)?,
        subject: get(row, T, "subject")?,
        target: get(row, T, "target")?,
        scope: get(row, T, "scope")?,
        provider: get(row, T, "provider")?,
        duration: SignedDuration::from_secs(get::<i64>(row, T, "duration_secs")?),
        requester,
        approvers: get_json(row, T, "approvers")?,
        requested_at: get_ts(row, T, "requested_at")?,
        approved_at: get_opt_ts(row, T, "approved_at")?,
        starts_at: get_opt_ts(row, T, "starts_at")?,
        expires_at: get_opt_ts(row, T, "expires_at")?,
        ended_at: get_opt_ts(row, T, "ended_at")?,
        revoke_cause: cause.as_deref().map(revoke_cause).transpose()?,
        reason: get(row, T, "reason")?,
        last_event_at: get_ts(row, T, "last_event_at")?,
        context: get_json(row, T, "context")?,
        version: get(row, T, "version")?,
    })
}

/// Decodes a claimed delivery (`id, connector, dedupe_key, received_at, headers, body, attempts`).
pub(super) fn delivery(row: &SqliteRow) -> Result<Delivery, StoreError> {
    const T: &str = "deliveries";
    Ok(Delivery {
        id: get_uuid(row, T, "id")?,
        connector: get(row, T, "connector")?,
        dedupe_key: get(row, T, "dedupe_key")?,
        received_at: get_ts(row, T, "received_at")?,
        headers: get_json(row, T, "headers")?,
        body: get(row, T, "body")?,
        attempts: get(row, T, "attempts")?,
    })
}

/// Decodes a row selected with `job_columns!`.
pub(super) fn job(row: &SqliteRow) -> Result<Job, StoreError> {
    const T: &str = "jobs";
    Ok(Job {
        id: get_uuid(row, T, "id")?,
        seq: get(row, T, "seq")?,
        lane: lane(&get::<String>(row, T, "lane")?)?,
        queue_key: get(row, T, "queue_key")?,
        payload: get_json(row, T, "payload")?,
        state: job_state(&get::<String>(row, T, "state")?)?,
        attempts: get(row, T, "attempts")?,
        next_at: get_ts(row, T, "next_at")?,
        last_error: get(row, T, "last_error")?,
        created_at: get_ts(row, T, "created_at")?,
    })
}

/// Decodes a row selected with `audit_columns!`.
pub(super) fn audit(row: &SqliteRow) -> Result<AuditRecord, StoreError> {
    const T: &str = "audit";
    let grant_id: Option<String> = get(row, T, "grant_id")?;
    Ok(AuditRecord {
        seq: get(row, T, "seq")?,
        record: NewAudit {
            at: get_ts(row, T, "at")?,
            kind: get(row, T, "kind")?,
            grant_id: grant_id
                .as_deref()
                .map(|text| parse_uuid(T, "grant_id", text))
                .transpose()?,
            connector: get(row, T, "connector")?,
            ticket_key: get(row, T, "ticket_key")?,
            actor: get(row, T, "actor")?,
            detail: get_json(row, T, "detail")?,
        },
        prev_hash: get(row, T, "prev_hash")?,
        hash: get(row, T, "hash")?,
    })
}

/// Cuts an error message to at most `max` bytes on a character boundary, so a huge upstream
/// error body cannot bloat every row that records it.
pub(super) fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}
