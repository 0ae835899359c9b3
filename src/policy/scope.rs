//! Scopes: what a grant lets its subject do. Besides the built-in `local-admin` and
//! `driver-install`, a grant may be for one approved thing from the administrator's allow-list in
//! `jitbridge.toml` — `app:<name>` (an executable with its path and SHA-256), `script:<name>` (a
//! script with its hash and interpreter) or `service:<name>` (start/stop/restart one service).
//!
//! The allow-list ([`ScopeCatalog`]) is read from the `[scopes]` tables with spans so every
//! problem names file, line and key; a grant's scope string is resolved against it into a
//! [`ScopeDefinition`], which is stored with the grant and sent to the provider so the endpoint
//! can enforce exactly that path, hash and argument list. Pure: no I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{Problem, line_of};

/// The scope every mapping may grant unless its policy says otherwise.
pub const LOCAL_ADMIN: &str = "local-admin";

/// The built-in scope for installing device drivers.
pub const DRIVER_INSTALL: &str = "driver-install";

/// Service actions a `service:` scope may allow.
pub const SERVICE_ACTIONS: [&str; 3] = ["start", "stop", "restart"];

/// Longest allow-list entry name; names end up in ticket comments and provider calls.
const MAX_NAME_CHARS: usize = 64;

/// Most arguments an `app:` or `script:` entry may pin.
const MAX_ARGS: usize = 64;

/// What kind of privilege a scope grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeKind {
    /// Full local administrator rights (built in).
    LocalAdmin,
    /// Installing device drivers (built in).
    DriverInstall,
    /// Running one allow-listed executable elevated.
    App,
    /// Running one allow-listed script elevated.
    Script,
    /// Starting, stopping or restarting one service.
    Service,
}

impl ScopeKind {
    /// The `[scopes.<table>]` name of a listed kind (`app`, `script`, `service`).
    pub fn table(self) -> &'static str {
        match self {
            ScopeKind::LocalAdmin => LOCAL_ADMIN,
            ScopeKind::DriverInstall => DRIVER_INSTALL,
            ScopeKind::App => "app",
            ScopeKind::Script => "script",
            ScopeKind::Service => "service",
        }
    }
}

/// One scope, fully resolved: what the provider receives as `grant.scope_definition`, so the
/// endpoint enforces the same path, hash and arguments the approver was shown. Absent parts are
/// `null` (or `[]`), never missing, so receivers and templates see one shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeDefinition {
    /// Which kind of scope.
    pub kind: ScopeKind,
    /// The entry name (`7zip`), or the built-in scope's name (`local-admin`).
    pub name: String,
    /// Absolute path of the executable or script.
    pub path: Option<String>,
    /// Lower-case hex SHA-256 of the file at `path`.
    pub sha256: Option<String>,
    /// Arguments the elevated program is pinned to (empty: none pinned).
    #[serde(default)]
    pub args: Vec<String>,
    /// The program that runs a script (`powershell.exe`).
    pub interpreter: Option<String>,
    /// The service's name as the operating system knows it (`Spooler`).
    pub service: Option<String>,
    /// What may be done with the service (`start`, `stop`, `restart`).
    #[serde(default)]
    pub actions: Vec<String>,
}

impl ScopeDefinition {
    fn builtin(kind: ScopeKind) -> Self {
        ScopeDefinition {
            kind,
            name: kind.table().to_owned(),
            path: None,
            sha256: None,
            args: Vec::new(),
            interpreter: None,
            service: None,
            actions: Vec::new(),
        }
    }

    /// The grant's scope string (`app:7zip`, `local-admin`).
    pub fn scope(&self) -> String {
        match self.kind {
            ScopeKind::LocalAdmin | ScopeKind::DriverInstall => self.name.clone(),
            kind => format!("{}:{}", kind.table(), self.name),
        }
    }

    /// The definition of a built-in scope string, needing no allow-list (`None` for the rest).
    pub fn of_builtin(scope: &str) -> Option<ScopeDefinition> {
        match scope.trim() {
            LOCAL_ADMIN => Some(Self::builtin(ScopeKind::LocalAdmin)),
            DRIVER_INSTALL => Some(Self::builtin(ScopeKind::DriverInstall)),
            _ => None,
        }
    }

