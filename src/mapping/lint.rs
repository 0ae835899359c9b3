//! `jitbridge check`'s second look at mapping files, after they load: mistakes that compile but
//! would fail (or surprise) on real tickets. Each finding names the file, line and key, says what
//! is wrong and gives a `hint` to fix it.
//!
//! Errors: templates and CEL expressions that name something mappings never see (a typo like
//! `requester.mail`, or `payload` in a writeback, which only sees the grant's stored context).
//! Warnings: a literal `grant.duration` above `max_duration` (always cut), and two mappings of
//! one connector whose `when` conditions could both be true for the same ticket.
//!
//! Pure: works on the file texts already read by the loader. New checks plug into [`lint`]:
//! each one gets every parsed mapping with its [`Site`] and reports into [`Lints`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cel::common::ast::operators::{EQUALS, LOGICAL_AND};
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use toml::Spanned;

use super::load::{line, parse};
use super::raw::RawMapping;
use crate::config::{Problem, parse_duration};

/// What [`lint`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lints {
    /// Must be fixed: the configuration is refused.
    pub errors: Vec<Problem>,
    /// Worth a look; the configuration still loads.
    pub warnings: Vec<Problem>,
}

/// Where a parsed mapping came from.
struct Site<'a> {
    file: &'a Path,
    text: &'a str,
    index: usize,
    name: String,
}

impl Site<'_> {
    fn problem(
        &self,
        key: &str,
        span: std::ops::Range<usize>,
        why: String,
        hint: impl Into<String>,
    ) -> Problem {
        Problem::new(
            self.file,
            format!("mapping[{}].{key}", self.index),
            format!("mapping {:?}: {why}", self.name),
        )
        .at_line(line(self.text, span))
        .with_hint(hint)
    }
}

/// The names every `when`, `policy.condition` and grant template sees, with their members;
/// `None` for an open object (the ITSM's own field names). DESIGN.md "Names available to
/// mappings" and [`super::template_context`] are the source; keep the three in step.
const EVENT_NAMES: [(&str, Option<&[&str]>); 7] = [
    (
        "ticket",
        Some(&["id", "key", "url", "type", "status", "summary", "project"]),
    ),
    ("requester", Some(&["id", "email", "name", "subject"])),
    ("actor", Some(&["id", "email", "name", "subject"])),
    ("approval", Some(&["state", "approvers", "decided_at"])),
    ("fields", None),
    ("event", Some(&["kind", "occurred_at"])),
    ("payload", None),
];

/// What writeback templates see besides the stored event names (which exclude `payload`):
/// [`super::writeback_context`].
const WRITEBACK_NAMES: [(&str, Option<&[&str]>); 5] = [
    (
        "grant",
        Some(&[
            "id",
            "subject",
            "target",
            "scope",
            "provider",
            "duration",
            "starts_at",
            "expires_at",
            "state",
            "scope_definition",
        ]),
    ),
    ("reason", Some(&[])),
    // The built-in summary (`requested`), and the notes' own names (`auto_approved`, `renewed`).
    ("summary", Some(&[])),
    (
        "auto_approve",
        Some(&["mapping", "condition", "max_duration"]),
    ),
    ("renewal", Some(&["approver", "capped", "max_duration"])),
];

/// minijinja's global functions, which `undeclared_variables` reports like variables.
const TEMPLATE_GLOBALS: [&str; 4] = ["range", "dict", "namespace", "debug"];

/// Which names a template or expression may use.
#[derive(Clone, Copy)]
enum Scope {
    /// `when`, `policy.condition`, `grant.*`.
    Event,
    /// `writeback.*`: the stored context (no `payload`) plus `grant` and `reason`.
    Writeback,
}

