//! Configuration: raw files → validated, typed configuration. Validation is pure (no file,
//! network or environment access): secrets come through a [`SecretSource`], files are read by
//! the loader first. Every problem names the file, the key and why ([`Problem`]).

pub mod live;
pub mod load;
pub mod raw;
pub mod secrets;
pub mod settings;

pub use live::{Active, LiveConfig};
pub use load::{load, process_env};
pub use secrets::{DryRunSecrets, MapSecrets, ProcessEnv, SecretSource};
pub use settings::{
    AdminSettings, Config, ConnectorSettings, ServerSettings, StoreLocation, WorkerSettings,
};

use std::path::PathBuf;

/// One configuration problem, precise enough to fix without reading the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {key}: {why}{}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(),
    hint.as_ref().map(|h| format!("\n    hint: {h}")).unwrap_or_default())]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// Line, where known.
    pub line: Option<usize>,
    /// Dotted key path (`mapping[0].grant.duration`, `inbound.secret_env`).
    pub key: String,
    /// What is wrong and, where possible, how to fix it. Never contains a secret value.
    pub why: String,
    /// How to fix it, when that is not already said in `why` (printed as `hint:`).
    pub hint: Option<String>,
}

impl Problem {
    /// A problem at `key` of `file`.
    pub fn new(file: impl Into<PathBuf>, key: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            key: key.into(),
            why: why.into(),
            hint: None,
        }
    }

    /// The same problem with a fix hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The same problem with a line number.
    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

/// All problems found, so `jitbridge check` can report every one at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

/// Parses a humantime duration (`30s`, `60m`, `4h`, `1h 30m`) with a message fit for a [`Problem`].
pub fn parse_duration(text: &str) -> Result<jiff::SignedDuration, String> {
    let std = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("{text:?} is not a duration ({e}); write e.g. \"30s\", \"60m\", \"4h\"")
    })?;
    jiff::SignedDuration::try_from(std).map_err(|_| format!("{text:?} is too long"))
}

/// 1-based line of byte offset `at` in `text`, for error messages.
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
