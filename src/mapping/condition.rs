//! A mapping's `when` condition: a CEL expression compiled once at load and evaluated against
//! the names of DESIGN.md ("Names available to mappings"). JSON values become CEL values one to
//! one (JSON `null` is CEL `null`), so `fields.customfield_10070 == null` works as written.

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr};
use cel::objects::{Key, Map};
use cel::{Context, IdedExpr, Program, Value};

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
    /// The variables the expression names, each with how it uses them, in [`VARIABLES`] order.
    uses: Vec<(&'static str, Use)>,
}

/// How an expression uses one of its variables, found once at compile time.
///
/// Why: binding a variable converts its JSON to CEL values twice over (CEL's `Value`, then its
/// runtime form), and `fields` or `payload` of a real ticket has dozens to hundreds of keys. A
/// condition such as `fields.customfield_10050.value == "Local admin"` reads one of them: the
/// P1 profile spent most of the inbox worker's time converting the rest for every delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Use {
    /// Only ever as `name.key` or `has(name.key)`: the variable is bound as a map holding just
    /// these keys (those the value has), which every such access reads exactly as on the whole.
    Keys(BTreeSet<String>),
    /// Any other way (passed to a function or macro, indexed, compared or iterated whole): the
    /// whole value is bound.
    Whole,
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
        let uses = uses_of(program.expression());
        Ok(Condition {
            program,
            source: source.to_owned(),
            uses,
        })
    }

    /// The expression as written, for explanations.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition with the variables of `vars`, binding only the names the
    /// expression refers to, and of those only the keys it reads (see [`Use`]), so an unused
    /// raw payload or field is never converted.
    pub(crate) fn evaluate(&self, vars: &CelVariables<'_>) -> Result<bool, ConditionFailure> {
        // Variables go into a scope over the shared standard library (building that library is
        // most of what a fresh `Context::default()` costs, on every delivery).
        let mut context = STANDARD_LIBRARY.new_inner_scope();
        for (name, used) in &self.uses {
            let value = match used {
                Use::Keys(keys) => vars.keys_of(name, keys),
                Use::Whole => vars.get(name),
            };
            context.add_variable_from_value(*name, value);
        }
        match self.program.execute(&context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(ConditionFailure::NotBool(other.type_of().to_string())),
            Err(e) => Err(ConditionFailure::Runtime(e.to_string())),
        }
    }
}

/// How `expression` uses each of [`VARIABLES`] it names (see [`Use`]).
fn uses_of(expression: &IdedExpr) -> Vec<(&'static str, Use)> {
    let mut found: Vec<Option<Use>> = VARIABLES.iter().map(|_| None).collect();
    visit(expression, &mut found);
    VARIABLES
        .iter()
        .zip(found)
        .filter_map(|(name, used)| used.map(|u| (*name, u)))
        .collect()
}

