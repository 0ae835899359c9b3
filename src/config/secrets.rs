//! Where secrets come from. Config files only name environment variables (`*_env` keys); a
//! [`SecretSource`] resolves them, so validation stays pure and tests inject their own values.

use std::collections::HashMap;

use secrecy::SecretString;

/// Resolves the secret held by a named variable.
pub trait SecretSource: Send + Sync {
    /// The value of variable `name`, if set and non-empty.
    fn get(&self, name: &str) -> Option<SecretString>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl SecretSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<SecretString> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
    }
}

/// A fixed set of secrets, for tests and tools.
#[derive(Debug, Default, Clone)]
pub struct MapSecrets(pub HashMap<String, String>);

impl MapSecrets {
    /// Builds from pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl SecretSource for MapSecrets {
    fn get(&self, name: &str) -> Option<SecretString> {
        self.0
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| SecretString::from(v.clone()))
    }
}

/// For dry runs (`jitbridge explain`): real values where set, a placeholder otherwise, so a
/// configuration can be explained on a machine that does not hold the production secrets.
/// Nothing built with it may send anything.
#[derive(Debug, Default, Clone, Copy)]
pub struct DryRunSecrets;

impl SecretSource for DryRunSecrets {
    fn get(&self, name: &str) -> Option<SecretString> {
        ProcessEnv.get(name).or_else(|| {
            Some(SecretString::from(
                "whsec_ZHJ5LXJ1bi1wbGFjZWhvbGRlci1rZXktbm90LWEtc2VjcmV0",
            ))
        })
    }
}
