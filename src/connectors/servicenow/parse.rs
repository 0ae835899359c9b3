//! Pure parsing of ServiceNow deliveries into [`TicketEvent`]s, plus the value conventions and
//! approval rules shared with the REST confirmation.
//!
//! ServiceNow has no native webhook, so deliveries come from scripts and look like whatever the
//! script built: our shipped Business Rule's payload (`{event_id, table, sys_id, record, changes}`),
//! the flat approval shape of community scripts (`{table, sys_id, state, previous_state, ...}`), or
//! plain Table API records, with or without the `{"result": ...}` envelope. Values are strings
//! (also numbers and booleans), empty means `""`, references are `{link, value}` or bare sys_ids,
//! and `sysparm_display_value=all` turns every field into `{display_value, value}`. This module
//! reads the body as a [`serde_json::Value`] and accepts all of these. It performs no I/O, never
//! panics, and reports a body that cannot describe a ticket as a [`ParseError`] naming the field.

use jiff::Timestamp;
use serde_json::{Map, Value};

use super::options::{Options, is_table_name};
use crate::connectors::ParseError;
use crate::ticket::{Approval, EventKind, Person, StatusChange, Ticket, TicketEvent};

/// The approval-row table.
pub(crate) const APPROVER_TABLE: &str = "sysapproval_approver";
/// Longest sys_id (or other record id) accepted; real sys_ids are 32 hex digits.
const MAX_ID_LEN: usize = 64;
/// Most records accepted from one `{"result": [...]}` list.
const MAX_RECORDS: usize = 100;

