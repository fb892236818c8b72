//! The `format: "sparse"` artifact encoding: the compressed-tensors "sparse-bitmask" layout.
//!
//! Called by the pruning job when it writes a sparse artifact, and by the model loader when
//! it reads one back; serial, on the calling thread, one tensor at a time.
//!
//! A tensor `NAME` of shape `S` (ndim ≥ 0) is viewed as `rows × cols` with
//! `cols = S[last]` (1 for a scalar) and `rows = product of the other dims` (1 for rank ≤ 1),
//! and stored as four safetensors entries:
//!
//! | name | dtype | shape | content |
//! |---|---|---|---|
//! | `NAME.compressed` | original (F32, F16, BF16) | `[nnz]` | stored values, row-major order |
//! | `NAME.bitmask` | U8 | `[rows, ceil(cols/8)]` | bit `j` (LSB = 0) of byte `b`, row `r`: `(r, 8b+j)` stored |
//! | `NAME.shape` | I64 | `[ndim]` | the dense shape |
//! | `NAME.row_offsets` | I64 | `[rows]` | index in `compressed` of each row's first value |
//!
//! The bit order is numpy's `packbits(..., axis=-1, bitorder="little")`, as in
//! compressed-tensors. Unlike compressed-tensors, which tests `value != 0` and so turns
//! -0.0 into +0.0, a value is stored when its *bits* are not all zero: -0.0 is stored and
//! the round trip is bit-exact. Any compressed-tensors decoder still reconstructs it (it
//! scatters stored values wherever a bit is set). Also unlike compressed-tensors, which
//! drops a trailing `.weight`, the full tensor name is kept as the prefix so that every
//! tensor (weights, biases, embeddings) maps to distinct names.

use half::{bf16, f16};

use super::{check_shape, PruneError};

/// Suffixes of the four entries of one sparse tensor.
pub const SUFFIXES: [&str; 4] = [".compressed", ".bitmask", ".shape", ".row_offsets"];

/// Element types the sparse format stores (values are kept in their original dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueDType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl ValueDType {
    /// The safetensors dtype code.
    pub fn code(self) -> &'static str {
        match self {
            ValueDType::F32 => "F32",
            ValueDType::F16 => "F16",
            ValueDType::BF16 => "BF16",
        }
    }

    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            ValueDType::F32 => 4,
            ValueDType::F16 | ValueDType::BF16 => 2,
        }
    }

    /// Parses a safetensors dtype code; other codes are `UnsupportedDtype`.
    pub fn from_code(tensor: &str, code: &str) -> Result<Self, PruneError> {
        match code {
            "F32" => Ok(ValueDType::F32),
            "F16" => Ok(ValueDType::F16),
            "BF16" => Ok(ValueDType::BF16),
            other => Err(PruneError::UnsupportedDtype { tensor: tensor.to_owned(), dtype: other.to_owned() }),
        }
    }
}

/// One safetensors entry produced by [`encode`]: write it as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparsePart {
    /// Entry name, `NAME` plus one of [`SUFFIXES`].
    pub name: String,
    /// safetensors dtype code: the value dtype, `"U8"` or `"I64"`.
    pub dtype: &'static str,
    /// Entry shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub bytes: Vec<u8>,
}

/// A borrowed safetensors entry (e.g. from an mmap) handed to [`decode`].
#[derive(Debug, Clone, Copy)]
pub struct PartView<'a> {
    /// safetensors dtype code.
    pub dtype: &'a str,
    /// Entry shape.
    pub shape: &'a [usize],
    /// Little-endian bytes.
    pub bytes: &'a [u8],
}

/// The four entries of one sparse tensor.
#[derive(Debug, Clone, Copy)]
pub struct SparseView<'a> {
    /// `NAME.compressed`.
    pub compressed: PartView<'a>,
    /// `NAME.bitmask`.
    pub bitmask: PartView<'a>,
    /// `NAME.shape`.
    pub shape: PartView<'a>,
    /// `NAME.row_offsets`.
    pub row_offsets: PartView<'a>,
}

