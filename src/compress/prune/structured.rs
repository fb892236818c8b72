//! Numeric helpers for structured (shape-changing) pruning: scores per output unit, top-k
//! selection and gathers on row-major buffers.
//!
//! Called by the structured-pruning rewrite (the lead's glue, driven by the architecture
//! spec) on a job worker thread; all functions are serial and cheap next to the I/O.
//!
//! Typical use for a linear `fc1` feeding `fc2`: `unit_scores(fc1.weight, L1)` →
//! `select_keep(scores, keep)` → `take_rows(fc1.weight)`, `take_along_dim(fc1.bias, dim 0)`,
//! `take_along_dim(fc2.weight, dim 1)`. For a conv followed by batch norm the same indices
//! gather the filters (dim 0), the BN vectors (dim 0) and the next conv's input channels
//! (dim 1).

use serde::{Deserialize, Serialize};

use super::{check_shape, PruneError};

/// Norm used to score an output unit (a row of `[out, in]`, a filter of `[out, ...]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Sum of absolute values.
    L1,
    /// Euclidean norm.
    L2,
}

/// One score per output unit (dim 0) of a weight of rank ≥ 1: the L1 or L2 norm of the
/// unit's row / filter, accumulated in f64. Data-driven scores (e.g. mean activation)
/// can be passed to [`select_keep`] directly instead.
pub fn unit_scores(tensor: &str, data: &[f32], shape: &[usize], norm: Norm) -> Result<Vec<f32>, PruneError> {
    check_shape(tensor, shape, data.len())?;
    let Some(&units) = shape.first() else {
        return Err(PruneError::RankTooLow { tensor: tensor.to_owned(), shape: shape.to_vec(), min_rank: 1 });
    };
    if let Some(index) = data.iter().position(|w| w.is_nan()) {
        return Err(PruneError::NaN { tensor: tensor.to_owned(), index });
    }
    if units == 0 {
        return Ok(Vec::new());
    }
    let row = data.len() / units;
    if row == 0 {
        return Ok(vec![0.0; units]);
    }
    Ok(data
        .chunks_exact(row)
        .map(|r| match norm {
            Norm::L1 => r.iter().map(|&w| f64::from(w).abs()).sum::<f64>() as f32,
            Norm::L2 => r.iter().map(|&w| f64::from(w) * f64::from(w)).sum::<f64>().sqrt() as f32,
        })
        .collect())
}

/// Indices (ascending) of the `keep` highest scores. Ties are broken towards the lower
/// index, so the result is deterministic. Errors on NaN scores or `keep > scores.len()`.
pub fn select_keep(layer: &str, scores: &[f32], keep: usize) -> Result<Vec<usize>, PruneError> {
    if keep > scores.len() {
        return Err(PruneError::KeepTooMany { layer: layer.to_owned(), keep, available: scores.len() });
    }
    if let Some(index) = scores.iter().position(|s| s.is_nan()) {
        return Err(PruneError::NaNScore { layer: layer.to_owned(), index });
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // -0.0 and +0.0 must tie, so compare with partial_cmp (no NaN is left) rather than
    // total_cmp.
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).expect("NaN scores were rejected above").then(a.cmp(&b)));
    order.truncate(keep);
    order.sort_unstable();
    Ok(order)
}

/// Gathers rows (dim 0) of a row-major tensor: `take_along_dim(.., 0, idx)`.
pub fn take_rows<T: Copy>(
    tensor: &str,
    data: &[T],
    shape: &[usize],
    idx: &[usize],
) -> Result<(Vec<T>, Vec<usize>), PruneError> {
    take_along_dim(tensor, data, shape, 0, idx)
}