    /// One line for a person approving it: `app:7zip — C:\…\7z.exe (SHA-256 ab12…), arguments: x`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.kind {
            ScopeKind::LocalAdmin => parts.push("full local administrator rights".to_owned()),
            ScopeKind::DriverInstall => parts.push("installing device drivers".to_owned()),
            ScopeKind::App | ScopeKind::Script => {
                if let Some(path) = &self.path {
                    parts.push(path.clone());
                }
                if let Some(hash) = &self.sha256 {
                    parts.push(format!("SHA-256 {hash}"));
                }
                if let Some(i) = &self.interpreter {
                    parts.push(format!("run by {i}"));
                }
                if !self.args.is_empty() {
                    parts.push(format!("arguments: {}", self.args.join(" ")));
                }
            }
            ScopeKind::Service => {
                if let Some(s) = &self.service {
                    parts.push(format!("service {s}"));
                }
                parts.push(format!("may {}", self.actions.join("/")));
            }
        }
        format!("{} ({})", self.scope(), parts.join(", "))
    }
}

/// Why a scope string does not resolve, in words for the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved(pub String);

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The administrator's allow-list: every app, script and service a grant may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeCatalog {
    entries: BTreeMap<(ScopeKind, String), ScopeDefinition>,
}

impl ScopeCatalog {
    /// Resolves a grant's scope string. Built-in scopes always resolve; `app:`, `script:` and
    /// `service:` only when listed.
    pub fn resolve(&self, scope: &str) -> Result<ScopeDefinition, Unresolved> {
        let scope = scope.trim();
        if let Some(def) = ScopeDefinition::of_builtin(scope) {
            return Ok(def);
        }
        let Some((kind, name)) = split(scope) else {
            return Err(Unresolved(format!(
                "{scope:?} is not a scope jitbridge knows; a scope is local-admin, driver-install, \
                 app:<name>, script:<name> or service:<name>"
            )));
        };
        self.entries
            .get(&(kind, name.to_owned()))
            .cloned()
            .ok_or_else(|| {
                Unresolved(format!(
                    "{scope} is not in the allow-list [scopes.{}] of jitbridge.toml",
                    kind.table()
                ))
            })
    }

    /// Every listed scope string (`app:7zip`, ...), for hints.
    pub fn names(&self) -> Vec<String> {
        self.entries.values().map(ScopeDefinition::scope).collect()
    }

    /// True when nothing is listed (only the built-in scopes resolve).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reads the `[scopes]` tables of the main config text. Other tables are ignored here (the
    /// main loader checks them); every problem in `[scopes]` is reported with its line.
    pub fn from_config_text(file: &Path, text: &str) -> Result<ScopeCatalog, Vec<Problem>> {
        let doc: Doc = match toml::Deserializer::parse(text)
            .map_err(|e| (".".to_owned(), e))
            .and_then(|de| {
                serde_path_to_error::deserialize(de)
                    .map_err(|e| (key_path(&e.path().to_string()), e.into_inner()))
            }) {
            Ok(doc) => doc,
            Err((key, e)) => {
                let line = e.span().map(|s| line_of(text, s.start));
                return Err(vec![
                    Problem::new(file, key, e.message().trim().to_owned()).at_line(line),
                ]);
            }
        };
        let mut sink = Sink {
            file,
            text,
            problems: Vec::new(),
        };
        let mut catalog = ScopeCatalog::default();
        let raw = doc.scopes.unwrap_or_default();
        for (name, entry) in &raw.app {
            let key = format!("scopes.app.{}", name.get_ref());
            let ok_name = sink.name(&key, name);
            let e = entry.get_ref();
            let program = sink.program(&key, &e.path, &e.sha256, &e.args);
            if let (true, Some((path, sha, args))) = (ok_name, program) {
                catalog.insert(ScopeDefinition {
                    path: Some(path),
                    sha256: Some(sha),
                    args,
                    ..ScopeDefinition::builtin(ScopeKind::App).named(name.get_ref())
                });
            }
        }
        for (name, entry) in &raw.script {
            let key = format!("scopes.script.{}", name.get_ref());
            let ok_name = sink.name(&key, name);
            let e = entry.get_ref();
            let program = sink.program(&key, &e.path, &e.sha256, &e.args);
            // Absent is fine (Some(None)); present must be valid (None when it is not).
            let interpreter = match &e.interpreter {
                None => Some(None),
                Some(i) => sink.interpreter(&key, i).map(Some),
            };
            if let (true, Some((path, sha, args)), Some(interpreter)) =
                (ok_name, program, interpreter)
            {
                catalog.insert(ScopeDefinition {
                    path: Some(path),
                    sha256: Some(sha),
                    args,
                    interpreter,
                    ..ScopeDefinition::builtin(ScopeKind::Script).named(name.get_ref())
                });
            }
        }
        for (name, entry) in &raw.service {
            let key = format!("scopes.service.{}", name.get_ref());
            let ok_name = sink.name(&key, name);
            let e = entry.get_ref();
            let service = sink.service_name(&key, &e.name);
            let actions = sink.actions(&key, entry.span(), e.actions.as_deref());
            if let (true, Some(service), Some(actions)) = (ok_name, service, actions) {
                catalog.insert(ScopeDefinition {
                    service: Some(service),
                    actions,
                    ..ScopeDefinition::builtin(ScopeKind::Service).named(name.get_ref())
                });
            }
        }
        if sink.problems.is_empty() {
            Ok(catalog)
        } else {
            Err(sink.problems)
        }
    }

