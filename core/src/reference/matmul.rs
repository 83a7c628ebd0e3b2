//! `matmul`: y = x·Wᵀ with x f32 `[m, k]`, W `[n, k]` of any weight dtype, y f32 `[m, n]`.
//!
//! Structure: the n weight rows are split into tasks of `rows_per_task` rows; a task
//! dequantizes its rows four at a time, once each (`quant::dequantize`, whole blocks), into a
//! thread-local f32 buffer that stays in cache, and dots them with every x row in tiles of
//! 2 x rows × 4 weight rows (8 independent accumulator vectors; each load feeds several dots).
//! The tile loop is compiled twice, portable and with explicit AVX, picked at run time; both
//! give the same bits (no FMA, the same lanes). A dot product keeps 8 independent f32 lanes
//! over chunks of 64 elements and folds each chunk's lanes into f64 lanes, summed at the end;
//! so each output is accumulated in f32 over at most 8 products and in f64 beyond that, in an
//! order fixed by k alone: results do not depend on the thread count.
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
/// Weight bytes (as f32) per rayon task: enough work per task to amortise scheduling, enough
/// tasks to balance the threads.
const TASK_BYTES: usize = 256 * 1024;

/// Σ x_i[l]·w_r[l] for a tile of M x rows and R weight rows (all of one length), accumulated
/// as described in the module docs. The arithmetic of each (i, r) pair does not depend on M, R
/// or the SIMD width, so every tiling and both instruction sets give the same bits.
#[inline(always)]
fn dot_tile<const M: usize, const R: usize>(x: [&[f32]; M], w: [&[f32]; R]) -> [[f64; R]; M] {
    let k = x[0].len();
    let full = k / CHUNK * CHUNK;
    let mut acc64 = [[[0f64; LANES]; R]; M];
    for c in (0..full).step_by(CHUNK) {
        let mut acc = [[[0f32; LANES]; R]; M];
        let xb: [&[f32]; M] = std::array::from_fn(|i| &x[i][c..c + CHUNK]);
        let wb: [&[f32]; R] = std::array::from_fn(|r| &w[r][c..c + CHUNK]);
        for j in (0..CHUNK).step_by(LANES) {
            for i in 0..M {
                let xv = &xb[i][j..j + LANES];
                for r in 0..R {
                    let wv = &wb[r][j..j + LANES];
                    for l in 0..LANES {
                        acc[i][r][l] += xv[l] * wv[l];
                    }
                }
            }
        }
        for i in 0..M {
            for r in 0..R {
                for l in 0..LANES {
                    acc64[i][r][l] += acc[i][r][l] as f64;
                }
            }
        }
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|r| {
            let mut s: f64 = acc64[i][r].iter().sum();
            for l in full..k {
                s += x[i][l] as f64 * w[r][l] as f64;
            }
            s
        })
    })
}

/// Σ a[i]·b[i] (same length), f32 lanes folded into f64 as in `matmul`.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f64 {
    let [[s]] = dot_tile::<1, 1>([a], [b]);
    s
}

/// yᵀ block: `yt[r·ld + i]` = x_i · w_r for x `[m, k]` and dequantized rows w `[rows, k]`,
/// in tiles of 2 x rows × `GROUP` weight rows (8 independent accumulator vectors).
fn dots_body(x: &[f32], k: usize, w: &[f32], yt: &mut [f32], ld: usize) {
    dots_with(
        x,
        k,
        w,
        (yt, ld),
        dot_tile::<2, GROUP>,
        dot_tile::<1, GROUP>,
        dot,
    )
}

