//! Tensor helpers shared by the inference network ([`super::model`]) and the training graph
//! ([`super::train`]): activations, pooling with padding, preprocessing factors. Pure functions
//! called on whatever thread runs the forward pass.

use candle_core::{DType, Result, Tensor, D};

use super::spec::{GeluApproximate, InputSpec, Layer, PoolSpec};

/// Applies a parameter-free activation layer; `None` for any other layer type.
pub(crate) fn activation(layer: &Layer, x: &Tensor) -> Option<Result<Tensor>> {
    Some(match layer {
        Layer::Relu(_) => x.relu(),
        Layer::Relu6(_) => x.clamp(0f32, 6f32),
        Layer::Gelu(g) => match g.approximate {
            GeluApproximate::None => x.gelu_erf(),
            GeluApproximate::Tanh => x.gelu(),
        },
        Layer::Sigmoid(_) => candle_nn::ops::sigmoid(x),
        Layer::Tanh(_) => x.tanh(),
        _ => return None,
    })
}

/// Pads dims 2 and 3 of an NCHW tensor with `value`.
fn pad_hw(x: &Tensor, ph: usize, pw: usize, value: f32) -> Result<Tensor> {
    if ph == 0 && pw == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw);
    }
    let (n, c, h, w) = x.dims4()?;
    let mut x = x.clone();
    if ph > 0 {
        let band = Tensor::full(value, (n, c, ph, w), x.device())?.to_dtype(x.dtype())?;
        x = Tensor::cat(&[&band, &x, &band], 2)?;
    }
    if pw > 0 {
        let band = Tensor::full(value, (n, c, h + 2 * ph, pw), x.device())?.to_dtype(x.dtype())?;
        x = Tensor::cat(&[&band, &x, &band], 3)?;
    }
    Ok(x)
}

/// Zero-pads dims 2 and 3 (used for convolutions with non-square padding).
pub(crate) fn zero_pad_hw(x: &Tensor, ph: usize, pw: usize) -> Result<Tensor> {
    pad_hw(x, ph, pw, 0.0)
}

/// Max or average pooling with PyTorch semantics (floor mode, −∞ / zero padding counted in the
/// average). With `differentiable`, the result also has correct gradients: candle's pooling
/// backward is only right for average pooling whose stride equals the kernel and whose input
/// divides evenly (and its max-pool gradient is scaled by 1/k²), so other cases are built from
/// reshapes, or from strided slices combined with `maximum` / `add`.
pub(crate) fn pool2d(x: &Tensor, p: &PoolSpec, max: bool, differentiable: bool) -> Result<Tensor> {
    let k = (p.kernel_size.0, p.kernel_size.1);
    let s = p.stride();
    let s = (s.0, s.1);
    let fill = if max { f32::NEG_INFINITY } else { 0.0 };
    let x = pad_hw(x, p.padding.0, p.padding.1, fill)?;
    let (_, _, h, w) = x.dims4()?;
    let oh = (h - k.0) / s.0 + 1;
    let ow = (w - k.1) / s.1 + 1;
    if !differentiable {
        return if max { x.max_pool2d_with_stride(k, s) } else { x.avg_pool2d_with_stride(k, s) };
    }
    if k == s {
        // Non-overlapping windows: crop what floor mode ignores, then one reduction. (candle's
        // own max-pool backward scales the gradient by 1/k², so max uses a reshape + max.)
        let x = x.narrow(2, 0, oh * k.0)?.narrow(3, 0, ow * k.1)?;
        return if max {
            let (n, c) = (x.dim(0)?, x.dim(1)?);
            x.reshape((n, c, oh, k.0, ow, k.1))?.max(5)?.max(3)
        } else {
            x.avg_pool2d(k)
        };
    }
    let mut acc: Option<Tensor> = None;
    for i in 0..k.0 {
        let rows = strided(&x, 2, i, oh, s.0)?;
        for j in 0..k.1 {
            let win = strided(&rows, 3, j, ow, s.1)?;
            acc = Some(match acc {
                None => win,
                Some(a) if max => a.maximum(&win)?,
                Some(a) => (a + win)?,
            });
        }
    }
    let acc = acc.expect("kernel sizes are positive");
    if max {
        Ok(acc)
    } else {
        acc.affine(1.0 / (k.0 * k.1) as f64, 0.0)
    }
}

/// Elements `start, start + step, ..., start + (count - 1) * step` along `dim` (differentiable).
fn strided(x: &Tensor, dim: usize, start: usize, count: usize, step: usize) -> Result<Tensor> {
    let span = (count - 1) * step + 1;
    let t = x.narrow(dim, start, span)?;
    if step == 1 {
        return Ok(t);
    }
    let t = t.pad_with_zeros(dim, 0, step - 1)?;
    let mut dims = t.dims().to_vec();
    dims[dim] = count;
    dims.insert(dim + 1, step);
    t.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

/// Mean over every dim after the channel dim: `[N, C, ...]` → `[N, C]`.
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    x.reshape((n, c, ()))?.mean(D::Minus1)
}

/// Per-channel `x * a + b` factors of the preprocessing, or `None` when it is the identity.
pub(crate) fn preprocess_factors(input: &InputSpec) -> Option<(Vec<f32>, Vec<f32>)> {
    let pre = input.preprocess.as_ref()?;
    let channels = input.shape[0];
    let pick = |v: &[f64], i: usize, default: f64| match v.len() {
        0 => default,
        1 => v[0],
        _ => v[i],
    };
    let mut a = Vec::with_capacity(channels);
    let mut b = Vec::with_capacity(channels);
    for c in 0..channels {
        let mean = pick(&pre.mean, c, 0.0);
        let std = pick(&pre.std, c, 1.0);
        a.push((pre.scale / std) as f32);
        b.push((-mean / std) as f32);
    }
    Some((a, b))
}

/// Preprocessing as a reusable operation on `[N, ...input.shape]` tensors.
#[derive(Debug, Clone)]
pub(crate) enum Preprocessor {
    /// Only the conversion to f32.
    Identity,
    /// Same factors for every channel.
    Scalar(f64, f64),
    /// Per-channel factors shaped `[C, 1, ...]` to broadcast over a batch.
    Channel(Tensor, Tensor),
}

impl Preprocessor {
    pub(crate) fn new(input: &InputSpec) -> Result<Self> {
        let Some((a, b)) = preprocess_factors(input) else {
            return Ok(Self::Identity);
        };
        if a.iter().all(|v| *v == a[0]) && b.iter().all(|v| *v == b[0]) {
            return Ok(Self::Scalar(a[0] as f64, b[0] as f64));
        }
        let mut shape = vec![1usize; input.shape.len()];
        shape[0] = input.shape[0];
        let dev = candle_core::Device::Cpu;
        Ok(Self::Channel(Tensor::from_vec(a, shape.as_slice(), &dev)?, Tensor::from_vec(b, shape.as_slice(), &dev)?))
    }

    /// Converts a raw batch to preprocessed f32.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let x = if x.dtype() == DType::F32 { x.clone() } else { x.to_dtype(DType::F32)? };
        match self {
            Self::Identity => Ok(x),
            Self::Scalar(a, b) => x.affine(*a, *b),
            Self::Channel(a, b) => x.broadcast_mul(a)?.broadcast_add(b),
        }
    }
}