impl<'a> SparseView<'a> {
    /// Picks the entries of tensor `name` out of `parts` (e.g. the output of [`encode`]).
    pub fn from_parts(name: &str, parts: &'a [SparsePart]) -> Result<Self, PruneError> {
        let find = |suffix: &str| {
            let full = format!("{name}{suffix}");
            parts
                .iter()
                .find(|p| p.name == full)
                .map(|p| PartView { dtype: p.dtype, shape: &p.shape, bytes: &p.bytes })
                .ok_or_else(|| format_err(name, format!("entry {full} is missing")))
        };
        Ok(Self {
            compressed: find(SUFFIXES[0])?,
            bitmask: find(SUFFIXES[1])?,
            shape: find(SUFFIXES[2])?,
            row_offsets: find(SUFFIXES[3])?,
        })
    }
}

/// If `entry` is one of the four sparse entries, the tensor name it belongs to.
pub fn base_name(entry: &str) -> Option<&str> {
    SUFFIXES.iter().find_map(|s| entry.strip_suffix(s))
}

/// A decoded dense tensor in its stored dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseTensor {
    /// Value dtype.
    pub dtype: ValueDType,
    /// Dense shape.
    pub shape: Vec<usize>,
    /// Row-major little-endian bytes.
    pub bytes: Vec<u8>,
}

/// Encodes an f32 tensor of `shape`.
pub fn encode(tensor: &str, data: &[f32], shape: &[usize]) -> Result<Vec<SparsePart>, PruneError> {
    check_shape(tensor, shape, data.len())?;
    Ok(encode_iter(tensor, shape, ValueDType::F32, data.iter().map(|w| w.to_bits()), |b, out| {
        out.extend_from_slice(&b.to_le_bytes())
    }))
}

/// Encodes an f16 tensor of `shape`.
pub fn encode_f16(tensor: &str, data: &[f16], shape: &[usize]) -> Result<Vec<SparsePart>, PruneError> {
    check_shape(tensor, shape, data.len())?;
    Ok(encode_iter(tensor, shape, ValueDType::F16, data.iter().map(|w| w.to_bits()), |b, out| {
        out.extend_from_slice(&b.to_le_bytes())
    }))
}

/// Encodes a bf16 tensor of `shape`.
pub fn encode_bf16(tensor: &str, data: &[bf16], shape: &[usize]) -> Result<Vec<SparsePart>, PruneError> {
    check_shape(tensor, shape, data.len())?;
    Ok(encode_iter(tensor, shape, ValueDType::BF16, data.iter().map(|w| w.to_bits()), |b, out| {
        out.extend_from_slice(&b.to_le_bytes())
    }))
}

/// Encodes raw little-endian bytes of an F32 / F16 / BF16 tensor (e.g. straight from a
/// safetensors mmap, without converting).
pub fn encode_raw(
    tensor: &str,
    dtype: ValueDType,
    bytes: &[u8],
    shape: &[usize],
) -> Result<Vec<SparsePart>, PruneError> {
    let width = dtype.width();
    if bytes.len() % width != 0 {
        return Err(format_err(
            tensor,
            format!("{} bytes is not a whole number of {} elements", bytes.len(), dtype.code()),
        ));
    }
    check_shape(tensor, shape, bytes.len() / width)?;
    let chunks = bytes.chunks_exact(width);
    Ok(match width {
        4 => {
            encode_iter(tensor, shape, dtype, chunks.map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])), |b, out| {
                out.extend_from_slice(&b.to_le_bytes())
            })
        }
        _ => encode_iter(tensor, shape, dtype, chunks.map(|c| u16::from_le_bytes([c[0], c[1]])), |b, out| {
            out.extend_from_slice(&b.to_le_bytes())
        }),
    })
}