/// Gathers the entries `idx` (in that order; repeats allowed) along dimension `dim` of a
/// row-major tensor of `shape`. Returns the new buffer and shape (`shape[dim] = idx.len()`).
/// Works for any element type (f32 weights, f16, i64 …).
pub fn take_along_dim<T: Copy>(
    tensor: &str,
    data: &[T],
    shape: &[usize],
    dim: usize,
    idx: &[usize],
) -> Result<(Vec<T>, Vec<usize>), PruneError> {
    check_shape(tensor, shape, data.len())?;
    let Some(&size) = shape.get(dim) else {
        return Err(PruneError::DimOutOfRange { tensor: tensor.to_owned(), dim, shape: shape.to_vec() });
    };
    if let Some(&index) = idx.iter().find(|&&i| i >= size) {
        return Err(PruneError::IndexOutOfRange { tensor: tensor.to_owned(), index, dim, size });
    }
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &i in idx {
            let start = (o * size + i) * inner;
            out.extend_from_slice(&data[start..start + inner]);
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[dim] = idx.len();
    Ok((out, new_shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_l1_l2_linear_and_conv() {
        let w = [1.0, -2.0, 2.0, 0.0, 3.0, -4.0];
        assert_eq!(unit_scores("w", &w, &[2, 3], Norm::L1).unwrap(), vec![5.0, 7.0]);
        assert_eq!(unit_scores("w", &w, &[2, 3], Norm::L2).unwrap(), vec![3.0, 5.0]);
        // conv [out=3, in=1, kh=1, kw=2]
        assert_eq!(unit_scores("c", &w, &[3, 1, 1, 2], Norm::L1).unwrap(), vec![3.0, 2.0, 7.0]);
        // 1-D: each element is a unit.
        assert_eq!(unit_scores("b", &w, &[6], Norm::L2).unwrap(), vec![1.0, 2.0, 2.0, 0.0, 3.0, 4.0]);
        assert!(matches!(unit_scores("s", &[1.0], &[], Norm::L1), Err(PruneError::RankTooLow { .. })));
        assert!(matches!(unit_scores("w", &w, &[4, 2], Norm::L1), Err(PruneError::ShapeMismatch { .. })));
        let e = unit_scores("w", &[1.0, f32::NAN], &[1, 2], Norm::L1).unwrap_err();
        assert_eq!(e.to_string(), "tensor w: contains NaN at index 1");
    }

    #[test]
    fn select_keep_is_sorted_and_deterministic() {
        let s = [0.5, 3.0, 1.0, 3.0, 0.5, 2.0];
        assert_eq!(select_keep("l", &s, 3).unwrap(), vec![1, 3, 5]);
        assert_eq!(select_keep("l", &s, 4).unwrap(), vec![1, 2, 3, 5]);
        // Tie at 0.5 between 0 and 4: the lower index wins.
        assert_eq!(select_keep("l", &s, 5).unwrap(), vec![0, 1, 2, 3, 5]);
        assert_eq!(select_keep("l", &s, 0).unwrap(), Vec::<usize>::new());
        assert_eq!(select_keep("l", &[0.0, -0.0, 0.0], 2).unwrap(), vec![0, 1]);
        let e = select_keep("fc1", &s, 7).unwrap_err();
        assert_eq!(e.to_string(), "layer fc1: cannot keep 7 units out of 6");
        let e = select_keep("fc1", &[1.0, f32::NAN], 1).unwrap_err();
        assert_eq!(e.to_string(), "layer fc1: score of unit 1 is NaN");
    }

    #[test]
    fn gathers_shapes_and_values() {
        // [3, 4] with value = 10*r + c
        let w: Vec<f32> = (0..3).flat_map(|r| (0..4).map(move |c| (10 * r + c) as f32)).collect();
        let (rows, shape) = take_rows("w", &w, &[3, 4], &[0, 2]).unwrap();
        assert_eq!(shape, vec![2, 4]);
        assert_eq!(rows, vec![0.0, 1.0, 2.0, 3.0, 20.0, 21.0, 22.0, 23.0]);
        let (cols, shape) = take_along_dim("w", &w, &[3, 4], 1, &[3, 1]).unwrap();
        assert_eq!(shape, vec![3, 2]);
        assert_eq!(cols, vec![3.0, 1.0, 13.0, 11.0, 23.0, 21.0]);
        // bias / batch-norm vector
        let b = [7i64, 8, 9];
        let (bb, shape) = take_along_dim("b", &b, &[3], 0, &[2]).unwrap();
        assert_eq!((bb, shape), (vec![9], vec![1]));
        // conv [out=2, in=3, kh=1, kw=2]: keep input channels 0 and 2
        let c: Vec<u32> = (0..12).collect();
        let (cc, shape) = take_along_dim("c", &c, &[2, 3, 1, 2], 1, &[0, 2]).unwrap();
        assert_eq!(shape, vec![2, 2, 1, 2]);
        assert_eq!(cc, vec![0, 1, 4, 5, 6, 7, 10, 11]);
        // errors
        let e = take_along_dim("w", &w, &[3, 4], 1, &[4]).unwrap_err();
        assert_eq!(e.to_string(), "tensor w: index 4 is out of range for dimension 1 of size 4");
        let e = take_along_dim("w", &w, &[3, 4], 2, &[0]).unwrap_err();
        assert_eq!(e.to_string(), "tensor w: dimension 2 does not exist in shape [3, 4]");
        assert!(take_rows("w", &w, &[4, 4], &[0]).is_err());
    }

    #[test]
    fn end_to_end_keep_strongest_units() {
        // fc1 [4, 2] feeding fc2 [2, 4]: keep the 2 units with largest L2 rows.
        let fc1 = [0.1, 0.1, 3.0, 0.0, 0.0, 0.2, -1.0, 1.0];
        let fc2 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let keep = select_keep("fc1", &unit_scores("fc1.weight", &fc1, &[4, 2], Norm::L2).unwrap(), 2).unwrap();
        assert_eq!(keep, vec![1, 3]);
        let (w1, s1) = take_rows("fc1.weight", &fc1, &[4, 2], &keep).unwrap();
        let (w2, s2) = take_along_dim("fc2.weight", &fc2, &[2, 4], 1, &keep).unwrap();
        assert_eq!((w1, s1), (vec![3.0, 0.0, -1.0, 1.0], vec![2, 2]));
        assert_eq!((w2, s2), (vec![2.0, 4.0, 6.0, 8.0], vec![2, 2]));
    }
}