/// Parses one verified delivery body. `base_url` is the connector's configured instance, used for
/// ticket links (never a `link` from the payload, which the sender controls).
pub(crate) fn parse_body(
    connector: &str,
    base_url: &reqwest::Url,
    options: &Options,
    body: &[u8],
) -> Result<Vec<TicketEvent>, ParseError> {
    let err = |reason: String| ParseError {
        connector: connector.to_owned(),
        reason,
    };
    let payload: Value = serde_json::from_slice(body).map_err(|e| {
        err(format!(
            "body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let top = payload
        .as_object()
        .ok_or_else(|| err("body is not a JSON object".to_owned()))?;
    let ctx = Ctx {
        connector,
        base_url,
        options,
        payload: &payload,
    };

    match top.get("result") {
        // A Table API response: one record, or a list of them.
        Some(Value::Object(record)) => ctx.event(None, record).map(|e| vec![e]).map_err(err),
        Some(Value::Array(records)) => {
            if records.len() > MAX_RECORDS {
                return Err(err(format!(
                    "field `result` lists {} records; at most {MAX_RECORDS} are accepted per delivery",
                    records.len()
                )));
            }
            records
                .iter()
                .enumerate()
                .map(|(i, r)| match r {
                    Value::Object(record) => ctx
                        .event(None, record)
                        .map_err(|why| err(format!("result[{i}]: {why}"))),
                    _ => Err(err(format!("field `result[{i}]` is not an object"))),
                })
                .collect()
        }
        Some(_) => Err(err("field `result` is not an object or a list".to_owned())),
        None => match top.get("record") {
            // The shared Business Rule payload.
            Some(Value::Object(record)) => {
                ctx.event(Some(top), record).map(|e| vec![e]).map_err(err)
            }
            Some(Value::Null) | None => {
                // A flat script payload or a bare record: the top level is the record.
                ctx.event(Some(top), top).map(|e| vec![e]).map_err(err)
            }
            Some(_) => Err(err("field `record` is not an object".to_owned())),
        },
    }
}

/// What every event of one delivery shares.
struct Ctx<'a> {
    connector: &'a str,
    base_url: &'a reqwest::Url,
    options: &'a Options,
    payload: &'a Value,
}

impl Ctx<'_> {
    /// One event from `record`; `envelope` is the Business Rule wrapper around it, if any (for a
    /// flat payload the envelope and the record are the same object).
    fn event(
        &self,
        envelope: Option<&Map<String, Value>>,
        record: &Map<String, Value>,
    ) -> Result<TicketEvent, String> {
        let from_envelope = |k: &str| envelope.and_then(|e| scalar(e.get(k)));
        let sys_id = match (from_envelope("sys_id"), scalar(record.get("sys_id"))) {
            (Some(a), Some(b)) if a != b => {
                return Err(
                    "field `sys_id` differs between the payload and its `record`".to_owned(),
                );
            }
            (Some(id), _) | (None, Some(id)) => id,
            (None, None) => return Err("missing field `sys_id`".to_owned()),
        };
        if !is_record_id(&sys_id) {
            return Err("field `sys_id` is not a ServiceNow sys_id".to_owned());
        }
        let table = match from_envelope("table") {
            Some(t) => t,
            None => table_of(record)
                .or_else(|| self.options.table.clone())
                .ok_or_else(|| {
                    "cannot tell which table the record is from (no `table` or `sys_class_name`)"
                        .to_owned()
                })?,
        };
        if !is_table_name(&table) {
            return Err("field `table` is not a ServiceNow table name".to_owned());
        }
        let changes = envelope
            .and_then(|e| e.get("changes"))
            .and_then(Value::as_object);
        let delivery = Delivery {
            table,
            sys_id,
            record,
            changes,
            previous_state: envelope.and_then(|e| scalar(e.get("previous_state"))),
            operation: from_envelope("operation").map(|s| s.to_ascii_lowercase()),
            updated_by: from_envelope("sys_updated_by")
                .or_else(|| scalar(record.get("sys_updated_by"))),
            occurred_at: envelope
                .and_then(|e| e.get("sys_updated_on"))
                .and_then(date)
                .or_else(|| record.get("sys_updated_on").and_then(date)),
        };
        if delivery.table == APPROVER_TABLE {
            self.approver_event(&delivery)
        } else {
            Ok(self.record_event(&delivery))
        }
    }

    /// A change to a ticket record (`sc_req_item`, `incident`, or any other task table).
    fn record_event(&self, d: &Delivery<'_>) -> TicketEvent {
        let r = d.record;
        let table = d.table.as_str();
        let code = scalar(r.get("state"));
        let status = code
            .as_deref()
            .map(|c| state_name(table, c, display(r.get("state")).as_deref(), self.options));
        let status_change = d.change("state").and_then(|(from, to)| {
            let to = to.or_else(|| code.clone())?;
            if from.as_deref() == Some(to.as_str()) {
                return None;
            }
            Some(StatusChange {
                from: from.map(|c| state_name(table, &c, None, self.options)),
                to: state_name(table, &to, None, self.options),
            })
        });
        let approval_now = scalar(r.get("approval")).map(|s| ApprovalState::parse(&s));
        let approval_change = d.change("approval").and_then(|(from, to)| {
            let to = to.map(|s| ApprovalState::parse(&s)).or(approval_now)?;
            let from = from.map(|s| ApprovalState::parse(&s));
            (from != Some(to)).then_some(to)
        });
        let kind = match (approval_change, d.operation.as_deref()) {
            (Some(ApprovalState::Approved), _) => EventKind::Approved,
            (Some(ApprovalState::Rejected), _) => EventKind::Rejected,
            (_, Some("insert")) => EventKind::Created,
            (_, Some("delete")) => EventKind::Cancelled,
            _ => status_change
                .as_ref()
                .map_or(EventKind::Updated, |c| kind_of_state(&c.to)),
        };
        let (fields, shown) = flatten(r);
        let mut fields = fields;
        if !shown.is_empty() {
            fields.insert("_display".to_owned(), Value::Object(shown));
        }
        TicketEvent {
            connector: self.connector.to_owned(),
            kind,
            ticket: Ticket {
                url: ticket_url(self.base_url, table, &d.sys_id),
                key: scalar(r.get("number"))
                    .filter(|n| is_record_id(n))
                    .unwrap_or_else(|| d.sys_id.clone()),
                id: d.sys_id.clone(),
                kind: Some(
                    scalar(r.get("sys_class_name"))
                        .filter(|c| is_table_name(c))
                        .unwrap_or_else(|| table.to_owned()),
                ),
                status,
                summary: scalar(r.get("short_description")),
                project: Some(table.to_owned()),
            },
            requester: requester_ref(r),
            actor: d.updated_by.clone().map(|user_name| Person {
                id: None,
                email: None,
                name: Some(user_name),
            }),
            approval: approval_now.and_then(|a| {
                a.normalized().map(|state| Approval {
                    state: state.to_owned(),
                    approvers: Vec::new(),
                    decided_at: None,
                })
            }),
            status_change,
            occurred_at: d.occurred_at.unwrap_or(Timestamp::UNIX_EPOCH),
            fields: Value::Object(fields),
            payload: self.payload.clone(),
        }
    }

    /// A change to a `sysapproval_approver` row: the event is about the ticket the row approves,
    /// and the actor is the row's approver.
    fn approver_event(&self, d: &Delivery<'_>) -> Result<TicketEvent, String> {
        let r = d.record;
        let target = scalar(r.get("sysapproval"))
            .or_else(|| scalar(r.get("document_id")))
            .ok_or_else(|| {
                "the sysapproval_approver row names no `sysapproval` or `document_id`".to_owned()
            })?;
        if !is_record_id(&target) {
            return Err("field `sysapproval` is not a ServiceNow sys_id".to_owned());
        }
        let source_table = scalar(r.get("source_table")).filter(|t| is_table_name(t));
        let state = scalar(r.get("state")).map(|s| ApprovalState::parse(&s));
        let changed = match d.change("state") {
            Some((from, to)) => {
                let to = to.map(|s| ApprovalState::parse(&s)).or(state);
                to.is_some() && from.map(|s| ApprovalState::parse(&s)) != to
            }
            // Without change information, the row's state is the news.
            None => true,
        };
        let approver = reference_person(r.get("approver"));
        let decided = state.filter(|_| changed).and_then(ApprovalState::decision);
        let kind = match decided {
            Some(ApprovalState::Approved) => EventKind::Approved,
            Some(_) => EventKind::Rejected,
            None => EventKind::Updated,
        };
        let (mut fields, shown) = flatten(r);
        if !shown.is_empty() {
            fields.insert("_display".to_owned(), Value::Object(shown));
        }
        Ok(TicketEvent {
            connector: self.connector.to_owned(),
            kind,
            ticket: Ticket {
                url: source_table
                    .as_deref()
                    .and_then(|t| ticket_url(self.base_url, t, &target)),
                id: target.clone(),
                key: target,
                kind: source_table.clone(),
                status: None,
                summary: None,
                project: source_table,
            },
            requester: None,
            approval: state.and_then(|s| {
                s.normalized().map(|n| Approval {
                    state: n.to_owned(),
                    approvers: if s.decision().is_some() {
                        approver.iter().cloned().collect()
                    } else {
                        Vec::new()
                    },
                    decided_at: s.decision().and(d.occurred_at),
                })
            }),
            actor: approver,
            status_change: None,
            occurred_at: d.occurred_at.unwrap_or(Timestamp::UNIX_EPOCH),
            fields: Value::Object(fields),
            payload: self.payload.clone(),
        })
    }
}

/// One record with the envelope facts the parser needs.
struct Delivery<'a> {
    table: String,
    sys_id: String,
    record: &'a Map<String, Value>,
    changes: Option<&'a Map<String, Value>>,
    /// The flat shape's `previous_state`.
    previous_state: Option<String>,
    operation: Option<String>,
    /// `sys_updated_by`: a user_name, shown to people but never used as an identity.
    updated_by: Option<String>,
    occurred_at: Option<Timestamp>,
}

impl Delivery<'_> {
    /// `(previous, current)` of `field` when the delivery says it changed: from
    /// `changes.<field>.{previous,current}`, or for `state` from the flat `previous_state`.
    fn change(&self, field: &str) -> Option<(Option<String>, Option<String>)> {
        if let Some(c) = self.changes.and_then(|c| c.get(field)) {
            return match c {
                Value::Object(o) => Some((scalar(o.get("previous")), scalar(o.get("current")))),
                // `"changes": {"state": "2"}`: only the new value.
                other => scalar(Some(other)).map(|v| (None, Some(v))),
            };
        }
        if field == "state" {
            return self
                .previous_state
                .clone()
                .map(|p| (Some(p), scalar(self.record.get("state"))));
        }
        None
    }
}

