//! The part of the configuration a running daemon can swap without restarting: mappings,
//! connectors and providers. They are held together behind one handle and replaced as a whole,
//! so a worker never sees a new mapping with an old provider. Each unit of work (a delivery, a
//! job, a request) reads the handle once at its start and keeps that snapshot to its end.
//!
//! The views ([`LiveMappings`], [`LiveConnectors`], [`LiveProviders`]) let each component hold
//! only what it uses, with lookups shaped like the plain collections they replace.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::connectors::{Registered, Registry};
use crate::mapping::MappingSet;
use crate::providers::ElevationProvider;

/// One consistent set of reloadable configuration.
pub struct Active {
    /// The mappings every new event is evaluated against.
    pub mappings: Arc<MappingSet>,
    /// Connectors by id (ingress, confirmation, writebacks).
    pub connectors: Registry,
    /// Elevation providers by name.
    pub providers: BTreeMap<String, Arc<dyn ElevationProvider>>,
}

/// The shared, atomically replaceable handle to the [`Active`] configuration. Cheap to clone.
#[derive(Clone)]
pub struct LiveConfig {
    inner: Arc<RwLock<Arc<Active>>>,
}

impl LiveConfig {
    /// A handle starting with `active`.
    pub fn new(active: Active) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(active))),
        }
    }

    /// The configuration in force now. Held only for the duration of one unit of work.
    pub fn current(&self) -> Arc<Active> {
        // The lock guards a pointer swap only; a panic while holding it cannot leave a
        // half-written value, so a poisoned lock still holds a whole configuration.
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `active` in force for every unit of work that starts from now on.
    pub fn replace(&self, active: Active) {
        let new = Arc::new(active);
        match self.inner.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// The view the grant engine decides with.
    pub fn mappings(&self) -> LiveMappings {
        LiveMappings(self.clone())
    }

    /// The view ingress and the workers find connectors through.
    pub fn connectors(&self) -> LiveConnectors {
        LiveConnectors(self.clone())
    }

    /// The view the provider worker finds providers through.
    pub fn providers(&self) -> LiveProviders {
        LiveProviders(self.clone())
    }
}

/// The live mappings.
#[derive(Clone)]
pub struct LiveMappings(LiveConfig);

impl LiveMappings {
    /// The mappings in force now; keep the snapshot for the whole decision.
    pub fn current(&self) -> Arc<MappingSet> {
        self.0.current().mappings.clone()
    }
}

/// The live connectors.
#[derive(Clone)]
pub struct LiveConnectors(LiveConfig);

impl LiveConnectors {
    /// The connector with this id in the configuration in force now.
    pub fn get(&self, id: &str) -> Option<Registered> {
        self.0.current().connectors.get(id).cloned()
    }

    /// Every connector in force now.
    pub fn all(&self) -> Vec<Registered> {
        self.0.current().connectors.iter().cloned().collect()
    }
}

/// The live providers.
#[derive(Clone)]
pub struct LiveProviders(LiveConfig);

impl LiveProviders {
    /// The provider with this name in the configuration in force now.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ElevationProvider>> {
        self.0.current().providers.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> Active {
        Active {
            mappings: Arc::new(MappingSet::default()),
            connectors: Registry::default(),
            providers: BTreeMap::new(),
        }
    }

    #[test]
    fn a_snapshot_taken_before_a_replace_stays_whole_and_later_reads_see_the_new_config() {
        let live = LiveConfig::new(active());
        let before = live.current();
        let replacement = active();
        let replacement_mappings = replacement.mappings.clone();
        live.replace(replacement);
        assert!(!Arc::ptr_eq(&before.mappings, &replacement_mappings));
        assert!(Arc::ptr_eq(
            &live.mappings().current(),
            &replacement_mappings
        ));
    }
}
