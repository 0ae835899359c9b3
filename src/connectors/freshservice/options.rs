//! The Freshservice connector's own keys in a connector file, and the status table they shape.
//!
//! Freshservice speaks in status *codes* (`2` Open, `3` Pending, `4` Resolved, `5` Closed, and
//! other numbers for an account's custom statuses), while mappings and writebacks speak in status
//! *names*. [`StatusTable`] is the one place that translates between the two, so the parser, the
//! confirmation and the writeback always agree. Validation here is pure: no I/O.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::Problem;

/// Freshservice's built-in ticket statuses (`itsm-wire-formats.md` 3.1).
const DEFAULT_STATUSES: [(&str, u16); 4] =
    [("Open", 2), ("Pending", 3), ("Resolved", 4), ("Closed", 5)];
/// Default for [`Options::min_remaining`].
const DEFAULT_MIN_REMAINING: u32 = 5;
/// Largest accepted [`Options::min_remaining`]; Freshservice's biggest plan allows 500 calls a
/// minute, so anything above this is a typo.
const MAX_MIN_REMAINING: u32 = 1000;
/// Most status overrides accepted (an account has a few dozen statuses at most).
const MAX_STATUSES: usize = 64;
/// Longest status name accepted.
const MAX_STATUS_NAME: usize = 100;

/// The kind-specific keys of a `kind = "freshservice"` connector file.
///
/// Exists so that what differs between Freshservice accounts (custom statuses, how close to the
/// API budget the daemon may run, whether notes are visible to requesters) is configuration,
/// not code. Every key is optional; unknown keys are refused so a typo is reported by
/// `jitbridge check` instead of being silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Post writeback comments as private notes (agents only). Default `true`: grant details
    /// are operational information, not something every requester needs in the portal.
    #[serde(default = "default_private_notes")]
    pub private_notes: bool,
    /// Start pacing API calls when `X-RateLimit-Remaining` falls below this (default 5), so the
    /// daemon slows down *before* Freshservice answers `429` (failed calls count against the
    /// budget too). `0` turns pacing off.
    #[serde(default = "default_min_remaining")]
    pub min_remaining: u32,
    /// Status name → code, added to (or replacing) the built-in Open 2, Pending 3, Resolved 4,
    /// Closed 5. Custom statuses get account-specific codes; list them here so that status
    /// changes and writebacks can use their names. A code listed here takes the code over from
    /// a built-in name (a renamed status).
    #[serde(default)]
    pub statuses: BTreeMap<String, u16>,
}

fn default_private_notes() -> bool {
    true
}

fn default_min_remaining() -> u32 {
    DEFAULT_MIN_REMAINING
}

impl Default for Options {
    fn default() -> Self {
        Self {
            private_notes: default_private_notes(),
            min_remaining: DEFAULT_MIN_REMAINING,
            statuses: BTreeMap::new(),
        }
    }
}

