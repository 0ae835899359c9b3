//! The file format of a generic connector: everything an ITSM without a built-in connector needs
//! to be described in its connector file alone, validated once into compiled [`Options`].
//!
//! ```toml
//! [parse]                      # where each piece of a ticket is in a delivery (JSONPath or literal)
//! ticket_id = "$.ticket.id"    # required
//! occurred_at = "$.ticket.updated_at"   # required (stale-event ordering depends on it)
//! event = "$.event"            # a word, mapped by [parse.events]
//! approval = "$.ticket.approval"        # a word, mapped by [parse.approval_values]
//! dedupe = "header:X-Delivery-Id"       # or a JSONPath; default: hash of the body
//! [parse.approval_values]      # the system's words -> approved / rejected / pending
//! [parse.events]               # the system's words -> created, approved, resolved, ...
//! [[confirm.request]]          # GET requests that read the truth back through the API
//! url = "{{ base_url }}/api/tickets/{{ ticket.id }}"
//! extract = { status = "$.ticket.status", approval = "$..." }
//! [writeback.comment]          # HTTP request templates (method, url, headers, body)
//! [writeback.status]
//! [writeback.exists]           # optional GET listing the ticket's comments: `url` may use
//!                              # `{{ marker }}`; the marker anywhere in the answer = already posted
//! [errors]                     # how the system reports errors and rate limits
//! [healthcheck]                # a GET that proves base URL and credentials work
//! ```
//!
//! `[[confirm.request]]` extractions define variables: each holds every value its JSONPath
//! matched (one per item inside a `for_each`), later URL templates see its first value, and
//! these names build the confirmation: `status`, `approval` (normalized by
//! `[parse.approval_values]`; a missing or unmapped word is `unknown`, never approved),
//! `approver_ids` / `approver_emails` / `approver_names` (aligned by position), `requester_id` /
//! `requester_email` / `requester_name`, and `decided_at`.
//!
//! Every table denies unknown keys and every problem names its key path, so `jitbridge check`
//! can point at the exact line to fix. Validation is pure: nothing here touches the network,
//! the environment or the disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::Method;
use reqwest::header::HeaderName;
use serde::Deserialize;
use serde_json_path::JsonPath;

use super::extract::{Expr, compile_path};
use super::template::{Builder, Kind, Templates};
use crate::config::Problem;
use crate::ticket::EventKind;

/// Most `[[confirm.request]]` entries (each may fan out with `for_each`).
pub(crate) const MAX_CONFIRM_REQUESTS: usize = 16;

/// Names templates see and extractions may not redefine.
const RESERVED: [&str; 3] = ["base_url", "ticket", "item"];

/// The top-level tables a generic connector file may add to the shared keys.
const SECTIONS: [&str; 5] = ["parse", "confirm", "writeback", "errors", "healthcheck"];

/// A generic connector file, compiled: JSONPaths parsed, templates compiled, vocabularies
/// normalized. Exists so that a delivery or an API call never meets a configuration error at
/// run time that `jitbridge check` could have reported.
#[derive(Clone)]
pub struct Options {
    pub(crate) parse: ParseSpec,
    pub(crate) confirm: Option<ConfirmSpec>,
    pub(crate) comment: Option<HttpSpec>,
    pub(crate) status: Option<HttpSpec>,
    /// Template name of `[writeback.exists] url`: where to look for an already-posted comment.
    pub(crate) exists: Option<String>,
    pub(crate) errors: ErrorSpec,
    /// Template name of `[healthcheck] url`.
    pub(crate) healthcheck: Option<String>,
    pub(crate) templates: Templates,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field(
                "confirm_requests",
                &self.confirm.as_ref().map_or(0, |c| c.requests.len()),
            )
            .field("comment", &self.comment.is_some())
            .field("status", &self.status.is_some())
            .field("healthcheck", &self.healthcheck.is_some())
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Whether the file has `[[confirm.request]]`s. Without them every confirmation fails, so a
    /// loader should require `confirm_approvals = false` for such a file.
    pub fn confirms(&self) -> bool {
        self.confirm.is_some()
    }
}

