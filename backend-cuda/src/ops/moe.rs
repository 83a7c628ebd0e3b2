//! moe (kernels/moe.cu): routed expert FFN with no host synchronization (graph-capturable).
//!
//! With A = n_tokens · top_k assignments, one call enqueues:
//! 1. `moe_route`: top-k experts and their weights per token (ties → lower expert index);
//! 2. `moe_plan` (one CTA): assignments grouped by expert (`perm`, `slot`) and a table of tiles
//!    of ≤ 8 rows of one expert, padded to `tiles_max` = min(A, ⌈A/8⌉ + min(E, A)) entries;
//! 3. `moe_gather`: the routed token rows in expert order, xs `[A, dim]`;
//! 4. `moe_gemv_<gate dtype>` / `<up dtype>`: g, u `[A, ff]` (grid: ff rows × tiles_max; empty
//!    tiles exit) — the fused dequant kernels of quant.cuh on the 3-D weights, expert e's rows at
//!    e·ff.. of the repacked weight;
//! 5. `glu` (kernels/act.cu): h = act(g) ⊙ u `[A, ff]`;
//! 6. `moe_gemv_<down dtype>`: y `[A, dim]` (reusing xs's bytes);
//! 7. `moe_combine`: out[t] = Σ_r w_r · y[slot(t, r)] in rank order.
//!
//! Each expert's weights are read once per 8-row tile of its tokens: right for decode and small
//! batches; large prefill batches re-read weights ⌈tokens_e / 8⌉ times (a tensor-core grouped
//! GEMM would be the next step). Each output row's value does not depend on its position in the
//! expert order, so results are deterministic.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use kiln_core::backend::check;
use kiln_core::{
    DType, Error, MoeExperts, MoeGating, MoeRouting, OpKind, Result, Shape, View, ViewMut,
};

use super::arg_i32;
use super::embed::chunks_per_block;
use crate::buffer::{CudaWeight, chunked_ok, split};
use crate::device::CudaBackend;
use crate::module_cache::MOE;

const OP: OpKind = OpKind::Moe;
/// Rows per expert tile (MOE_TILE_M), largest top_k (MOE_KMAX) and expert count (MOE_EMAX).
const TILE_M: usize = 8;
const KMAX: usize = 32;
const EMAX: usize = 1024;

macro_rules! gemv_names {
    ($($s:literal),*) => { [$( concat!("moe_gemv_", $s) ),*] };
}
/// `moe_gemv_<type>`, indexed like `DType::WEIGHT_TYPES`.
const GEMV: [&str; 15] = gemv_names!(
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
    "q6_k", "iq4_nl", "iq4_xs"
);

/// Byte offsets of the scratch regions (each 256-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub assignments: usize,
    pub tiles_max: usize,
    /// i32/f32 `[A]`: ids, wts, slot, perm.
    pub ids: usize,
    pub wts: usize,
    pub slot: usize,
    pub perm: usize,
    /// i32 `[tiles_max]` each.
    pub tile_e: usize,
    pub tile_start: usize,
    pub tile_len: usize,
    /// f32 `[A, dim]`: gathered x, later the down projections y.
    pub xs: usize,
    /// f32 `[A, ff]` each.
    pub g: usize,
    pub u: usize,
    pub h: usize,
    pub total: usize,
}

pub(crate) fn layout(n_tokens: usize, top_k: usize, n_exp: usize, dim: usize, ff: usize) -> Layout {
    let a = n_tokens * top_k;
    let tiles_max = a.min(a.div_ceil(TILE_M) + n_exp.min(a));
    let mut at = 0usize;
    let mut take = |bytes: usize| {
        let here = at;
        at += bytes.div_ceil(256) * 256;
        here
    };
    let (ids, wts, slot, perm) = (take(4 * a), take(4 * a), take(4 * a), take(4 * a));
    let (tile_e, tile_start, tile_len) = (
        take(4 * tiles_max),
        take(4 * tiles_max),
        take(4 * tiles_max),
    );
    let xs = take(4 * a * dim);
    let (g, u, h) = (take(4 * a * ff), take(4 * a * ff), take(4 * a * ff));
    Layout {
        assignments: a,
        tiles_max,
        ids,
        wts,
        slot,
        perm,
        tile_e,
        tile_start,
        tile_len,
        xs,
        g,
        u,
        h,
        total: at,
    }
}