impl Options {
    /// Reads and validates the kind-specific keys of connector file `file` (everything besides
    /// the keys all kinds share). Reports every problem at once, naming the key. Pure.
    pub fn from_table(t: &toml::Table, file: &Path) -> Result<Options, Vec<Problem>> {
        let options: Options =
            serde_path_to_error::deserialize(toml::Value::Table(t.clone())).map_err(|e| {
                let path = e.path().to_string();
                let key = if path.is_empty() || path == "." {
                    "freshservice options".to_owned()
                } else {
                    path
                };
                let why = e.into_inner().to_string();
                vec![Problem::new(
                    file,
                    key,
                    format!(
                        "{} (a freshservice connector accepts private_notes, min_remaining, statuses)",
                        why.trim()
                    ),
                )]
            })?;
        let mut problems = Vec::new();
        if options.min_remaining > MAX_MIN_REMAINING {
            problems.push(Problem::new(
                file,
                "min_remaining",
                format!(
                    "{} is more than any Freshservice plan allows per minute; use 0..={MAX_MIN_REMAINING}",
                    options.min_remaining
                ),
            ));
        }
        if options.statuses.len() > MAX_STATUSES {
            problems.push(Problem::new(
                file,
                "statuses",
                format!("more than {MAX_STATUSES} statuses"),
            ));
        }
        let mut seen_codes: BTreeMap<u16, &str> = BTreeMap::new();
        let mut seen_names: BTreeMap<String, &str> = BTreeMap::new();
        for (name, code) in &options.statuses {
            let key = format!("statuses.{name:?}");
            let trimmed = name.trim();
            if trimmed.is_empty() || trimmed.chars().any(char::is_control) {
                problems.push(Problem::new(
                    file,
                    key.clone(),
                    "a status name must be non-empty text without control characters",
                ));
            } else if trimmed.chars().count() > MAX_STATUS_NAME {
                problems.push(Problem::new(
                    file,
                    key.clone(),
                    format!("longer than {MAX_STATUS_NAME} characters"),
                ));
            } else if trimmed.bytes().all(|b| b.is_ascii_digit()) {
                problems.push(Problem::new(
                    file,
                    key.clone(),
                    "a status name cannot be a number (it would be read as a code)",
                ));
            }
            if *code == 0 {
                problems.push(Problem::new(
                    file,
                    key.clone(),
                    "status codes start at 1 (Open is 2)",
                ));
            }
            if let Some(other) = seen_codes.insert(*code, name) {
                problems.push(Problem::new(
                    file,
                    key.clone(),
                    format!("code {code} is also given to {other:?}; each code names one status"),
                ));
            }
            if let Some(other) = seen_names.insert(trimmed.to_lowercase(), name) {
                problems.push(Problem::new(
                    file,
                    key,
                    format!("the same name as {other:?} (names are compared case-insensitively)"),
                ));
            }
        }
        if problems.is_empty() {
            Ok(options)
        } else {
            Err(problems)
        }
    }

    /// The status table these options describe.
    pub(crate) fn status_table(&self) -> StatusTable {
        StatusTable::with_overrides(&self.statuses)
    }
}

/// Freshservice status names and codes, both ways.
///
/// Exists because the webhook may render a status as a name or a code, the API always returns
/// codes, and writebacks are written with names: all three go through this one table.
/// Names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusTable {
    entries: Vec<(String, u16)>,
}

impl Default for StatusTable {
    fn default() -> Self {
        Self::with_overrides(&BTreeMap::new())
    }
}

impl StatusTable {
    /// The built-in statuses with `overrides` applied: an override replaces any entry with the
    /// same name (case-insensitive) or the same code. Infallible, so a connector can always be
    /// built; [`Options::from_table`] reports the conflicts an admin should fix.
    pub(crate) fn with_overrides(overrides: &BTreeMap<String, u16>) -> Self {
        let mut entries: Vec<(String, u16)> = DEFAULT_STATUSES
            .iter()
            .map(|(n, c)| ((*n).to_owned(), *c))
            .collect();
        for (name, code) in overrides.iter().take(MAX_STATUSES) {
            let name = name.trim();
            if name.is_empty() || *code == 0 {
                continue;
            }
            entries.retain(|(n, c)| !n.eq_ignore_ascii_case(name) && c != code);
            entries.push((name.to_owned(), *code));
        }
        entries.sort_by_key(|(_, c)| *c);
        Self { entries }
    }

