//! A mapping's `when` condition: a CEL expression compiled once at load and evaluated against
//! the names of DESIGN.md ("Names available to mappings"). JSON values become CEL values one to
//! one (JSON `null` is CEL `null`), so `fields.customfield_10070 == null` works as written.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Program, Value};

/// CEL's standard functions and macros, built once: every evaluation gets a child scope of it.
static STANDARD_LIBRARY: std::sync::LazyLock<Context<'static, 'static>> =
    std::sync::LazyLock::new(Context::default);

/// The variables a `when` expression may use, in the order they are bound.
pub(crate) const VARIABLES: [&str; 7] = [
    "ticket",
    "requester",
    "actor",
    "approval",
    "fields",
    "event",
    "payload",
];

/// JSON nested deeper than this is cut off (becomes `null`) when handed to CEL; real ticket
/// payloads are far shallower, and the bound keeps conversion cost predictable.
const MAX_DEPTH: usize = 64;

/// A compiled `when` expression.
pub(crate) struct Condition {
    program: Program,
    source: String,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// Why a condition did not produce a boolean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConditionFailure {
    /// CEL raised an error (a missing field, a type mismatch, ...).
    Runtime(String),
    /// The expression produced something other than a boolean; carries its CEL type.
    NotBool(String),
}

impl Condition {
    /// Compiles `source`; the error text is CEL's own, one line per syntax error.
    pub(crate) fn compile(source: &str) -> Result<Condition, String> {
        if source.trim().is_empty() {
            return Err(
                "the expression is empty; write e.g. 'ticket.type == \"Elevation Request\"'"
                    .to_owned(),
            );
        }
        let program = Program::compile(source).map_err(|e| one_line(&e.to_string()))?;
        Ok(Condition {
            program,
            source: source.to_owned(),
        })
    }

    /// The expression as written, for explanations.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition with the variables of `vars`, binding only the names the
    /// expression refers to (so an unused raw payload is never converted).
    pub(crate) fn evaluate(&self, vars: &CelVariables<'_>) -> Result<bool, ConditionFailure> {
        let references = self.program.references();
        // Variables go into a scope over the shared standard library (building that library is
        // most of what a fresh `Context::default()` costs, on every delivery).
        let mut context = STANDARD_LIBRARY.new_inner_scope();
        for name in VARIABLES {
            if references.has_variable(name) {
                context.add_variable_from_value(name, vars.get(name));
            }
        }
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(ConditionFailure::NotBool(other.type_of().to_string())),
            Err(e) => Err(ConditionFailure::Runtime(e.to_string())),
        }
    }
}

/// CEL's syntax errors as one line: its message lines, without the source excerpt and caret
/// (the problem already names the file, line and key).
fn one_line(message: &str) -> String {
    let errors: Vec<&str> = message
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ERROR:"))
        .map(|l| l.trim().trim_start_matches("<input>:"))
        .collect();
    if errors.is_empty() {
        message.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        errors.join("; ")
    }
}

/// The CEL values of one event's template context, converted on first use and shared by every
/// mapping evaluated against that event.
pub(crate) struct CelVariables<'a> {
    context: &'a serde_json::Value,
    cache: HashMap<&'static str, OnceCell<Value>>,
}

impl<'a> CelVariables<'a> {
    /// Wraps a template context (see [`super::template_context`]).
    pub(crate) fn new(context: &'a serde_json::Value) -> Self {
        Self {
            context,
            cache: VARIABLES.iter().map(|n| (*n, OnceCell::new())).collect(),
        }
    }

    fn get(&self, name: &'static str) -> Value {
        let convert = || {
            self.context
                .get(name)
                .map(|v| json_to_cel(v, 0))
                .unwrap_or(Value::Null)
        };
        match self.cache.get(name) {
            Some(cell) => cell.get_or_init(convert).clone(),
            None => convert(),
        }
    }
}

/// Converts JSON to CEL: integers that fit `i64` become `int` (so `x == 5` compares as written),
/// larger ones `uint`, the rest `double`; `null` stays `null`.
pub(crate) fn json_to_cel(value: &serde_json::Value, depth: usize) -> Value {
    use serde_json::Value as J;
    if depth >= MAX_DEPTH {
        return Value::Null;
    }
    match value {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(
            items.iter().map(|v| json_to_cel(v, depth + 1)).collect(),
        )),
        J::Object(entries) => Value::Map(Map {
            map: Arc::new(
                entries
                    .iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v, depth + 1)))
                    .collect(),
            ),
        }),
    }
}