/// The tiling of `dots_body` over given tile functions (portable or AVX).
#[inline(always)]
fn dots_with(
    x: &[f32],
    k: usize,
    w: &[f32],
    (yt, ld): (&mut [f32], usize),
    tile2: impl Fn([&[f32]; 2], [&[f32]; GROUP]) -> [[f64; GROUP]; 2],
    tile1: impl Fn([&[f32]; 1], [&[f32]; GROUP]) -> [[f64; GROUP]; 1],
    dot1: impl Fn(&[f32], &[f32]) -> f64,
) {
    let rows = w.len() / k;
    let m = x.len() / k;
    let xr = |i: usize| &x[i * k..(i + 1) * k];
    let wr = |r: usize| &w[r * k..(r + 1) * k];
    let full = rows / GROUP * GROUP;
    for g in (0..full).step_by(GROUP) {
        let wg: [&[f32]; GROUP] = std::array::from_fn(|r| wr(g + r));
        let mut i = 0;
        while i + 2 <= m {
            let s = tile2([xr(i), xr(i + 1)], wg);
            for r in 0..GROUP {
                yt[(g + r) * ld + i] = s[0][r] as f32;
                yt[(g + r) * ld + i + 1] = s[1][r] as f32;
            }
            i += 2;
        }
        if i < m {
            let [s] = tile1([xr(i)], wg);
            for r in 0..GROUP {
                yt[(g + r) * ld + i] = s[r] as f32;
            }
        }
    }
    for r in full..rows {
        for i in 0..m {
            yt[r * ld + i] = dot1(xr(i), wr(r)) as f32;
        }
    }
}

/// The AVX version of `dot_tile` with explicit 256-bit vectors (LLVM does not reliably widen
/// the portable loop): the same per-lane mul, add, f64 fold and final sum, so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{CHUNK, LANES};

    #[inline]
    #[target_feature(enable = "avx")]
    pub(super) fn tile<const M: usize, const R: usize>(
        x: [&[f32]; M],
        w: [&[f32]; R],
    ) -> [[f64; R]; M] {
        let k = x[0].len();
        if x.iter().chain(&w).any(|row| row.len() != k) {
            // Not reached (callers pass rows of one length); the loads below rely on it.
            return super::dot_tile(x, w);
        }
        let full = k / CHUNK * CHUNK;
        let xp: [*const f32; M] = std::array::from_fn(|i| x[i].as_ptr());
        let wp: [*const f32; R] = std::array::from_fn(|r| w[r].as_ptr());
        // acc64[i][r]: f64 lanes 0..4 and 4..8.
        let mut acc64 = [[[_mm256_setzero_pd(); 2]; R]; M];
        let mut c = 0;
        while c < full {
            let mut acc = [[_mm256_setzero_ps(); R]; M];
            let mut j = c;
            while j < c + CHUNK {
                // SAFETY: j + 8 ≤ full ≤ k, and every row holds k f32 (checked above).
                let xv: [__m256; M] =
                    std::array::from_fn(|i| unsafe { _mm256_loadu_ps(xp[i].add(j)) });
                for r in 0..R {
                    // SAFETY: as above.
                    let wv = unsafe { _mm256_loadu_ps(wp[r].add(j)) };
                    for i in 0..M {
                        acc[i][r] = _mm256_add_ps(acc[i][r], _mm256_mul_ps(xv[i], wv));
                    }
                }
                j += LANES;
            }
            for i in 0..M {
                for r in 0..R {
                    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(acc[i][r]));
                    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(acc[i][r]));
                    acc64[i][r][0] = _mm256_add_pd(acc64[i][r][0], lo);
                    acc64[i][r][1] = _mm256_add_pd(acc64[i][r][1], hi);
                }
            }
            c += CHUNK;
        }
        std::array::from_fn(|i| {
            std::array::from_fn(|r| {
                let mut lanes = [0f64; LANES];
                let (lo, hi) = lanes.split_at_mut(4);
                // SAFETY: each half of `lanes` holds 4 f64, what the unaligned store writes.
                unsafe {
                    _mm256_storeu_pd(lo.as_mut_ptr(), acc64[i][r][0]);
                    _mm256_storeu_pd(hi.as_mut_ptr(), acc64[i][r][1]);
                }
                let mut s: f64 = lanes.iter().sum();
                for l in full..k {
                    s += x[i][l] as f64 * w[r][l] as f64;
                }
                s
            })
        })
    }
}

/// `dots_body` with the AVX tile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dots_avx(x: &[f32], k: usize, w: &[f32], yt: &mut [f32], ld: usize) {
    dots_with(
        x,
        k,
        w,
        (yt, ld),
        |a, b| avx::tile::<2, GROUP>(a, b),
        |a, b| avx::tile::<1, GROUP>(a, b),
        |a, b| avx::tile::<1, 1>([a], [b])[0][0],
    )
}

