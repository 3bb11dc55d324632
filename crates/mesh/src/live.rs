//! The model a running data plane serves from, swapped whole when a new config is accepted.

use crate::Mesh;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// The current [`Mesh`]: readers take a snapshot (a connection or a request keeps the one it
/// started with), the config stream swaps in the next. `synced` says whether a model came
/// from the source yet: before that, "not in the model" means "not known yet", not "absent".
#[derive(Debug)]
pub struct LiveMesh {
    current: RwLock<Arc<Mesh>>,
    synced: AtomicBool,
}

impl LiveMesh {
    pub fn new(mesh: Mesh, synced: bool) -> Self {
        Self {
            current: RwLock::new(Arc::new(mesh)),
            synced: AtomicBool::new(synced),
        }
    }

    pub fn get(&self) -> Arc<Mesh> {
        // Only an Arc is swapped under the lock: a panic cannot leave it half-written.
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Installs a model from the source.
    pub fn set(&self, mesh: Mesh) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(mesh);
        self.synced.store(true, Ordering::Release);
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}