/// `[parse]`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct ParseSpec {
    pub(crate) ticket_id: Expr,
    pub(crate) ticket_key: Option<Expr>,
    pub(crate) ticket_url: Option<UrlSource>,
    pub(crate) ticket_type: Option<Expr>,
    pub(crate) status: Option<Expr>,
    pub(crate) previous_status: Option<Expr>,
    pub(crate) summary: Option<Expr>,
    pub(crate) project: Option<Expr>,
    pub(crate) requester: PersonSpec,
    pub(crate) actor: PersonSpec,
    pub(crate) approval: Option<Expr>,
    pub(crate) occurred_at: Expr,
    pub(crate) event: Option<Expr>,
    pub(crate) fields: Option<JsonPath>,
    pub(crate) dedupe: Dedupe,
    pub(crate) approval_values: Vocabulary,
    pub(crate) events: Vec<(String, EventKind)>,
}

/// Where a person's id, e-mail and name are.
#[derive(Debug, Clone, Default)]
pub(crate) struct PersonSpec {
    pub(crate) id: Option<Expr>,
    pub(crate) email: Option<Expr>,
    pub(crate) name: Option<Expr>,
}

/// How the ticket link is found: in the delivery, or built from `base_url` and the ticket.
#[derive(Debug, Clone)]
pub(crate) enum UrlSource {
    Path(JsonPath),
    /// Name of a URL template over `base_url` and `ticket` (`id`, `key`).
    Template(String),
}

/// The dedupe key's source.
#[derive(Debug, Clone)]
pub(crate) enum Dedupe {
    /// SHA-256 of the body.
    Body,
    /// A header the system keeps stable across its retries.
    Header(String),
    /// A value in the body.
    Path(JsonPath),
}

/// The system's approval words, normalized to `approved`, `rejected` or `pending`
/// (case-insensitive). Any other word is `unknown`, which is never approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vocabulary(Vec<(String, &'static str)>);

impl Vocabulary {
    /// The normalized state of `word`.
    pub(crate) fn normalize(&self, word: &str) -> &'static str {
        let w = word.trim().to_lowercase();
        self.0
            .iter()
            .find(|(k, _)| *k == w)
            .map_or("unknown", |(_, v)| *v)
    }

    fn defaults() -> Self {
        let mut v = vec![("approved".to_owned(), "approved")];
        for w in ["rejected", "declined", "denied"] {
            v.push((w.to_owned(), "rejected"));
        }
        for w in ["pending", "requested", "not requested", "not_requested"] {
            v.push((w.to_owned(), "pending"));
        }
        Self(v)
    }
}

/// `[confirm]`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct ConfirmSpec {
    pub(crate) requests: Vec<RequestSpec>,
    /// Every variable some request defines.
    pub(crate) defined: BTreeSet<String>,
}

/// One `[[confirm.request]]`.
#[derive(Debug, Clone)]
pub(crate) struct RequestSpec {
    /// Template name of `url`.
    pub(crate) url: String,
    /// Variable to iterate over (one request per value, as `item`).
    pub(crate) for_each: Option<String>,
    /// Variable name and the JSONPath that fills it.
    pub(crate) extract: Vec<(String, JsonPath)>,
}

/// One `[writeback.*]` request, compiled.
#[derive(Debug, Clone)]
pub(crate) struct HttpSpec {
    pub(crate) method: Method,
    /// Template name of `url`.
    pub(crate) url: String,
    /// Header names and the template names of their values.
    pub(crate) headers: Vec<(HeaderName, String)>,
    /// Template name of `body`.
    pub(crate) body: Option<String>,
}

/// `[errors]`, compiled.
#[derive(Debug, Clone)]
pub(crate) struct ErrorSpec {
    /// JSONPaths whose values, joined, are the error message.
    pub(crate) message: Vec<JsonPath>,
    /// Statuses that mean "rate limited".
    pub(crate) rate_limit_status: Vec<u16>,
    /// The header with the delay to wait (seconds or an HTTP date).
    pub(crate) retry_after_header: String,
}

impl Default for ErrorSpec {
    fn default() -> Self {
        Self {
            message: Vec::new(),
            rate_limit_status: vec![429],
            retry_after_header: "Retry-After".to_owned(),
        }
    }
}