impl Scope {
    fn names(self) -> Vec<(&'static str, Option<&'static [&'static str]>)> {
        match self {
            Scope::Event => EVENT_NAMES.to_vec(),
            Scope::Writeback => EVENT_NAMES
                .iter()
                .filter(|(n, _)| *n != "payload")
                .chain(WRITEBACK_NAMES.iter())
                .copied()
                .collect(),
        }
    }

    fn listing(self) -> String {
        self.names()
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why `path` (`requester.mail`, `tickt`) is not a name `scope` provides, if it is not.
fn unknown_name(scope: Scope, path: &str) -> Option<(String, String)> {
    let mut parts = path.split('.');
    let root = parts.next().unwrap_or_default();
    let names = scope.names();
    let Some((_, members)) = names.iter().find(|(n, _)| *n == root) else {
        return Some(if root == "payload" && matches!(scope, Scope::Writeback) {
            (
                "`payload` is not available in writeback texts".to_owned(),
                "writeback texts see the grant's stored context, which keeps no raw `payload`; use `fields.…` (stored) or a `grant.…` value".to_owned(),
            )
        } else {
            (
                format!("`{root}` is not a name mappings can use"),
                format!(
                    "check the spelling; the names available here are {}",
                    scope.listing()
                ),
            )
        });
    };
    let (Some(members), Some(member)) = (members, parts.next()) else {
        return None;
    };
    if members.contains(&member) {
        return None;
    }
    Some((
        format!("`{root}` has no `{member}`"),
        if members.is_empty() {
            format!("`{root}` is a plain value: use it without `.{member}`")
        } else {
            format!("`{root}` has {}", members.join(", "))
        },
    ))
}

/// Runs every check on every mapping of `files`. Files that do not parse are skipped: the
/// loader has reported them already.
pub fn lint(files: &[(PathBuf, String)]) -> Lints {
    let mut out = Lints::default();
    let mut parsed: Vec<(Site<'_>, RawMapping)> = Vec::new();
    for (path, text) in files {
        let Ok(file) = parse(path, text) else {
            continue;
        };
        for (index, raw) in file.mapping.into_iter().enumerate() {
            let raw = raw.into_inner();
            let site = Site {
                file: path,
                text,
                index,
                name: raw.name.get_ref().trim().to_owned(),
            };
            parsed.push((site, raw));
        }
    }
    for (site, raw) in &parsed {
        check_templates(site, raw, &mut out);
        check_expressions(site, raw, &mut out);
        check_literal_duration(site, raw, &mut out);
        // Checks that need other configuration (e.g. scope allow-lists) go here too.
    }
    check_overlaps(&parsed, &mut out);
    out
}

fn check_templates(site: &Site<'_>, raw: &RawMapping, out: &mut Lints) {
    let g = &raw.grant;
    let mut templates: Vec<(String, &Spanned<String>, Scope)> = vec![
        ("grant.subject".into(), &g.subject, Scope::Event),
        ("grant.target".into(), &g.target, Scope::Event),
        ("grant.scope".into(), &g.scope, Scope::Event),
        ("grant.duration".into(), &g.duration, Scope::Event),
    ];
    for (state, rule) in &raw.writeback {
        let rule = rule.get_ref();
        for (part, source) in [("comment", &rule.comment), ("status", &rule.status)] {
            if let Some(source) = source {
                templates.push((
                    format!("writeback.{}.{part}", state.get_ref()),
                    source,
                    Scope::Writeback,
                ));
            }
        }
    }
    let env = super::template::environment();
    for (key, source, scope) in templates {
        let Ok(template) = env.template_from_str(source.get_ref()) else {
            continue; // a syntax error, reported by the loader
        };
        let mut used: Vec<String> = template.undeclared_variables(true).into_iter().collect();
        used.sort();
        for path in used {
            if TEMPLATE_GLOBALS.contains(&path.as_str()) {
                continue;
            }
            if let Some((why, hint)) = unknown_name(scope, &path) {
                out.errors.push(site.problem(
                    &key,
                    source.span(),
                    format!("the template uses {{{{ {path} }}}}: {why}"),
                    hint,
                ));
            }
        }
    }
}

fn check_expressions(site: &Site<'_>, raw: &RawMapping, out: &mut Lints) {
    let mut expressions = vec![("when", &raw.when)];
    if let Some(condition) = raw
        .policy
        .as_ref()
        .and_then(|p| p.get_ref().condition.as_ref())
    {
        expressions.push(("policy.condition", condition));
    }
    for (key, source) in expressions {
        let Ok(program) = cel::Program::compile(source.get_ref()) else {
            continue; // reported by the loader
        };
        let mut paths = Vec::new();
        names_used(program.expression(), &mut Vec::new(), &mut paths);
        paths.sort();
        paths.dedup();
        for path in paths {
            if let Some((why, hint)) = unknown_name(Scope::Event, &path) {
                out.errors.push(site.problem(
                    key,
                    source.span(),
                    format!("the CEL expression uses `{path}`: {why}"),
                    hint,
                ));
            }
        }
    }
}

/// The dotted name an expression spells (`fields.x.value`), if it is one.
fn qualified(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(s) => qualified(&s.operand.expr).map(|base| format!("{base}.{}", s.field)),
        _ => None,
    }
}

/// Collects the free names (with up to one member: `requester.email`) an expression uses;
/// names bound by comprehensions (`exists(a, a.email == …)`) are not free.
fn names_used(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
    if let Some(path) = qualified(&e.expr) {
        let mut parts = path.splitn(3, '.');
        let root = parts.next().unwrap_or_default();
        if !bound.iter().any(|b| b == root) {
            out.push(match parts.next() {
                Some(member) => format!("{root}.{member}"),
                None => root.to_owned(),
            });
        }
        return;
    }
    match &e.expr {
        Expr::Select(s) => names_used(&s.operand, bound, out),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                names_used(t, bound, out);
            }
            for a in &c.args {
                names_used(a, bound, out);
            }
        }
        Expr::List(l) => {
            for x in &l.elements {
                names_used(x, bound, out);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    names_used(&me.key, bound, out);
                    names_used(&me.value, bound, out);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    names_used(&f.value, bound, out);
                }
            }
        }
        Expr::Comprehension(c) => {
            names_used(&c.iter_range, bound, out);
            names_used(&c.accu_init, bound, out);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                names_used(part, bound, out);
            }
            bound.truncate(before);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn check_literal_duration(site: &Site<'_>, raw: &RawMapping, out: &mut Lints) {
    let g = &raw.grant;
    let text = g.duration.get_ref();
    if text.contains("{{") || text.contains("{%") {
        return;
    }
    let (Ok(duration), Ok(max)) = (
        parse_duration(text),
        parse_duration(g.max_duration.get_ref()),
    ) else {
        return;
    };
    if duration > max {
        out.warnings.push(site.problem(
            "grant.duration",
            g.duration.span(),
            format!(
                "the fixed duration {duration:#} is longer than max_duration {max:#}, so every grant is cut to {max:#}"
            ),
            format!("write duration = \"{max:#}\" (or less), or raise max_duration"),
        ));
    }
}

/// `field == literal` tests a condition requires, as (dotted field name, literal).
type Equalities = Vec<(String, LiteralValue)>;

/// The `field == literal` tests a condition requires: the terms of its top-level `&&` chain.
fn required_equalities(e: &IdedExpr, out: &mut Equalities) {
    let Expr::Call(call) = &e.expr else {
        return;
    };
    if call.func_name == LOGICAL_AND && call.target.is_none() {
        for a in &call.args {
            required_equalities(a, out);
        }
    } else if call.func_name == EQUALS
        && let [a, b] = call.args.as_slice()
    {
        match (&a.expr, &b.expr) {
            (Expr::Literal(l), other) | (other, Expr::Literal(l)) => {
                if let Some(path) = qualified(other) {
                    out.push((path, l.clone()));
                }
            }
            _ => {}
        }
    }
}

/// True when the two literals are certainly different values. Only same-typed strings, ints
/// and booleans are compared: CEL's cross-type numeric equality is left alone (sound, not
/// complete).
fn certainly_different(a: &LiteralValue, b: &LiteralValue) -> bool {
    match (a, b) {
        (LiteralValue::String(_), LiteralValue::String(_))
        | (LiteralValue::Int(_), LiteralValue::Int(_))
        | (LiteralValue::Boolean(_), LiteralValue::Boolean(_)) => a != b,
        _ => false,
    }
}

/// True when no ticket can satisfy both conditions: both require the same field to equal
/// different literals.
fn exclusive(a: &[(String, LiteralValue)], b: &[(String, LiteralValue)]) -> bool {
    a.iter().any(|(pa, la)| {
        b.iter()
            .any(|(pb, lb)| pa == pb && certainly_different(la, lb))
    })
}

fn check_overlaps(parsed: &[(Site<'_>, RawMapping)], out: &mut Lints) {
    let mut by_connector: BTreeMap<&str, Vec<(usize, Equalities)>> = BTreeMap::new();
    for (i, (_, raw)) in parsed.iter().enumerate() {
        let Ok(program) = cel::Program::compile(raw.when.get_ref()) else {
            continue;
        };
        let mut eqs = Vec::new();
        required_equalities(program.expression(), &mut eqs);
        by_connector
            .entry(raw.connector.get_ref().trim())
            .or_default()
            .push((i, eqs));
    }
    for mappings in by_connector.values() {
        for (n, (i, a)) in mappings.iter().enumerate() {
            for (j, b) in &mappings[n + 1..] {
                if exclusive(a, b) {
                    continue;
                }
                let (first, _) = &parsed[*i];
                let (second, raw) = &parsed[*j];
                let at = match line(first.text, parsed[*i].1.when.span()) {
                    Some(l) => format!("{}:{l}", first.file.display()),
                    None => first.file.display().to_string(),
                };
                out.warnings.push(second.problem(
                    "when",
                    raw.when.span(),
                    format!(
                        "could match the same ticket as mapping {:?} ({at}): neither `when` excludes the other, so one ticket could get two grants",
                        first.name
                    ),
                    "make the conditions exclusive, e.g. test the same field for different values (fields.kind == \"A\" / fields.kind == \"B\"); ignore this if both grants are meant",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