/// The values of `sysapproval_approver.state` and `task.approval`, normalized. Unknown values
/// are kept apart so that they can never read as a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApprovalState {
    /// `not requested` (also spelled `not yet requested`), or empty.
    NotRequested,
    Requested,
    Approved,
    Rejected,
    Cancelled,
    /// `not_required` ("No Longer Required").
    NotRequired,
    Duplicate,
    Unknown,
}

impl ApprovalState {
    /// Reads a raw value or label, case-insensitively, with spaces or `_`.
    pub(crate) fn parse(s: &str) -> Self {
        let norm: String = s
            .trim()
            .chars()
            .map(|c| {
                if c == '_' {
                    ' '
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        match norm
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_str()
        {
            "" | "not requested" | "not yet requested" => Self::NotRequested,
            "requested" => Self::Requested,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "cancelled" | "canceled" => Self::Cancelled,
            "not required" | "no longer required" => Self::NotRequired,
            "duplicate" => Self::Duplicate,
            _ => Self::Unknown,
        }
    }

    /// `Approved` or `Rejected` when this state is a decision.
    pub(crate) fn decision(self) -> Option<Self> {
        matches!(self, Self::Approved | Self::Rejected).then_some(self)
    }

    /// The [`Approval::state`] this stands for: `approved`, `rejected`, or `pending` while
    /// requested; `None` when approval is not in play (not requested, cancelled, ...).
    pub(crate) fn normalized(self) -> Option<&'static str> {
        match self {
            Self::Approved => Some("approved"),
            Self::Rejected => Some("rejected"),
            Self::Requested => Some("pending"),
            _ => None,
        }
    }
}

/// The approval the Table API confirms for a ticket, before approver e-mails are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfirmedApproval {
    /// `approved`, `rejected` or `pending`.
    pub state: &'static str,
    /// The approvers whose rows carry the decision (ids from the rows; names when displayed).
    pub approvers: Vec<Person>,
    /// The latest `sys_updated_on` among those rows.
    pub decided_at: Option<Timestamp>,
}

/// Decides a ticket's approval from its own `approval` field and its `sysapproval_approver` rows.
///
/// Rejected when any row (or the ticket itself) is rejected. Approved only when the ticket says
/// `approved` **and** at least one row is approved: neither alone is enough, because a script can
/// set the ticket field and a stray row can outlive its request. Pending otherwise. `None` when
/// approval is not in play at all: no rows, and a ticket field that is not requested (or empty,
/// not required, cancelled); the ticket is then approved by its status alone.
pub(crate) fn confirmed_approval(
    ticket_approval: ApprovalState,
    rows: &[Map<String, Value>],
) -> Option<ConfirmedApproval> {
    let states: Vec<ApprovalState> = rows
        .iter()
        .map(|r| ApprovalState::parse(&scalar(r.get("state")).unwrap_or_default()))
        .collect();
    let deciding = |wanted: ApprovalState| {
        let picked: Vec<&Map<String, Value>> = rows
            .iter()
            .zip(&states)
            .filter(|(_, s)| **s == wanted)
            .map(|(r, _)| r)
            .collect();
        let mut approvers: Vec<Person> = Vec::new();
        for p in picked
            .iter()
            .filter_map(|r| reference_person(r.get("approver")))
        {
            if !approvers.iter().any(|a| a.id == p.id && a.name == p.name) {
                approvers.push(p);
            }
        }
        let decided_at = picked
            .iter()
            .filter_map(|r| r.get("sys_updated_on").and_then(date))
            .max();
        (approvers, decided_at)
    };
    if states.contains(&ApprovalState::Rejected) || ticket_approval == ApprovalState::Rejected {
        let (approvers, decided_at) = deciding(ApprovalState::Rejected);
        return Some(ConfirmedApproval {
            state: "rejected",
            approvers,
            decided_at,
        });
    }
    if ticket_approval == ApprovalState::Approved && states.contains(&ApprovalState::Approved) {
        let (approvers, decided_at) = deciding(ApprovalState::Approved);
        return Some(ConfirmedApproval {
            state: "approved",
            approvers,
            decided_at,
        });
    }
    let not_in_play = matches!(
        ticket_approval,
        ApprovalState::NotRequested | ApprovalState::NotRequired | ApprovalState::Cancelled
    );
    if rows.is_empty() && not_in_play {
        return None;
    }
    Some(ConfirmedApproval {
        state: "pending",
        approvers: Vec::new(),
        decided_at: None,
    })
}

/// The built-in code → name map of a table's `state` field.
fn builtin_states(table: &str) -> &'static [(&'static str, &'static str)] {
    match table {
        "incident" => &[
            ("1", "New"),
            ("2", "In Progress"),
            ("3", "On Hold"),
            ("6", "Resolved"),
            ("7", "Closed"),
            ("8", "Canceled"),
        ],
        "sc_req_item" | "sc_task" => &[
            ("-5", "Pending"),
            ("1", "Open"),
            ("2", "Work in Progress"),
            ("3", "Closed Complete"),
            ("4", "Closed Incomplete"),
            ("7", "Closed Skipped"),
        ],
        _ => &[],
    }
}