// ---- raw file shapes -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParse {
    ticket_id: Option<String>,
    ticket_key: Option<String>,
    ticket_url: Option<String>,
    ticket_type: Option<String>,
    status: Option<String>,
    previous_status: Option<String>,
    summary: Option<String>,
    project: Option<String>,
    requester_id: Option<String>,
    requester_email: Option<String>,
    requester_name: Option<String>,
    actor_id: Option<String>,
    actor_email: Option<String>,
    actor_name: Option<String>,
    approval: Option<String>,
    occurred_at: Option<String>,
    event: Option<String>,
    fields: Option<String>,
    dedupe: Option<String>,
    approval_values: Option<RawApprovalValues>,
    events: Option<RawEvents>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovalValues {
    #[serde(default)]
    approved: Vec<String>,
    #[serde(default)]
    rejected: Vec<String>,
    #[serde(default)]
    pending: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    #[serde(default)]
    created: Vec<String>,
    #[serde(default)]
    updated: Vec<String>,
    #[serde(default)]
    approved: Vec<String>,
    #[serde(default)]
    rejected: Vec<String>,
    #[serde(default)]
    cancelled: Vec<String>,
    #[serde(default)]
    resolved: Vec<String>,
    #[serde(default)]
    reopened: Vec<String>,
    #[serde(default)]
    commented: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfirm {
    #[serde(default)]
    request: Vec<RawRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    url: Option<String>,
    for_each: Option<String>,
    #[serde(default)]
    extract: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWriteback {
    comment: Option<RawHttp>,
    status: Option<RawHttp>,
    exists: Option<RawHealthcheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    method: Option<String>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrors {
    #[serde(default)]
    message: Vec<String>,
    rate_limit_status: Option<Vec<u16>>,
    retry_after_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthcheck {
    url: Option<String>,
}

// ---- validation ------------------------------------------------------------------------------

/// Collects problems for one file.
struct Report<'a> {
    file: &'a Path,
    problems: Vec<Problem>,
}

impl Report<'_> {
    fn add(&mut self, key: impl Into<String>, why: impl Into<String>) {
        self.problems.push(Problem::new(self.file, key, why));
    }

    /// Deserializes section `name` of `t` (absent means default), reporting serde's error with
    /// its key path.
    fn section<T: for<'de> Deserialize<'de> + Default>(
        &mut self,
        t: &toml::Table,
        name: &str,
    ) -> Option<T> {
        let Some(value) = t.get(name) else {
            return Some(T::default());
        };
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let key = if inner == "." {
                    name.to_owned()
                } else {
                    format!("{name}.{inner}")
                };
                let message = e.inner().to_string();
                self.add(
                    key,
                    message.lines().next().unwrap_or_default().trim().to_owned(),
                );
                None
            }
        }
    }

    fn expr(&mut self, key: &str, text: Option<&String>) -> Option<Expr> {
        let text = text?;
        if text.trim().is_empty() {
            self.add(key, "must not be empty; remove the key instead");
            return None;
        }
        Expr::compile(text).map_err(|why| self.add(key, why)).ok()
    }

    fn path(&mut self, key: &str, text: &str) -> Option<JsonPath> {
        if !text.trim_start().starts_with('$') {
            self.add(
                key,
                format!("{text:?} must be a JSONPath starting with `$`"),
            );
            return None;
        }
        compile_path(text).map_err(|why| self.add(key, why)).ok()
    }

    /// Compiles a template and checks it uses only `allowed` names.
    fn template(
        &mut self,
        builder: &mut Builder,
        kind: Kind,
        key: &str,
        source: &str,
        allowed: &[&str],
    ) -> bool {
        match builder.add(kind, key, source) {
            Ok(names) => {
                let unknown: Vec<&String> = names
                    .iter()
                    .filter(|n| !allowed.contains(&n.as_str()))
                    .collect();
                if unknown.is_empty() {
                    true
                } else {
                    self.add(
                        key,
                        format!(
                            "uses {} which {} not available here; available: {}",
                            unknown
                                .iter()
                                .map(|n| format!("`{n}`"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            if unknown.len() == 1 { "is" } else { "are" },
                            allowed.join(", ")
                        ),
                    );
                    false
                }
            }
            Err(why) => {
                self.add(key, format!("template does not compile: {why}"));
                false
            }
        }
    }

    /// A URL template: must start with `{{ base_url }}` (the rendered host is checked again at
    /// run time).
    fn url_template(
        &mut self,
        builder: &mut Builder,
        key: &str,
        source: Option<&String>,
        allowed: &[&str],
    ) -> Option<String> {
        let Some(source) = source else {
            self.add(key, "missing; write e.g. \"{{ base_url }}/api/...\"");
            return None;
        };
        let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
        if !compact.starts_with("{{base_url}}/") && compact != "{{base_url}}" {
            self.add(
                key,
                "must start with \"{{ base_url }}/\": requests may only go to the connector's own base URL",
            );
            return None;
        }
        self.template(builder, Kind::Url, key, source, allowed)
            .then(|| key.to_owned())
    }
}

impl Options {
    /// Validates and compiles the kind-specific tables of a generic connector file (`t` holds
    /// every key besides the shared `id`, `kind`, `base_url`, `inbound`, `outbound`,
    /// `confirm_approvals` and `timeout`). Returns every problem found, each with its key path.
    pub fn from_table(t: &toml::Table, file: &Path) -> Result<Options, Vec<Problem>> {
        let mut r = Report {
            file,
            problems: Vec::new(),
        };
        for key in t.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                r.add(
                    key.clone(),
                    format!(
                        "unknown key for a generic connector; expected id, kind, base_url, inbound, outbound, confirm_approvals, timeout, {}",
                        SECTIONS.join(", ")
                    ),
                );
            }
        }
        if !t.contains_key("parse") {
            r.add("parse", "missing: a generic connector needs a [parse] table (at least ticket_id and occurred_at)");
        }
        let raw_parse: Option<RawParse> = r.section(t, "parse");
        let raw_confirm: Option<RawConfirm> = r.section(t, "confirm");
        let raw_writeback: Option<RawWriteback> = r.section(t, "writeback");
        let raw_errors: Option<RawErrors> = r.section(t, "errors");
        let raw_health: Option<RawHealthcheck> = r.section(t, "healthcheck");

        let mut builder = Builder::new();
        let parse = raw_parse.and_then(|p| compile_parse(&mut r, &mut builder, &p));
        let confirm = match raw_confirm {
            Some(c) if t.contains_key("confirm") => compile_confirm(&mut r, &mut builder, &c),
            _ => None,
        };
        let (comment, status, exists) = match raw_writeback {
            Some(w) => (
                w.comment.as_ref().and_then(|h| {
                    compile_http(&mut r, &mut builder, "writeback.comment", h, "text")
                }),
                w.status.as_ref().and_then(|h| {
                    compile_http(&mut r, &mut builder, "writeback.status", h, "status")
                }),
                w.exists.as_ref().and_then(|e| {
                    r.url_template(
                        &mut builder,
                        "writeback.exists.url",
                        e.url.as_ref(),
                        &["base_url", "ticket", "marker"],
                    )
                }),
            ),
            None => (None, None, None),
        };
        let errors = raw_errors
            .map(|e| compile_errors(&mut r, &e))
            .unwrap_or_default();
        let healthcheck = raw_health.and_then(|h| {
            h.url.as_ref()?;
            r.url_template(
                &mut builder,
                "healthcheck.url",
                h.url.as_ref(),
                &["base_url"],
            )
        });

        if !r.problems.is_empty() {
            return Err(r.problems);
        }
        let Some(parse) = parse else {
            // Unreachable in practice: a failed [parse] always reported a problem.
            return Err(vec![Problem::new(file, "parse", "invalid")]);
        };
        Ok(Options {
            parse,
            confirm,
            comment,
            status,
            exists,
            errors,
            healthcheck,
            templates: builder.build(),
        })
    }
}

