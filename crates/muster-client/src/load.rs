//! The host's CPU and memory load, reported with heartbeats so the dispatcher can prefer idle
//! agents.

use sysinfo::System;

/// Samples load; CPU usage is measured between two consecutive samples.
pub struct LoadSampler {
    /// `None` where the platform gives no figures; the agent then reports zeros.
    system: Option<System>,
}

impl Default for LoadSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadSampler {
    pub fn new() -> Self {
        let system = System::new().ok().map(|mut system| {
            system.refresh_cpu_usage();
            system.refresh_memory();
            system
        });
        LoadSampler { system }
    }

    /// (cpu %, memory %), each within 0..=100.
    pub fn sample(&mut self) -> (f64, f64) {
        let Some(system) = self.system.as_mut() else {
            return (0.0, 0.0);
        };
        system.refresh_cpu_usage();
        system.refresh_memory();
        let cpu = f64::from(system.global_cpu_usage());
        let total = system.total_memory();
        let mem = if total == 0 {
            0.0
        } else {
            system.used_memory() as f64 * 100.0 / total as f64
        };
        (clean(cpu), clean(mem))
    }
}

fn clean(value: f64) -> f64 {
    if value.is_finite() {
        value.clamp(0.0, 100.0)
    } else {
        0.0
    }
}