/// The name of state `code` in `table`: the built-in map, then the connector's `states` option
/// (for custom codes), then the display value the delivery carried, else the code itself.
pub(crate) fn state_name(
    table: &str,
    code: &str,
    shown: Option<&str>,
    options: &Options,
) -> String {
    let code = code.trim();
    builtin_states(table)
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| (*n).to_owned())
        .or_else(|| options.state_name(code).map(str::to_owned))
        .or_else(|| shown.map(str::to_owned))
        .unwrap_or_else(|| code.to_owned())
}

/// The code to write for state `name` in `table`: a bare code passes through, then the
/// connector's `states` option, then the built-in map (all case-insensitive).
pub(crate) fn state_code(table: &str, name: &str, options: &Options) -> Option<String> {
    let name = name.trim();
    if super::options::is_state_code(name) {
        return Some(name.to_owned());
    }
    options.state_code(name).map(str::to_owned).or_else(|| {
        builtin_states(table)
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(c, _)| (*c).to_owned())
    })
}

/// What a move to the status called `name` means for a grant.
fn kind_of_state(name: &str) -> EventKind {
    match name.trim().to_ascii_lowercase().as_str() {
        "canceled" | "cancelled" | "closed incomplete" | "closed skipped" => EventKind::Cancelled,
        "resolved" | "closed" | "closed complete" => EventKind::Resolved,
        _ => EventKind::Updated,
    }
}

/// The table a bare record comes from: `sys_class_name`, else recognized by its shape.
fn table_of(record: &Map<String, Value>) -> Option<String> {
    if let Some(class) = scalar(record.get("sys_class_name")) {
        return Some(class);
    }
    if record.contains_key("approver")
        && (record.contains_key("sysapproval") || record.contains_key("document_id"))
    {
        return Some(APPROVER_TABLE.to_owned());
    }
    let number = scalar(record.get("number"))?;
    let table = [
        ("RITM", "sc_req_item"),
        ("SCTASK", "sc_task"),
        ("INC", "incident"),
        ("REQ", "sc_request"),
        ("CHG", "change_request"),
    ]
    .into_iter()
    .find(|(prefix, _)| {
        number
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.bytes().next().is_some_and(|b| b.is_ascii_digit()))
    })?
    .1;
    Some(table.to_owned())
}

/// The requester of a task record: `requested_for`, else `caller_id` (incidents), else
/// `opened_by`.
pub(crate) fn requester_ref(record: &Map<String, Value>) -> Option<Person> {
    ["requested_for", "caller_id", "opened_by"]
        .into_iter()
        .find_map(|k| reference_person(record.get(k)).filter(|p| p.id.is_some()))
}

/// `{base}/nav_to.do?uri={table}.do?sys_id={sys_id}`: the link a person opens. Both parts are
/// validated identifiers, so nothing needs escaping.
pub(crate) fn ticket_url(base: &reqwest::Url, table: &str, sys_id: &str) -> Option<String> {
    if !is_table_name(table) || !is_record_id(sys_id) {
        return None;
    }
    let mut url = super::endpoint(base, &["nav_to.do"]).ok()?;
    url.set_query(Some(&format!("uri={table}.do?sys_id={sys_id}")));
    Some(url.into())
}

/// The table named in a link built by [`ticket_url`], when it is one.
pub(crate) fn table_in_url(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let (_, uri) = url.query_pairs().find(|(k, _)| k == "uri")?;
    let (table, _) = uri.split_once(".do")?;
    is_table_name(table).then(|| table.to_owned())
}

/// True when `s` can be placed in a REST path or an encoded query as a record id: non-empty,
/// bounded, and only ASCII letters, digits, `-` and `_` (never `/`, `^`, `=`, `.`).
pub(crate) fn is_record_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A reference field as a [`Person`] (`id` = the user's sys_id, `name` = its display value when
/// shown); `None` when empty.
pub(crate) fn reference_person(v: Option<&Value>) -> Option<Person> {
    let p = Person {
        id: scalar(v).filter(|id| is_record_id(id)),
        email: None,
        name: display(v),
    };
    (p.id.is_some() || p.name.is_some()).then_some(p)
}

/// The value a ServiceNow field stands for, as text: strings as they are, numbers and booleans
/// as text, references and `display_value=all` objects by their `value`. `None` for empty
/// strings, `null`, lists and objects without a value.
pub(crate) fn scalar(v: Option<&Value>) -> Option<String> {
    let s = match v? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(o) => match o.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => return None,
        },
        Value::Null | Value::Array(_) => return None,
    };
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

