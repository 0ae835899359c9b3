//! Loading mapping files: TOML text → compiled [`Mapping`]s, or every [`Problem`] found.
//!
//! Problems name the file, the line (from TOML spans), the key (`mapping[0].grant.duration`)
//! and, in `why`, the mapping's name, what is wrong and how to fix it. A syntax or schema error
//! stops that file (TOML gives one per file); every other check runs on every mapping of every
//! file so `jitbridge check` lists all that needs fixing at once.

use std::collections::HashMap;
use std::fmt::Display;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::{RawFile, RawMapping, RawOn, RawPolicy, RawRule};
use super::template::{self, describe};
use super::{
    Condition, Known, Mapping, NOTES, OnRules, Rule, T_DURATION, T_SCOPE, T_SUBJECT, T_TARGET,
    WRITEBACK_STATES, WritebackRule, note_template, writeback_template,
};
use crate::config::{Problem, line_of, parse_duration};
use crate::grants::GrantState;
use crate::policy::{DURATION_CEILING, Policy};

/// Loads every file; `Ok` only when no file has any problem.
pub(super) fn load(
    files: &[(PathBuf, String)],
    known: &Known,
) -> Result<Vec<Mapping>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut mappings = Vec::new();
    let mut names: HashMap<String, (PathBuf, Option<usize>)> = HashMap::new();
    for (path, text) in files {
        let file = match parse(path, text) {
            Ok(file) => file,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        if file.mapping.is_empty() {
            problems.push(Problem::new(
                path,
                "mapping",
                "the file holds no [[mapping]] table; add one or remove the file",
            ));
        }
        for (index, raw) in file.mapping.into_iter().enumerate() {
            let name = raw.get_ref().name.get_ref().trim().to_owned();
            let name_line = line(text, raw.get_ref().name.span());
            let mut site = Site {
                file: path,
                text,
                index,
                name: name.clone(),
                problems: &mut problems,
            };
            if !name.is_empty() {
                if let Some((other_file, other_line)) = names.get(&name) {
                    let at = match other_line {
                        Some(l) => format!("{}:{l}", other_file.display()),
                        None => other_file.display().to_string(),
                    };
                    site.report(
                        "name",
                        Some(raw.get_ref().name.span()),
                        format!("the name is already used by the mapping at {at}; mapping names must be unique"),
                    );
                } else {
                    names.insert(name.clone(), (path.clone(), name_line));
                }
            }
            if let Some(mapping) = build(&mut site, raw.into_inner(), known) {
                mappings.push(mapping);
            }
        }
    }
    if problems.is_empty() {
        Ok(mappings)
    } else {
        Err(problems)
    }
}

/// The 1-based line of a span's start, safe for any offset.
pub(super) fn line(text: &str, span: Range<usize>) -> Option<usize> {
    let mut at = span.start.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    Some(line_of(text, at))
}

/// Parses one file, turning TOML's error into a problem with key path and line.
pub(super) fn parse(path: &Path, text: &str) -> Result<RawFile, Problem> {
    let problem = |key: String, e: &toml::de::Error| {
        Problem::new(path, key, e.message().trim().to_owned())
            .at_line(e.span().and_then(|s| line(text, s)))
    };
    let de = toml::Deserializer::parse(text).map_err(|e| problem(".".to_owned(), &e))?;
    serde_path_to_error::deserialize(de)
        .map_err(|e| problem(key_path(&e.path().to_string()), e.inner()))
}

/// A serde path as a configuration key, without the internal segments of `toml::Spanned`.
fn key_path(path: &str) -> String {
    let cleaned: Vec<&str> = path
        .split('.')
        .filter(|seg| !seg.starts_with("$__"))
        .collect();
    let joined = cleaned.join(".");
    if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

/// Where in which file a mapping is, and the problem list it reports into.
struct Site<'a> {
    file: &'a Path,
    text: &'a str,
    index: usize,
    name: String,
    problems: &'a mut Vec<Problem>,
}

impl Site<'_> {
    fn report(&mut self, key: &str, span: Option<Range<usize>>, why: impl Display) {
        let why = if self.name.is_empty() {
            why.to_string()
        } else {
            format!("mapping {:?}: {why}", self.name)
        };
        let line = span.and_then(|s| line(self.text, s));
        self.problems.push(
            Problem::new(self.file, format!("mapping[{}].{key}", self.index), why).at_line(line),
        );
    }
}

fn known_list(names: &[String], what: &str) -> String {
    if names.is_empty() {
        format!("no {what} are configured")
    } else {
        format!("known {what}: {}", names.join(", "))
    }
}

