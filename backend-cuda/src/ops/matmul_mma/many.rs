//! `Backend::matmul_many` on the mma kernels (issue 3): ONE dispatcher for the grouped routes
//! at 1 ≤ m ≤ 64, taken after the segmented fused GEMV (matmul_q/group.rs) declined. Every part
//! of a group (a layer's q/k/v, or gate/up where the GLU form does not apply) is asked once
//! which kernel its own `matmul` would run; where all parts name the same grouped route, x is
//! rounded once and the parts run in one grid:
//!
//! | route | parts' own kernel | launches |
//! |---|---|---|
//! | `Pipe` | Q4_K mp4k (2 ≤ m ≤ 8, sm_90), either copy flavour | `mp_quant_x` + `mp4kg_*` / `mpt4kg_*` (mp4k.rs) |
//! | `F16` | Q4_K mh4k (2 ≤ m ≤ 64) | `mh_quant_x` + `mh4kg_*` + a reduce per part with a k split (mh4k.rs) |
//! | `Mq` | mq4k (Int8 chosen), mq5k, mq6k, mq8_0; at m ≥ 2 also parts the tuner gives the fused GEMV | `mq_quant_x` + `<kind>g_*` + reduces (mqk.rs) |
//!
//! A group whose parts disagree (e.g. q on mh4k, k on mq4k), or with a part that takes
//! neither, is declined: the caller runs one matmul per part. The grid's k split is planned
//! for the whole grid, so a part's sums may be added in another order than its own matmul
//! adds them (bit for bit at a forced split: tests/q4k_pipe.rs, tests/mqk.rs).
//! A/B knobs (read once): `KILN_MANY_SHARED_X=0` (no `Pipe` / `F16` groups), `KILN_MANY_MQK=0`
//! (no `Mq` groups), `KILN_MANY_MQK_FUSED=0` (no `Mq` group over fused parts),
//! `KILN_MANY_GROUPED=0` (`Pipe` / `F16`: one rounding of x, then one launch per part).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_core::{DType, OpKind, Result, View, ViewMut, Weight};

use super::super::matmul_q::{GEMV_NS, GemvSegs};
use super::mqk::MqkChoice;
use super::{FORCED_SPLITS, Q4kKernel, forced_path, mma_supported};
use crate::buffer::CudaWeight;
use crate::device::CudaBackend;

/// One part of a group: the weight, its output's address, its rows and the Q4_K kernel its
/// own matmul runs (Int8 for the other types' mq kernels).
pub(crate) type GroupPart<'a> = (&'a CudaWeight, u64, usize, Q4kKernel);

/// The grouped route a part's own matmul implies (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Pipe,
    F16,
    Mq(MqkChoice),
}

/// An A/B knob: on unless the variable is "0" (read once into `cell`).
fn knob(cell: &OnceLock<bool>, var: &str) -> bool {
    *cell.get_or_init(|| std::env::var(var).map_or(true, |v| v != "0"))
}

/// `KILN_MANY_SHARED_X`: the `Pipe` and `F16` routes.
fn shared_x_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    knob(&ON, "KILN_MANY_SHARED_X")
}

/// `KILN_MANY_MQK`: the `Mq` route.
fn mqk_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    knob(&ON, "KILN_MANY_MQK")
}

/// Whether the `Mq` route also takes groups at m ≥ 2 whose parts the tuner gives the fused
/// GEMV one by one (Q8_0 at batch 2–4: no segmented fused kernel above one row for a type
/// without a pipelined GEMV): on unless `KILN_MANY_MQK_FUSED=0`. Measured on an H100
/// (BENCHMARKS.md stop 27): Llama-3-8B Q8_0 decode batch 2 4.35 → 4.07 ms, batch 4 4.55 →
/// 4.15, batch 1 unchanged, same greedy tokens.
fn over_fused() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    knob(&ON, "KILN_MANY_MQK_FUSED")
}

/// The launch forced for this process (`force_many_grouped`): 0 the default, 1 on, 2 off.
static FORCED_GROUPED: AtomicUsize = AtomicUsize::new(0);