fn compile_parse(r: &mut Report<'_>, b: &mut Builder, p: &RawParse) -> Option<ParseSpec> {
    let before = r.problems.len();
    let ticket_id = match &p.ticket_id {
        Some(_) => r.expr("parse.ticket_id", p.ticket_id.as_ref()),
        None => {
            r.add(
                "parse.ticket_id",
                "missing: the JSONPath of the ticket's id is required",
            );
            None
        }
    };
    if matches!(ticket_id, Some(Expr::Literal(_))) {
        r.add(
            "parse.ticket_id",
            "must be a JSONPath (starting with `$`): every ticket has its own id",
        );
    }
    let occurred_at = match &p.occurred_at {
        Some(_) => r.expr("parse.occurred_at", p.occurred_at.as_ref()),
        None => {
            r.add(
                "parse.occurred_at",
                "missing: the JSONPath of when the change happened is required (stale events are recognized by it)",
            );
            None
        }
    };
    if matches!(occurred_at, Some(Expr::Literal(_))) {
        r.add(
            "parse.occurred_at",
            "must be a JSONPath (starting with `$`)",
        );
    }
    let ticket_url = p.ticket_url.as_ref().and_then(|u| {
        if u.trim_start().starts_with('$') {
            r.path("parse.ticket_url", u).map(UrlSource::Path)
        } else {
            r.url_template(b, "parse.ticket_url", Some(u), &["base_url", "ticket"])
                .map(UrlSource::Template)
        }
    });
    let fields = p.fields.as_ref().and_then(|f| r.path("parse.fields", f));
    let dedupe = match p.dedupe.as_deref().map(str::trim) {
        None => Dedupe::Body,
        Some(d) => match d.strip_prefix("header:") {
            Some(name) => match HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(h) => Dedupe::Header(h.as_str().to_owned()),
                Err(_) => {
                    r.add(
                        "parse.dedupe",
                        format!("{name:?} is not a valid header name"),
                    );
                    Dedupe::Body
                }
            },
            None => r.path("parse.dedupe", d).map_or(Dedupe::Body, Dedupe::Path),
        },
    };
    let approval_values = match &p.approval_values {
        None => Vocabulary::defaults(),
        Some(v) => {
            let mut words = Vec::new();
            let lists: [(&str, &'static str, &Vec<String>); 3] = [
                ("approved", "approved", &v.approved),
                ("rejected", "rejected", &v.rejected),
                ("pending", "pending", &v.pending),
            ];
            words_into(r, "parse.approval_values", &lists, &mut words);
            if v.approved.is_empty() {
                r.add(
                    "parse.approval_values.approved",
                    "must list at least one value, or no approval could ever be confirmed",
                );
            }
            Vocabulary(words)
        }
    };
    let events = match &p.events {
        None => Vec::new(),
        Some(e) => {
            let lists: [(&str, EventKind, &Vec<String>); 8] = [
                ("created", EventKind::Created, &e.created),
                ("updated", EventKind::Updated, &e.updated),
                ("approved", EventKind::Approved, &e.approved),
                ("rejected", EventKind::Rejected, &e.rejected),
                ("cancelled", EventKind::Cancelled, &e.cancelled),
                ("resolved", EventKind::Resolved, &e.resolved),
                ("reopened", EventKind::Reopened, &e.reopened),
                ("commented", EventKind::Commented, &e.commented),
            ];
            let mut words = Vec::new();
            words_into(r, "parse.events", &lists, &mut words);
            words
        }
    };
    if p.events.is_some() && p.event.is_none() {
        r.add(
            "parse.events",
            "maps event words, but [parse] has no `event` to read them from",
        );
    }
    if p.previous_status.is_some() && p.status.is_none() {
        r.add(
            "parse.previous_status",
            "needs `status` too: a status change is from previous_status to status",
        );
    }
    let spec = ParseSpec {
        ticket_key: r.expr("parse.ticket_key", p.ticket_key.as_ref()),
        ticket_type: r.expr("parse.ticket_type", p.ticket_type.as_ref()),
        status: r.expr("parse.status", p.status.as_ref()),
        previous_status: r.expr("parse.previous_status", p.previous_status.as_ref()),
        summary: r.expr("parse.summary", p.summary.as_ref()),
        project: r.expr("parse.project", p.project.as_ref()),
        requester: PersonSpec {
            id: r.expr("parse.requester_id", p.requester_id.as_ref()),
            email: r.expr("parse.requester_email", p.requester_email.as_ref()),
            name: r.expr("parse.requester_name", p.requester_name.as_ref()),
        },
        actor: PersonSpec {
            id: r.expr("parse.actor_id", p.actor_id.as_ref()),
            email: r.expr("parse.actor_email", p.actor_email.as_ref()),
            name: r.expr("parse.actor_name", p.actor_name.as_ref()),
        },
        approval: r.expr("parse.approval", p.approval.as_ref()),
        event: r.expr("parse.event", p.event.as_ref()),
        ticket_id: ticket_id?,
        occurred_at: occurred_at?,
        ticket_url,
        fields,
        dedupe,
        approval_values,
        events,
    };
    (r.problems.len() == before).then_some(spec)
}

