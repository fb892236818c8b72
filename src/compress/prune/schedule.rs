//! Gradual pruning schedule: TensorFlow Model Optimization's `PolynomialDecay`
//! (Zhu & Gupta 2017, <https://arxiv.org/abs/1710.01878>).
//!
//! Called by the fine-tuning loop (the lead's training glue) once per optimizer step, on the
//! job worker thread; pure arithmetic.
//!
//! `sparsity(step) = final + (initial − final) · (1 − p)^power` with
//! `p = clamp((step − begin_step) / (end_step − begin_step), 0, 1)`, and the mask is
//! recomputed only when `begin_step <= step <= end_step` and `(step − begin_step)` is a
//! multiple of `frequency` — the same rules as TFMOT.

use serde::{Deserialize, Serialize};

use super::PruneError;

/// Polynomial-decay schedule parameters (TFMOT names and defaults: `power = 3`,
/// `frequency = 100`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PolynomialDecay {
    /// Sparsity at `begin_step`, in `[0, 1)`.
    pub initial_sparsity: f64,
    /// Sparsity from `end_step` on, in `[0, 1)`.
    pub final_sparsity: f64,
    /// First step that prunes.
    pub begin_step: u64,
    /// Last step that prunes; must be greater than `begin_step`.
    pub end_step: u64,
    /// Exponent of the decay; 3 in TFMOT.
    #[serde(default = "default_power")]
    pub power: f64,
    /// Prune every `frequency` steps (≥ 1); 100 in TFMOT.
    #[serde(default = "default_frequency")]
    pub frequency: u64,
}

fn default_power() -> f64 {
    3.0
}

fn default_frequency() -> u64 {
    100
}

impl PolynomialDecay {
    /// A validated schedule with TFMOT's default power (3) and frequency (100).
    pub fn new(initial_sparsity: f64, final_sparsity: f64, begin_step: u64, end_step: u64) -> Result<Self, PruneError> {
        let s = Self {
            initial_sparsity,
            final_sparsity,
            begin_step,
            end_step,
            power: default_power(),
            frequency: default_frequency(),
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the parameters (call after deserializing).
    pub fn validate(&self) -> Result<(), PruneError> {
        for (name, v) in [("initial_sparsity", self.initial_sparsity), ("final_sparsity", self.final_sparsity)] {
            if !(0.0..1.0).contains(&v) {
                return Err(PruneError::InvalidSchedule(format!("{name} is {v}; it must be in [0, 1)")));
            }
        }
        if self.end_step <= self.begin_step {
            return Err(PruneError::InvalidSchedule(format!(
                "end_step ({}) must be greater than begin_step ({})",
                self.end_step, self.begin_step
            )));
        }
        if self.frequency == 0 {
            return Err(PruneError::InvalidSchedule("frequency must be at least 1".to_owned()));
        }
        if !(self.power.is_finite() && self.power > 0.0) {
            return Err(PruneError::InvalidSchedule(format!("power is {}; it must be a positive number", self.power)));
        }
        Ok(())
    }

    /// Target sparsity at `step` (clamped to `initial` before `begin_step`, `final` after
    /// `end_step`).
    pub fn sparsity_at(&self, step: u64) -> f64 {
        let span = (self.end_step - self.begin_step) as f64;
        let p = ((step as f64 - self.begin_step as f64) / span).clamp(0.0, 1.0);
        self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - p).powf(self.power)
    }

    /// Whether the mask is recomputed at `step`: inside `[begin_step, end_step]` and on a
    /// multiple of `frequency` from `begin_step`.
    pub fn should_prune(&self, step: u64) -> bool {
        (self.begin_step..=self.end_step).contains(&step) && (step - self.begin_step) % self.frequency == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_values() {
        // initial 0, final 0.8, steps 0..1000, power 3.
        let s = PolynomialDecay::new(0.0, 0.8, 0, 1000).unwrap();
        assert!(close(s.sparsity_at(0), 0.0));
        // p = 0.5: 0.8 + (0 - 0.8) * 0.125 = 0.7
        assert!(close(s.sparsity_at(500), 0.7));
        // p = 0.1: 0.8 - 0.8 * 0.729 = 0.2168
        assert!(close(s.sparsity_at(100), 0.2168));
        // p = 0.9: 0.8 - 0.8 * 0.001 = 0.7992
        assert!(close(s.sparsity_at(900), 0.7992));
        assert!(close(s.sparsity_at(1000), 0.8));
        assert!(close(s.sparsity_at(5000), 0.8), "clamped after end_step");

        // initial 0.5, final 0.9, begin 200, end 600, power 2: step 300 → p = 0.25
        // 0.9 + (0.5 - 0.9) * 0.75² = 0.9 - 0.4 * 0.5625 = 0.675
        let s = PolynomialDecay { power: 2.0, frequency: 50, ..PolynomialDecay::new(0.5, 0.9, 200, 600).unwrap() };
        assert!(close(s.sparsity_at(300), 0.675));
        assert!(close(s.sparsity_at(0), 0.5), "clamped before begin_step");
        assert!(s.should_prune(200) && s.should_prune(250) && s.should_prune(600));
        assert!(!s.should_prune(199) && !s.should_prune(260) && !s.should_prune(650));
    }

    #[test]
    fn monotonic_towards_final() {
        let s = PolynomialDecay::new(0.1, 0.95, 10, 110).unwrap();
        let v: Vec<f64> = (0..130).map(|t| s.sparsity_at(t)).collect();
        assert!(v.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn validation_and_serde_defaults() {
        assert!(PolynomialDecay::new(0.0, 1.0, 0, 10).is_err());
        assert!(PolynomialDecay::new(-0.1, 0.5, 0, 10).is_err());
        let e = PolynomialDecay::new(0.0, 0.5, 10, 10).unwrap_err();
        assert_eq!(e.to_string(), "pruning schedule: end_step (10) must be greater than begin_step (10)");
        let s: PolynomialDecay =
            serde_json::from_str(r#"{"initial_sparsity":0.0,"final_sparsity":0.5,"begin_step":0,"end_step":10}"#)
                .unwrap();
        assert_eq!((s.power, s.frequency), (3.0, 100));
        assert!(PolynomialDecay { frequency: 0, ..s }.validate().is_err());
        assert!(PolynomialDecay { power: 0.0, ..s }.validate().is_err());
    }
}
