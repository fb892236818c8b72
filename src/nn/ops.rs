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

/// 2D convolution of an NCHW tensor with PyTorch semantics (`padding` per side for H and W).
///
/// Depthwise convolutions (groups = input channels = output channels, the MobileNet block's
/// first half) do not go through candle's grouped convolution, which runs one tiny convolution
/// per group (see [`super::depthwise`]); the engine computes in f32 on the CPU, which is what
/// that module's kernels take (anything else falls through to candle). Other convolutions that need a gradient (training) go through [`super::conv`]'s own backward
/// (right on strided non-square inputs, no input gradient for the data); inference calls
/// candle's convolution directly.
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: (usize, usize),
    stride: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let (c_out, c_in_per_group, _, _) = w.dims4()?;
    let depthwise = groups > 1 && c_in_per_group == 1 && c_out == groups && x.dim(1)? == groups;
    if depthwise && super::depthwise::supported(x, w) {
        return super::depthwise::conv2d(x, w, padding, stride, dilation);
    }
    if (x.track_op() || w.track_op()) && super::conv::supported(x, w) {
        // Training: candle's own backward fails on strided non-square inputs.
        let x = zero_pad_hw(x, padding.0, padding.1)?;
        if groups == 1 {
            return super::conv::conv2d(&x, w, stride, dilation);
        }
        let (xs, ws) = (x.chunk(groups, 1)?, w.chunk(groups, 0)?);
        let ys =
            xs.iter().zip(&ws).map(|(x, w)| super::conv::conv2d(x, w, stride, dilation)).collect::<Result<Vec<_>>>()?;
        return Tensor::cat(&ys, 1);
    }
    if padding.0 == padding.1 {
        x.conv2d(w, padding.0, stride, dilation, groups)
    } else {
        zero_pad_hw(x, padding.0, padding.1)?.conv2d(w, 0, stride, dilation, groups)
    }
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    /// candle's grouped convolution, the reference the depthwise path must reproduce.
    fn reference(x: &Tensor, w: &Tensor, padding: (usize, usize), stride: usize, dilation: usize) -> Tensor {
        let c = w.dim(0).unwrap();
        zero_pad_hw(x, padding.0, padding.1).unwrap().conv2d(w, 0, stride, dilation, c).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Plain loops: the gradients of `Σ up · depthwise(x, w)` with respect to x and w.
    #[allow(clippy::too_many_arguments)]
    fn naive_grads(
        x: &Tensor,
        w: &Tensor,
        up: &Tensor,
        padding: (usize, usize),
        stride: usize,
        dilation: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let (n, c, h, wd) = x.dims4().unwrap();
        let (_, _, kh, kw) = w.dims4().unwrap();
        let (_, _, oh, ow) = up.dims4().unwrap();
        let (xv, wv, uv) = (
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            up.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let (mut gx, mut gw) = (vec![0f32; xv.len()], vec![0f32; wv.len()]);
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let u = uv[((b * c + ch) * oh + oy) * ow + ox];
                        for i in 0..kh {
                            for j in 0..kw {
                                let (py, px) = (oy * stride + i * dilation, ox * stride + j * dilation);
                                if py < padding.0 || px < padding.1 || py - padding.0 >= h || px - padding.1 >= wd {
                                    continue; // a zero of the padding
                                }
                                let xi = ((b * c + ch) * h + py - padding.0) * wd + px - padding.1;
                                let wi = (ch * kh + i) * kw + j;
                                gw[wi] += u * xv[xi];
                                gx[xi] += u * wv[wi];
                            }
                        }
                    }
                }
            }
        }
        (gx, gw)
    }

    fn close(a: &Tensor, b: &[f32], tol: f32) -> bool {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn depthwise_matches_grouped_convolution_and_its_gradients() {
        let dev = Device::Cpu;
        // (kernel h, kernel w, padding, stride, dilation, input h, input w)
        let cases = [
            (3, 3, (1, 1), 1, 1, 7, 7),
            (3, 3, (0, 0), 1, 1, 6, 5),
            (3, 3, (1, 1), 2, 1, 8, 7),
            (5, 3, (2, 0), 1, 1, 6, 6),
            (3, 3, (2, 2), 1, 2, 5, 6),
            (1, 1, (0, 0), 2, 1, 5, 5),
        ];
        for (n, &(kh, kw, padding, stride, dilation, h, wd)) in cases.iter().enumerate() {
            let c = 3 + n % 2;
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, c, h, wd), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (c, 1, kh, kw), &dev).unwrap()).unwrap();
            let slow = reference(&x.as_tensor().detach(), &w.as_tensor().detach(), padding, stride, dilation);
            let (xt, wt) = (x.as_tensor(), w.as_tensor());
            let fast = conv2d(xt, wt, padding, stride, dilation, c).unwrap();
            assert!(max_diff(&fast, &slow) < 1e-5, "case {n}: forward differs from candle's grouped conv");
            // Gradients against plain loops (candle's own grouped-conv backward fails on strided
            // non-square inputs: its transposed convolution comes out one column short).
            let up = Tensor::randn(0f32, 1.0, fast.dims(), &dev).unwrap();
            let grads = (fast * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (gx, gw) = naive_grads(xt, wt, &up, padding, stride, dilation);
            assert!(close(grads.get(xt).unwrap(), &gx, 1e-4), "case {n}: gradient wrt x differs");
            assert!(close(grads.get(wt).unwrap(), &gw, 1e-4), "case {n}: gradient wrt w differs");
        }
        // Non-contiguous input (a transposed view) goes through the custom op too.
        let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 5), &dev).unwrap().transpose(2, 3).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 1, 3, 3), &dev).unwrap();
        let y = conv2d(&x, &w, (1, 1), 1, 1, 3).unwrap();
        assert!(max_diff(&y, &reference(&x, &w, (1, 1), 1, 1)) < 1e-5);
    }

    #[test]
    fn other_convolutions_keep_candles_path_and_bad_shapes_fail_cleanly() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1, 4, 5, 5), &dev).unwrap();
        // Grouped but not depthwise (2 groups of 2 channels), and a channel multiplier of 2.
        for (w_shape, groups) in [((4, 2, 3, 3), 2), ((8, 1, 3, 3), 4)] {
            let w = Tensor::randn(0f32, 1.0, w_shape, &dev).unwrap();
            let y = conv2d(&x, &w, (1, 1), 1, 1, groups).unwrap();
            let r = x.conv2d(&w, 1, 1, 1, groups).unwrap();
            assert_eq!(max_diff(&y, &r), 0.0);
        }
        // A kernel wider than the padded input is an error, not a panic.
        let w = Tensor::randn(0f32, 1.0, (4, 1, 7, 7), &dev).unwrap();
        assert!(conv2d(&x, &w, (0, 0), 1, 1, 4).is_err());
    }

    #[test]
    fn strided_convolution_trains_on_non_square_inputs() {
        // candle's backward fails here ("shape mismatch in add"). One channel and groups 1: the
        // same arithmetic as a depthwise convolution, so the loop reference applies.
        let dev = Device::Cpu;
        for (h, wd, padding) in [(8, 7, (1, 1)), (6, 9, (0, 1)), (9, 9, (1, 0))] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 1, h, wd), &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 1, 3, 3), &dev).unwrap()).unwrap();
            let y = conv2d(x.as_tensor(), w.as_tensor(), padding, 2, 1, 1).unwrap();
            let plain = zero_pad_hw(&x.as_tensor().detach(), padding.0, padding.1)
                .unwrap()
                .conv2d(&w.as_tensor().detach(), 0, 2, 1, 1)
                .unwrap();
            assert!(max_diff(&y, &plain) < 1e-5, "{h}x{wd}: forward differs");
            let up = Tensor::randn(0f32, 1.0, y.dims(), &dev).unwrap();
            let grads = (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (gx, gw) = naive_grads(x.as_tensor(), w.as_tensor(), &up, padding, 2, 1);
            assert!(close(grads.get(x.as_tensor()).unwrap(), &gx, 1e-4), "{h}x{wd}: gradient wrt x differs");
            assert!(close(grads.get(w.as_tensor()).unwrap(), &gw, 1e-4), "{h}x{wd}: gradient wrt w differs");
            // A stem convolution reads raw data that needs no gradient; candle's backward still
            // builds the input's gradient, so it needs the same detour.
            let raw = x.as_tensor().detach();
            let y = conv2d(&raw, w.as_tensor(), padding, 2, 1, 1).unwrap();
            let grads = (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(close(grads.get(w.as_tensor()).unwrap(), &gw, 1e-4), "{h}x{wd}: stem kernel gradient differs");
        }
    }

    #[test]
    fn training_convolutions_match_candles_gradients() {
        // Square inputs, where candle's own (slow) backward is right: the fast backward of
        // `conv::Conv` must give the same input and kernel gradients.
        let dev = Device::Cpu;
        // (in, out, kh, kw, padding, stride, dilation, groups, size)
        let cases = [
            (3, 4, 3, 3, 1, 1, 1, 1, 6),
            (3, 4, 3, 3, 1, 2, 1, 1, 7),
            (2, 5, 3, 3, 2, 1, 2, 1, 6),
            (2, 3, 5, 5, 2, 2, 1, 1, 9),
            (3, 2, 3, 1, 1, 1, 1, 1, 5),
            (4, 6, 3, 3, 1, 1, 1, 2, 6),
            (1, 4, 3, 3, 0, 3, 1, 1, 8),
        ];
        for (n, &(ci, co, kh, kw, p, stride, dilation, groups, size)) in cases.iter().enumerate() {
            let xv = Tensor::randn(0f32, 1.0, (2, ci, size, size), &dev).unwrap();
            let wv = Tensor::randn(0f32, 1.0, (co, ci / groups, kh, kw), &dev).unwrap();
            let (x, w) = (Var::from_tensor(&xv).unwrap(), Var::from_tensor(&wv).unwrap());
            let (x2, w2) = (Var::from_tensor(&xv).unwrap(), Var::from_tensor(&wv).unwrap());
            let ours = conv2d(x.as_tensor(), w.as_tensor(), (p, p), stride, dilation, groups).unwrap();
            let theirs = x2.as_tensor().conv2d(w2.as_tensor(), p, stride, dilation, groups).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-4, "case {n}: forward differs");
            let up = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g1 = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x2.as_tensor()).unwrap());
            let dw = max_diff(g1.get(w.as_tensor()).unwrap(), g2.get(w2.as_tensor()).unwrap());
            assert!(dx < 1e-3 && dw < 1e-3, "case {n}: gradients differ by {dx} (input) / {dw} (kernel)");
            // A stem reading data: no input gradient is computed, the kernel's is the same.
            let stem = conv2d(&xv, w.as_tensor(), (p, p), stride, dilation, groups).unwrap();
            let g3 = (stem * &up).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(g3.get(w.as_tensor()).unwrap(), g2.get(w2.as_tensor()).unwrap()) < 1e-3);
        }
    }
}
