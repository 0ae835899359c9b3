//! The identity map: who an ITSM account is in the directory. Each connector names people by
//! stable user ids and e-mail addresses; the optional map file (`[identity] map = "…"` in
//! `jitbridge.toml`) turns them into directory subjects (`alice@corp.example` → `CORP\alice`)
//! and gives them groups (`helpdesk-leads`) that `approvers` may name.
//!
//! Identities are compared canonically, never by display name: e-mails ignoring case, user ids
//! exactly and per connector (`jira:5b10…` is not `servicenow:5b10…`). Two ITSM accounts mapped
//! to one subject are one person, so separation of duties cannot be sidestepped with a second
//! account. Pure: the loader reads the file, [`IdentityMap::parse`] validates it.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{Problem, line_of};
use crate::ticket::Person;

/// Longest subject or match entry accepted.
const MAX_IDENTIFIER_CHARS: usize = 256;

/// How one ITSM account is known: by e-mail (any connector) or by a connector's user id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Lower-cased e-mail address.
    Email(String),
    /// A user id as one connector reports it (exact).
    Id { connector: String, id: String },
}

/// One `[[person]]` of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    subject: String,
    groups: Vec<String>,
    keys: Vec<Key>,
}

/// The loaded identity map. Empty when no map is configured: then people are compared by
/// their ITSM ids and e-mails alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityMap {
    people: Vec<Entry>,
    by_key: HashMap<Key, usize>,
    by_subject: HashMap<String, usize>,
}

/// One person of the map, as lookups return it: an index, so two look-ups can be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonRef(usize);

impl IdentityMap {
    /// True when no person is mapped.
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    /// The map entries an ITSM account of `connector` belongs to: by its id first, then by its
    /// e-mail. Two entries only when the id and the e-mail are mapped to different people (both
    /// count for separation of duties; neither alone proves group membership).
    pub fn lookup(&self, connector: &str, person: &Person) -> Vec<PersonRef> {
        let mut found = Vec::new();
        if let Some(id) = person
            .id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            && let Some(&i) = self.by_key.get(&Key::Id {
                connector: connector.to_owned(),
                id: id.to_owned(),
            })
        {
            found.push(PersonRef(i));
        }
        if let Some(email) = person
            .email
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            && let Some(&i) = self.by_key.get(&Key::Email(email.to_lowercase()))
            && !found.contains(&PersonRef(i))
        {
            found.push(PersonRef(i));
        }
        found
    }

    /// The person a written identity names: a directory subject (`CORP\alice`, any case) or a
    /// mapped e-mail address. Used for the grant's subject and for `approvers` entries.
    pub fn named(&self, text: &str) -> Option<PersonRef> {
        let t = text.trim().to_lowercase();
        self.by_subject
            .get(&t)
            .or_else(|| self.by_key.get(&Key::Email(t)))
            .map(|&i| PersonRef(i))
    }

    /// The directory subject of an ITSM account (`None` when unmapped or mapped ambiguously).
    pub fn subject_of(&self, connector: &str, person: &Person) -> Option<&str> {
        match self.lookup(connector, person).as_slice() {
            [one] => self.subject(*one),
            _ => None,
        }
    }

    /// The subject of a looked-up person.
    pub fn subject(&self, who: PersonRef) -> Option<&str> {
        self.people.get(who.0).map(|e| e.subject.as_str())
    }

    /// Whether the account is in `group`: every entry it maps to must list the group, so an
    /// ambiguous mapping never grants membership.
    pub fn in_group(&self, connector: &str, person: &Person, group: &str) -> bool {
        let found = self.lookup(connector, person);
        !found.is_empty()
            && found.iter().all(|r| {
                self.people
                    .get(r.0)
                    .is_some_and(|e| e.groups.iter().any(|g| g == group))
            })
    }

    /// Whether a group of this name is listed anywhere (the loader checks `group:` approvers).
    pub fn has_group(&self, group: &str) -> bool {
        self.people
            .iter()
            .any(|e| e.groups.iter().any(|g| g == group))
    }

    /// The subjects of a group's members, for the summary comment.
    pub fn members(&self, group: &str) -> Vec<&str> {
        self.people
            .iter()
            .filter(|e| e.groups.iter().any(|g| g == group))
            .map(|e| e.subject.as_str())
            .collect()
    }

