//! The many-row matmul kernel, `shaders/gemm.wgsl` (+ `dequant.wgsl`): 64×128 output tiles
//! per 128 invocations, all of them dequantizing, 8×8 register tiles, the next k group loaded while the
//! current one is multiplied; and a k split over workgroups (partials in a scratch buffer the
//! backend keeps, summed by `gemm_sum`) when m·n gives too few tiles to fill the GPU.

use kiln_core::{MatmulUse, OpKind, Result, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::bytes_of;
use crate::ops::matmul::{DEQUANT, wdefine};
use crate::pipeline_cache::ShaderSpec;
use crate::weight::{Chunk, WgpuWeight};

pub(crate) const SRC: &str = include_str!("../../shaders/gemm.wgsl");

/// Output tile of one workgroup: x rows × weight rows. Products of at most `TILE_M_SMALL`
/// rows use the 32-row tile (TM32: no FMAs on rows that do not exist).
pub(crate) const TILE_M: usize = 64;
pub(crate) const TILE_M_SMALL: usize = 32;
pub(crate) const TILE_N: usize = 128;

/// x rows per tile for an m-row product.
fn tile_m(m: usize) -> usize {
    if m <= TILE_M_SMALL {
        TILE_M_SMALL
    } else {
        TILE_M
    }
}
/// Workgroups the split rule aims for: below this many output tiles, k is split (×2 at a
/// time) until tiles × splits reaches it (about two 128-invocation workgroups per SM of a
/// 132-SM H200). Chosen from forced splits 1…16 timed by `tests/bench_gemm.rs` on an H200
/// (BENCHMARKS.md, "wgemm" entry): at m = 64 it picks 8 splits at n = 4096 (best there)
/// and 4 at n = 14336 (within 1 % of the best, 2).
const SPLIT_TARGET_WGS: usize = 256;
/// Most k splits, and fewest 32-element groups per split.
const MAX_SPLITS: usize = 8;
const MIN_GROUPS_PER_SPLIT: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Params {
    pub(crate) m: u32,
    pub(crate) n_c: u32,
    pub(crate) k: u32,
    pub(crate) n_out: u32,
    pub(crate) r0: u32,
    pub(crate) bpr: u32,
    pub(crate) d_base: u32,
    pub(crate) x_off: u32,
    pub(crate) o_off: u32,
    pub(crate) splits: u32,
    pub(crate) gps: u32,
    pub(crate) pad: u32,
}

impl Params {
    /// The parameters of weight chunk `c` for an m-row product in `tiles_m` x-row tiles, k
    /// split `s` ways; (x, y) element offsets `offs`. Refuses a grid whose z (x-row tiles ×
    /// splits) passes the device's per-dimension limit (`op` names the kernel).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn chunk(
        be: &WgpuBackend,
        op: &str,
        m: usize,
        tiles_m: usize,
        ww: &WgpuWeight,
        c: &Chunk,
        offs: (u32, u32),
        s: usize,
    ) -> Result<Params> {
        let zmax = be.limits.max_compute_workgroups_per_dimension as usize;
        if tiles_m * s > zmax {
            return Err(be.limit_error(
                format!("{op}: x-row tiles × k splits (workgroups in z)"),
                (tiles_m * s) as u64,
                zmax as u64,
            ));
        }
        Ok(Params {
            m: m as u32,
            n_c: (c.r1 - c.r0) as u32,
            k: ww.k as u32,
            n_out: ww.rows as u32,
            r0: c.r0 as u32,
            bpr: ww.bpr() as u32,
            d_base: c.d_base,
            x_off: offs.0,
            o_off: offs.1,
            splits: s as u32,
            gps: (ww.k / 32).div_ceil(s) as u32,
            pad: 0,
        })
    }
}

/// k splits for an m × n_c output with k columns: 1 unless the tiles alone leave the GPU
/// short of `SPLIT_TARGET_WGS` workgroups; `forced` (benchmarks, tests) wins, capped so every
/// split has at least one group.
pub(crate) fn splits(m: usize, n_c: usize, k: usize, forced: Option<u32>) -> usize {
    splits_tm(m, tile_m(m), n_c, k, forced)
}

/// As `splits`, for a kernel whose x-row tile is `tm` rows (`ops/gemm_coop.rs`).
pub(crate) fn splits_tm(m: usize, tm: usize, n_c: usize, k: usize, forced: Option<u32>) -> usize {
    let groups = k / 32;
    if let Some(f) = forced {
        return (f as usize).clamp(1, groups.max(1));
    }
    let tiles = m.div_ceil(tm) * n_c.div_ceil(TILE_N);
    let mut s = 1;
    while tiles * s < SPLIT_TARGET_WGS
        && s * 2 <= MAX_SPLITS
        && groups / (s * 2) >= MIN_GROUPS_PER_SPLIT
    {
        s *= 2;
    }
    s
}

/// Scratch bytes the split partials of one m × n_c × k product need (0 without a split): by
/// this kernel, or by either this one or `gemm_coop` (whichever splits more) when `coop` (the
/// device has cooperative matrices; `set_gemm_coop` may switch kernels at run time).
pub(crate) fn scratch_bytes(
    m: usize,
    n_c: usize,
    k: usize,
    forced: Option<u32>,
    coop: bool,
) -> usize {
    let mut s = splits(m, n_c, k, forced);
    if coop {
        s = s.max(crate::ops::gemm_coop::splits(m, n_c, k, forced));
    }
    if s > 1 { s * m * n_c * 4 } else { 0 }
}

