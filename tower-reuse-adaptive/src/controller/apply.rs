//! How the controller's knobs reach the pool: the target's settings
//! without the controller, written with the knobs over them, and taken
//! back.

use tower_reuse_pool::{PoolControl, Target, TargetConfig};

use super::{Controller, TargetState};
use crate::decide::Inherited;
use crate::events::{Change, Decision, Reason};

impl Controller {
    /// Write the base settings with the controller's knobs over them.
    pub(super) fn write(
        &self,
        control: &PoolControl,
        target: &Target,
        state: &mut TargetState,
    ) -> bool {
        let mut own = state.base.clone().unwrap_or_default();
        let knobs = state.knobs;
        if let Some(idle) = knobs.idle_timeout.ours {
            own = own.idle_timeout(idle);
        }
        if let Some(min) = knobs.min_idle.ours {
            own = own.min_idle_per_target(min);
        }
        if let Some(max) = knobs.max_idle.ours {
            own = own.max_idle_per_target(max);
        }
        if let Some(max) = knobs.max_requests.ours {
            own = own.max_requests_per_connection(max);
        }
        let own = (own != TargetConfig::default() || state.base.is_some()).then_some(own);
        let ok = control.set_target_config(target, own.clone()).is_ok();
        state.written = Some(if ok {
            own
        } else {
            control.target_config(target)
        });
        ok
    }

    /// Switched off: take back every knob the controller set.
    pub(super) fn restore(
        &self,
        control: &PoolControl,
        target: &Target,
        state: &mut TargetState,
    ) -> Vec<Decision> {
        if state.written.is_none() {
            return Vec::new();
        }
        let inherited = state.inherited;
        let knobs = std::mem::take(&mut state.knobs);
        let applied = control
            .set_target_config(target, state.base.clone())
            .is_ok();
        state.written = None;
        let mut changes = Vec::new();
        if let Some(from) = knobs.idle_timeout.ours {
            changes.push(Change::IdleTimeout {
                from,
                to: inherited.idle_timeout,
            });
        }
        if let Some(from) = knobs.min_idle.ours {
            changes.push(Change::MinIdle {
                from,
                to: inherited.min_idle,
            });
        }
        if let Some(from) = knobs.max_idle.ours {
            changes.push(Change::MaxIdle {
                from,
                to: inherited.max_idle,
            });
        }
        if let Some(from) = knobs.max_requests.ours {
            changes.push(Change::MaxRequests {
                from,
                to: inherited.max_requests,
            });
        }
        changes
            .into_iter()
            .map(|change| Decision {
                target: target.clone(),
                change,
                reason: Reason::Restored,
                applied,
                inputs: state.inputs.clone(),
            })
            .collect()
    }
}

/// The target's settings without the controller: its own (the base), its
/// service's, its partition's, the pool's, first set wins.
pub(super) fn inherited(
    control: &PoolControl,
    target: &Target,
    base: Option<&TargetConfig>,
) -> Inherited {
    let pool = control.config();
    let service = control.service_config(target);
    let partition = target.partition().and_then(|p| control.partition_config(p));
    let levels = [base, service.as_ref(), partition.as_ref()];
    let levels = || levels.into_iter().flatten();
    let pick_duration = levels()
        .find_map(TargetConfig::get_idle_timeout)
        .unwrap_or(pool.get_idle_timeout());
    let pick_min = levels()
        .find_map(TargetConfig::get_min_idle_per_target)
        .unwrap_or(pool.get_min_idle_per_target());
    let pick_max = levels()
        .find_map(TargetConfig::get_max_requests_per_connection)
        .unwrap_or(pool.get_max_requests_per_connection());
    let pick_max_idle = levels()
        .find_map(TargetConfig::get_max_idle_per_target)
        .unwrap_or(pool.get_max_idle_per_target());
    let pick_max_connections = levels()
        .find_map(TargetConfig::get_max_connections_per_target)
        .unwrap_or(pool.get_max_connections_per_target());
    let pick_min_connections = levels()
        .find_map(TargetConfig::get_min_connections_per_target)
        .unwrap_or(pool.get_min_connections_per_target());
    Inherited {
        idle_timeout: pick_duration,
        min_idle: pick_min,
        max_idle: pick_max_idle,
        min_connections: pick_min_connections,
        max_connections: pick_max_connections,
        max_requests: pick_max,
        own_idle_timeout: base.is_some_and(|b| b.get_idle_timeout().is_some()),
        own_min_idle: base.is_some_and(|b| b.get_min_idle_per_target().is_some()),
        own_max_idle: base.is_some_and(|b| b.get_max_idle_per_target().is_some()),
        own_max_requests: base.is_some_and(|b| b.get_max_requests_per_connection().is_some()),
    }
}