    /// Whether a written identity (`approvers` entry: e-mail, `connector:id`-less user id or
    /// subject) names the map entry `who`.
    pub fn names_entry(&self, text: &str, who: PersonRef) -> bool {
        let Some(entry) = self.people.get(who.0) else {
            return false;
        };
        let t = text.trim();
        entry.subject.eq_ignore_ascii_case(t)
            || entry.keys.iter().any(|k| match k {
                Key::Email(e) => e.eq_ignore_ascii_case(t),
                Key::Id { id, .. } => id.eq_ignore_ascii_case(t),
            })
    }

    /// Adds `subject` to each person object of a template context (`requester`, `actor`, the
    /// approval's approvers): the directory subject, or `null` when unmapped.
    pub fn annotate(&self, connector: &str, context: &mut serde_json::Value) {
        let mut set = |p: &mut serde_json::Value| {
            let Some(obj) = p.as_object_mut() else {
                return;
            };
            let str_of = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let person = Person {
                id: str_of("id"),
                email: str_of("email"),
                name: None,
            };
            let subject = self.subject_of(connector, &person).map(str::to_owned);
            obj.insert("subject".into(), serde_json::json!(subject));
        };
        if let Some(ctx) = context.as_object_mut() {
            for key in ["requester", "actor"] {
                if let Some(p) = ctx.get_mut(key) {
                    set(p);
                }
            }
            if let Some(list) = ctx
                .get_mut("approval")
                .and_then(|a| a.get_mut("approvers"))
                .and_then(|l| l.as_array_mut())
            {
                list.iter_mut().for_each(&mut set);
            }
        }
    }

    /// Validates the map file's text. `connectors` are the configured connector ids, so a
    /// `servicenow:…` entry without a ServiceNow connector is reported rather than never matching.
    /// Every problem names file, line, key and a fix.
    pub fn parse(
        file: &Path,
        text: &str,
        connectors: &[String],
    ) -> Result<IdentityMap, Vec<Problem>> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            vec![
                Problem::new(file, "", e.message().trim().to_owned())
                    .at_line(e.span().map(|s| line_of(text, s.start))),
            ]
        })?;
        let mut problems = Vec::new();
        let mut map = IdentityMap::default();
        let mut key_lines: HashMap<Key, (usize, usize)> = HashMap::new();
        for (index, p) in raw.person.iter().enumerate() {
            let at = |span: std::ops::Range<usize>| Some(line_of(text, span.start));
            let mut report = |key: String, span, why: String| {
                problems.push(
                    Problem::new(file, format!("person[{index}].{key}"), why).at_line(at(span)),
                );
            };
            let subject = p.subject.get_ref().trim().to_owned();
            if subject.is_empty()
                || subject.chars().count() > MAX_IDENTIFIER_CHARS
                || subject.chars().any(char::is_control)
            {
                report(
                    "subject".into(),
                    p.subject.span(),
                    "must be the directory account, e.g. 'CORP\\alice' or \"alice@corp.example\" \
                     (1 to 256 characters, no line breaks)"
                        .into(),
                );
                continue;
            }
            let folded = subject.to_lowercase();
            if let Some(&other) = map.by_subject.get(&folded) {
                report(
                    "subject".into(),
                    p.subject.span(),
                    format!(
                        "{subject:?} is already the subject of person[{other}]; list all of one \
                         person's accounts in one [[person]]"
                    ),
                );
                continue;
            }
            let mut groups = Vec::new();
            for (g, group) in p.groups.iter().enumerate() {
                let name = group.get_ref().trim();
                if name.is_empty() || !name.chars().all(is_group_char) {
                    report(
                        format!("groups[{g}]"),
                        group.span(),
                        format!("{name:?} is not a group name: use a-z, 0-9, '.', '_', '-'"),
                    );
                } else if !groups.iter().any(|x: &String| x == name) {
                    groups.push(name.to_owned());
                }
            }
            if p.r#match.is_empty() {
                report(
                    "match".into(),
                    p.subject.span(),
                    "lists no account; add the person's e-mail and/or \"<connector>:<user id>\""
                        .into(),
                );
            }
            let mut keys = Vec::new();
            for (m, entry) in p.r#match.iter().enumerate() {
                match parse_key(entry.get_ref(), connectors) {
                    Err(why) => report(format!("match[{m}]"), entry.span(), why),
                    Ok(key) => {
                        let line = line_of(text, entry.span().start);
                        if let Some((other, other_line)) = key_lines.get(&key) {
                            if *other != index {
                                report(
                                    format!("match[{m}]"),
                                    entry.span(),
                                    format!(
                                        "{:?} is already mapped to person[{other}] (line {other_line}); \
                                         one account can be only one person",
                                        entry.get_ref()
                                    ),
                                );
                            }
                            continue;
                        }
                        key_lines.insert(key.clone(), (index, line));
                        keys.push(key);
                    }
                }
            }
            let i = map.people.len();
            for k in &keys {
                map.by_key.insert(k.clone(), i);
            }
            map.by_subject.insert(folded, i);
            map.people.push(Entry {
                subject,
                groups,
                keys,
            });
        }
        if problems.is_empty() {
            Ok(map)
        } else {
            Err(problems)
        }
    }
}

