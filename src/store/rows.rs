//! Conversions between the domain types and database columns, shared by the SQLite and
//! PostgreSQL backends so the storage conventions live in one place: instants are unix
//! milliseconds, durations whole seconds, ids hyphenated UUID text, structured values JSON text
//! (byte for byte what was hashed, which a normalizing `jsonb` would not keep). Every decode
//! failure is a [`StoreError::Corrupt`] naming the table and column, never a panic.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Database, Decode, Encode, Row, Type};
use uuid::Uuid;

use crate::audit::{AuditRecord, NewAudit};
use crate::grants::{Grant, GrantState, RevokeCause};
use crate::store::{Delivery, Job, JobState, Lane, StoreError};
use crate::ticket::{Person, TicketRef};

/// Grant columns in decode and bind order (a macro so queries stay `&'static str`).
macro_rules! grant_columns {
    () => {
        "id, connector, ticket_id, ticket_key, ticket_url, mapping, state, subject, target, \
         scope, provider, duration_secs, requester, approvers, requested_at, approved_at, \
         starts_at, expires_at, ended_at, revoke_cause, reason, last_event_at, context, version"
    };
}

/// Job columns in decode order.
macro_rules! job_columns {
    () => {
        "seq, id, lane, queue_key, payload, state, attempts, next_at, last_error, created_at"
    };
}

/// Audit columns in decode order.
macro_rules! audit_columns {
    () => {
        "seq, at, kind, grant_id, connector, ticket_key, actor, detail, prev_hash, hash"
    };
}

/// The states in which a grant is finished; must match both schemas' `grants_one_live` index
/// predicate.
macro_rules! live_grant_predicate {
    () => {
        "state NOT IN ('expired', 'revoked', 'denied', 'failed', 'cancelled')"
    };
}

/// Unix milliseconds of an instant (sub-millisecond precision is dropped).
pub(in crate::store) fn ms(ts: Timestamp) -> i64 {
    ts.as_millisecond()
}

/// Unix milliseconds of an optional instant.
pub(in crate::store) fn opt_ms(ts: Option<Timestamp>) -> Option<i64> {
    ts.map(ms)
}

/// The instant as it will read back from the database: truncated to whole milliseconds.
/// Audit records are hashed in this form, so the chain verifies after a round trip.
pub(in crate::store) fn at_storage_precision(ts: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(ts.as_millisecond()).unwrap_or(ts)
}

/// Milliseconds of a duration, saturated into `i64` (a lease of centuries is still a lease).
pub(in crate::store) fn duration_ms(d: SignedDuration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(if d.is_negative() { i64::MIN } else { i64::MAX })
}

/// Serializes a value for a JSON TEXT column.
pub(in crate::store) fn to_json<T: Serialize + ?Sized>(
    what: &str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

/// A result row of either backend, read by column name. The decoders below are written once
/// against this trait; each backend's row type implements it with the driver's own decoding.
pub(in crate::store) trait Columns {
    /// Decodes column `col` as `T`.
    fn column<T: Column>(&self, col: &str) -> Result<T, sqlx::Error>;
}

/// A value type every backend can decode (the column types the schema uses).
pub(in crate::store) trait Column:
    Sized
    + for<'r> Decode<'r, sqlx::Sqlite>
    + Type<sqlx::Sqlite>
    + for<'r> Decode<'r, sqlx::Postgres>
    + Type<sqlx::Postgres>
{
}

impl Column for String {}
impl Column for Option<String> {}
impl Column for i64 {}
impl Column for Option<i64> {}
impl Column for i32 {}
impl Column for Vec<u8> {}

impl Columns for SqliteRow {
    fn column<T: Column>(&self, col: &str) -> Result<T, sqlx::Error> {
        decode_column::<sqlx::Sqlite, _, T>(self, col)
    }
}

impl Columns for PgRow {
    fn column<T: Column>(&self, col: &str) -> Result<T, sqlx::Error> {
        decode_column::<sqlx::Postgres, _, T>(self, col)
    }
}

fn decode_column<'r, DB, R, T>(row: &'r R, col: &str) -> Result<T, sqlx::Error>
where
    DB: Database,
    R: Row<Database = DB>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    T: Decode<'r, DB> + Type<DB>,
{
    row.try_get::<T, _>(col)
}

/// Reads one column, reporting the table and column when the stored value has the wrong type.
fn get<T: Column>(row: &impl Columns, table: &str, col: &str) -> Result<T, StoreError> {
    row.column::<T>(col)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{col}: {e}")))
}

fn timestamp(table: &str, col: &str, millis: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(millis).map_err(|e| {
        StoreError::Corrupt(format!(
            "{table}.{col}: {millis} is not a valid instant: {e}"
        ))
    })
}

fn get_ts(row: &impl Columns, table: &str, col: &str) -> Result<Timestamp, StoreError> {
    timestamp(table, col, get::<i64>(row, table, col)?)
}

