//! The minijinja environment every mapping's templates compile into.
//!
//! Grant fields decide who gets administrator rights where, so nothing may silently render
//! empty: undefined names are errors (strict mode) and so is printing a JSON `null`. The escape
//! hatch is `default(...)`, replaced here so that it covers undefined, `null` and empty strings
//! alike — Jira sends unset custom fields as `"customfield_10070": null`, which the built-in
//! filter would let through.

use minijinja::value::Value;
use minijinja::{
    AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior, escape_formatter,
};

/// Builds the environment for one mapping's templates (texts are plain: escaping for a
/// particular ITSM's comment format is the connector's job).
pub(super) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("default", default_filter);
    env.add_filter("d", default_filter);
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "a value printed here is null; give a fallback with `| default('...')`",
            ));
        }
        escape_formatter(out, state, value)
    });
    env
}

/// True for the values `default` replaces: undefined, `null`, and blank strings.
fn is_missing(value: &Value) -> bool {
    value.is_undefined() || value.is_none() || value.as_str().is_some_and(|s| s.trim().is_empty())
}

/// `value | default(fallback[, lax])`: the fallback when `value` is undefined, `null` or a blank
/// string (and, with `lax = true` as in Jinja, when it is any other false-like value).
fn default_filter(
    _state: &State,
    value: &Value,
    fallback: Option<Value>,
    lax: Option<bool>,
) -> Value {
    if is_missing(value) || (lax.unwrap_or(false) && !value.is_true()) {
        fallback.unwrap_or_else(|| Value::from(""))
    } else {
        value.clone()
    }
}

/// A template error as one line for an administrator: minijinja's message plus its detail.
pub(super) fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    if let Some(detail) = error.detail()
        && !text.contains(detail)
    {
        text.push_str(": ");
        text.push_str(detail);
    }
    if error.kind() == ErrorKind::UndefinedError {
        text.push_str(
            "; a name the template uses is missing from this ticket (check its spelling, or allow \
             its absence with `| default('...')`)",
        );
    }
    text
}