fn is_group_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
}

/// `alice@corp.example` → e-mail; `jira:5b10…` → that connector's user id.
fn parse_key(text: &str, connectors: &[String]) -> Result<Key, String> {
    let t = text.trim();
    if t.is_empty()
        || t.chars().count() > MAX_IDENTIFIER_CHARS
        || t.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "{t:?} is not an account: write one e-mail address or \"<connector>:<user id>\" per entry"
        ));
    }
    if let Some((prefix, id)) = t.split_once(':')
        && !prefix.contains('@')
        && !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        if id.is_empty() {
            return Err(format!("{t:?} names no user id after {prefix:?}"));
        }
        if !connectors.iter().any(|c| c == prefix) {
            return Err(format!(
                "{t:?}: there is no connector {prefix:?} (configured: {}); user ids are written \
                 \"<connector id>:<user id>\", e.g. \"jira:5b10ac8d82e05b22cc7d4ef5\"",
                if connectors.is_empty() {
                    "none".to_owned()
                } else {
                    connectors.join(", ")
                }
            ));
        }
        return Ok(Key::Id {
            connector: prefix.to_owned(),
            id: id.to_owned(),
        });
    }
    if t.matches('@').count() == 1 && !t.starts_with('@') && !t.ends_with('@') {
        return Ok(Key::Email(t.to_lowercase()));
    }
    Err(format!(
        "{t:?} is neither an e-mail address nor \"<connector>:<user id>\""
    ))
}

/// The map file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    person: Vec<RawPerson>,
}

/// One `[[person]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerson {
    subject: Spanned<String>,
    #[serde(default)]
    r#match: Vec<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
[[person]]
subject = 'CORP\alice'
match = ["Alice@Corp.Example", "jira:712020:a11ce"]