/// Collects `(word, value)` pairs from per-value word lists, reporting blank words and words
/// listed under two values.
fn words_into<V: Copy>(
    r: &mut Report<'_>,
    table: &str,
    lists: &[(&str, V, &Vec<String>)],
    out: &mut Vec<(String, V)>,
) {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (key, value, words) in lists {
        for (i, word) in words.iter().enumerate() {
            let w = word.trim().to_lowercase();
            if w.is_empty() {
                r.add(format!("{table}.{key}[{i}]"), "must not be blank");
                continue;
            }
            if let Some(other) = seen.get(&w) {
                if other != key {
                    r.add(
                        format!("{table}.{key}[{i}]"),
                        format!(
                            "{word:?} is also listed under {other}; a word must mean one thing"
                        ),
                    );
                }
                continue;
            }
            seen.insert(w.clone(), key);
            out.push((w, *value));
        }
    }
}

fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn compile_confirm(r: &mut Report<'_>, b: &mut Builder, c: &RawConfirm) -> Option<ConfirmSpec> {
    let before = r.problems.len();
    if c.request.is_empty() {
        r.add(
            "confirm.request",
            "[confirm] needs at least one [[confirm.request]]; remove [confirm] and set confirm_approvals = false to trust deliveries instead",
        );
        return None;
    }
    if c.request.len() > MAX_CONFIRM_REQUESTS {
        r.add(
            "confirm.request",
            format!("at most {MAX_CONFIRM_REQUESTS} requests are allowed"),
        );
    }
    let mut defined: BTreeSet<String> = BTreeSet::new();
    let mut requests = Vec::new();
    for (i, req) in c.request.iter().enumerate() {
        let at = format!("confirm.request[{i}]");
        let mut allowed: Vec<&str> = vec!["base_url", "ticket"];
        let names_so_far: Vec<String> = defined.iter().cloned().collect();
        allowed.extend(names_so_far.iter().map(String::as_str));
        if let Some(var) = &req.for_each {
            if defined.contains(var) {
                allowed.push("item");
            } else {
                r.add(
                    format!("{at}.for_each"),
                    format!("{var:?} is not extracted by an earlier request"),
                );
            }
        }
        let url = r.url_template(b, &format!("{at}.url"), req.url.as_ref(), &allowed);
        if req.extract.is_empty() {
            r.add(
                format!("{at}.extract"),
                "extracts nothing; every request must extract at least one value",
            );
        }
        let mut extract = Vec::new();
        for (var, path) in &req.extract {
            let key = format!("{at}.extract.{var}");
            if !valid_var_name(var) {
                r.add(
                    &key,
                    "variable names use lower-case letters, digits and '_'",
                );
                continue;
            }
            if RESERVED.contains(&var.as_str()) {
                r.add(&key, format!("`{var}` is reserved; choose another name"));
                continue;
            }
            if defined.contains(var) {
                r.add(
                    &key,
                    format!("`{var}` is already extracted by an earlier request"),
                );
                continue;
            }
            if let Some(p) = r.path(&key, path) {
                extract.push((var.clone(), p));
            }
        }
        for (var, _) in &extract {
            defined.insert(var.clone());
        }
        if let Some(url) = url {
            requests.push(RequestSpec {
                url,
                for_each: req.for_each.clone(),
                extract,
            });
        }
    }
    if !defined.contains("approval") && !defined.contains("status") {
        r.add(
            "confirm.request",
            "no request extracts `approval` or `status`, so nothing would be confirmed",
        );
    }
    if !defined.contains("approval") {
        for name in [
            "approver_ids",
            "approver_emails",
            "approver_names",
            "decided_at",
        ] {
            if defined.contains(name) {
                r.add("confirm.request", format!("`{name}` is extracted but `approval` is not; approvers belong to an approval"));
            }
        }
    }
    (r.problems.len() == before).then_some(ConfirmSpec { requests, defined })
}