/// Walks the whole expression. A comprehension variable that shadows one of [`VARIABLES`] is
/// counted as a use of it too: that can only bind more of the variable than needed, never less.
fn visit(e: &IdedExpr, found: &mut [Option<Use>]) {
    let slot = |name: &str| VARIABLES.iter().position(|v| *v == name);
    match &e.expr {
        Expr::Select(select) => match &select.operand.expr {
            Expr::Ident(name) => {
                if let Some(i) = slot(name) {
                    match &mut found[i] {
                        Some(Use::Whole) => {}
                        Some(Use::Keys(keys)) => {
                            keys.insert(select.field.clone());
                        }
                        empty @ None => {
                            *empty = Some(Use::Keys(BTreeSet::from([select.field.clone()])));
                        }
                    }
                }
            }
            _ => visit(&select.operand, found),
        },
        Expr::Ident(name) => {
            if let Some(i) = slot(name) {
                found[i] = Some(Use::Whole);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                visit(target, found);
            }
            for arg in &call.args {
                visit(arg, found);
            }
        }
        Expr::Comprehension(c) => {
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                visit(part, found);
            }
        }
        Expr::List(list) => {
            for element in &list.elements {
                visit(element, found);
            }
        }
        Expr::Map(map) => visit_entries(&map.entries, found),
        Expr::Struct(s) => visit_entries(&s.entries, found),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn visit_entries(entries: &[cel::common::ast::IdedEntryExpr], found: &mut [Option<Use>]) {
    for entry in entries {
        match &entry.expr {
            EntryExpr::StructField(field) => visit(&field.value, found),
            EntryExpr::MapEntry(m) => {
                visit(&m.key, found);
                visit(&m.value, found);
            }
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
    /// Where `fields` and `payload` are read when they are not in `context` (see
    /// [`CelVariables::with_event_data`]).
    event_data: Option<EventData<'a>>,
    /// Whole conversions, one per entry of [`VARIABLES`].
    cache: [OnceCell<Value>; VARIABLES.len()],
}

/// An event's `fields` and `payload`, borrowed rather than copied into a context.
#[derive(Clone, Copy)]
struct EventData<'a> {
    fields: &'a serde_json::Value,
    payload: &'a serde_json::Value,
}

impl<'a> CelVariables<'a> {
    /// Wraps a template context (see [`super::template_context`]).
    pub(crate) fn new(context: &'a serde_json::Value) -> Self {
        Self {
            context,
            event_data: None,
            cache: Default::default(),
        }
    }

    /// Wraps a context that lacks `fields` and `payload`, reading those two from the event
    /// itself: the inbox evaluates every delivery, and copying a ticket's whole payload into a
    /// context only to read one key of it was a tenth of the worker's time.
    pub(crate) fn with_event_data(
        context: &'a serde_json::Value,
        fields: &'a serde_json::Value,
        payload: &'a serde_json::Value,
    ) -> Self {
        Self {
            event_data: Some(EventData { fields, payload }),
            ..Self::new(context)
        }
    }

    /// The JSON behind variable `name`, if the event has it.
    fn json(&self, name: &str) -> Option<&'a serde_json::Value> {
        match (name, self.event_data) {
            ("fields", Some(data)) => Some(data.fields),
            ("payload", Some(data)) => Some(data.payload),
            _ => self.context.get(name),
        }
    }

    /// The whole variable, converted once per event.
    fn get(&self, name: &'static str) -> Value {
        let convert = || self.json(name).map_or(Value::Null, |v| json_to_cel(v, 0));
        match VARIABLES.iter().position(|v| *v == name) {
            Some(i) => self.cache[i].get_or_init(convert).clone(),
            None => convert(),
        }
    }

    /// The variable as a map of just `keys` (those it has). A variable that is not an object
    /// (`null` when there is no requester, say) is bound whole, so reading a key of it fails
    /// exactly as it would on the whole value.
    fn keys_of(&self, name: &'static str, keys: &BTreeSet<String>) -> Value {
        match self.json(name) {
            Some(serde_json::Value::Object(entries)) => Value::Map(Map {
                map: Arc::new(
                    keys.iter()
                        .filter_map(|k| {
                            let v = entries.get(k)?;
                            Some((Key::String(Arc::new(k.clone())), json_to_cel(v, 1)))
                        })
                        .collect(),
                ),
            }),
            _ => self.get(name),
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn uses(source: &str) -> Vec<(&'static str, Use)> {
        Condition::compile(source).unwrap().uses
    }

    fn keys(names: &[&str]) -> Use {
        Use::Keys(names.iter().map(|n| (*n).to_owned()).collect())
    }

    /// The same condition with every variable it names bound whole: what evaluation did before
    /// keys were picked, and the reference the picked binding must agree with.
    fn evaluate_whole(source: &str, context: &serde_json::Value) -> Result<bool, ConditionFailure> {
        let mut condition = Condition::compile(source).unwrap();
        for (_, used) in &mut condition.uses {
            *used = Use::Whole;
        }
        condition.evaluate(&CelVariables::new(context))
    }

    #[test]
    fn member_reads_bind_only_the_keys_they_name() {
        assert_eq!(
            uses(
                r#"ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin""#
            ),
            vec![
                ("ticket", keys(&["type"])),
                ("fields", keys(&["customfield_10050"]))
            ]
        );
        assert_eq!(
            uses("has(fields.b) || fields.a.x > 1 || fields.a.y > 2"),
            vec![("fields", keys(&["a", "b"]))]
        );
    }

    #[test]
    fn any_other_use_binds_the_whole_variable() {
        for source in [
            "size(fields) > 0",
            r#"fields["a"] == 1"#,
            r#"fields.exists(k, k == "a")"#,
            "fields == {}",
            r#"fields.a == 1 && "b" in fields"#,
        ] {
            assert_eq!(uses(source), vec![("fields", Use::Whole)], "{source}");
        }
    }

    #[test]
    fn a_variable_that_is_not_an_object_reads_as_it_did_whole() {
        let context = json!({ "requester": null, "fields": { "a": 1 } });
        for source in [
            "requester.email == \"x\"",
            "has(requester.email)",
            "fields.a == 1",
        ] {
            let vars = CelVariables::new(&context);
            assert_eq!(
                Condition::compile(source).unwrap().evaluate(&vars),
                evaluate_whole(source, &context),
                "{source}"
            );
        }
    }

    #[test]
    fn fields_and_payload_read_from_the_event_match_a_full_context() {
        let fields = json!({ "customfield_10050": { "value": "Local admin" }, "other": [1, 2] });
        let payload = json!({ "webhookEvent": "jira:issue_updated", "issue": { "id": "1" } });
        let names = json!({ "ticket": { "type": "Elevation Request" } });
        let full = json!({
            "ticket": { "type": "Elevation Request" },
            "fields": fields.clone(),
            "payload": payload.clone(),
        });
        for source in [
            r#"ticket.type == "Elevation Request" && fields.customfield_10050.value == "Local admin""#,
            r#"payload.webhookEvent == "jira:issue_updated" && size(fields.other) == 2"#,
            "size(payload) == 2 && fields.missing == 1",
        ] {
            let condition = Condition::compile(source).unwrap();
            assert_eq!(
                condition.evaluate(&CelVariables::with_event_data(&names, &fields, &payload)),
                evaluate_whole(source, &full),
                "{source}"
            );
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            (-3i64..3).prop_map(serde_json::Value::from),
            "[ab]{0,2}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[abc]", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the ticket holds, a condition reads the same with only its keys bound as
        /// with everything bound: the same answer, or the same error.
        #[test]
        fn binding_only_the_keys_read_never_changes_an_answer(
            fields in json_value(),
            ticket in json_value(),
            source in prop::sample::select(vec![
                "fields.a == 1",
                "has(fields.a) && !has(fields.b)",
                "fields.a.b == \"ab\" || fields.c == null",
                "ticket.a == fields.a",
                "has(ticket.b) ? ticket.b == true : fields.c != 0",
                "size(fields) > 1 && fields.a == fields.b",
                "fields.a.exists(x, x == 1)",
                "[1, 2].exists(fields, fields == 2) && ticket.c == \"a\"",
            ]),
        ) {
            let context = json!({ "ticket": ticket, "fields": fields });
            let condition = Condition::compile(source).unwrap();
            prop_assert_eq!(
                condition.evaluate(&CelVariables::new(&context)),
                evaluate_whole(source, &context)
            );
        }
    }
}