[[person]]
subject = 'CORP\bob'
match = ["bob@corp.example", "jira:5b10ac8d82e05b22cc7d4ef5"]
groups = ["helpdesk-leads"]
"#;

    fn map() -> IdentityMap {
        IdentityMap::parse(Path::new("identities.toml"), MAP, &["jira".into()]).unwrap()
    }

    fn person(id: Option<&str>, email: Option<&str>) -> Person {
        Person {
            id: id.map(str::to_owned),
            email: email.map(str::to_owned),
            name: Some("Display Name".into()),
        }
    }

    #[test]
    fn emails_compare_ignoring_case_and_ids_per_connector() {
        let m = map();
        assert_eq!(
            m.subject_of("jira", &person(None, Some("ALICE@corp.example"))),
            Some(r"CORP\alice")
        );
        assert_eq!(
            m.subject_of("jira", &person(Some("712020:a11ce"), None)),
            Some(r"CORP\alice"),
            "ids may contain ':' after the connector prefix"
        );
        assert_eq!(
            m.subject_of("servicenow", &person(Some("712020:a11ce"), None)),
            None,
            "an id is only meaningful on its own connector"
        );
        assert_eq!(
            m.subject_of("jira", &person(Some("712020:A11CE"), None)),
            None,
            "ids compare exactly"
        );
    }

    #[test]
    fn display_names_never_identify_anyone() {
        let m = map();
        let nobody = Person {
            id: None,
            email: None,
            name: Some(r"CORP\alice".into()),
        };
        assert!(m.lookup("jira", &nobody).is_empty());
    }

    #[test]
    fn groups_come_from_the_map_and_need_an_unambiguous_member() {
        let m = map();
        assert!(m.in_group(
            "jira",
            &person(Some("5b10ac8d82e05b22cc7d4ef5"), None),
            "helpdesk-leads"
        ));
        assert!(!m.in_group(
            "jira",
            &person(None, Some("alice@corp.example")),
            "helpdesk-leads"
        ));
        // Bob's id with Alice's e-mail: ambiguous, so no membership.
        assert!(!m.in_group(
            "jira",
            &person(Some("5b10ac8d82e05b22cc7d4ef5"), Some("alice@corp.example")),
            "helpdesk-leads"
        ));
        assert!(m.has_group("helpdesk-leads") && !m.has_group("admins"));
        assert_eq!(m.members("helpdesk-leads"), vec![r"CORP\bob"]);
    }

    #[test]
    fn subjects_and_mapped_emails_name_people() {
        let m = map();
        let alice = m.named(r"corp\ALICE").unwrap();
        assert_eq!(m.named("alice@corp.example"), Some(alice));
        assert!(m.named("eve@corp.example").is_none());
        assert!(!m.names_entry("some-other-id", alice));
        assert!(m.names_entry("712020:a11ce", alice));
    }

    #[test]
    fn one_account_mapped_to_two_subjects_is_a_load_error() {
        let text = r#"
[[person]]
subject = 'CORP\alice'
match = ["alice@corp.example"]

[[person]]
subject = 'CORP\alice-admin'
match = ["ALICE@corp.example"]
"#;
        let problems = IdentityMap::parse(Path::new("i.toml"), text, &[]).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "person[1].match[0]");
        assert_eq!(problems[0].line, Some(8));
        assert!(
            problems[0]
                .why
                .contains("already mapped to person[0] (line 4)"),
            "{}",
            problems[0].why
        );
    }

    #[test]
    fn bad_entries_say_how_to_write_them() {
        let text = r#"
[[person]]
subject = 'CORP\carol'
match = ["servicenow:abc", "carol", "jira:"]
groups = ["Help Desk"]
"#;
        let problems = IdentityMap::parse(Path::new("i.toml"), text, &["jira".into()]).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "person[0].groups[0]",
                "person[0].match[0]",
                "person[0].match[1]",
                "person[0].match[2]"
            ]
        );
        assert!(
            problems[1]
                .why
                .contains("there is no connector \"servicenow\""),
            "{}",
            problems[1].why
        );
        let unknown = IdentityMap::parse(
            Path::new("i.toml"),
            "[[person]]\nsubject = 'x'\nmail = []\n",
            &[],
        )
        .unwrap_err();
        assert!(
            unknown[0].why.contains("unknown field `mail`"),
            "{unknown:?}"
        );
        assert_eq!(unknown[0].line, Some(3));
    }

    #[test]
    fn the_shipped_example_map_loads() {
        let text = include_str!("../identities.toml.example");
        let m = IdentityMap::parse(Path::new("identities.toml.example"), text, &["jira".into()])
            .unwrap();
        assert!(m.has_group("helpdesk-leads"));
        assert_eq!(
            m.subject_of("jira", &person(Some("5b10ac8d82e05b22cc7d4ef5"), None)),
            Some(r"CORP\bob")
        );
    }

    #[test]
    fn templates_see_the_subject_or_null() {
        let m = map();
        let mut ctx = serde_json::json!({
            "requester": {"id": null, "email": "alice@corp.example", "name": "Alice"},
            "actor": {"id": "someone-else", "email": null, "name": "X"},
            "approval": {"approvers": [{"id": "5b10ac8d82e05b22cc7d4ef5", "email": null, "name": "Bob"}]},
        });
        m.annotate("jira", &mut ctx);
        assert_eq!(ctx["requester"]["subject"], r"CORP\alice");
        assert!(ctx["actor"]["subject"].is_null());
        assert_eq!(ctx["approval"]["approvers"][0]["subject"], r"CORP\bob");
    }
}