    /// Adds one definition (tests and the loader).
    pub fn insert(&mut self, def: ScopeDefinition) {
        self.entries.insert((def.kind, def.name.clone()), def);
    }
}

impl ScopeDefinition {
    fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }
}

/// `app:7zip` → (App, "7zip"); `None` for anything else.
fn split(scope: &str) -> Option<(ScopeKind, &str)> {
    let (kind, name) = scope.split_once(':')?;
    let kind = match kind {
        "app" => ScopeKind::App,
        "script" => ScopeKind::Script,
        "service" => ScopeKind::Service,
        _ => return None,
    };
    Some((kind, name))
}

/// Whether an entry of a policy's `scopes` list is well-formed: a built-in scope, `*`, or
/// `app:`/`script:`/`service:` followed by a name or a glob. `Err` says how to write it.
pub fn check_policy_entry(entry: &str) -> Result<(), String> {
    let entry = entry.trim();
    if entry == "*" || ScopeDefinition::of_builtin(entry).is_some() {
        return Ok(());
    }
    match split(entry) {
        Some((_, rest)) if !rest.is_empty() && rest.chars().all(is_glob_name_char) => Ok(()),
        _ => Err(format!(
            "{entry:?} is not a scope; write local-admin, driver-install, or app:/script:/service: \
             followed by a name from [scopes] in jitbridge.toml (globs allowed, e.g. \"app:*\")"
        )),
    }
}

/// True when `entry` names one scope exactly (no glob characters).
pub fn is_literal(entry: &str) -> bool {
    !entry.contains(['*', '?', '[', '{'])
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
}

fn is_glob_name_char(c: char) -> bool {
    is_name_char(c) || matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | ',' | '!')
}

/// A path the endpoint can check without guessing: absolute (`C:\…`, `\\server\share\…` or
/// `/…`), no `..` segment, no control characters.
pub fn is_absolute_path(path: &str) -> bool {
    let b = path.as_bytes();
    let windows_drive = b.len() >= 3
        && b[0].is_ascii_alphabetic()
        && b[1] == b':'
        && (b[2] == b'\\' || b[2] == b'/');
    let unc = path.starts_with("\\\\");
    let unix = path.starts_with('/');
    (windows_drive || unc || unix)
        && !path.chars().any(char::is_control)
        && !path.split(['\\', '/']).any(|seg| seg == "..")
}