/// The most scratch any GEMM of `uses` needs (every m up to its max_rows, unforced; `coop` as
/// in `scratch_bytes`).
pub(crate) fn scratch_bound(uses: &[MatmulUse], coop: bool) -> usize {
    uses.iter()
        .filter(|u| u.shape.rank() >= 2)
        .map(|u| {
            let (n, k) = (
                u.shape.dim(u.shape.rank() - 2),
                u.shape.dim(u.shape.rank() - 1),
            );
            (1..=u.max_rows)
                .map(|m| scratch_bytes(m, n, k, None, coop))
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// Run the GEMM for x [m, k] · chunked W [n, k]ᵀ → out [m, n].
pub(crate) fn run(
    be: &WgpuBackend,
    x: View<'_>,
    ww: &WgpuWeight,
    out: ViewMut<'_>,
    m: usize,
) -> Result<()> {
    let op = OpKind::Matmul;
    let bx = be.bind_view(op, &x, "x")?;
    let bo = be.bind_out(op, &out, "out")?;
    let x_off = bx.elem_off(4);
    let forced = be.gemm_splits_forced();
    for c in &ww.chunks {
        let n_c = c.r1 - c.r0;
        let s = splits(m, n_c, ww.k, forced);
        let tm = tile_m(m);
        let tiles_m = m.div_ceil(tm);
        let p = Params::chunk(be, "matmul", m, tiles_m, ww, c, (x_off, bo.elem_off(4)), s)?;
        let mut spec = ShaderSpec::new("gemm", &[DEQUANT, SRC], "gemm")
            .define(wdefine(ww.dtype))
            .sub("TM", tm.to_string());
        if tm == TILE_M_SMALL {
            spec = spec.define("TM32");
        }
        if x_off.is_multiple_of(4) {
            spec = spec.define("X_VEC4");
        }
        if be.gemm_kk_prefetch() {
            spec = spec.define("KK_PF");
        }
        let bw = be.bind_range(&c.buf, 0, c.buf.size(), "weight chunk")?;
        let (gx, gy) = be.grid(n_c.div_ceil(TILE_N) as u32);
        if s == 1 {
            let pipe = be.pipeline(spec)?;
            be.dispatch(
                &pipe,
                bytes_of(&p),
                &[bw.entry(1), bx.entry(2), bo.entry(3)],
                (gx, gy, (tiles_m * s) as u32),
            )?;
            continue;
        }
        // Partials [s][m][n_c] in the scratch buffer, then their sum into out.
        let part = be.gemm_scratch(s * m * n_c * 4)?;
        let bp = be.bind_range(&part, 0, (s * m * n_c * 4) as u64, "gemm k-split scratch")?;
        let pipe = be.pipeline(spec.define("SPLIT"))?;
        let split = [bw.entry(1), bx.entry(2), bp.entry(4)];
        split_then_sum(
            be,
            &p,
            (&pipe, &split, (gx, gy, (tiles_m * s) as u32)),
            &bo,
            &bp,
        )?;
    }
    Ok(())
}

/// The split partials' dispatch (`split`: pipeline, bindings, grid) and `gemm_sum`, y = Σ over
/// the splits (m · n_c outputs of one chunk), recorded as ONE pair (`dispatch2`): the scratch is
/// shared by every thread of the backend, so another thread's split must not land between a
/// split and its sum (it did: a wrong Q5_K result at m = 33, 1 run in 4 of the 8-thread wgpu
/// conformance suite on the H200, BENCHMARKS "(wgemv)").
pub(crate) fn split_then_sum(
    be: &WgpuBackend,
    p: &Params,
    split: (
        &wgpu::ComputePipeline,
        &[wgpu::BindGroupEntry<'_>],
        (u32, u32, u32),
    ),
    bo: &crate::buffer::Bound<'_>,
    bp: &crate::buffer::Bound<'_>,
) -> Result<()> {
    let sum = be.pipeline(
        ShaderSpec::new("gemm", &[SRC], "gemm_sum")
            .define("SUM")
            .define("SPLIT"),
    )?;
    let (sx, sy) = be.grid((p.m as usize * p.n_c as usize).div_ceil(256) as u32);
    be.dispatch2(
        bytes_of(p),
        split,
        (&sum, &[bo.entry(3), bp.entry(4)], (sx, sy, 1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rule() {
        // few tiles: split until 256 workgroups or 8 splits
        assert_eq!(splits(64, 4096, 4096, None), 8);
        assert_eq!(splits(32, 14336, 4096, None), 4);
        assert_eq!(splits(33, 14336, 4096, None), 4);
        assert_eq!(splits(64, 14336, 4096, None), 4);
        assert_eq!(splits(128, 14336, 4096, None), 2);
        assert_eq!(splits(128, 4096, 4096, None), 4);
        assert_eq!(splits(64, 1024, 4096, None), 8);
        // enough tiles: no split
        assert_eq!(splits(1024, 4096, 4096, None), 1);
        assert_eq!(splits(64, 128256, 4096, None), 1);
        // short k: at least 8 groups per split
        assert_eq!(splits(64, 64, 512, None), 2);
        assert_eq!(splits(64, 64, 256, None), 1);
        // forced, capped by the groups
        assert_eq!(splits(512, 4096, 4096, Some(4)), 4);
        assert_eq!(splits(1, 8, 64, Some(8)), 2);
        assert_eq!(
            scratch_bytes(64, 4096, 4096, None, false),
            8 * 64 * 4096 * 4
        );
        assert_eq!(scratch_bytes(1024, 4096, 4096, None, false), 0);
        // m = 1024, n = 1024: gemm.wgsl 16 × 8 tiles → 2 splits; gemm_coop 8 × 8 → 4
        assert_eq!(
            scratch_bytes(1024, 1024, 4096, None, false),
            2 * 1024 * 1024 * 4
        );
        assert_eq!(
            scratch_bytes(1024, 1024, 4096, None, true),
            4 * 1024 * 1024 * 4
        );
    }
}