/// The `display_value` of a `sysparm_display_value=all` object, when non-empty.
pub(crate) fn display(v: Option<&Value>) -> Option<String> {
    match v?.as_object()?.get("display_value")? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The record's fields with every value as ServiceNow means it (a string; `""` when empty), and
/// separately the display values that `display_value=all` objects carried.
fn flatten(record: &Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
    let mut values = Map::new();
    let mut shown = Map::new();
    for (k, v) in record {
        let flat = match v {
            Value::Object(o)
                if o.contains_key("value")
                    || o.contains_key("display_value")
                    || o.contains_key("link") =>
            {
                if let Some(d) = display(Some(v)) {
                    shown.insert(k.clone(), Value::String(d));
                }
                Value::String(scalar(Some(v)).unwrap_or_default())
            }
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            Value::Null => Value::String(String::new()),
            other => other.clone(),
        };
        values.insert(k.clone(), flat);
    }
    (values, shown)
}

/// A ServiceNow date-time: `YYYY-MM-DD HH:MM:SS` in UTC (no `T`, no zone), or an RFC 3339
/// instant; also inside a `display_value=all` object (its `value` is the UTC form).
pub(crate) fn date(v: &Value) -> Option<Timestamp> {
    let s = scalar(Some(v))?;
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Some(ts);
    }
    let civil: jiff::civil::DateTime = s.replacen(' ', "T", 1).parse().ok()?;
    jiff::tz::TimeZone::UTC.to_timestamp(civil).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const RITM: &str = "3f1d6b9f1b2231d0a8b4ed7bbc4bcb22";
    const ROW: &str = "6e4a6b9f1b2231d0a8b4ed7bbc4bcb11";
    const ALICE: &str = "46d44a5e1b2231d0a8b4ed7bbc4bcb33";
    const BOB: &str = "5137153cc611227c000bbd1bd8cd2005";

    fn base() -> reqwest::Url {
        reqwest::Url::parse("https://example.service-now.com").expect("url")
    }

    fn parse_with(options: &Options, body: &Value) -> Result<Vec<TicketEvent>, ParseError> {
        parse_body(
            "servicenow",
            &base(),
            options,
            &serde_json::to_vec(body).expect("json"),
        )
    }

    fn parse(body: &Value) -> Result<Vec<TicketEvent>, ParseError> {
        parse_with(&Options::default(), body)
    }

    fn one(body: &Value) -> TicketEvent {
        let mut events = parse(body).expect("parses");
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    fn reference(table: &str, id: &str) -> Value {
        json!({"link": format!("https://INSTANCE.service-now.com/api/now/table/{table}/{id}"), "value": id})
    }

    /// The shared Business Rule payload for an RITM whose approval just became `approved`.
    fn ritm_approved() -> Value {
        json!({
            "event_id": format!("{RITM}:4"), "table": "sc_req_item", "sys_id": RITM,
            "sys_mod_count": "4", "operation": "update", "sys_updated_on": "2025-03-14 08:41:37",
            "sys_updated_by": "bob.approver",
            "record": {
                "number": "RITM0010001", "state": "2", "approval": "approved",
                "requested_for": reference("sys_user", ALICE),
                "opened_by": reference("sys_user", ALICE),
                "short_description": "Local admin on WS-0042", "u_target": "WS-0042",
                "u_duration": "2h", "u_elevation_type": "Local admin",
                "cat_item": reference("sc_cat_item", "04b7e94b4f7b4200086eeed18110c7fd"),
                "sys_class_name": "sc_req_item", "sys_id": RITM, "active": "true",
                "sys_mod_count": "4"
            },
            "changes": {"approval": {"previous": "requested", "current": "approved"},
                        "state": {"previous": "1", "current": "2"}}
        })
    }

    #[test]
    fn business_rule_approval_of_an_ritm_is_an_approved_event() {
        let e = one(&ritm_approved());
        assert_eq!(e.kind, EventKind::Approved);
        assert_eq!(e.connector, "servicenow");
        assert_eq!(e.ticket.id, RITM);
        assert_eq!(e.ticket.key, "RITM0010001");
        assert_eq!(
            e.ticket.url.as_deref(),
            Some(
                format!(
                    "https://example.service-now.com/nav_to.do?uri=sc_req_item.do?sys_id={RITM}"
                )
                .as_str()
            )
        );
        assert_eq!(e.ticket.status.as_deref(), Some("Work in Progress"));
        assert_eq!(e.ticket.summary.as_deref(), Some("Local admin on WS-0042"));
        assert_eq!(e.ticket.project.as_deref(), Some("sc_req_item"));
        assert_eq!(
            e.status_change,
            Some(StatusChange {
                from: Some("Open".into()),
                to: "Work in Progress".into()
            })
        );
        assert_eq!(
            e.requester,
            Some(Person {
                id: Some(ALICE.into()),
                email: None,
                name: None
            })
        );
        let approval = e.approval.expect("approval");
        assert_eq!(approval.state, "approved");
        assert!(
            approval.approvers.is_empty(),
            "approvers come from approval rows only"
        );
        assert_eq!(e.occurred_at, "2025-03-14T08:41:37Z".parse().expect("ts"));
        assert_eq!(e.fields["state"], "2", "the code stays in fields");
        assert_eq!(e.fields["u_target"], "WS-0042");
        assert_eq!(
            e.fields["requested_for"], ALICE,
            "references flatten to their sys_id"
        );
        assert_eq!(e.payload["event_id"], format!("{RITM}:4"));
    }

    #[test]
    fn the_body_never_names_an_approver_with_an_identity() {
        let e = one(&ritm_approved());
        let actor = e.actor.expect("actor");
        assert!(
            actor.is_anonymous(),
            "sys_updated_by is a display hint only: {actor:?}"
        );
        assert_eq!(actor.name.as_deref(), Some("bob.approver"));
    }

    #[test]
    fn rejection_is_a_rejected_event() {
        let mut body = ritm_approved();
        body["record"]["approval"] = json!("rejected");
        body["changes"] = json!({"approval": {"previous": "requested", "current": "rejected"}});
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Rejected);
        assert_eq!(e.approval.expect("approval").state, "rejected");
        assert_eq!(e.status_change, None);
    }

    #[test]
    fn an_unchanged_approval_is_not_news() {
        let mut body = ritm_approved();
        body["changes"] = json!({"approval": {"previous": "approved", "current": "approved"}});
        assert_eq!(one(&body).kind, EventKind::Updated);
    }

    #[test]
    fn insert_is_created_and_state_moves_map_to_cancel_or_resolve() {
        let mut body = ritm_approved();
        body["operation"] = json!("insert");
        body["record"]["approval"] = json!("not requested");
        body["changes"] = json!({});
        assert_eq!(one(&body).kind, EventKind::Created);

        for (code, kind, name) in [
            ("3", EventKind::Resolved, "Closed Complete"),
            ("4", EventKind::Cancelled, "Closed Incomplete"),
            ("7", EventKind::Cancelled, "Closed Skipped"),
            ("-5", EventKind::Updated, "Pending"),
        ] {
            let mut body = ritm_approved();
            body["record"]["state"] = json!(code);
            body["changes"] = json!({"state": {"previous": "2", "current": code}});
            let e = one(&body);
            assert_eq!(e.kind, kind, "state {code}");
            assert_eq!(e.status_change.expect("change").to, name);
        }
    }

    #[test]
    fn incident_states_use_the_incident_map() {
        for (code, kind, name) in [
            ("6", EventKind::Resolved, "Resolved"),
            ("7", EventKind::Resolved, "Closed"),
            ("8", EventKind::Cancelled, "Canceled"),
            ("3", EventKind::Updated, "On Hold"),
        ] {
            let body = json!({"table": "incident", "sys_id": RITM, "sys_mod_count": "7",
                "operation": "update",
                "record": {"number": "INC0010002", "state": code, "approval": "not requested",
                           "caller_id": BOB, "sys_class_name": "incident"},
                "changes": {"state": {"previous": "2", "current": code}}});
            let e = one(&body);
            assert_eq!(e.kind, kind, "state {code}");
            assert_eq!(e.ticket.status.as_deref(), Some(name));
            assert_eq!(
                e.status_change.expect("change").from.as_deref(),
                Some("In Progress")
            );
            assert_eq!(
                e.requester.expect("requester").id.as_deref(),
                Some(BOB),
                "bare reference"
            );
            assert_eq!(
                e.approval, None,
                "\"not requested\" means no approval in play"
            );
        }
    }

    #[test]
    fn deleting_a_record_cancels_it() {
        let mut body = ritm_approved();
        body["operation"] = json!("delete");
        body["changes"] = json!({});
        assert_eq!(one(&body).kind, EventKind::Cancelled);
    }

    #[test]
    fn unknown_state_codes_fall_back_to_configured_names_then_the_code() {
        let mut body = ritm_approved();
        body["record"]["state"] = json!("21");
        body["changes"] = json!({"state": {"previous": "2", "current": "21"}});
        let plain = one(&body);
        assert_eq!(plain.ticket.status.as_deref(), Some("21"));
        let options = Options {
            states: [("Awaiting Elevation".to_owned(), "21".to_owned())].into(),
            ..Options::default()
        };
        let named = parse_with(&options, &body).expect("parses").remove(0);
        assert_eq!(named.ticket.status.as_deref(), Some("Awaiting Elevation"));
        assert_eq!(
            named.status_change.expect("change").to,
            "Awaiting Elevation"
        );
    }

    #[test]
    fn string_and_number_values_are_read_alike() {
        let mut body = ritm_approved();
        body["record"]["state"] = json!(2);
        body["sys_mod_count"] = json!(4);
        body["changes"]["state"] = json!({"previous": 1, "current": 2});
        body["record"]["active"] = json!(true);
        let e = one(&body);
        assert_eq!(e.ticket.status.as_deref(), Some("Work in Progress"));
        assert_eq!(
            e.status_change.expect("change").from.as_deref(),
            Some("Open")
        );
        assert_eq!(e.fields["state"], "2");
        assert_eq!(e.fields["active"], "true");
    }

    #[test]
    fn not_requested_is_spelled_two_ways() {
        for spelling in [
            "not requested",
            "not yet requested",
            "Not Yet Requested",
            "not_requested",
            "",
        ] {
            assert_eq!(
                ApprovalState::parse(spelling),
                ApprovalState::NotRequested,
                "{spelling:?}"
            );
        }
        assert_eq!(
            ApprovalState::parse("not_required"),
            ApprovalState::NotRequired
        );
        assert_eq!(ApprovalState::parse("approved "), ApprovalState::Approved);
        assert_eq!(ApprovalState::parse("approved-ish"), ApprovalState::Unknown);
        assert_eq!(ApprovalState::Unknown.normalized(), None);
    }

    #[test]
    fn table_api_record_in_a_result_envelope_with_display_values() {
        let body = json!({"result": {
            "sys_id": {"display_value": RITM, "value": RITM},
            "number": {"display_value": "RITM0010001", "value": "RITM0010001"},
            "state": {"display_value": "Work in Progress", "value": "2"},
            "approval": {"display_value": "Approved", "value": "approved"},
            "requested_for": {"display_value": "Alice Example", "value": ALICE,
                              "link": format!("https://INSTANCE.service-now.com/api/now/table/sys_user/{ALICE}")},
            "sys_class_name": {"display_value": "Requested Item", "value": "sc_req_item"},
            "sys_updated_on": {"display_value": "14.03.2025 09:41:37", "value": "2025-03-14 08:41:37"},
            "u_duration": {"display_value": "2h", "value": "2h"}
        }});
        let e = one(&body);
        assert_eq!(
            e.kind,
            EventKind::Updated,
            "a plain record carries no change"
        );
        assert_eq!(e.ticket.id, RITM);
        assert_eq!(e.ticket.key, "RITM0010001");
        assert_eq!(e.ticket.status.as_deref(), Some("Work in Progress"));
        assert_eq!(e.ticket.kind.as_deref(), Some("sc_req_item"));
        assert_eq!(
            e.requester,
            Some(Person {
                id: Some(ALICE.into()),
                email: None,
                name: Some("Alice Example".into())
            })
        );
        assert_eq!(
            e.occurred_at,
            "2025-03-14T08:41:37Z".parse().expect("ts"),
            "the UTC value, not the display"
        );
        assert_eq!(e.fields["state"], "2");
        assert_eq!(e.fields["_display"]["state"], "Work in Progress");
        assert_eq!(e.fields["_display"]["requested_for"], "Alice Example");
    }

    #[test]
    fn table_api_record_without_envelope_and_with_bare_references() {
        let body = json!({"sys_id": RITM, "number": "INC0010002", "state": "1",
            "approval": "requested", "caller_id": BOB, "opened_by": ALICE,
            "sys_updated_on": "2016-01-22 14:12:37"});
        let e = one(&body);
        assert_eq!(
            e.ticket.project.as_deref(),
            Some("incident"),
            "recognized by its number"
        );
        assert_eq!(e.ticket.status.as_deref(), Some("New"));
        assert_eq!(e.requester.expect("requester").id.as_deref(), Some(BOB));
        assert_eq!(e.approval.expect("approval").state, "pending");
    }

    #[test]
    fn result_lists_give_one_event_per_record() {
        let body = json!({"result": [
            {"sys_id": RITM, "number": "RITM0010001", "state": "1", "sys_class_name": "sc_req_item"},
            {"sys_id": BOB, "number": "INC0010002", "state": "2", "sys_class_name": "incident"}
        ]});
        let events = parse(&body).expect("parses");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].ticket.status.as_deref(), Some("In Progress"));
        assert!(parse(&json!({"result": []})).expect("parses").is_empty());
        let too_many: Vec<Value> = (0..=MAX_RECORDS).map(|_| json!({"sys_id": RITM})).collect();
        assert!(parse(&json!({ "result": too_many })).is_err());
    }

    #[test]
    fn records_of_unknown_tables_use_the_configured_table() {
        let body = json!({"sys_id": RITM, "state": "2"});
        let err = parse(&body).expect_err("no table");
        assert!(err.reason.contains("table"), "{err}");
        let options = Options {
            table: Some("u_elevation_request".into()),
            ..Options::default()
        };
        let e = parse_with(&options, &body).expect("parses").remove(0);
        assert_eq!(e.ticket.project.as_deref(), Some("u_elevation_request"));
        assert_eq!(e.ticket.status.as_deref(), Some("2"));
    }

    #[test]
    fn flat_approver_payload_from_the_wire_format_doc() {
        let body = json!({"table": "sysapproval_approver", "sys_id": ROW, "state": "approved",
            "previous_state": "requested",
            "approver": reference("sys_user", ALICE),
            "sysapproval": reference("task", RITM),
            "document_id": RITM, "source_table": "sc_req_item",
            "sys_updated_on": "2025-03-14 08:41:37"});
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Approved);
        assert_eq!(e.ticket.id, RITM, "the event is about the approved ticket");
        assert_eq!(e.ticket.key, RITM, "the key is unknown until confirmed");
        assert_eq!(
            e.ticket.url.as_deref(),
            Some(
                format!(
                    "https://example.service-now.com/nav_to.do?uri=sc_req_item.do?sys_id={RITM}"
                )
                .as_str()
            )
        );
        let alice = Person {
            id: Some(ALICE.into()),
            email: None,
            name: None,
        };
        assert_eq!(e.actor.as_ref(), Some(&alice));
        let approval = e.approval.expect("approval");
        assert_eq!(approval.state, "approved");
        assert_eq!(approval.approvers, vec![alice]);
        assert_eq!(
            approval.decided_at,
            Some("2025-03-14T08:41:37Z".parse().expect("ts"))
        );
        assert_eq!(e.requester, None);
        assert_eq!(e.status_change, None);
    }

    #[test]
    fn shared_approver_payload_with_record_and_changes() {
        let body = json!({"event_id": format!("{ROW}:2"), "table": "sysapproval_approver",
            "sys_id": ROW, "sys_mod_count": "2", "operation": "update",
            "sys_updated_on": "2025-03-14 08:41:37", "sys_updated_by": "alice",
            "record": {"state": "rejected", "approver": ALICE, "sysapproval": "",
                       "document_id": reference("sc_req_item", RITM), "source_table": "sc_req_item"},
            "changes": {"state": {"previous": "requested", "current": "rejected"}}});
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Rejected);
        assert_eq!(e.ticket.id, RITM, "document_id when sysapproval is empty");
        assert_eq!(e.actor.expect("actor").id.as_deref(), Some(ALICE));
        assert_eq!(e.approval.expect("approval").state, "rejected");
    }

    #[test]
    fn approver_rows_that_did_not_decide_are_updates() {
        let mut body = json!({"table": "sysapproval_approver", "sys_id": ROW, "state": "requested",
            "approver": ALICE, "sysapproval": RITM});
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.approval.expect("approval").state, "pending");
        body["state"] = json!("approved");
        body["previous_state"] = json!("approved");
        assert_eq!(
            one(&body).kind,
            EventKind::Updated,
            "no transition, no news"
        );
        body["state"] = json!("not_required");
        body["previous_state"] = json!("requested");
        let e = one(&body);
        assert_eq!(e.kind, EventKind::Updated);
        assert_eq!(e.approval, None);
    }

    #[test]
    fn approver_rows_without_a_target_are_refused() {
        let body = json!({"table": "sysapproval_approver", "sys_id": ROW, "state": "approved",
            "approver": ALICE});
        let err = parse(&body).expect_err("no target");
        assert!(err.reason.contains("sysapproval"), "{err}");
        let body = json!({"table": "sysapproval_approver", "sys_id": ROW, "state": "approved",
            "approver": ALICE, "sysapproval": "../../sys_user"});
        assert!(parse(&body).is_err());
    }

    #[test]
    fn garbage_is_a_parse_error_naming_the_problem() {
        let raw = |b: &[u8]| parse_body("servicenow", &base(), &Options::default(), b);
        assert!(raw(b"").expect_err("empty").reason.contains("not JSON"));
        assert!(raw(b"<xml/>").is_err());
        assert!(raw(b"[1,2]").expect_err("array").reason.contains("object"));
        assert!(raw(b"\"text\"").is_err());
        for body in [
            json!({}),
            json!({"table": "incident"}),
            json!({"result": "nope"}),
            json!({"result": [1]}),
            json!({"record": [], "sys_id": RITM}),
            json!({"table": "incident", "sys_id": "a/b", "record": {}}),
            json!({"table": "Incident; DROP", "sys_id": RITM, "record": {}}),
            json!({"table": "incident", "sys_id": RITM, "record": {"sys_id": BOB}}),
        ] {
            assert!(parse(&body).is_err(), "{body}");
        }
    }

    #[test]
    fn links_in_the_payload_never_become_the_ticket_url() {
        let mut body = ritm_approved();
        body["record"]["requested_for"]["link"] = json!("https://evil.example/steal");
        let e = one(&body);
        assert!(
            e.ticket
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://example.service-now.com/")),
        );
        assert_eq!(
            table_in_url(e.ticket.url.as_deref().expect("url")).as_deref(),
            Some("sc_req_item")
        );
    }

    #[test]
    fn confirmed_approval_needs_the_ticket_and_a_row() {
        let row = |state: &str, approver: &str, at: &str| {
            json!({"state": state, "approver": reference("sys_user", approver), "sys_updated_on": at})
                .as_object()
                .cloned()
                .expect("object")
        };
        let approved = row("approved", ALICE, "2025-03-14 08:41:37");
        let pending = row("requested", BOB, "2025-03-14 08:00:00");

        let c = confirmed_approval(
            ApprovalState::Approved,
            &[pending.clone(), approved.clone()],
        )
        .expect("in play");
        assert_eq!(c.state, "approved");
        assert_eq!(c.approvers.len(), 1);
        assert_eq!(c.approvers[0].id.as_deref(), Some(ALICE));
        assert_eq!(
            c.decided_at,
            Some("2025-03-14T08:41:37Z".parse().expect("ts"))
        );

        let c = confirmed_approval(ApprovalState::Requested, std::slice::from_ref(&approved))
            .expect("in play");
        assert_eq!(
            c.state, "pending",
            "a row alone does not approve the ticket"
        );
        let c = confirmed_approval(ApprovalState::Approved, std::slice::from_ref(&pending))
            .expect("in play");
        assert_eq!(
            c.state, "pending",
            "the ticket field alone does not approve"
        );
        let c = confirmed_approval(ApprovalState::Approved, &[]).expect("in play");
        assert_eq!(c.state, "pending");

        let rejected = row("rejected", BOB, "2025-03-14 09:00:00");
        let c = confirmed_approval(ApprovalState::Approved, &[approved.clone(), rejected])
            .expect("in play");
        assert_eq!(c.state, "rejected", "any rejection wins");
        assert_eq!(c.approvers[0].id.as_deref(), Some(BOB));

        assert_eq!(confirmed_approval(ApprovalState::NotRequested, &[]), None);
        assert_eq!(
            confirmed_approval(ApprovalState::NotRequested, &[pending]).map(|c| c.state),
            Some("pending")
        );
    }

    #[test]
    fn state_codes_for_writeback() {
        let o = Options {
            states: [("In Progress".to_owned(), "2".to_owned())].into(),
            ..Options::default()
        };
        assert_eq!(
            state_code("sc_req_item", "In Progress", &o).as_deref(),
            Some("2")
        );
        assert_eq!(
            state_code("sc_req_item", "closed complete", &o).as_deref(),
            Some("3")
        );
        assert_eq!(state_code("incident", "Resolved", &o).as_deref(), Some("6"));
        assert_eq!(state_code("incident", " 7 ", &o).as_deref(), Some("7"));
        assert_eq!(state_code("incident", "-5", &o).as_deref(), Some("-5"));
        assert_eq!(state_code("sc_req_item", "Resolved", &o), None);
        assert_eq!(state_code("u_custom", "Open", &o), None);
    }

    #[test]
    fn dates_are_utc_without_a_zone() {
        assert_eq!(
            date(&json!("2016-01-22 14:12:37")),
            Some("2016-01-22T14:12:37Z".parse().expect("ts"))
        );
        assert_eq!(
            date(&json!("2016-01-22T14:12:37Z")),
            Some("2016-01-22T14:12:37Z".parse().expect("ts"))
        );
        assert_eq!(
            date(&json!({"display_value": "x", "value": "2016-01-22 14:12:37"})),
            Some("2016-01-22T14:12:37Z".parse().expect("ts"))
        );
        assert_eq!(date(&json!("yesterday")), None);
        assert_eq!(date(&json!(12)), None);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z_ 0-9./-]{0,12}".prop_map(Value::String),
            Just(json!("sysapproval_approver")),
            Just(json!("sc_req_item")),
            Just(json!(RITM)),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("table".to_owned()),
                        Just("sys_id".to_owned()),
                        Just("record".to_owned()),
                        Just("result".to_owned()),
                        Just("changes".to_owned()),
                        Just("state".to_owned()),
                        Just("approval".to_owned()),
                        Just("sysapproval".to_owned()),
                        Just("approver".to_owned()),
                        Just("previous".to_owned()),
                        Just("current".to_owned()),
                        Just("value".to_owned()),
                        Just("display_value".to_owned()),
                        Just("number".to_owned()),
                        Just("previous_state".to_owned()),
                        Just("operation".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(body in arb_json()) {
            if let Ok(events) = parse(&body) {
                for e in events {
                    prop_assert!(is_record_id(&e.ticket.id));
                    prop_assert!(e.ticket.url.as_deref().is_none_or(|u| u.starts_with("https://example.service-now.com/nav_to.do?uri=")));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_body("servicenow", &base(), &Options::default(), &body);
        }

        #[test]
        fn approval_state_parsing_is_total(s in "(?s).{0,40}") {
            let st = ApprovalState::parse(&s);
            if st.decision().is_some() {
                prop_assert!(s.to_ascii_lowercase().contains("approved") || s.to_ascii_lowercase().contains("rejected"));
            }
        }
    }
}
