//! `matmul`: y = x·Wᵀ with x f32 `[m, k]`, W `[n, k]` of any weight dtype, y f32 `[m, n]`.
//!
//! Structure: the n weight rows are split into tasks of `rows_per_task` rows; a task
//! dequantizes its rows once (`quant::dequantize`, whole blocks) into a thread-local f32 buffer
//! and dots them with every x row, four weight rows at a time so each x load feeds four dots.
//! A dot product keeps 8 independent f32 lanes over chunks of 64 elements (the compiler turns
//! them into SIMD) and folds each chunk's lanes into f64 lanes, summed at the end; so each
//! output is accumulated in f32 over at most 8 products and in f64 beyond that, in an order
//! fixed by k alone: results do not depend on the thread count.
//!
//! Cost: 2·m·n·k FLOPs; reads the weight bytes once, x once per task (from cache), writes m·n
//! floats.

use rayon::prelude::*;

use super::{HostWeight, ReferenceBackend};
use crate::backend::{OpKind, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant;
use crate::tensor::{View, ViewMut, Weight};

/// f32 lanes of a dot product (one AVX register, two SSE registers).
const LANES: usize = 8;
/// Elements summed in f32 lanes before folding into f64.
const CHUNK: usize = 64;
/// Weight rows dotted together against one x row.
const GROUP: usize = 4;
/// Target size of a task's dequantized rows (they should stay in L2 while x streams by).
const TASK_BYTES: usize = 256 * 1024;

/// Σ x[i]·w[i] for several rows `w` of the same length as `x`, accumulated as described in the
/// module docs.
#[inline(always)]
fn dot_rows<const R: usize>(x: &[f32], w: [&[f32]; R]) -> [f64; R] {
    let k = x.len();
    let full = k / CHUNK * CHUNK;
    let mut acc64 = [[0f64; LANES]; R];
    let (xc, _) = x[..full].as_chunks::<CHUNK>();
    for (c, xb) in xc.iter().enumerate() {
        let mut acc = [[0f32; LANES]; R];
        let wb: [&[f32]; R] = std::array::from_fn(|r| &w[r][c * CHUNK..(c + 1) * CHUNK]);
        let (xl, _) = xb.as_chunks::<LANES>();
        for (j, xv) in xl.iter().enumerate() {
            for r in 0..R {
                let wv = &wb[r][j * LANES..(j + 1) * LANES];
                for l in 0..LANES {
                    acc[r][l] += xv[l] * wv[l];
                }
            }
        }
        for r in 0..R {
            for l in 0..LANES {
                acc64[r][l] += acc[r][l] as f64;
            }
        }
    }
    std::array::from_fn(|r| {
        let mut s: f64 = acc64[r].iter().sum();
        for i in full..k {
            s += x[i] as f64 * w[r][i] as f64;
        }
        s
    })
}

/// Σ a[i]·b[i] (same length), f32 lanes folded into f64 as in `matmul`.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f64 {
    let [s] = dot_rows::<1>(a, [b]);
    s
}

/// Weight rows per task: about `TASK_BYTES` of dequantized f32, 4..=64 rows, a multiple of
/// `GROUP`.
fn rows_per_task(k: usize) -> usize {
    let r = TASK_BYTES / (k.max(1) * 4);
    r.clamp(GROUP, 64) / GROUP * GROUP
}

/// One task: dequantize `wc` (rows of `row_bytes`) into `buf`, then `yt[r·m + i]` =
/// x_i · w_r. `yt` is this task's block of yᵀ: `[rows, m]`.
fn task(
    x: &[f32],
    k: usize,
    wc: &[u8],
    dtype: DType,
    row_bytes: usize,
    buf: &mut Vec<f32>,
    yt: &mut [f32],
) -> Result<()> {
    let rows = wc.len() / row_bytes;
    let m = yt.len() / rows.max(1);
    buf.resize(rows * k, 0.0);
    for (src, dst) in wc.chunks_exact(row_bytes).zip(buf.chunks_exact_mut(k)) {
        quant::dequantize(dtype, src, dst)?;
    }
    let full = rows / GROUP * GROUP;
    for g in (0..full).step_by(GROUP) {
        let w: [&[f32]; GROUP] = std::array::from_fn(|r| &buf[(g + r) * k..(g + r + 1) * k]);
        for i in 0..m {
            let s = dot_rows::<GROUP>(&x[i * k..(i + 1) * k], w);
            for r in 0..GROUP {
                yt[(g + r) * m + i] = s[r] as f32;
            }
        }
    }
    for r in full..rows {
        let w = &buf[r * k..(r + 1) * k];
        for i in 0..m {
            yt[r * m + i] = dot(&x[i * k..(i + 1) * k], w) as f32;
        }
    }
    Ok(())
}

