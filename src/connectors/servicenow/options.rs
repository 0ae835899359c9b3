//! The ServiceNow-specific keys of a connector file, validated without I/O.
//!
//! A ServiceNow instance is far more configurable than a Jira site: which table the requests live
//! in, whether notes go to the internal `work_notes` or the customer-visible `comments` journal,
//! and which numeric codes its states use all differ between instances. These options let an
//! admin say so in the connector file; every key is optional and the defaults match an
//! out-of-the-box instance.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::Problem;

/// The keys [`Options`] accepts, for the "unknown key" message.
const KEYS: &[&str] = &["table", "journal_field", "states"];
/// Longest table name accepted (ServiceNow's own limit is 80).
const MAX_TABLE_LEN: usize = 80;
/// Longest state code accepted; real codes are one to three digits.
const MAX_CODE_LEN: usize = 9;

/// ServiceNow-specific settings of one connector file.
///
/// Exists so that instance differences are configuration, not code: the table to use when a
/// ticket's own table is unknown, the journal field writebacks append to, and the state names an
/// admin wants to write back that the built-in maps do not know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The table confirmations and writebacks use when the ticket link does not name one
    /// (`sc_req_item`, `incident`, a custom `u_...` table). When unset, `sc_req_item` is tried,
    /// then `incident`.
    #[serde(default)]
    pub table: Option<String>,
    /// Where comments are written: the internal `work_notes` (default) or the requester-visible
    /// `comments`.
    #[serde(default)]
    pub journal_field: JournalField,
    /// State name → code (`"In Progress" = "2"`), consulted before the built-in per-table maps
    /// when a mapping writes a status back, and used to name codes the built-in maps do not know.
    #[serde(default)]
    pub states: BTreeMap<String, String>,
}

/// The journal a comment writeback appends to.
///
/// Exists because the choice is a policy decision: work notes stay with the fulfilment team,
/// comments e-mail the requester.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalField {
    /// `work_notes`: visible to ITIL users only.
    #[default]
    WorkNotes,
    /// `comments`: "Additional comments", visible to the requester.
    Comments,
}

impl JournalField {
    /// The field name the Table API expects.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalField::WorkNotes => "work_notes",
            JournalField::Comments => "comments",
        }
    }
}

