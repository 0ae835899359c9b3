//! Value expressions of a generic connector file and the conversions from JSON they need.
//!
//! A connector file says where each piece of a ticket lives in a delivery with a *value
//! expression*: a string starting with `$` is an RFC 9535 JSONPath (`$.ticket.id`), anything else
//! is a literal (`"Zendesk"`). This module compiles them, evaluates them against any JSON value,
//! and turns what they select into text or instants. It is pure and never panics: real bodies
//! carry numbers where strings were expected, `null` where objects were, and arrays everywhere.

use jiff::Timestamp;
use serde_json::Value;
use serde_json_path::JsonPath;

/// Longest text kept from one extracted value, in characters (summaries, names, statuses).
pub(crate) const MAX_TEXT_CHARS: usize = 4096;

/// Where a value comes from: a JSONPath into the delivery, or a fixed literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// An RFC 9535 JSONPath.
    Path(JsonPath),
    /// The same text for every delivery.
    Literal(String),
}

impl Expr {
    /// Compiles `text`: a JSONPath when it starts with `$`, else a literal. The error explains
    /// the JSONPath syntax problem.
    pub(crate) fn compile(text: &str) -> Result<Expr, String> {
        let trimmed = text.trim();
        if trimmed.starts_with('$') {
            compile_path(trimmed).map(Expr::Path)
        } else {
            Ok(Expr::Literal(text.to_owned()))
        }
    }

    /// The first selected value that is a non-empty scalar, as text.
    pub(crate) fn text(&self, doc: &Value) -> Option<String> {
        match self {
            Expr::Literal(s) => non_empty(s),
            Expr::Path(p) => p.query(doc).iter().find_map(|v| scalar_text(v)),
        }
    }
}

/// Compiles a JSONPath with a message fit for a configuration problem.
pub(crate) fn compile_path(text: &str) -> Result<JsonPath, String> {
    JsonPath::parse(text.trim()).map_err(|e| format!("{text:?} is not an RFC 9535 JSONPath: {e}"))
}

/// A scalar as text: strings trimmed (empty means absent), numbers and booleans as written,
/// `null`, objects and arrays as absent. Cut at [`MAX_TEXT_CHARS`].
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => non_empty(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// `s` trimmed and cut to [`MAX_TEXT_CHARS`]; `None` when blank.
fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.chars().take(MAX_TEXT_CHARS).collect())
}