fn compile_http(
    r: &mut Report<'_>,
    b: &mut Builder,
    at: &str,
    h: &RawHttp,
    value_name: &str,
) -> Option<HttpSpec> {
    let before = r.problems.len();
    let method = match h.method.as_deref().map(str::trim) {
        None => Method::POST,
        Some(m) => match m.to_ascii_uppercase().as_str() {
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "GET" => Method::GET,
            "DELETE" => Method::DELETE,
            _ => {
                r.add(
                    format!("{at}.method"),
                    format!("{m:?} is not one of POST, PUT, PATCH, GET, DELETE"),
                );
                Method::POST
            }
        },
    };
    let allowed = ["base_url", "ticket", value_name, "marker"];
    let url = r.url_template(b, &format!("{at}.url"), h.url.as_ref(), &allowed);
    let mut headers = Vec::new();
    for (name, value) in &h.headers {
        let key = format!("{at}.headers.{name}");
        let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
            r.add(&key, format!("{name:?} is not a valid header name"));
            continue;
        };
        if matches!(
            header.as_str(),
            "authorization" | "proxy-authorization" | "cookie" | "host" | "content-length"
        ) {
            r.add(
                &key,
                "may not be set here: credentials come only from [outbound] (and *_env), and the transport sets the rest",
            );
            continue;
        }
        if r.template(b, Kind::Text, &key, value, &allowed) {
            headers.push((header, key));
        }
    }
    let body = h.body.as_ref().and_then(|source| {
        let key = format!("{at}.body");
        if !r.template(b, Kind::Text, &key, source, &allowed) {
            return None;
        }
        Some(key)
    });
    if r.problems.len() != before {
        return None;
    }
    // Render once with awkward sample values: a body that forgot `tojson` breaks here, in
    // `jitbridge check`, rather than on the first real comment.
    if let Some(key) = &body {
        let sample = sample_context(value_name);
        match b.render(Kind::Text, key, &sample) {
            Ok(rendered) => {
                if let Err(e) = serde_json::from_str::<serde_json::Value>(&rendered) {
                    r.add(
                        key,
                        format!(
                            "does not render valid JSON for a {value_name} with quotes and line breaks ({e}); write {{{{ {value_name} | tojson }}}}"
                        ),
                    );
                }
            }
            Err(why) => r.add(key, format!("does not render: {why}")),
        }
    }
    (r.problems.len() == before).then_some(HttpSpec {
        method,
        url: url?,
        headers,
        body,
    })
}