impl Options {
    /// Validates the kind-specific keys of a ServiceNow connector file (everything besides the
    /// keys every connector shares). Pure; reports every problem at once, each naming its key.
    pub fn from_table(t: &toml::Table, file: &Path) -> Result<Options, Vec<Problem>> {
        let mut problems: Vec<Problem> = t
            .keys()
            .filter(|k| !KEYS.contains(&k.as_str()))
            .map(|k| {
                Problem::new(
                    file,
                    k.clone(),
                    format!(
                        "unknown key for a servicenow connector; expected id, kind, base_url, inbound, outbound, confirm_approvals, timeout, {}",
                        KEYS.join(", ")
                    ),
                )
            })
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        let options: Options = serde_path_to_error::deserialize(t.clone()).map_err(|e| {
            let path = e.path().to_string();
            let key = if path.is_empty() || path == "." {
                "options".to_owned()
            } else {
                path
            };
            vec![Problem::new(file, key, e.into_inner().message().to_owned())]
        })?;
        if let Some(table) = &options.table
            && !is_table_name(table)
        {
            problems.push(Problem::new(
                file,
                "table",
                format!(
                    "{table:?} is not a ServiceNow table name (lower-case letters, digits and _, e.g. \"sc_req_item\")"
                ),
            ));
        }
        for (name, code) in &options.states {
            if name.trim().is_empty() {
                problems.push(Problem::new(
                    file,
                    "states",
                    "a state name is empty; write e.g. states = { \"In Progress\" = \"2\" }",
                ));
            }
            if !is_state_code(code) {
                problems.push(Problem::new(
                    file,
                    format!("states.{name}"),
                    format!(
                        "{code:?} is not a ServiceNow state code (an integer such as \"2\" or \"-5\")"
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(options)
        } else {
            Err(problems)
        }
    }

    /// The code configured for state `name` (case-insensitive, surrounding blanks ignored).
    pub(crate) fn state_code(&self, name: &str) -> Option<&str> {
        let name = name.trim();
        self.states
            .iter()
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, c)| c.trim())
    }

    /// The configured name of state `code`, when exactly one name maps to it (aliases leave the
    /// code unnamed rather than picking one arbitrarily).
    pub(crate) fn state_name(&self, code: &str) -> Option<&str> {
        let mut names = self
            .states
            .iter()
            .filter(|(_, c)| c.trim() == code.trim())
            .map(|(n, _)| n.trim());
        match (names.next(), names.next()) {
            (Some(n), None) => Some(n),
            _ => None,
        }
    }
}

/// True for a plausible ServiceNow table name: it starts with a lower-case letter and holds only
/// lower-case letters, digits and `_`. Safe to put into a REST path and a `nav_to.do` link.
pub(crate) fn is_table_name(s: &str) -> bool {
    s.len() <= MAX_TABLE_LEN
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// True for a state code: an optionally negative integer of a few digits (`"2"`, `"-5"`).
pub(crate) fn is_state_code(s: &str) -> bool {
    let s = s.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.len() <= MAX_CODE_LEN && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Options, Vec<Problem>> {
        let t: toml::Table = toml::from_str(text).expect("toml");
        Options::from_table(&t, Path::new("connectors/servicenow.toml"))
    }

    #[test]
    fn an_empty_file_gets_out_of_the_box_defaults() {
        let o = parse("").expect("valid");
        assert_eq!(o, Options::default());
        assert_eq!(o.journal_field.as_str(), "work_notes");
        assert_eq!(o.table, None);
    }

    #[test]
    fn every_key_is_read() {
        let o = parse(
            r#"
            table = "incident"
            journal_field = "comments"
            states = { "In Progress" = "2", "Closed Complete" = "3", Pending = "-5" }
            "#,
        )
        .expect("valid");
        assert_eq!(o.table.as_deref(), Some("incident"));
        assert_eq!(o.journal_field, JournalField::Comments);
        assert_eq!(o.state_code("in progress"), Some("2"));
        assert_eq!(o.state_code(" Pending "), Some("-5"));
        assert_eq!(o.state_name("3"), Some("Closed Complete"));
        assert_eq!(o.state_code("Resolved"), None);
    }

    #[test]
    fn aliases_name_no_code() {
        let o =
            parse(r#"states = { "In Progress" = "2", "Work in Progress" = "2" }"#).expect("valid");
        assert_eq!(o.state_name("2"), None);
        assert_eq!(o.state_code("Work in Progress"), Some("2"));
    }

    #[test]
    fn unknown_keys_are_each_reported_by_name() {
        let problems = parse("tabel = \"incident\"\njournal = \"x\"").expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["journal", "tabel"]);
        assert!(problems[0].why.contains("journal_field"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let p = parse("journal_field = \"description\"").expect_err("invalid");
        assert_eq!(p[0].key, "journal_field");
        assert!(p[0].why.contains("work_notes"), "{}", p[0].why);

        let p = parse("table = \"sc_req_item.do?x=1\"").expect_err("invalid");
        assert_eq!(p[0].key, "table");

        let p = parse(r#"states = { "In Progress" = "two" }"#).expect_err("invalid");
        assert_eq!(p[0].key, "states.In Progress");

        let p = parse("states = { \"In Progress\" = 2 }").expect_err("invalid");
        assert!(p[0].key.starts_with("states"), "{:?}", p[0]);
    }

    #[test]
    fn the_shipped_example_file_is_valid() {
        let mut t: toml::Table =
            toml::from_str(include_str!("../../../connectors/servicenow.toml.example"))
                .expect("toml");
        for shared in [
            "id",
            "kind",
            "base_url",
            "inbound",
            "outbound",
            "confirm_approvals",
            "timeout",
        ] {
            t.remove(shared);
        }
        let o = Options::from_table(&t, Path::new("servicenow.toml.example")).expect("valid");
        assert_eq!(o.journal_field, JournalField::WorkNotes);
        assert_eq!(o.state_code("In Progress"), Some("2"));
    }

    proptest! {
        #[test]
        fn table_names_never_carry_path_or_query_characters(s in "(?s).{0,100}") {
            if is_table_name(&s) {
                prop_assert!(!s.contains(['/', '?', '#', '.', '&', '=', '%', ' ']));
                prop_assert!(!s.is_empty());
            }
        }

        #[test]
        fn state_codes_are_integers(s in "-?[0-9]{0,12}|.{0,12}") {
            if is_state_code(&s) {
                prop_assert!(s.trim().parse::<i64>().is_ok(), "{:?}", s);
            }
        }
    }
}