/// An instant written the ways ITSMs write them: RFC 3339 / ISO 8601 with a zone
/// (`2025-03-14T08:41:37Z`, `+01:00`), ServiceNow's zone-less UTC `2025-03-14 08:41:37`, or Unix
/// seconds / milliseconds as a number or a numeric string (values above 10^11 are milliseconds).
pub(crate) fn timestamp(text: &str) -> Option<Timestamp> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Some(ts);
    }
    if let Ok(n) = t.parse::<i64>() {
        return if n.unsigned_abs() > 100_000_000_000 {
            Timestamp::from_millisecond(n).ok()
        } else {
            Timestamp::from_second(n).ok()
        };
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
        && f.abs() < 1e15
    {
        // Fractional Unix seconds (e.g. `1741941697.64`): milliseconds precision is plenty.
        #[allow(clippy::cast_possible_truncation)]
        let ms = (f * 1000.0).round() as i64;
        return Timestamp::from_millisecond(ms).ok();
    }
    jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", t)
        .ok()
        .and_then(|dt| jiff::tz::TimeZone::UTC.to_timestamp(dt).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn path(p: &str) -> Expr {
        Expr::compile(p).expect("valid path")
    }

    #[test]
    fn dollar_strings_are_paths_and_others_are_literals() {
        assert!(matches!(Expr::compile("$.a.b"), Ok(Expr::Path(_))));
        assert!(matches!(Expr::compile("  $['a']"), Ok(Expr::Path(_))));
        assert_eq!(
            Expr::compile("Zendesk"),
            Ok(Expr::Literal("Zendesk".into()))
        );
        assert!(Expr::compile("$.a[").is_err());
        assert!(Expr::compile("$..[?@.x ==]").is_err());
    }

    #[test]
    fn numbers_booleans_and_strings_become_text_while_null_and_objects_do_not() {
        let doc = json!({"id": 35436, "big": 12345678901234567890u64, "f": 1.5, "yes": true,
                         "blank": "  ", "null": null, "obj": {"a": 1}, "arr": [null, "", " x "]});
        assert_eq!(path("$.id").text(&doc).as_deref(), Some("35436"));
        assert_eq!(
            path("$.big").text(&doc).as_deref(),
            Some("12345678901234567890")
        );
        assert_eq!(path("$.f").text(&doc).as_deref(), Some("1.5"));
        assert_eq!(path("$.yes").text(&doc).as_deref(), Some("true"));
        assert_eq!(path("$.blank").text(&doc), None);
        assert_eq!(path("$.null").text(&doc), None);
        assert_eq!(path("$.obj").text(&doc), None);
        assert_eq!(path("$.missing").text(&doc), None);
        assert_eq!(
            path("$.arr[*]").text(&doc).as_deref(),
            Some("x"),
            "the first non-empty scalar wins"
        );
        assert_eq!(Expr::Literal("  ".into()).text(&doc), None);
    }

    #[test]
    fn filters_select_custom_fields_by_id_in_awkward_bodies() {
        // Zendesk custom fields: an array of {id, value}, ids as numbers, values as tags.
        let doc = json!({"ticket": {"custom_fields": [
            {"id": 360001, "value": null},
            {"id": 360002, "value": "approved"},
            {"id": "360002", "value": "string-id-does-not-match"}
        ]}});
        assert_eq!(
            path("$.ticket.custom_fields[?@.id == 360002].value")
                .text(&doc)
                .as_deref(),
            Some("approved")
        );
        // Audits: who set field 360002 to approved (nested filter as an existence test).
        let audits = json!({"audits": [
            {"author_id": 1, "events": [{"type": "Change", "field_name": "status", "value": "open"}]},
            {"author_id": 2, "events": [{"type": "Change", "field_name": "360002", "value": "approved"}]},
            {"author_id": 3, "events": [{"type": "Comment", "body": "approved"}]}
        ]});
        let who = path(
            "$.audits[?@.events[?@.type == 'Change' && @.field_name == '360002' && @.value == 'approved']].author_id",
        );
        let Expr::Path(who) = who else {
            panic!("a path")
        };
        let ids: Vec<String> = who
            .query(&audits)
            .iter()
            .filter_map(|v| scalar_text(v))
            .collect();
        assert_eq!(ids, vec!["2".to_owned()]);
    }

    #[test]
    fn long_text_is_cut() {
        let doc = json!({"s": "y".repeat(MAX_TEXT_CHARS * 2)});
        assert_eq!(
            path("$.s").text(&doc).map(|s| s.chars().count()),
            Some(MAX_TEXT_CHARS)
        );
    }

    #[test]
    fn instants_in_every_common_form_are_read() {
        let want: Timestamp = "2025-03-14T08:41:37Z".parse().expect("ts");
        assert_eq!(timestamp("2025-03-14T08:41:37Z"), Some(want));
        assert_eq!(timestamp("2025-03-14T09:41:37+01:00"), Some(want));
        assert_eq!(timestamp("2025-03-14 08:41:37"), Some(want));
        assert_eq!(timestamp("1741941697"), Some(want));
        assert_eq!(timestamp("1741941697000"), Some(want));
        assert_eq!(timestamp("1741941697.0"), Some(want));
        assert_eq!(timestamp(""), None);
        assert_eq!(timestamp("yesterday"), None);
        assert_eq!(
            timestamp("2025-03-14"),
            None,
            "a date alone is not an instant"
        );
    }

    proptest! {
        #[test]
        fn instants_never_panic(s in "(?s).{0,64}") {
            let _ = timestamp(&s);
        }

        #[test]
        fn unix_seconds_round_trip(secs in 0i64..4_000_000_000) {
            prop_assert_eq!(timestamp(&secs.to_string()).map(|t| t.as_second()), Some(secs));
        }
    }
}