/// (experts, ff, dim) of valid expert weights.
fn expert_dims(ex: &MoeExperts<'_>) -> Result<(usize, usize, usize)> {
    for (what, w) in [("gate", ex.gate), ("up", ex.up), ("down", ex.down)] {
        if w.shape().rank() != 3 {
            return Err(Error::shape(
                OP,
                format!("{what} {w:?} must be 3-D [experts, rows, cols]"),
            ));
        }
    }
    let g = ex.gate.shape();
    let (e, ff, dim) = (g.dim(0), g.dim(1), g.dim(2));
    if ex.up.shape() != g {
        return Err(Error::shape(
            OP,
            format!("up {:?} must have gate's shape {g}", ex.up),
        ));
    }
    if ex.down.shape().dims() != [e, dim, ff] {
        return Err(Error::shape(
            OP,
            format!(
                "down {:?} must be [experts {e}, dim {dim}, ff {ff}]",
                ex.down
            ),
        ));
    }
    if e == 0 || ff == 0 || dim == 0 {
        return Err(Error::shape(OP, format!("expert weights {g} are empty")));
    }
    Ok((e, ff, dim))
}

impl CudaBackend {
    pub(crate) fn op_moe_scratch_bytes(
        &self,
        n_tokens: usize,
        ex: &MoeExperts<'_>,
        r: &MoeRouting,
    ) -> usize {
        match expert_dims(ex) {
            Ok((e, ff, dim)) => layout(n_tokens, r.top_k, e, dim, ff).total,
            Err(_) => 0,
        }
    }