/// Whether a `Pipe` / `F16` group runs as one grid: forced by `force_many_grouped`, else on
/// unless `KILN_MANY_GROUPED=0` (A/B against one launch per part). Measured on an H100
/// (BENCHMARKS.md stop 28): Llama-3-8B Q4_K decode −9 % per step at batch 4, 8 and 32.
fn grouped_launch() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    match FORCED_GROUPED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => knob(&ON, "KILN_MANY_GROUPED"),
    }
}

/// `[m, k]` of a group the mma routes may take: 2 ..= GEMV_NS parts, x f32 `[m, k]` with
/// k > 0, no path forced; None: they decline.
fn many_rows(x: &View<'_>, parts: usize) -> Option<[usize; 2]> {
    let k = x.shape().last();
    if !(2..=GEMV_NS).contains(&parts)
        || x.dtype() != DType::F32
        || k == 0
        || forced_path().is_some()
    {
        return None;
    }
    let m = x.numel() / k;
    (m * k == x.numel()).then_some([m, k])
}

/// A grouped launch's k split (mh4kg, `<kind>g` of mqk.rs): the scratch bytes past the x
/// image for the parts' partial sums, `rows` = Σ n_s (none without a split).
pub(super) fn split_scratch(splits: usize, m: usize, rows: usize) -> usize {
    if splits > 1 { splits * m * rows * 4 } else { 0 }
}

/// With a k split, point each segment's y at its [splits, m, n_s] f32 region of the scratch,
/// one after the other from `base` (sized by `split_scratch`); returns the parts' outputs, which
/// `reduce_split` sums the regions into.
pub(super) fn split_outputs(
    segs: &mut GemvSegs,
    base: u64,
    splits: usize,
    m: usize,
) -> [u64; GEMV_NS] {
    let outs = segs.y;
    if splits > 1 {
        let mut part = base;
        for (y, &n) in segs.y.iter_mut().zip(&segs.n) {
            *y = part;
            part += (splits * m * n.max(0) as usize * 4) as u64;
        }
    }
    outs
}

impl CudaBackend {
    /// After a grouped launch with a k split: one `mma_reduce` per part, its [splits, m, n_s]
    /// region (`segs.y`, `split_outputs`) into its output (`outs`), in split order.
    pub(super) fn reduce_split(
        &self,
        segs: &GemvSegs,
        outs: &[u64; GEMV_NS],
        m: usize,
        splits: usize,
    ) -> Result<()> {
        if splits > 1 {
            for ((&part, &out), &n) in segs.y.iter().zip(outs).zip(&segs.n) {
                if n > 0 {
                    self.launch_mma_reduce(part, out, m * n as usize, splits)?;
                }
            }
        }
        Ok(())
    }