/// The `[scopes]` part of `jitbridge.toml`; the rest of the file is ignored by this parse.
#[derive(Debug, Deserialize)]
struct Doc {
    #[serde(default)]
    scopes: Option<RawScopes>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScopes {
    #[serde(default)]
    app: BTreeMap<Spanned<String>, Spanned<RawApp>>,
    #[serde(default)]
    script: BTreeMap<Spanned<String>, Spanned<RawScript>>,
    #[serde(default)]
    service: BTreeMap<Spanned<String>, Spanned<RawService>>,
}

/// `[scopes.app.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    path: Spanned<String>,
    sha256: Spanned<String>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// `[scopes.script.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    path: Spanned<String>,
    sha256: Spanned<String>,
    #[serde(default)]
    interpreter: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<Spanned<String>>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// `[scopes.service.<name>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    #[serde(default)]
    actions: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

fn key_path(path: &str) -> String {
    let cleaned: Vec<&str> = path
        .split('.')
        .filter(|seg| !seg.starts_with("$__"))
        .collect();
    if cleaned.is_empty() {
        ".".to_owned()
    } else {
        cleaned.join(".")
    }
}

/// Collects problems with their lines while one file is validated.
struct Sink<'a> {
    file: &'a Path,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Sink<'_> {
    fn report(&mut self, key: String, span: Range<usize>, why: String) {
        let line = line_of(self.text, span.start);
        self.problems
            .push(Problem::new(self.file, key, why).at_line(Some(line)));
    }

    fn name(&mut self, key: &str, name: &Spanned<String>) -> bool {
        let n = name.get_ref();
        let ok = !n.is_empty() && n.len() <= MAX_NAME_CHARS && n.chars().all(is_name_char);
        if !ok {
            self.report(
                key.to_owned(),
                name.span(),
                format!(
                    "{n:?} is not a usable name: use 1 to {MAX_NAME_CHARS} of a-z, 0-9, '.', '_', \
                     '-' (it becomes part of the scope, e.g. \"app:7zip\")"
                ),
            );
        }
        ok
    }

    /// The path, hash and arguments an `app:` or `script:` entry pins (all reported, then
    /// `None` if any is bad).
    fn program(
        &mut self,
        key: &str,
        path: &Spanned<String>,
        sha256: &Spanned<String>,
        args: &[Spanned<String>],
    ) -> Option<(String, String, Vec<String>)> {
        let path = self.path(key, path);
        let sha = self.sha256(key, sha256);
        let args = self.args(key, args);
        Some((path?, sha?, args?))
    }

    fn path(&mut self, key: &str, path: &Spanned<String>) -> Option<String> {
        let p = path.get_ref().trim();
        if is_absolute_path(p) {
            return Some(p.to_owned());
        }
        self.report(
            format!("{key}.path"),
            path.span(),
            format!(
                "{p:?} is not an absolute path without '..'; write the full path the endpoint \
                 checks, e.g. 'C:\\Program Files\\7-Zip\\7z.exe' (single quotes keep backslashes)"
            ),
        );
        None
    }

    fn sha256(&mut self, key: &str, hash: &Spanned<String>) -> Option<String> {
        let h = hash.get_ref().trim();
        if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(h.to_ascii_lowercase());
        }
        self.report(
            format!("{key}.sha256"),
            hash.span(),
            format!(
                "must be 64 hexadecimal characters (the file's SHA-256), got {} characters; \
                 compute it with `Get-FileHash -Algorithm SHA256 <file>` or `sha256sum <file>`",
                h.chars().count()
            ),
        );
        None
    }

    fn args(&mut self, key: &str, args: &[Spanned<String>]) -> Option<Vec<String>> {
        if args.len() > MAX_ARGS {
            if let Some(first) = args.first() {
                self.report(
                    format!("{key}.args"),
                    first.span(),
                    format!("{} arguments, more than the {MAX_ARGS} allowed", args.len()),
                );
            }
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, a) in args.iter().enumerate() {
            if a.get_ref().chars().any(char::is_control) {
                self.report(
                    format!("{key}.args[{i}]"),
                    a.span(),
                    "contains a control character (a line break or similar); write one plain \
                     argument per entry"
                        .to_owned(),
                );
                ok = false;
            }
            out.push(a.get_ref().clone());
        }
        ok.then_some(out)
    }