    pub(crate) fn op_moe(
        &self,
        x: View<'_>,
        logits: View<'_>,
        ex: &MoeExperts<'_>,
        r: &MoeRouting,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        for (what, dt) in [
            ("x", x.dtype()),
            ("router_logits", logits.dtype()),
            ("out", out.dtype()),
        ] {
            check::dtype(OP, what, dt, &[DType::F32])?;
        }
        let (n_exp, ff, dim) = expert_dims(ex)?;
        let (gw, uw, dw) = (
            self.weight(OP, ex.gate)?,
            self.weight(OP, ex.up)?,
            self.weight(OP, ex.down)?,
        );
        for (what, w, k) in [("gate", gw, dim), ("up", uw, dim), ("down", dw, ff)] {
            if !chunked_ok(w.dtype, k) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{what} rows of {k} {} elements: the expert kernels need whole 16-element groups / blocks",
                        w.dtype
                    ),
                ));
            }
        }
        if n_exp > EMAX {
            return Err(Error::shape(
                OP,
                format!("{n_exp} experts exceed the routing kernel's limit of {EMAX}"),
            ));
        }
        if r.top_k == 0 || r.top_k > n_exp || r.top_k > KMAX {
            return Err(Error::shape(
                OP,
                format!(
                    "top_k {} must be in 1..={} (experts {n_exp}, kernel limit {KMAX})",
                    r.top_k,
                    n_exp.min(KMAX)
                ),
            ));
        }
        check::eq(OP, "x last dim vs expert dim", x.shape().last(), dim)?;
        let n_tokens = x.numel() / dim;
        check::eq(
            OP,
            "router_logits last dim vs experts",
            logits.shape().last(),
            n_exp,
        )?;
        check::eq(
            OP,
            "router_logits rows vs tokens",
            logits.numel() / n_exp,
            n_tokens,
        )?;
        check::eq(OP, "out last dim vs dim", out.shape().last(), dim)?;
        check::eq(OP, "out elements vs x elements", out.numel(), x.numel())?;
        out.check_disjoint(&x)?;
        out.check_disjoint(&logits)?;
        let (xp, lp, op_) = (
            self.ptr(OP, &x)?,
            self.ptr(OP, &logits)?,
            self.ptr_mut(OP, &out)?,
        );
        let lay = layout(n_tokens, r.top_k, n_exp, dim, ff);
        let sc = match scratch {
            Some(s) if s.bytes() >= lay.total => s,
            s => {
                return Err(Error::shape(
                    OP,
                    format!(
                        "{n_tokens} tokens need {} bytes of scratch (moe_scratch_bytes), got {}",
                        lay.total,
                        s.map_or(0, |s| s.bytes())
                    ),
                ));
            }
        };
        for (what, v) in [("x", x), ("router_logits", logits), ("out", out.as_view())] {
            sc.check_disjoint(&v)
                .map_err(|e| Error::shape(OP, format!("scratch vs {what}: {e}")))?;
        }
        let sp = self.ptr_mut(OP, &sc)?;
        if !sp.is_multiple_of(16) {
            return Err(Error::shape(
                OP,
                format!("scratch must start at a 16-byte aligned address (got {sp:#x})"),
            ));
        }
        if n_tokens == 0 {
            return Ok(());
        }
        let a = lay.assignments;
        let (ai, ti, ki, ei, di) = (
            arg_i32(OP, "n_tokens·top_k", a)?,
            arg_i32(OP, "n_tokens", n_tokens)?,
            arg_i32(OP, "top_k", r.top_k)?,
            arg_i32(OP, "experts", n_exp)?,
            arg_i32(OP, "dim", dim)?,
        );
        // Element indices inside the kernels are i64; row counts are i32.
        arg_i32(OP, "n_tokens·top_k·ff", a * ff)?;
        let tiles = arg_i32(OP, "tiles", lay.tiles_max)?;
        if lay.tiles_max > 65535 {
            return Err(Error::shape(
                OP,
                format!(
                    "{} expert tiles exceed the grid limit of 65535 (too many tokens in one call)",
                    lay.tiles_max
                ),
            ));
        }
        let at = |off: usize| sp + off as u64;

        // 1. routing
        let (topk_first, renorm) = match r.gating {
            MoeGating::SoftmaxTopK { renormalize } => (0i32, i32::from(renormalize)),
            MoeGating::TopKSoftmax => (1i32, 0i32),
        };
        {
            let f = self.function(&MOE, "moe_route")?;
            let sms = self.info.caps.compute_units.max(1) as usize;
            let cfg = LaunchConfig {
                grid_dim: (n_tokens.div_ceil(4).clamp(1, sms * 16) as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let (ids, wts) = (at(lay.ids), at(lay.wts));
            let mut b = self.stream.launch_builder(&f);
            b.arg(&lp)
                .arg(&ids)
                .arg(&wts)
                .arg(&ti)
                .arg(&ei)
                .arg(&ki)
                .arg(&topk_first)
                .arg(&renorm);
            // SAFETY: logits hold n_tokens·E f32 (checked); ids/wts are scratch regions of A
            // elements; one warp per token writes its top_k entries.
            unsafe { b.launch(cfg) }.map_err(self.drv("launch moe_route"))?;
        }
        // 2. grouping by expert and the tile table
        {
            let f = self.function(&MOE, "moe_plan")?;
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            let (ids, perm, slot) = (at(lay.ids), at(lay.perm), at(lay.slot));
            let (te, ts, tl) = (at(lay.tile_e), at(lay.tile_start), at(lay.tile_len));
            let mut b = self.stream.launch_builder(&f);
            b.arg(&ids)
                .arg(&ai)
                .arg(&ki)
                .arg(&ei)
                .arg(&tiles)
                .arg(&perm)
                .arg(&slot)
                .arg(&te)
                .arg(&ts)
                .arg(&tl);
            // SAFETY: ids holds A expert ids < E ≤ 1024 (written by moe_route); perm/slot are A
            // i32, the tile arrays tiles_max i32, all inside the scratch (layout()).
            unsafe { b.launch(cfg) }.map_err(self.drv("launch moe_plan"))?;
        }
        // 3. gather the routed rows
        {
            let f = self.function(&MOE, "moe_gather")?;
            let (perm, xs) = (at(lay.perm), at(lay.xs));
            let mut b = self.stream.launch_builder(&f);
            b.arg(&xp).arg(&perm).arg(&xs).arg(&ai).arg(&di);
            // SAFETY: perm holds A token indices < n_tokens; x is [n_tokens, dim] f32, xs
            // [A, dim] f32 in the scratch.
            unsafe { b.launch(self.grid_1d(a * dim)) }.map_err(self.drv("launch moe_gather"))?;
        }
        // 4-6. expert projections
        self.launch_moe_gemv(gw, at(lay.xs), at(lay.g), &lay, sp, ff, dim)?;
        self.launch_moe_gemv(uw, at(lay.xs), at(lay.u), &lay, sp, ff, dim)?;
        {
            let buf = sc.buffer();
            let base = sc.offset();
            let af = Shape::d2(a, ff);
            let gv = buf.view(base + lay.g, af, DType::F32)?;
            let uv = buf.view(base + lay.u, af, DType::F32)?;
            let hv = buf.view_mut(base + lay.h, af, DType::F32)?;
            self.op_glu(gv, uv, ex.act, hv)?;
        }
        self.launch_moe_gemv(dw, at(lay.h), at(lay.xs), &lay, sp, dim, ff)?;
        // 7. weighted sum in rank order
        {
            let f = self.function(&MOE, "moe_combine")?;
            let (y, wts, slot) = (at(lay.xs), at(lay.wts), at(lay.slot));
            let mut b = self.stream.launch_builder(&f);
            b.arg(&y)
                .arg(&wts)
                .arg(&slot)
                .arg(&op_)
                .arg(&ti)
                .arg(&ki)
                .arg(&di);
            // SAFETY: y is [A, dim] f32, wts/slot A entries (slot < A or −1), out [n_tokens, dim].
            unsafe { b.launch(self.grid_1d(n_tokens * dim)) }
                .map_err(self.drv("launch moe_combine"))?;
        }
        Ok(())
    }

    /// y `[A, n]` = W[e] · input rows `[A, k]` per tile (W `[E, n, k]` repacked).
    #[allow(clippy::too_many_arguments)]
    fn launch_moe_gemv(
        &self,
        w: &CudaWeight,
        input: u64,
        y: u64,
        lay: &Layout,
        sp: u64,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let ti = DType::WEIGHT_TYPES
            .iter()
            .position(|d| *d == w.dtype)
            .ok_or_else(|| check::unsupported(OP, w.dtype, &self.info))?;
        let f = self.function(&MOE, GEMV[ti])?;
        let qk = split(w.dtype).map_or(1, |s| s.qk);
        let nchunks = (k / qk) * chunks_per_block(w.dtype);
        let threads = nchunks.div_ceil(32).clamp(1, 4) * 32;
        let cfg = LaunchConfig {
            grid_dim: (arg_i32(OP, "rows", n)? as u32, lay.tiles_max as u32, 1),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (body, head) = (w.body_ptr(), w.head_ptr());
        let (te, ts, tl) = (
            sp + lay.tile_e as u64,
            sp + lay.tile_start as u64,
            sp + lay.tile_len as u64,
        );
        let (ni, ki) = (arg_i32(OP, "n", n)?, arg_i32(OP, "k", k)?);
        let mut b = self.stream.launch_builder(&f);
        b.arg(&body)
            .arg(&head)
            .arg(&input)
            .arg(&y)
            .arg(&te)
            .arg(&ts)
            .arg(&tl)
            .arg(&ni)
            .arg(&ki);
        // SAFETY: the weight is the repacked [E, n, k] tensor (rows whole blocks, checked by
        // chunked_ok); each tile names an expert e < E and rows start..start+len < A of the
        // 16-byte aligned scratch input [A, k] and output [A, n] (written by moe_plan).
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(self.drv("launch moe_gemv"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_regions_are_aligned_disjoint_and_tiles_bound_the_plan() {
        for (t, k, e, dim, ff) in [
            (1, 2, 8, 512, 256),
            (67, 2, 16, 1024, 512),
            (12, 4, 16, 4096, 1408),
        ] {
            let l = layout(t, k, e, dim, ff);
            let regions = [
                (l.ids, 4 * l.assignments),
                (l.wts, 4 * l.assignments),
                (l.slot, 4 * l.assignments),
                (l.perm, 4 * l.assignments),
                (l.tile_e, 4 * l.tiles_max),
                (l.tile_start, 4 * l.tiles_max),
                (l.tile_len, 4 * l.tiles_max),
                (l.xs, 4 * l.assignments * dim),
                (l.g, 4 * l.assignments * ff),
                (l.u, 4 * l.assignments * ff),
                (l.h, 4 * l.assignments * ff),
            ];
            for (i, &(o, n)) in regions.iter().enumerate() {
                assert_eq!(o % 256, 0);
                assert!(o + n <= l.total);
                for &(o2, n2) in &regions[i + 1..] {
                    assert!(o + n <= o2 || o2 + n2 <= o, "overlap");
                }
            }
            // Worst case of the plan kernel: every expert's rows end in a partial tile.
            let a = t * k;
            let mut worst = 0;
            for used in 1..=e.min(a) {
                // `used` experts share a rows: tiles ≤ Σ ⌈c_e / 8⌉ ≤ ⌊(a − used) / 8⌋ + used.
                worst = usize::max(worst, (a - used) / TILE_M + used);
            }
            assert!(worst <= l.tiles_max, "{worst} > {}", l.tiles_max);
        }
    }
}