/// y = x·Wᵀ over slices: x `[m, k]` f32, `w` the bytes of `[n, k]` × `dtype`, y `[m, n]` f32.
/// Also used by `moe` on one expert's slice of a 3-D weight.
pub(super) fn gemm(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[u8],
    dtype: DType,
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    let op = OpKind::Matmul;
    let row_bytes = dtype.bytes_for(k)?;
    if k == 0 || n == 0 || row_bytes == 0 {
        return Err(Error::shape(op, format!("weight [{n}, {k}] is empty")));
    }
    check::eq(op, "weight bytes vs n · row bytes", w.len(), n * row_bytes)?;
    check::eq(op, "x elements vs m · k", x.len(), m * k)?;
    check::eq(op, "y elements vs m · n", y.len(), m * n)?;
    if m == 0 {
        return Ok(());
    }
    let rpt = rows_per_task(k);
    let run = |yt: &mut [f32]| -> Result<()> {
        // yt: yᵀ `[n, m]`, split into blocks of `rpt` weight rows.
        yt.par_chunks_mut(rpt * m)
            .zip(w.par_chunks(rpt * row_bytes))
            .try_for_each_init(Vec::new, |buf, (yc, wc)| {
                task(x, k, wc, dtype, row_bytes, buf, yc)
            })
    };
    if m == 1 {
        // y `[1, n]` is laid out like yᵀ `[n, 1]`.
        return run(y);
    }
    let mut yt = Vec::new();
    yt.try_reserve_exact(n * m)
        .map_err(|_| Error::OutOfMemory {
            device: "reference".into(),
            requested: (n * m * 4) as u64,
        })?;
    yt.resize(n * m, 0f32);
    run(&mut yt)?;
    y.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = yt[j * m + i];
        }
    });
    Ok(())
}

/// The `matmul` op: validate, then `gemm`.
pub(super) fn matmul(
    b: &ReferenceBackend,
    x: View<'_>,
    w: &Weight,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Matmul;
    b.check_dev(op, x.device())?;
    b.check_dev(op, out.device())?;
    b.check_dev(op, w.device())?;
    check::dtype(op, "x", x.dtype(), &[DType::F32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    let ws = w.shape();
    if ws.rank() != 2 {
        return Err(Error::shape(
            op,
            format!("weight {ws} {} must be 2-D [n, k]", w.dtype()),
        ));
    }
    let (n, k) = (ws.dim(0), ws.dim(1));
    if n == 0 || k == 0 {
        return Err(Error::shape(op, format!("weight {ws} is empty")));
    }
    check::eq(op, "x last dim vs weight k", x.shape().last(), k)?;
    check::eq(op, "out last dim vs weight n", out.shape().last(), n)?;
    let m = x.shape().rows();
    check::eq(op, "rows of out vs rows of x", out.shape().rows(), m)?;
    let hw = HostWeight::of(w)?;
    let a = b.access();
    let xs = a.f32s(&x)?;
    let ys = a.f32s_mut(&out)?;
    gemm(xs, m, k, &hw.data, w.dtype(), n, ys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::convert::from_f32;
    use crate::shape::Shape;
    use crate::tensor::HostTensor;

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(97));
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|l| x[i * k + l] as f64 * w[j * k + l] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn gemm_matches_f64_at_odd_sizes_and_all_float_dtypes() {
        // k = 203 exercises the f64 tail, n = 13 a partial group, m = 3 the transpose.
        for (m, k, n) in [(1, 203, 13), (3, 203, 13), (5, 128, 70), (2, 1, 1)] {
            let x = vals(m * k, 1);
            let w = vals(n * k, 2);
            for dt in [DType::F32, DType::F16, DType::BF16] {
                let bytes = from_f32(dt, &w).unwrap();
                let wq = crate::convert::to_f32(dt, &bytes).unwrap();
                let want = naive(&x, m, k, &wq, n);
                let mut y = vec![f32::NAN; m * n];
                gemm(&x, m, k, &bytes, dt, n, &mut y).unwrap();
                for (a, e) in y.iter().zip(&want) {
                    assert!(
                        (*a as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "{a} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn hand_computed_2x2() {
        // x = [[1, 2], [3, 4]], W = [[1, 0], [1, 1], [0, -1]] → y = [[1, 3, -2], [3, 7, -4]]
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = from_f32(DType::F32, &[1.0, 0.0, 1.0, 1.0, 0.0, -1.0]).unwrap();
        let mut y = [0f32; 6];
        gemm(&x, 2, 2, &w, DType::F32, 3, &mut y).unwrap();
        assert_eq!(y, [1.0, 3.0, -2.0, 3.0, 7.0, -4.0]);
    }

    #[test]
    fn op_validates_shapes_and_devices() {
        let b = ReferenceBackend::new(0);
        let other = ReferenceBackend::new(1);
        let wb = from_f32(DType::F32, &vals(8, 3)).unwrap();
        let ht = HostTensor::new(DType::F32, Shape::d2(2, 4), &wb).unwrap();
        let w = b.prepare_weight(&ht).unwrap();
        let w_other = other.prepare_weight(&ht).unwrap();
        let xb = b.alloc(64).unwrap();
        let x = xb.view(0, Shape::d2(1, 4), DType::F32).unwrap();
        let x_bad = xb.view(0, Shape::d2(1, 3), DType::F32).unwrap();
        let ob = b.alloc(64).unwrap();
        let out = ob.view_mut(0, Shape::d2(1, 2), DType::F32).unwrap();
        assert!(matches!(b.matmul(x_bad, &w, out), Err(Error::Shape { .. })));
        assert!(matches!(
            b.matmul(x, &w_other, out),
            Err(Error::WrongDevice { .. })
        ));
        let out_bad = ob.view_mut(0, Shape::d2(1, 3), DType::F32).unwrap();
        assert!(matches!(b.matmul(x, &w, out_bad), Err(Error::Shape { .. })));
        b.matmul(x, &w, out).unwrap();
    }

    #[test]
    fn deterministic_across_thread_counts() {
        let (m, k, n) = (3, 300, 50);
        let x = vals(m * k, 4);
        let w = from_f32(DType::F32, &vals(n * k, 5)).unwrap();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = vec![0f32; m * n];
            pool.install(|| gemm(&x, m, k, &w, DType::F32, n, &mut y))
                .unwrap();
            y
        };
        assert_eq!(run(1), run(3));
    }
}