    fn interpreter(&mut self, key: &str, interpreter: &Spanned<String>) -> Option<String> {
        let i = interpreter.get_ref().trim();
        let bare = !i.is_empty()
            && !i.contains(['/', '\\'])
            && !i.chars().any(|c| c.is_control() || c.is_whitespace());
        if bare || is_absolute_path(i) {
            return Some(i.to_owned());
        }
        self.report(
            format!("{key}.interpreter"),
            interpreter.span(),
            format!(
                "{i:?} is neither a program name (\"powershell.exe\") nor an absolute path; \
                 remove the key to let the endpoint choose"
            ),
        );
        None
    }

    fn service_name(&mut self, key: &str, name: &Spanned<String>) -> Option<String> {
        let n = name.get_ref().trim();
        let ok = !n.is_empty()
            && n.chars().count() <= 256
            && !n.chars().any(|c| c.is_control() || matches!(c, '/' | '\\'));
        if ok {
            return Some(n.to_owned());
        }
        self.report(
            format!("{key}.name"),
            name.span(),
            format!(
                "{n:?} is not a service name: write the name the operating system uses (e.g. \
                 \"Spooler\"), without slashes"
            ),
        );
        None
    }

    fn actions(
        &mut self,
        key: &str,
        table: Range<usize>,
        actions: Option<&[Spanned<String>]>,
    ) -> Option<Vec<String>> {
        let Some(actions) = actions else {
            return Some(SERVICE_ACTIONS.iter().map(|a| (*a).to_owned()).collect());
        };
        if actions.is_empty() {
            self.report(
                format!("{key}.actions"),
                table,
                "allows no action; list some of \"start\", \"stop\", \"restart\" or remove the key \
                 for all three"
                    .to_owned(),
            );
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        let mut ok = true;
        for (i, a) in actions.iter().enumerate() {
            let v = a.get_ref().trim().to_ascii_lowercase();
            if !SERVICE_ACTIONS.contains(&v.as_str()) {
                self.report(
                    format!("{key}.actions[{i}]"),
                    a.span(),
                    format!(
                        "{:?} is not a service action; use \"start\", \"stop\" or \"restart\"",
                        a.get_ref()
                    ),
                );
                ok = false;
            } else if out.contains(&v) {
                self.report(
                    format!("{key}.actions[{i}]"),
                    a.span(),
                    format!("{v:?} is listed twice"),
                );
                ok = false;
            } else {
                out.push(v);
            }
        }
        ok.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn catalog(text: &str) -> Result<ScopeCatalog, Vec<Problem>> {
        ScopeCatalog::from_config_text(Path::new("jitbridge.toml"), text)
    }

    fn example() -> String {
        format!(
            r#"
[server]
listen = "127.0.0.1:8080"

[scopes.app.7zip]
path = 'C:\Program Files\7-Zip\7z.exe'
sha256 = "{}"
args = ["x"]

[scopes.script.reset-spooler]
path = 'C:\ProgramData\jitbridge\reset-spooler.ps1'
sha256 = "{HASH}"
interpreter = "powershell.exe"

[scopes.service.spooler]
name = "Spooler"
actions = ["restart"]
"#,
            HASH.to_uppercase()
        )
    }

    #[test]
    fn listed_scopes_resolve_to_their_full_definition() {
        let c = catalog(&example()).unwrap();
        let app = c.resolve("app:7zip").unwrap();
        assert_eq!(app.kind, ScopeKind::App);
        assert_eq!(app.path.as_deref(), Some(r"C:\Program Files\7-Zip\7z.exe"));
        assert_eq!(
            app.sha256.as_deref(),
            Some(HASH),
            "hash is normalized to lower case"
        );
        assert_eq!(app.args, vec!["x"]);
        let script = c.resolve("script:reset-spooler").unwrap();
        assert_eq!(script.interpreter.as_deref(), Some("powershell.exe"));
        let svc = c.resolve(" service:spooler ").unwrap();
        assert_eq!(svc.service.as_deref(), Some("Spooler"));
        assert_eq!(svc.actions, vec!["restart"]);
        assert_eq!(svc.scope(), "service:spooler");
    }

    #[test]
    fn built_in_scopes_resolve_without_an_allow_list() {
        let c = ScopeCatalog::default();
        assert_eq!(
            c.resolve("local-admin").unwrap().kind,
            ScopeKind::LocalAdmin
        );
        assert_eq!(
            c.resolve("driver-install").unwrap().kind,
            ScopeKind::DriverInstall
        );
    }

    #[test]
    fn unlisted_scopes_are_refused_with_the_table_to_add_them_to() {
        let c = catalog(&example()).unwrap();
        assert_eq!(
            c.resolve("app:foo").unwrap_err().0,
            "app:foo is not in the allow-list [scopes.app] of jitbridge.toml"
        );
        assert!(
            c.resolve("registry:HKLM")
                .unwrap_err()
                .0
                .contains("is not a scope jitbridge knows")
        );
        assert!(c.resolve("App:7zip").is_err(), "kinds are lower case");
    }

    #[test]
    fn a_missing_scopes_table_is_an_empty_allow_list() {
        assert!(catalog("[server]\nlisten = \"x\"\n").unwrap().is_empty());
    }

    #[test]
    fn bad_entries_are_reported_with_line_key_and_fix() {
        let text = r#"
[scopes.app.7zip]
path = 'Program Files\7z.exe'
sha256 = "abc"

[scopes.app.Bad_Name]
path = 'C:\x.exe'
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

[scopes.service.spooler]
name = "Spooler"
actions = ["start", "reboot"]
"#;
        let problems = catalog(text).unwrap_err();
        let found: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        assert!(
            found.contains(&("scopes.app.7zip.path".into(), Some(3))),
            "{found:?}"
        );
        assert!(
            found.contains(&("scopes.app.7zip.sha256".into(), Some(4))),
            "{found:?}"
        );
        assert!(
            found.contains(&("scopes.app.Bad_Name".into(), Some(6))),
            "{found:?}"
        );
        assert!(
            found.contains(&("scopes.service.spooler.actions[1]".into(), Some(12))),
            "{found:?}"
        );
        let sha = problems.iter().find(|p| p.key.ends_with("sha256")).unwrap();
        assert!(sha.why.contains("Get-FileHash"), "{}", sha.why);
    }

    #[test]
    fn unknown_keys_in_an_entry_are_refused_with_their_line() {
        let text = "[scopes.app.7zip]\npath = '/usr/bin/7z'\nsha = \"x\"\n";
        let problems = catalog(text).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].why.contains("unknown field `sha`"),
            "{problems:?}"
        );
        assert_eq!(problems[0].line, Some(3));
        assert!(problems[0].key.starts_with("scopes.app"), "{problems:?}");
    }