    /// Force the `Pipe` / `F16` groups' launch for every later `matmul_many` of this process:
    /// one grid (true), one launch per part (false), or the default (None; `KILN_MANY_GROUPED`).
    /// For tests and benchmarks.
    pub fn force_many_grouped(&self, on: Option<bool>) {
        let v = match on {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        FORCED_GROUPED.store(v, Ordering::Relaxed);
    }

    /// `Backend::matmul_many` on the mma kernels (module doc): runs it (true) where every part
    /// is a `[n_i, k]` weight of one type whose own `matmul` at m rows takes the same grouped
    /// route, no path is forced, and the outputs are f32 `[m, n_i]`, disjoint from x and each
    /// other; false (nothing launched): the caller runs one matmul per part. `tuned` = false
    /// (tests) skips the tuned-path condition (Mma, or Fused at m ≥ 2 for `Mq`) and the A/B
    /// knobs; the kernel choice (which `force_q4k_kernel` sets) still decides the route. No
    /// allocation.
    pub fn matmul_many_mma(
        &self,
        x: View<'_>,
        parts: &[(&Weight, ViewMut<'_>)],
        tuned: bool,
    ) -> Result<bool> {
        let op = OpKind::Matmul;
        let Some([m, k]) = many_rows(&x, parts.len()) else {
            return Ok(false);
        };
        let dt = parts[0].0.dtype();
        if !mma_supported(dt, k) || !self.parts_fit(&x, parts, dt, [m, k]) {
            return Ok(false);
        }
        // The parts, kept in a fixed array (at most GEMV_NS: q/k/v).
        let mut run: [Option<GroupPart<'_>>; GEMV_NS] = [None; GEMV_NS];
        let mut route = None;
        for (slot, (w, out)) in run.iter_mut().zip(parts) {
            let n = w.shape().dim(0);
            let cw: &CudaWeight = self.weight(op, w)?;
            let Some((r, kernel)) = self.part_route(w, cw, [m, n, k], tuned)? else {
                return Ok(false);
            };
            if route.is_some_and(|p| p != r) {
                return Ok(false);
            }
            route = Some(r);
            *slot = Some((cw, self.ptr_mut(op, out)?, n, kernel));
        }
        let (Some(route), Some(first)) = (route, run[0]) else {
            return Ok(false);
        };
        let mut group = [first; GEMV_NS];
        for (g, r) in group.iter_mut().zip(&run) {
            if let Some(r) = r {
                *g = *r;
            }
        }
        let group = &group[..parts.len()];
        let xp = self.ptr(op, &x)?;
        let one_grid = grouped_launch();
        let splits = FORCED_SPLITS.load(Ordering::Relaxed);
        match route {
            Route::Pipe => {
                let Some(cfg) = self.mp4k_config(dt, m) else {
                    return Ok(false);
                };
                // One grid needs one copy flavour (the tensor maps are per grid).
                if one_grid && group.iter().all(|r| r.3 == first.3) {
                    self.matmul_mp4k_group(xp, group, [m, k], cfg)?;
                } else {
                    self.matmul_mp4k_many(xp, group, [m, k], cfg)?;
                }
            }
            Route::F16 => {
                let Some(cfg) = self.mh4k_config(dt, m) else {
                    return Ok(false);
                };
                if one_grid {
                    self.matmul_mh4k_group(xp, group, [m, k], cfg, splits)?;
                } else {
                    self.matmul_mh4k_many(xp, group, [m, k], cfg, splits)?;
                }
            }
            Route::Mq(choice) => self.matmul_mqk_group(xp, group, [m, k], choice)?,
        }
        Ok(true)
    }

    /// The grouped route of one part `w` `[n, k]` at m rows and the Q4_K kernel its own
    /// matmul runs (Int8 for the other types), or None: its matmul has no grouped form here.
    fn part_route(
        &self,
        w: &Weight,
        cw: &CudaWeight,
        [m, n, k]: [usize; 3],
        tuned: bool,
    ) -> Result<Option<(Route, Q4kKernel)>> {
        let dt = cw.dtype;
        // The path `matmul` takes at m rows (matmul_q.rs matmul_impl): Mma, or Fused.
        let mut fused = false;
        if tuned {
            let c = self.crossover_or_tune(w, cw)?;
            if m > c.max_mma_rows {
                return Ok(None);
            }
            fused = m <= c.max_fused_rows;
        }
        let (shared_x, mq) = (shared_x_on() || !tuned, mqk_on() || !tuned);
        // The kernel matmul_mma_with runs (Q4_K: the tuned or forced choice).
        let q4k = if dt == DType::Q4_K {
            match self.q4k_kernel(dt, m, n, k) {
                Some(q) => q,
                None => return Ok(None),
            }
        } else {
            Q4kKernel::Int8
        };
        let route = match q4k {
            Q4kKernel::Pipe | Q4kKernel::PipeTensor
                if shared_x && !fused && m >= 2 && self.mp4k_applies(cw, m) =>
            {
                Some(Route::Pipe)
            }
            Q4kKernel::F16 if shared_x && !fused && m >= 2 => Some(Route::F16),
            // Fused parts at m ≥ 2 have no segmented form above one row: the mq group.
            Q4kKernel::Int8 if mq && (!fused || (over_fused() && m >= 2)) => {
                self.mqk_applies(cw, m, k).map(Route::Mq)
            }
            _ => None,
        };
        Ok(route.map(|r| (r, q4k)))
    }
}
