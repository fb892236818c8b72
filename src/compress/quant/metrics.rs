//! Quantization error statistics between original and dequantized weights, accumulated in f64.
//!
//! [`ErrorAccumulator`] takes slices piece by piece (tensor by tensor, or row chunk by row chunk;
//! accumulators from several threads [`merge`](ErrorAccumulator::merge)), so the caller never needs
//! a whole model's dequantized copy. Called on the job worker thread that quantized the data.

use serde::{Deserialize, Serialize};

use super::{QuantError, Result};

/// Error of a dequantized tensor (or set of tensors) against the original.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorStats {
    /// ‖w − ŵ‖ / ‖w‖. For an all-zero original this is the absolute ‖w − ŵ‖ (0 for every scheme
    /// here, since they represent zero exactly).
    pub rel_error: f64,
    /// Signal-to-quantization-noise ratio 10·log10(‖w‖² / ‖w − ŵ‖²) in dB. `None` when it is not
    /// finite: the reconstruction is exact (error 0), or the original is all zeros.
    pub sqnr_db: Option<f64>,
    /// max |w − ŵ|.
    pub max_abs_error: f64,
    /// mean (w − ŵ)².
    pub mse: f64,
    /// Number of weights compared.
    pub count: u64,
}

impl ErrorStats {
    /// Statistics of one pair of slices.
    pub fn compute(original: &[f32], dequantized: &[f32]) -> Result<ErrorStats> {
        let mut acc = ErrorAccumulator::new();
        acc.update(original, dequantized)?;
        Ok(acc.finish())
    }
}

/// Running sums behind [`ErrorStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorAccumulator {
    signal: f64,
    noise: f64,
    max_abs: f64,
    count: u64,
}

const LANES: usize = 4;

impl ErrorAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair of equally long slices.
    pub fn update(&mut self, original: &[f32], dequantized: &[f32]) -> Result<()> {
        if original.len() != dequantized.len() {
            return Err(QuantError::LengthMismatch {
                what: "error statistics (original vs dequantized)",
                left: original.len(),
                right: dequantized.len(),
            });
        }
        // Independent lanes let the compiler vectorise without reassociating a single sum.
        let mut s = [0f64; LANES];
        let mut n = [0f64; LANES];
        let mut m = [0f64; LANES];
        let mut a = original.chunks_exact(LANES);
        let mut b = dequantized.chunks_exact(LANES);
        for (x, y) in (&mut a).zip(&mut b) {
            for i in 0..LANES {
                let w = x[i] as f64;
                let d = w - y[i] as f64;
                s[i] += w * w;
                n[i] += d * d;
                let ad = d.abs();
                m[i] = if ad > m[i] { ad } else { m[i] };
            }
        }
        for (x, y) in a.remainder().iter().zip(b.remainder()) {
            let w = *x as f64;
            let d = w - *y as f64;
            s[0] += w * w;
            n[0] += d * d;
            m[0] = m[0].max(d.abs());
        }
        self.signal += s.iter().sum::<f64>();
        self.noise += n.iter().sum::<f64>();
        self.max_abs = m.iter().fold(self.max_abs, |acc, v| acc.max(*v));
        self.count += original.len() as u64;
        Ok(())
    }

    /// Combines two accumulators (e.g. from two threads).
    pub fn merge(&mut self, other: &ErrorAccumulator) {
        self.signal += other.signal;
        self.noise += other.noise;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.count += other.count;
    }

    /// The statistics so far.
    pub fn finish(&self) -> ErrorStats {
        let norm = self.signal.sqrt();
        let err = self.noise.sqrt();
        let rel_error = if norm > 0.0 { err / norm } else { err };
        let sqnr = 10.0 * (self.signal / self.noise).log10();
        ErrorStats {
            rel_error,
            sqnr_db: sqnr.is_finite().then_some(sqnr),
            max_abs_error: self.max_abs,
            mse: if self.count > 0 { self.noise / self.count as f64 } else { 0.0 },
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        let w = [3.0, 4.0, 0.0, 0.0, 0.0];
        let d = [3.0, 3.0, 0.0, 0.0, 0.5];
        let s = ErrorStats::compute(&w, &d).unwrap();
        // ‖w‖ = 5, ‖w − ŵ‖² = 1.25
        assert!((s.rel_error - 1.25f64.sqrt() / 5.0).abs() < 1e-12);
        assert!((s.sqnr_db.unwrap() - 10.0 * (25.0f64 / 1.25).log10()).abs() < 1e-9);
        assert_eq!(s.max_abs_error, 1.0);
        assert!((s.mse - 0.25).abs() < 1e-12);
        assert_eq!(s.count, 5);
    }

    #[test]
    fn exact_and_zero_cases_serialise() {
        let s = ErrorStats::compute(&[1.0, 2.0], &[1.0, 2.0]).unwrap();
        assert_eq!((s.rel_error, s.sqnr_db, s.mse), (0.0, None, 0.0));
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"sqnr_db\":null"), "{json}");
        let z = ErrorStats::compute(&[0.0; 3], &[0.0; 3]).unwrap();
        assert_eq!((z.rel_error, z.sqnr_db), (0.0, None));
        let e = ErrorStats::compute(&[], &[]).unwrap();
        assert_eq!((e.rel_error, e.mse, e.count), (0.0, 0.0, 0));
        assert!(ErrorStats::compute(&[1.0], &[]).is_err());
    }

    #[test]
    fn incremental_equals_one_shot() {
        let w: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let d: Vec<f32> = w.iter().map(|v| (v * 64.0).round() / 64.0).collect();
        let one = ErrorStats::compute(&w, &d).unwrap();
        let mut a = ErrorAccumulator::new();
        let mut b = ErrorAccumulator::new();
        a.update(&w[..500], &d[..500]).unwrap();
        b.update(&w[500..], &d[500..]).unwrap();
        a.merge(&b);
        let two = a.finish();
        assert_eq!(one.count, two.count);
        assert_eq!(one.max_abs_error, two.max_abs_error);
        assert!((one.rel_error - two.rel_error).abs() < 1e-12);
        assert!((one.mse - two.mse).abs() < 1e-15);
    }
}