/// Validates and compiles one mapping; `None` when it had problems (all reported to `site`).
fn build(site: &mut Site<'_>, raw: RawMapping, known: &Known) -> Option<Mapping> {
    let before = site.problems.len();

    if site.name.is_empty() {
        site.report(
            "name",
            Some(raw.name.span()),
            "the name is empty; give the mapping a unique name",
        );
    }

    let connector = raw.connector.get_ref().trim().to_owned();
    if !known.connectors.contains(&connector) {
        site.report(
            "connector",
            Some(raw.connector.span()),
            format!(
                "unknown connector {connector:?}; {}",
                known_list(&known.connectors, "connectors")
            ),
        );
    }

    let condition = match Condition::compile(raw.when.get_ref()) {
        Ok(c) => Some(c),
        Err(e) => {
            site.report(
                "when",
                Some(raw.when.span()),
                format!("the CEL expression does not compile: {e}"),
            );
            None
        }
    };

    let mut templates = template::environment();
    let grant = &raw.grant;
    for (name, source) in [
        (T_SUBJECT, &grant.subject),
        (T_TARGET, &grant.target),
        (T_SCOPE, &grant.scope),
        (T_DURATION, &grant.duration),
    ] {
        add_template(site, &mut templates, name, source);
    }
    check_literal_duration(site, &grant.duration);

    let max_duration = match parse_duration(grant.max_duration.get_ref()) {
        Ok(d) if d.is_zero() || d.is_negative() => {
            site.report(
                "grant.max_duration",
                Some(grant.max_duration.span()),
                "must be longer than zero",
            );
            None
        }
        Ok(d) if d > DURATION_CEILING => {
            site.report(
                "grant.max_duration",
                Some(grant.max_duration.span()),
                format!("{d:#} is longer than the {DURATION_CEILING:#} no grant may exceed"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            site.report("grant.max_duration", Some(grant.max_duration.span()), e);
            None
        }
    };

    let provider = grant.provider.get_ref().trim().to_owned();
    if !known.providers.contains(&provider) {
        site.report(
            "grant.provider",
            Some(grant.provider.span()),
            format!(
                "unknown provider {provider:?}; {}",
                known_list(&known.providers, "providers")
            ),
        );
    }

    let on = build_on(site, &raw.on);

    let policy = match &raw.policy {
        None => Some(Policy::default()),
        Some(table) => build_policy(site, table, max_duration),
    }
    .map(|p| p.bind(known.scopes.clone(), known.identities.clone(), &connector));
    if let Some(policy) = &policy {
        check_scopes_and_groups(site, &raw, policy, known);
    }

    let auto_approve = match (&raw.auto_approve, max_duration) {
        (None, _) => Some(None),
        (Some(table), Some(max)) => {
            match crate::policy::auto::AutoApprove::compile(table.get_ref(), max) {
                Ok(a) => Some(a),
                Err(e) => {
                    site.report(
                        &format!("auto_approve.{}", e.key),
                        Some(table.span()),
                        e.why,
                    );
                    None
                }
            }
        }
        // max_duration is already reported.
        (Some(_), None) => None,
    };

    let mut writeback = HashMap::new();
    let mut notes_set = Vec::new();
    for (key, rule) in &raw.writeback {
        if let Some(note) = NOTES.into_iter().find(|n| n.as_str() == key.get_ref()) {
            let rule_ref = rule.get_ref();
            if rule_ref.status.is_some() {
                site.report(
                    &format!("writeback.{}.status", note.as_str()),
                    Some(rule.span()),
                    "this writeback is a comment only; remove `status`",
                );
            }
            match &rule_ref.comment {
                Some(source) => {
                    add_template(site, &mut templates, &note_template(note), source);
                    notes_set.push(note);
                }
                None => site.report(
                    &format!("writeback.{}", note.as_str()),
                    Some(rule.span()),
                    "names no `comment`; add one (an empty text turns the comment off)",
                ),
            }
            continue;
        }
        let state = key
            .get_ref()
            .parse::<GrantState>()
            .ok()
            .filter(|s| WRITEBACK_STATES.contains(s));
        let Some(state) = state else {
            let valid: Vec<&str> = WRITEBACK_STATES
                .iter()
                .map(|s| s.as_str())
                .chain(NOTES.iter().map(|n| n.as_str()))
                .collect();
            site.report(
                &format!("writeback.{}", key.get_ref()),
                Some(key.span()),
                format!(
                    "unknown grant state {:?}; use one of {}",
                    key.get_ref(),
                    valid.join(", ")
                ),
            );
            continue;
        };
        let rule_ref = rule.get_ref();
        if rule_ref.comment.is_none() && rule_ref.status.is_none() {
            site.report(
                &format!("writeback.{}", state.as_str()),
                Some(rule.span()),
                "names neither `comment` nor `status`; add one or remove the entry",
            );
        }
        for (part, source) in [("comment", &rule_ref.comment), ("status", &rule_ref.status)] {
            if let Some(source) = source {
                add_template(
                    site,
                    &mut templates,
                    &writeback_template(state, part),
                    source,
                );
            }
        }
        writeback.insert(
            state,
            WritebackRule {
                comment: rule_ref.comment.is_some(),
                status: rule_ref.status.is_some(),
            },
        );
    }

    for note in NOTES.into_iter().filter(|n| !notes_set.contains(n)) {
        let default = Spanned::new(0..0, note.default_comment().to_owned());
        add_template(site, &mut templates, &note_template(note), &default);
    }

    if site.problems.len() != before {
        return None;
    }
    Some(Mapping {
        name: site.name.clone(),
        connector,
        description: raw
            .description
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty()),
        condition: condition?,
        templates,
        max_duration: max_duration?,
        provider,
        on: on?,
        policy: policy?,
        writeback,
        auto_approve: auto_approve?,
        revoke_on_withdrawn_approval: raw
            .on
            .get_ref()
            .revoke_on_withdrawn_approval
            .unwrap_or(true),
        revoke_on_reassign: raw.on.get_ref().revoke_on_reassign.unwrap_or(false),
        identities: known.identities.clone(),
    })
}

/// What only the whole configuration can tell: a literal `grant.scope` must be one the policy
/// allows and the allow-list defines, every literal `scopes` entry must be defined, and every
/// `group:` approver must be a group of the identity map.
fn check_scopes_and_groups(site: &mut Site<'_>, raw: &RawMapping, policy: &Policy, known: &Known) {
    use crate::policy::scope::is_literal;
    let listed = || {
        let names = known.scopes.names();
        if names.is_empty() {
            "the allow-list is empty; add a [scopes.app.<name>], [scopes.script.<name>] or \
             [scopes.service.<name>] table to jitbridge.toml"
                .to_owned()
        } else {
            format!("defined: {}", names.join(", "))
        }
    };
    let scope = &raw.grant.scope;
    let text = scope.get_ref().trim();
    if !text.contains("{{") && !text.contains("{%") {
        if let Err(why) = known.scopes.resolve(text) {
            site.report(T_SCOPE, Some(scope.span()), format!("{why}; {}", listed()));
        } else if !policy.allows_scope(text) {
            site.report(
                T_SCOPE,
                Some(scope.span()),
                format!(
                    "{text} is not among the scopes this mapping's policy allows ({}); add it to \
                     [mapping.policy] scopes",
                    policy.scope_patterns().join(", ")
                ),
            );
        }
    }
    let table = raw.policy.as_ref();
    if let Some(entries) = table.and_then(|t| t.get_ref().scopes.as_ref()) {
        for (i, entry) in entries.iter().enumerate() {
            let e = entry.get_ref().trim();
            if e != "*" && is_literal(e) && known.scopes.resolve(e).is_err() {
                site.report(
                    &format!("policy.scopes[{i}]"),
                    Some(entry.span()),
                    format!(
                        "{e} is not in the allow-list [scopes] of jitbridge.toml; {}",
                        listed()
                    ),
                );
            }
        }
    }
    for (i, group) in policy.approver_groups() {
        if !known.identities.has_group(group) {
            let span = table.and_then(|t| t.get_ref().span("approvers", Some(i)));
            site.report(
                &format!("policy.approvers[{i}]"),
                span,
                format!(
                    "group {group:?} is not listed in the identity map ([identity] map in \
                     jitbridge.toml); add groups = [\"{group}\"] to its members' [[person]] entries"
                ),
            );
        }
    }
    // `Policy::compile` compares `min_approvals` with `approvers` only when no group is listed:
    // the members of a group are known here, from the identity map.
    if let (Some(n), Some(most)) = (
        policy.min_approvals(),
        policy.most_possible_approvers(&known.identities),
    ) && policy.approver_groups().next().is_some()
        && usize::try_from(n).unwrap_or(usize::MAX) > most
    {
        site.report(
            "policy.min_approvals",
            table.and_then(|t| t.get_ref().span("min_approvals", None)),
            format!(
                "{n} distinct approvers are required but `approvers` names at most {most} people \
                 (its listed identities plus the members of its groups in the identity map), so \
                 no request could ever pass; list more approvers, add people to the groups, or \
                 lower min_approvals"
            ),
        );
    }
}

/// Compiles one template into the mapping's environment, reporting a syntax error at its line.
fn add_template(
    site: &mut Site<'_>,
    env: &mut minijinja::Environment<'static>,
    name: &str,
    source: &Spanned<String>,
) {
    if let Err(e) = env.add_template_owned(name.to_owned(), source.get_ref().clone()) {
        site.report(
            name,
            Some(source.span()),
            format!("the template does not compile: {}", describe(&e)),
        );
    }
}

/// A `duration` without template syntax is a constant: check it now rather than on every ticket.
fn check_literal_duration(site: &mut Site<'_>, source: &Spanned<String>) {
    let text = source.get_ref();
    if text.contains("{{") || text.contains("{%") {
        return;
    }
    match parse_duration(text) {
        Ok(d) if d.is_zero() || d.is_negative() => {
            site.report(T_DURATION, Some(source.span()), "must be longer than zero")
        }
        Ok(_) => {}
        Err(e) => site.report(T_DURATION, Some(source.span()), e),
    }
}

/// Builds the `on` rules: `approve` must exist and name something; a status or event may
/// appear in only one rule, or the same ticket change would both grant and end.
fn build_on(site: &mut Site<'_>, on: &Spanned<RawOn>) -> Option<OnRules> {
    let raw = on.get_ref();
    let before = site.problems.len();
    let empty = RawRule::default();
    let approve = raw.approve.as_ref().unwrap_or(&empty);
    if approve.status.is_empty() && approve.event.is_empty() {
        site.report(
            "on.approve",
            Some(on.span()),
            "no approve rule: name the statuses or events that approve, e.g. approve = { status = [\"Approved\"] }",
        );
    }
    let rules = [
        ("approve", approve),
        ("deny", raw.deny.as_ref().unwrap_or(&empty)),
        ("revoke", raw.revoke.as_ref().unwrap_or(&empty)),
    ];
    let mut seen_status: HashMap<String, &str> = HashMap::new();
    let mut seen_event: HashMap<crate::ticket::EventKind, &str> = HashMap::new();
    let mut built = Vec::new();
    for (rule_name, rule) in rules {
        let mut statuses = Vec::new();
        for status in &rule.status {
            let folded = status.get_ref().trim().to_lowercase();
            let key = format!("on.{rule_name}.status");
            if folded.is_empty() {
                site.report(&key, Some(status.span()), "a status name is empty");
                continue;
            }
            if let Some(other) = seen_status.insert(folded.clone(), rule_name) {
                site.report(
                    &key,
                    Some(status.span()),
                    format!("status {:?} is also listed under on.{other}; each status may drive one rule only", status.get_ref()),
                );
            }
            statuses.push(folded);
        }
        let mut events = Vec::new();
        for event in &rule.event {
            let kind = *event.get_ref();
            if let Some(other) = seen_event.insert(kind, rule_name) {
                site.report(
                    &format!("on.{rule_name}.event"),
                    Some(event.span()),
                    format!("event {:?} is also listed under on.{other}; each event may drive one rule only", kind.as_str()),
                );
            }
            events.push(kind);
        }
        built.push(Rule { statuses, events });
    }
    if site.problems.len() != before {
        return None;
    }
    let mut it = built.into_iter();
    Some(OnRules {
        approve: it.next()?,
        deny: it.next()?,
        revoke: it.next()?,
    })
}

/// Compiles `[mapping.policy]`, reporting a problem at the line of the offending entry (or of
/// the table when the entry has no span). `min_duration` must not exceed `max_duration`, or no
/// request could ever pass.
fn build_policy(
    site: &mut Site<'_>,
    table: &Spanned<RawPolicy>,
    max_duration: Option<jiff::SignedDuration>,
) -> Option<Policy> {
    let raw = table.get_ref();
    match Policy::compile(&raw.config()) {
        Ok(policy) => {
            if let (Some(min), Some(max)) = (policy.min_duration(), max_duration)
                && min > max
            {
                site.report(
                    "policy.min_duration",
                    raw.span("min_duration", None).or(Some(table.span())),
                    format!(
                        "{min:#} is longer than grant.max_duration ({max:#}), so no request could \
                         ever pass; lower min_duration or raise max_duration"
                    ),
                );
                return None;
            }
            Some(policy)
        }
        Err(e) => {
            let (key, index) = e.position();
            let span = raw.span(key, index).or(Some(table.span()));
            site.report(&format!("policy.{}", e.key()), span, e.why());
            None
        }
    }
}