/// `rows × cols` view of a dense shape.
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        None => (1, 1),
        Some((&cols, lead)) => (lead.iter().product(), cols),
    }
}

/// Core encoder over the raw bit patterns of the elements (`u32` or `u16`); the caller has
/// checked that `bits` yields exactly `product(shape)` items.
fn encode_iter<B, I, P>(tensor: &str, shape: &[usize], dtype: ValueDType, mut bits: I, put: P) -> Vec<SparsePart>
where
    B: Copy + PartialEq + Default,
    I: Iterator<Item = B>,
    P: Fn(B, &mut Vec<u8>),
{
    let (rows, cols) = rows_cols(shape);
    let row_bytes = cols.div_ceil(8);
    let mut bitmask = vec![0u8; rows * row_bytes];
    let mut offsets = Vec::with_capacity(rows * 8);
    // Sized for ~25 % density; grows if denser.
    let mut values = Vec::with_capacity(rows * cols * dtype.width() / 4);
    let zero = B::default();
    let mut nnz: u64 = 0;
    for mask_row in bitmask.chunks_exact_mut(row_bytes.max(1)).take(rows) {
        offsets.extend_from_slice(&(nnz as i64).to_le_bytes());
        for (b, byte) in mask_row.iter_mut().enumerate().take(row_bytes) {
            let n = (cols - 8 * b).min(8);
            let mut m = 0u8;
            for j in 0..n {
                let v = bits.next().expect("the caller checked the element count");
                if v != zero {
                    m |= 1 << j;
                    put(v, &mut values);
                }
            }
            nnz += u64::from(m.count_ones());
            *byte = m;
        }
    }
    // Rows of zero columns own no bytes in `bitmask` but still get an offset.
    if row_bytes == 0 {
        for _ in 0..rows {
            offsets.extend_from_slice(&0i64.to_le_bytes());
        }
    }
    let shape_bytes: Vec<u8> = shape.iter().flat_map(|&d| (d as i64).to_le_bytes()).collect();
    vec![
        SparsePart {
            name: format!("{tensor}{}", SUFFIXES[0]),
            dtype: dtype.code(),
            shape: vec![nnz as usize],
            bytes: values,
        },
        SparsePart {
            name: format!("{tensor}{}", SUFFIXES[1]),
            dtype: "U8",
            shape: vec![rows, row_bytes],
            bytes: bitmask,
        },
        SparsePart {
            name: format!("{tensor}{}", SUFFIXES[2]),
            dtype: "I64",
            shape: vec![shape.len()],
            bytes: shape_bytes,
        },
        SparsePart { name: format!("{tensor}{}", SUFFIXES[3]), dtype: "I64", shape: vec![rows], bytes: offsets },
    ]
}

fn format_err(tensor: &str, detail: String) -> PruneError {
    PruneError::SparseFormat { tensor: tensor.to_owned(), detail }
}

fn check_part(
    tensor: &str,
    what: &str,
    part: &PartView<'_>,
    dtype: &str,
    shape: &[usize],
    width: usize,
) -> Result<(), PruneError> {
    if part.dtype != dtype {
        return Err(format_err(tensor, format!("{what} has dtype {}, expected {dtype}", part.dtype)));
    }
    if part.shape != shape {
        return Err(format_err(tensor, format!("{what} has shape {:?}, expected {shape:?}", part.shape)));
    }
    let expected = shape.iter().product::<usize>() * width;
    if part.bytes.len() != expected {
        return Err(format_err(tensor, format!("{what} has {} bytes, expected {expected}", part.bytes.len())));
    }
    Ok(())
}

fn read_i64s(bytes: &[u8]) -> impl Iterator<Item = i64> + '_ {
    bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks_exact(8) yields 8-byte slices")))
}