    /// The code of the status called `name` (case-insensitive).
    pub(crate) fn code_of(&self, name: &str) -> Option<u16> {
        let name = name.trim();
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| *c)
    }

    /// The name of status `code`.
    pub(crate) fn name_of(&self, code: u16) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(n, _)| n.as_str())
    }

    /// A status as the API or a webhook gives it: a code (number or digit string) becomes its
    /// name, or the code's digits when the table does not know it (so a custom status still
    /// reads as *something* a mapping can name); any other text is taken as the name itself.
    pub(crate) fn display(&self, raw: &str) -> Option<String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return None;
        }
        match raw.parse::<u16>() {
            Ok(code) => Some(
                self.name_of(code)
                    .map_or_else(|| code.to_string(), str::to_owned),
            ),
            Err(_) if raw.bytes().all(|b| b.is_ascii_digit()) => None,
            Err(_) => Some(raw.to_owned()),
        }
    }

    /// True for statuses that end the ticket: the built-in Resolved (4) and Closed (5), or any
    /// status so named.
    pub(crate) fn is_resolved(&self, name: &str) -> bool {
        let name = name.trim();
        name.eq_ignore_ascii_case("resolved")
            || name.eq_ignore_ascii_case("closed")
            || matches!(self.code_of(name), Some(4 | 5))
    }

    /// Every status name, for error messages.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    fn file() -> &'static Path {
        Path::new("connectors/freshservice.toml")
    }

    #[test]
    fn no_keys_means_the_defaults() {
        let o = Options::from_table(&toml::Table::new(), file()).expect("valid");
        assert_eq!(o, Options::default());
        assert!(o.private_notes);
        assert_eq!(o.min_remaining, 5);
        let t = o.status_table();
        assert_eq!(t.code_of("open"), Some(2));
        assert_eq!(t.name_of(5), Some("Closed"));
    }

    #[test]
    fn every_key_is_read() {
        let o = Options::from_table(
            &table(
                "private_notes = false\nmin_remaining = 12\nstatuses = { \"Awaiting Approval\" = 6, \"Done\" = 4 }",
            ),
            file(),
        )
        .expect("valid");
        assert!(!o.private_notes);
        assert_eq!(o.min_remaining, 12);
        let t = o.status_table();
        assert_eq!(t.code_of("awaiting approval"), Some(6));
        assert_eq!(
            t.name_of(4),
            Some("Done"),
            "a listed code renames the status"
        );
        assert_eq!(t.code_of("Resolved"), None);
        assert!(t.is_resolved("Done"));
        assert_eq!(t.code_of("Open"), Some(2));
    }

    #[test]
    fn unknown_key_is_a_problem_naming_it() {
        let problems = Options::from_table(&table("private_note = true"), file())
            .expect_err("typo must be refused");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, file());
        assert!(
            problems[0].why.contains("private_note"),
            "{:?}",
            problems[0]
        );
    }

    #[test]
    fn wrongly_typed_values_are_problems_at_their_key() {
        let problems = Options::from_table(&table("min_remaining = \"five\""), file())
            .expect_err("string is not a number");
        assert_eq!(problems[0].key, "min_remaining");
        let problems = Options::from_table(&table("statuses = { Open = -2 }"), file())
            .expect_err("negative code");
        assert!(problems[0].key.starts_with("statuses"), "{:?}", problems[0]);
    }

    #[test]
    fn conflicting_or_silly_statuses_are_all_reported() {
        let problems = Options::from_table(
            &table(
                "min_remaining = 100000\nstatuses = { \"A\" = 7, \"B\" = 7, \"a\" = 8, \"\" = 9, \"12\" = 10, \"Zero\" = 0 }",
            ),
            file(),
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"min_remaining"), "{keys:?}");
        assert!(
            problems.iter().any(|p| p.why.contains("code 7")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.why.contains("case-insensitively")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.why.contains("non-empty")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.why.contains("cannot be a number")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.why.contains("start at 1")),
            "{problems:?}"
        );
    }

    #[test]
    fn display_maps_codes_and_keeps_names() {
        let t = StatusTable::default();
        assert_eq!(t.display("2").as_deref(), Some("Open"));
        assert_eq!(t.display(" 4 ").as_deref(), Some("Resolved"));
        assert_eq!(t.display("17").as_deref(), Some("17"), "custom status code");
        assert_eq!(t.display("Pending").as_deref(), Some("Pending"));
        assert_eq!(t.display(""), None);
        assert_eq!(t.display("99999999999999"), None, "not a status code");
        assert!(t.is_resolved("closed"));
        assert!(!t.is_resolved("Open"));
    }

    proptest! {
        #[test]
        fn status_table_never_panics_and_overrides_win(
            overrides in prop::collection::btree_map("[A-Za-z ]{0,12}", any::<u16>(), 0..8),
            probe in "(?s).{0,20}",
        ) {
            let t = StatusTable::with_overrides(&overrides);
            let _ = t.display(&probe);
            let _ = t.is_resolved(&probe);
            for (name, code) in &overrides {
                if !name.trim().is_empty() && *code != 0 && t.code_of(name) == Some(*code) {
                    prop_assert!(t.name_of(*code).is_some());
                }
            }
            // Codes stay unique, so code → name is a function.
            let mut codes: Vec<u16> = t.entries.iter().map(|(_, c)| *c).collect();
            codes.sort_unstable();
            let before = codes.len();
            codes.dedup();
            prop_assert_eq!(before, codes.len());
        }
    }
}