/// `dots_body` with the widest instruction set the CPU has.
fn dots(x: &[f32], k: usize, w: &[f32], yt: &mut [f32], ld: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: `dots_avx` only requires AVX, which the CPU was just found to support.
        unsafe { dots_avx(x, k, w, yt, ld) };
        return;
    }
    dots_body(x, k, w, yt, ld)
}

/// Weight rows per task: about `TASK_BYTES` of dequantized f32, 4..=64 rows, a multiple of
/// `GROUP`.
fn rows_per_task(k: usize) -> usize {
    let r = TASK_BYTES / (k.max(1) * 4);
    r.clamp(GROUP, 64) / GROUP * GROUP
}

/// x rows per block when m is large: a block of x and a task's dequantized rows (about
/// `TASK_BYTES` each) stay in L2 while every pair is dotted. Even, ≥ 2.
fn x_block_rows(k: usize) -> usize {
    (TASK_BYTES / (k.max(1) * 4)).max(2) / 2 * 2
}

/// One task: `yt[r·m + i]` = x_i · w_r for the rows of `wc` (rows of `row_bytes`); `yt` is
/// this task's block of yᵀ, `[rows, m]`. Each weight row is dequantized once, into `buf`:
/// - m ≤ one x block: `GROUP` rows at a time (`[GROUP, k]`, in L1/L2), each dotted with all x;
/// - else: all the task's rows (`[rows, k]`), then x block by block against all of them.
fn task(
    x: &[f32],
    k: usize,
    wc: &[u8],
    dtype: DType,
    row_bytes: usize,
    buf: &mut Vec<f32>,
    yt: &mut [f32],
) -> Result<()> {
    let m = x.len() / k;
    let rows = wc.len() / row_bytes;
    let dequant = |wrows: &[u8], buf: &mut Vec<f32>| -> Result<usize> {
        let nr = wrows.len() / row_bytes;
        buf.resize(nr * k, 0.0);
        for (src, dst) in wrows.chunks_exact(row_bytes).zip(buf.chunks_exact_mut(k)) {
            quant::dequantize(dtype, src, dst)?;
        }
        Ok(nr)
    };
    let mb = x_block_rows(k);
    if m <= mb {
        for (gi, wg) in wc.chunks(GROUP * row_bytes).enumerate() {
            let nr = dequant(wg, buf)?;
            dots(x, k, &buf[..nr * k], &mut yt[gi * GROUP * m..], m);
        }
    } else {
        dequant(wc, buf)?;
        for i0 in (0..m).step_by(mb) {
            let i1 = (i0 + mb).min(m);
            dots(&x[i0 * k..i1 * k], k, &buf[..rows * k], &mut yt[i0..], m);
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
    fn avx_and_plain_paths_agree_bit_for_bit() {
        let (m, k, rows) = (5, 333, 9);
        let x = vals(m * k, 6);
        let w = vals(rows * k, 7);
        let mut plain = vec![0f32; rows * m];
        dots_body(&x, k, &w, &mut plain, m);
        let mut best = vec![0f32; rows * m];
        dots(&x, k, &w, &mut best, m);
        assert_eq!(plain, best);
    }

    #[test]
    fn blocked_path_equals_row_by_row_bit_for_bit() {
        // k = 8192: x blocks of 8 rows, so m = 19 takes the blocked path (3 blocks, odd tail);
        // each row computed alone (m = 1) takes the other path. Same bits: a row's result does
        // not depend on the batch it is in.
        let (m, k, n) = (19, 8192, 13);
        assert!(m > x_block_rows(k));
        let x = vals(m * k, 8);
        let w = from_f32(DType::BF16, &vals(n * k, 9)).unwrap();
        let mut y = vec![f32::NAN; m * n];
        gemm(&x, m, k, &w, DType::BF16, n, &mut y).unwrap();
        for i in 0..m {
            let mut yi = vec![f32::NAN; n];
            gemm(&x[i * k..(i + 1) * k], 1, k, &w, DType::BF16, n, &mut yi).unwrap();
            assert_eq!(&y[i * n..(i + 1) * n], &yi[..], "row {i}");
        }
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

/// Checks against independent data and the timing run (`--ignored`).
#[cfg(test)]
mod data_tests {
    use super::*;
    use crate::backend::Backend;
    use crate::convert::{from_f32, to_f32};
    use crate::shape::Shape;
    use crate::tensor::HostTensor;

    fn read(name: &str) -> Vec<u8> {
        // gguf-py test vectors (shared/testdata/quant, copied into core/tests/data/quant).
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant");
        std::fs::read(p.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// W `[8, 512]` of every weight type times gguf-py's x, through the Backend API, against
    /// the exactly rounded y; tolerance from the data's README (1e-4·|y| + 1e-6·Σ|W·x|).
    #[test]
    fn matmul_matches_gguf_py_gemv_for_every_weight_type() {
        let b = ReferenceBackend::new(0);
        // The data covers the 14 non-F32 types (F32 is checked in `tests`).
        for dt in DType::WEIGHT_TYPES.into_iter().filter(|d| *d != DType::F32) {
            let n = dt.name();
            let wbytes = read(&format!("{n}.bin"));
            let wf = to_f32(DType::F32, &read(&format!("{n}.f32"))).unwrap();
            let x = to_f32(DType::F32, &read(&format!("{n}.gemv_x.f32"))).unwrap();
            let y_ref = to_f32(DType::F32, &read(&format!("{n}.gemv_y.f32"))).unwrap();
            let ht = HostTensor::new(dt, Shape::d2(8, 512), &wbytes).unwrap();
            let w = b.prepare_weight(&ht).unwrap();
            // m = 2: the same x twice, so both output rows must equal y_ref.
            let xb = b.alloc(2 * 512 * 4).unwrap();
            let xx: Vec<f32> = x.iter().chain(&x).copied().collect();
            b.write(&xb, 0, &from_f32(DType::F32, &xx).unwrap())
                .unwrap();
            let ob = b.alloc(16 * 4).unwrap();
            b.matmul(
                xb.view(0, Shape::d2(2, 512), DType::F32).unwrap(),
                &w,
                ob.view_mut(0, Shape::d2(2, 8), DType::F32).unwrap(),
            )
            .unwrap_or_else(|e| panic!("{n}: {e}"));
            let mut raw = vec![0u8; 64];
            b.read(&ob, 0, &mut raw).unwrap();
            let y = to_f32(DType::F32, &raw).unwrap();
            for (r, got) in y.iter().enumerate() {
                let row = r % 8;
                let abs_dot: f64 = (0..512)
                    .map(|j| (wf[row * 512 + j] as f64 * x[j] as f64).abs())
                    .sum();
                let (a, e) = (*got as f64, y_ref[row] as f64);
                let tol = 1e-4 * e.abs() + 1e-6 * abs_dot;
                assert!(
                    (a - e).abs() <= tol,
                    "{n} row {row}: {a} vs {e} (tol {tol})"
                );
            }
        }
    }

    /// GFLOP/s of `gemm` at n = k = 4096, m = 1, 64 and 512. Run with
    /// `cargo test -p kiln-core --lib matmul_gflops -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn matmul_gflops() {
        let (n, k) = (4096usize, 4096usize);
        let w: Vec<f32> = (0..n * k)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        println!(
            "reference matmul, {} rayon threads",
            rayon::current_num_threads()
        );
        for dt in [DType::F32, DType::Q8_0, DType::Q4_K] {
            let mut wb = vec![0u8; dt.bytes_for(n * k).unwrap()];
            quant::quantize(dt, &w, &mut wb).unwrap();
            for m in [1usize, 64, 512] {
                let x = &w[..m * k];
                let mut y = vec![0f32; m * n];
                let reps = match m {
                    1 => 20,
                    64 => 5,
                    _ => 2,
                };
                let mut times = Vec::new();
                gemm(x, m, k, &wb, dt, n, &mut y).unwrap(); // warm-up
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    gemm(x, m, k, &wb, dt, n, &mut y).unwrap();
                    times.push(t.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                let flops = 2.0 * (m * n * k) as f64;
                println!(
                    "{dt:>5} m={m:<3} n=k=4096: best {:7.2} ms = {:6.2} GFLOP/s, median {:7.2} ms, weights {:5.1} MB = {:5.2} GB/s at best",
                    times[0] * 1e3,
                    flops / times[0] / 1e9,
                    times[reps / 2] * 1e3,
                    wb.len() as f64 / 1e6,
                    wb.len() as f64 / times[0] / 1e9
                );
            }
        }
    }
}
