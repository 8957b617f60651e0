//! `AdaptiveHandle`: the controller's estimates, and its mode at run time.

use std::sync::Arc;

use tokio::time::Instant;

use crate::config::Mode;
use crate::controller::Controller;
use crate::snapshot::AdaptiveSnapshot;

/// Reads the controller's estimates and switches its mode; cheap to clone.
#[derive(Clone, Debug)]
pub struct AdaptiveHandle {
    pub(crate) controller: Arc<Controller>,
}

impl AdaptiveHandle {
    /// Every target's signals over the window, what was learned of its
    /// server, and the settings the controller gave it.
    pub fn snapshot(&self) -> AdaptiveSnapshot {
        self.controller.snapshot()
    }

    /// The mode now.
    pub fn mode(&self) -> Mode {
        self.controller.mode()
    }

    /// Switch the mode: [`Mode::Observe`] freezes the settings as they are
    /// (the freeze switch), [`Mode::Off`] takes back every setting the
    /// controller gave at its next tick, [`Mode::On`] resumes.
    pub fn set_mode(&self, mode: Mode) {
        self.controller.set_mode(mode);
    }

    /// Run one tick now, as the controller's task does every `tick`: for
    /// tests and tools that drive the controller themselves.
    pub fn tick(&self) {
        self.controller.tick(Instant::now());
    }
}