    #[test]
    fn absolute_paths_are_recognized_on_every_platform() {
        for ok in [
            r"C:\a\b.exe",
            "c:/a/b.exe",
            r"\\srv\share\x.ps1",
            "/usr/bin/x",
        ] {
            assert!(is_absolute_path(ok), "{ok}");
        }
        for bad in ["a.exe", r"C:a.exe", r"C:\a\..\b.exe", "/x/\n", ""] {
            assert!(!is_absolute_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn policy_entries_must_name_a_kind() {
        for ok in [
            "local-admin",
            "driver-install",
            "*",
            "app:*",
            "service:spooler",
            "script:re*",
        ] {
            assert!(check_policy_entry(ok).is_ok(), "{ok}");
        }
        for bad in ["admin", "app:", "app:A B", "registry:*"] {
            assert!(check_policy_entry(bad).is_err(), "{bad}");
        }
        assert!(is_literal("app:7zip") && !is_literal("app:*"));
    }

    #[test]
    fn descriptions_show_what_the_approver_needs_to_see() {
        let c = catalog(&example()).unwrap();
        let d = c.resolve("app:7zip").unwrap().describe();
        assert!(d.starts_with("app:7zip ("), "{d}");
        assert!(
            d.contains(r"C:\Program Files\7-Zip\7z.exe") && d.contains(HASH),
            "{d}"
        );
        let s = c.resolve("service:spooler").unwrap().describe();
        assert!(
            s.contains("service Spooler") && s.contains("may restart"),
            "{s}"
        );
    }

    #[test]
    fn the_definition_serializes_with_every_key() {
        let v = serde_json::to_value(ScopeDefinition::of_builtin("local-admin").unwrap()).unwrap();
        for key in [
            "kind",
            "name",
            "path",
            "sha256",
            "args",
            "interpreter",
            "service",
            "actions",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["kind"], "local-admin");
    }
}