fn get_opt_ts(row: &impl Columns, table: &str, col: &str) -> Result<Option<Timestamp>, StoreError> {
    get::<Option<i64>>(row, table, col)?
        .map(|v| timestamp(table, col, v))
        .transpose()
}

fn parse_uuid(table: &str, col: &str, text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{col}: not a UUID: {e}")))
}

fn get_uuid(row: &impl Columns, table: &str, col: &str) -> Result<Uuid, StoreError> {
    parse_uuid(table, col, &get::<String>(row, table, col)?)
}

fn get_json<T: DeserializeOwned>(
    row: &impl Columns,
    table: &str,
    col: &str,
) -> Result<T, StoreError> {
    let text = get::<String>(row, table, col)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{col}: invalid JSON: {e}")))
}

/// Parses a stored grant state.
pub(in crate::store) fn grant_state(text: &str) -> Result<GrantState, StoreError> {
    text.parse::<GrantState>()
        .map_err(|e| StoreError::Corrupt(format!("grants.state: {e}")))
}

/// Stored name of a revoke cause.
pub(in crate::store) fn revoke_cause_str(cause: RevokeCause) -> &'static str {
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
pub(in crate::store) fn lane(text: &str) -> Result<Lane, StoreError> {
    match text {
        "provider" => Ok(Lane::Provider),
        "writeback" => Ok(Lane::Writeback),
        other => Err(StoreError::Corrupt(format!(
            "jobs.lane: unknown lane {other:?}"
        ))),
    }
}

/// Parses a stored job state.
pub(in crate::store) fn job_state(text: &str) -> Result<JobState, StoreError> {
    match text {
        "pending" => Ok(JobState::Pending),
        "done" => Ok(JobState::Done),
        "dead" => Ok(JobState::Dead),
        other => Err(StoreError::Corrupt(format!(
            "jobs.state: unknown state {other:?}"
        ))),
    }
}

/// The 24 grant values in `grant_columns!` order, chained onto `$target` with `$method` (`bind`
/// for a single statement, `push_bind` for a row of a multi-row one): one list for both.
macro_rules! grant_values {
    ($columns:expr, $target:expr, $method:ident) => {{
        let c = $columns;
        let g = c.grant;
        $target
            .$method(g.id.to_string())
            .$method(g.ticket.connector.as_str())
            .$method(g.ticket.id.as_str())
            .$method(g.ticket.key.as_str())
            .$method(g.ticket.url.as_deref())
            .$method(g.mapping.as_str())
            .$method(g.state.as_str())
            .$method(g.subject.as_str())
            .$method(g.target.as_str())
            .$method(g.scope.as_str())
            .$method(g.provider.as_str())
            .$method(g.duration.as_secs())
            .$method(c.requester.as_deref())
            .$method(c.approvers.as_str())
            .$method(ms(g.requested_at))
            .$method(opt_ms(g.approved_at))
            .$method(opt_ms(g.starts_at))
            .$method(opt_ms(g.expires_at))
            .$method(opt_ms(g.ended_at))
            .$method(g.revoke_cause.map(revoke_cause_str))
            .$method(g.reason.as_deref())
            .$method(ms(g.last_event_at))
            .$method(c.context.as_str())
            .$method(g.version)
    }};
}

/// A grant encoded for binding, so INSERT and UPDATE bind exactly the same values.
pub(in crate::store) struct GrantColumns<'g> {
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

    /// Pushes the 24 values in `grant_columns!` order onto one row of a multi-row statement
    /// (the batched grant UPDATE).
    pub fn push_values<DB, Sep>(&self, row: &mut sqlx::query_builder::Separated<'_, DB, Sep>)
    where
        Sep: std::fmt::Display,
        DB: Database,
        String: for<'t> Encode<'t, DB> + Type<DB>,
        for<'t> &'t str: Encode<'t, DB> + Type<DB>,
        for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
        i64: for<'t> Encode<'t, DB> + Type<DB>,
        Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    {
        grant_values!(self, row, push_bind);
    }

    /// Binds `$1..$24` in `grant_columns!` order.
    pub fn bind<'q, DB>(
        &self,
        q: sqlx::query::Query<'q, DB, DB::Arguments>,
    ) -> sqlx::query::Query<'q, DB, DB::Arguments>
    where
        DB: Database,
        String: for<'t> Encode<'t, DB> + Type<DB>,
        for<'t> &'t str: Encode<'t, DB> + Type<DB>,
        for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
        i64: for<'t> Encode<'t, DB> + Type<DB>,
        Option<i64>: for<'t> Encode<'t, DB> + Type<DB>,
    {
        grant_values!(self, q, bind)
    }
}

/// Decodes a row selected with `grant_columns!`.
pub(in crate::store) fn grant(row: &impl Columns) -> Result<Grant, StoreError> {
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
pub(in crate::store) fn delivery(row: &impl Columns) -> Result<Delivery, StoreError> {
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
pub(in crate::store) fn job(row: &impl Columns) -> Result<Job, StoreError> {
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
pub(in crate::store) fn audit(row: &impl Columns) -> Result<AuditRecord, StoreError> {
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
pub(in crate::store) fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}