/// Sample values for a trial render: quotes, a backslash and a line break in the text.
fn sample_context(value_name: &str) -> minijinja::Value {
    let awkward = "Local admin \"granted\" on WS-0042\nC:\\Temp <until> 18:00 & then revoked";
    let mut ctx = BTreeMap::new();
    ctx.insert(
        "base_url".to_owned(),
        minijinja::Value::from_safe_string("https://itsm.example.com".to_owned()),
    );
    ctx.insert(
        "ticket".to_owned(),
        minijinja::Value::from_serialize(serde_json::json!({
            "connector": "generic", "id": "12345", "key": "12345",
            "url": "https://itsm.example.com/tickets/12345"
        })),
    );
    ctx.insert(value_name.to_owned(), minijinja::Value::from(awkward));
    ctx.insert(
        "marker".to_owned(),
        minijinja::Value::from("jitbridge:sample"),
    );
    minijinja::Value::from_object(ctx)
}

fn compile_errors(r: &mut Report<'_>, e: &RawErrors) -> ErrorSpec {
    let mut spec = ErrorSpec::default();
    for (i, m) in e.message.iter().enumerate() {
        if let Some(p) = r.path(&format!("errors.message[{i}]"), m) {
            spec.message.push(p);
        }
    }
    if let Some(statuses) = &e.rate_limit_status {
        if statuses.is_empty() {
            r.add(
                "errors.rate_limit_status",
                "must list at least one status (429 is the default)",
            );
        }
        for (i, s) in statuses.iter().enumerate() {
            if !(400..=599).contains(s) {
                r.add(
                    format!("errors.rate_limit_status[{i}]"),
                    format!("{s} is not an HTTP error status (400-599)"),
                );
            }
        }
        spec.rate_limit_status = statuses.clone();
    }
    if let Some(h) = &e.retry_after_header {
        match HeaderName::from_bytes(h.trim().as_bytes()) {
            Ok(name) => spec.retry_after_header = name.as_str().to_owned(),
            Err(_) => r.add(
                "errors.retry_after_header",
                format!("{h:?} is not a valid header name"),
            ),
        }
    }
    spec
}