/// Decodes one sparse tensor back to dense bytes in its stored dtype; bit-exact inverse of
/// the encoders. Every entry is validated (dtypes, shapes, offsets, padding bits, counts).
pub fn decode(tensor: &str, view: &SparseView<'_>) -> Result<DenseTensor, PruneError> {
    let dtype = ValueDType::from_code(tensor, view.compressed.dtype)?;
    let width = dtype.width();

    let ndim = match view.shape.shape {
        [n] => *n,
        other => return Err(format_err(tensor, format!("shape entry must be 1-D, got shape {other:?}"))),
    };
    check_part(tensor, "shape entry", &view.shape, "I64", &[ndim], 8)?;
    let shape = read_i64s(view.shape.bytes)
        .map(|d| usize::try_from(d).map_err(|_| format_err(tensor, format!("negative dimension {d}"))))
        .collect::<Result<Vec<usize>, _>>()?;
    let len = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format_err(tensor, format!("shape {shape:?} is too large")))?;
    let (rows, cols) = rows_cols(&shape);
    let row_bytes = cols.div_ceil(8);
    check_part(tensor, "bitmask", &view.bitmask, "U8", &[rows, row_bytes], 1)?;
    check_part(tensor, "row_offsets", &view.row_offsets, "I64", &[rows], 8)?;
    let nnz = match view.compressed.shape {
        [n] => *n,
        other => return Err(format_err(tensor, format!("compressed values must be 1-D, got shape {other:?}"))),
    };
    check_part(tensor, "compressed values", &view.compressed, dtype.code(), &[nnz], width)?;

    let values = view.compressed.bytes;
    let mut out = vec![0u8; len * width];
    let mut cursor = 0usize; // index of the next stored value
    let tail_bits = cols % 8;
    let mut offsets = read_i64s(view.row_offsets.bytes);
    for r in 0..rows {
        let offset = offsets.next().expect("row_offsets has `rows` entries (checked)");
        if offset != cursor as i64 {
            return Err(format_err(
                tensor,
                format!("row_offsets[{r}] is {offset} but the bitmask places row {r} at {cursor}"),
            ));
        }
        let mask_row = &view.bitmask.bytes[r * row_bytes..(r + 1) * row_bytes];
        if let (Some(&last), true) = (mask_row.last(), tail_bits != 0) {
            if last >> tail_bits != 0 {
                return Err(format_err(tensor, format!("bitmask row {r} has bits set past column {cols}")));
            }
        }
        let row_count: usize = mask_row.iter().map(|b| b.count_ones() as usize).sum();
        if cursor + row_count > nnz {
            return Err(format_err(tensor, format!("the bitmask marks more elements than the {nnz} stored values")));
        }
        let dense_row = &mut out[r * cols * width..(r + 1) * cols * width];
        for (b, &byte) in mask_row.iter().enumerate() {
            let mut m = byte;
            while m != 0 {
                let j = m.trailing_zeros() as usize;
                m &= m - 1;
                let at = (8 * b + j) * width;
                dense_row[at..at + width].copy_from_slice(&values[cursor * width..(cursor + 1) * width]);
                cursor += 1;
            }
        }
    }
    if cursor != nnz {
        return Err(format_err(tensor, format!("{nnz} values are stored but the bitmask marks {cursor}")));
    }
    Ok(DenseTensor { dtype, shape, bytes: out })
}

