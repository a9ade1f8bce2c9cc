//! The learning-rate schedule: linear warm-up to a peak, then cosine decay to a floor.

use serde::{Deserialize, Serialize};

/// Linear warm-up over `warmup_steps` steps to `peak`, then half a cosine from `peak` down to
/// `min` at `total_steps` (and `min` after it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak: f64,
    pub min: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// A constant rate (no warm-up, no decay).
    pub fn constant(lr: f64) -> Self {
        Self {
            peak: lr,
            min: lr,
            warmup_steps: 0,
            total_steps: 0,
        }
    }

    /// The rate of the 0-based optimiser step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        if span == 0 {
            return if self.total_steps == 0 {
                self.peak
            } else {
                self.min
            };
        }
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_by_cosine() {
        let s = LrSchedule {
            peak: 1e-3,
            min: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(s.lr(0), 1e-4));
        assert!(close(s.lr(4), 5e-4));
        assert!(close(s.lr(9), 1e-3));
        assert!(close(s.lr(10), 1e-3));
        // Half-way through the decay: the mean of peak and floor.
        assert!(close(s.lr(60), (1e-3 + 1e-5) / 2.0));
        assert!(close(s.lr(110), 1e-5));
        assert!(close(s.lr(1000), 1e-5));
        // Monotone after the warm-up.
        for t in 10..110 {
            assert!(s.lr(t + 1) <= s.lr(t) + 1e-15, "step {t}");
        }
        let c = LrSchedule::constant(0.1);
        assert_eq!((c.lr(0), c.lr(1_000_000)), (0.1, 0.1));
    }
}