/// [`decode`] to f32 (F16 / BF16 values are widened, which is exact).
pub fn decode_f32(tensor: &str, view: &SparseView<'_>) -> Result<(Vec<f32>, Vec<usize>), PruneError> {
    let dense = decode(tensor, view)?;
    let b = &dense.bytes;
    let data = match dense.dtype {
        ValueDType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        ValueDType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        ValueDType::BF16 => b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    };
    Ok((data, dense.shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn sparse_random(seed: u64, n: usize, density: f64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                if rng.random_bool(density) {
                    rng.random_range(0.01f32..1.0) * if rng.random_bool(0.5) { -1.0 } else { 1.0 }
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn round_trip(name: &str, data: &[f32], shape: &[usize]) -> Vec<SparsePart> {
        let parts = encode(name, data, shape).unwrap();
        let view = SparseView::from_parts(name, &parts).unwrap();
        let (back, back_shape) = decode_f32(name, &view).unwrap();
        assert_eq!(back_shape, shape);
        let a: Vec<u32> = data.iter().map(|w| w.to_bits()).collect();
        let b: Vec<u32> = back.iter().map(|w| w.to_bits()).collect();
        assert_eq!(a, b, "bit-exact round trip of {name}");
        parts
    }

    fn total_bytes(parts: &[SparsePart]) -> usize {
        parts.iter().map(|p| p.bytes.len()).sum()
    }

    #[test]
    fn layout_of_a_small_tensor() {
        // 2 × 10: row 0 has values at 0, 3, 9; row 1 at 8.
        let mut d = vec![0.0f32; 20];
        d[0] = 1.0;
        d[3] = -2.0;
        d[9] = 3.0;
        d[18] = 4.0;
        let parts = round_trip("fc1.weight", &d, &[2, 10]);
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["fc1.weight.compressed", "fc1.weight.bitmask", "fc1.weight.shape", "fc1.weight.row_offsets"]
        );
        assert_eq!((parts[0].dtype, parts[0].shape.clone()), ("F32", vec![4]));
        let vals: Vec<f32> = parts[0].bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(vals, vec![1.0, -2.0, 3.0, 4.0]);
        assert_eq!((parts[1].dtype, parts[1].shape.clone()), ("U8", vec![2, 2]));
        // numpy.packbits(bitorder="little"): element 8b+j is bit j of byte b.
        assert_eq!(parts[1].bytes, vec![0b0000_1001, 0b0000_0010, 0b0000_0000, 0b0000_0001]);
        assert_eq!((parts[2].dtype, parts[2].shape.clone()), ("I64", vec![2]));
        assert_eq!(parts[2].bytes, [2i64.to_le_bytes(), 10i64.to_le_bytes()].concat());
        assert_eq!((parts[3].dtype, parts[3].shape.clone()), ("I64", vec![2]));
        assert_eq!(parts[3].bytes, [0i64.to_le_bytes(), 3i64.to_le_bytes()].concat());
        assert_eq!(base_name("fc1.weight.row_offsets"), Some("fc1.weight"));
        assert_eq!(base_name("fc1.weight"), None);
    }

    #[test]
    fn round_trips_are_bit_exact_including_negative_zero() {
        let mut d = sparse_random(1, 3 * 17, 0.3);
        d[5] = -0.0;
        d[6] = f32::from_bits(1); // smallest subnormal
        d[7] = f32::INFINITY;
        d[8] = f32::NAN;
        let parts = round_trip("t", &d, &[3, 17]);
        assert_eq!(parts[0].shape[0], d.iter().filter(|w| w.to_bits() != 0).count());
        for shape in [&[51usize][..], &[1, 3, 17], &[3, 1, 17]] {
            round_trip("t", &d, shape);
        }
        round_trip("scalar", &[2.5], &[]);
        round_trip("scalar0", &[0.0], &[]);
        round_trip("empty", &[], &[0, 4]);
        round_trip("nocols", &[], &[3, 0]);
        round_trip("dense", &sparse_random(2, 64, 1.0), &[8, 8]);
        round_trip("zeros", &[0.0; 64], &[8, 8]);
    }

    #[test]
    fn ninety_percent_sparse_f32_is_about_13_percent_of_dense() {
        let (rows, cols) = (256, 1024);
        let d = sparse_random(3, rows * cols, 0.1);
        let parts = round_trip("w", &d, &[rows, cols]);
        let ratio = total_bytes(&parts) as f64 / (rows * cols * 4) as f64;
        assert!((0.13..=0.15).contains(&ratio), "ratio {ratio}");
    }

    #[test]
    fn f16_and_bf16_round_trip() {
        let d = sparse_random(4, 40 * 24, 0.1);
        let h: Vec<f16> = d.iter().map(|&w| f16::from_f32(w)).collect();
        let mut h2 = h.clone();
        h2[1] = f16::NEG_ZERO;
        let parts = encode_f16("h", &h2, &[40, 24]).unwrap();
        assert_eq!(parts[0].dtype, "F16");
        let dense = decode("h", &SparseView::from_parts("h", &parts).unwrap()).unwrap();
        let expect: Vec<u8> = h2.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dense.bytes, expect);
        let (f, _) = decode_f32("h", &SparseView::from_parts("h", &parts).unwrap()).unwrap();
        assert_eq!(f[1].to_bits(), (-0.0f32).to_bits());
        // f16 at 90 % sparsity: 10 % values + 6.25 % bitmask (+ 0.8 % row offsets here).
        let wide: Vec<f16> = sparse_random(6, 64 * 512, 0.1).iter().map(|&w| f16::from_f32(w)).collect();
        let ratio = total_bytes(&encode_f16("h", &wide, &[64, 512]).unwrap()) as f64 / (wide.len() * 2) as f64;
        assert!((0.15..0.19).contains(&ratio), "ratio {ratio}");

        let b: Vec<bf16> = d.iter().map(|&w| bf16::from_f32(w)).collect();
        let parts = encode_bf16("b", &b, &[40, 24]).unwrap();
        let (f, shape) = decode_f32("b", &SparseView::from_parts("b", &parts).unwrap()).unwrap();
        assert_eq!(shape, vec![40, 24]);
        assert!(f.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_f32().to_bits()));

        // Raw bytes give the same parts as typed input.
        let raw: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(encode_raw("h", ValueDType::F16, &raw, &[40, 24]).unwrap(), encode_f16("h", &h, &[40, 24]).unwrap());
        let raw: Vec<u8> = d.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(encode_raw("w", ValueDType::F32, &raw, &[40, 24]).unwrap(), encode("w", &d, &[40, 24]).unwrap());
        assert!(encode_raw("w", ValueDType::F32, &raw[..5], &[1]).is_err());
    }

    #[test]
    fn corrupt_inputs_are_rejected() {
        let d = sparse_random(5, 4 * 12, 0.5);
        let parts = encode("w", &d, &[4, 12]).unwrap();
        let check = |mutate: &dyn Fn(&mut Vec<SparsePart>), needle: &str| {
            let mut p = parts.clone();
            mutate(&mut p);
            let e = SparseView::from_parts("w", &p).and_then(|v| decode("w", &v)).unwrap_err();
            assert!(e.to_string().contains(needle), "{e} should mention {needle}");
            assert!(e.to_string().starts_with("tensor w: "), "{e}");
        };
        check(&|p| p.truncate(3), "entry w.row_offsets is missing");
        check(&|p| p[0].dtype = "I32", "dtype I32 is not supported");
        check(&|p| p[1].dtype = "I64", "bitmask has dtype I64");
        check(&|p| p[1].bytes[1] |= 0x80, "bits set past column 12");
        check(&|p| p[1].bytes[0] ^= 0x01, "row_offsets[1]");
        check(&|p| p[3].bytes[8] ^= 0x01, "row_offsets[1]");
        check(
            &|p| {
                let n = p[0].bytes.len();
                p[0].bytes.truncate(n - 4);
                p[0].shape[0] -= 1;
            },
            "more elements than",
        );
        check(
            &|p| {
                p[0].bytes.extend_from_slice(&[0; 4]);
                p[0].shape[0] += 1;
            },
            "values are stored but the bitmask marks",
        );
        check(&|p| p[2].bytes[0] = 5, "bitmask has shape");
        check(&|p| p[2].bytes[7] = 0x80, "negative dimension");
        assert!(matches!(encode("w", &d, &[4, 11]), Err(PruneError::ShapeMismatch { .. })));
    }
}
