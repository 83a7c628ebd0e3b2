//! `Backend::matmul_many` on CUDA: weights that read the same x at one row (a layer's q, k, v;
//! its gate and up) as ONE fused-GEMV launch instead of one per weight. Where this declines,
//! the mma kernels' grouped routes (`matmul_many_mma`, matmul_mma/many.rs) get the group.
//!
//! At batch-1 decode every projection is a GEMV whose fixed cost (launch, ramp-up, the tail of
//! a partly filled last wave) is a large share of its time on the small matrices (k and v are
//! 1024 × 4096, at 2-way tensor parallelism 512 × 4096). The `*s_` kernels of
//! kernels/matmul_q.cu (`gemv1s_<type>`, `gemv8s_<type>`, `gemvs_<float>`) take up to
//! `GEMV_NS` weight segments and number their row groups one after the other, so the three
//! projections fill one grid. Each row's dot product is computed exactly as the single-weight
//! kernel computes it (same x rounding, same per-lane order); only the S-warp split of a row —
//! chosen from the total group count — may differ, i.e. the order of the final partial sums.
//!
//! The group runs when every part would run the fused kernel at m = 1 on its own (tuned
//! crossover ≥ 1 row, no forced path), the weights share dtype and k, and the outputs are f32
//! `[1, n_i]` not overlapping x or each other; anything else runs one `matmul` per part (so
//! errors are `matmul`'s). At 2 ≤ m ≤ 4 the same holds with the crossover ≥ m rows, for the
//! pipelined kernel's `_m2` / `_m4` forms only (`gemvps_<type>_m2`, `gemvpg_<type>_m4`, …;
//! outputs `[m, n_i]`; up to `KILN_GEMV_PIPE_ROWS` rows). Groups of the pipelined kernel's types (Q3_K, Q4_K, Q5_K, Q6_K,
//! IQ4_XS, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) take it (`quant_x_q4_k2` + `gemvps_<type>` / `gemvpg_<type>`,
//! kernels/gemv_pipe.cuh) wherever the single-weight m = 1
//! matmul would ([`super::pipe`]: sm_90, k a multiple of 2048, aligned weights, not on a device
//! of an all-reduce group; `KILN_GEMV_PIPE_GROUP=0` keeps groups off it for A/B). The other
//! block types pick the one-kernel `gemv1s_` by the rule of [`super::gemv1`] applied to the
//! group's total bytes, else `quant_x` once + `gemv8s_`. `KILN_GEMV_GROUP=0` turns grouping off
//! (A/B measurements).

use std::sync::OnceLock;

use cudarc::driver::LaunchConfig;
use kiln_core::{Activation, DType, OpKind, Result, View, ViewMut, Weight};

use super::gemv1::{
    GEMV1_AUTO, GEMV1_MAX_BYTES, GEMV1_MAX_SMEM, GEMV1_THREADS, gemv1_auto_on, gemv1_grid,
};
use super::{
    FLOAT_TYPES, QUANT_X, arg_i32, fused_scratch_bytes, m1_grid, m1_kernel, type_index, x_units,
};
use crate::buffer::{CudaWeight, chunked_ok};
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_Q;
use crate::ops::launch::Arg;

/// Weight segments per launch (kernels/matmul_q.cu `GEMV_NS`).
pub(crate) const GEMV_NS: usize = 3;
/// W rows per group of every segmented kernel (R = 4 at M = 1).
const R: usize = 4;

/// The kernels' `GemvSegs` parameter (passed by value): segment s = weight body/head pointers,
/// its y `[1, n[s]]` and its rows (0: unused).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct GemvSegs {
    pub(crate) body: [u64; GEMV_NS],
    pub(crate) head: [u64; GEMV_NS],
    pub(crate) y: [u64; GEMV_NS],
    pub(crate) n: [i32; GEMV_NS],
}

macro_rules! names {
    ($prefix:literal, $($s:literal),*) => { [$( concat!($prefix, $s) ),*] };
}
const GEMV1S: [&str; 12] = names!(
    "gemv1s_", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq4_nl", "iq4_xs"
);
const GEMV8S: [&str; 12] = names!(
    "gemv8s_", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq4_nl", "iq4_xs"
);
const GEMVS_F: [&str; 3] = names!("gemvs_", "f32", "f16", "bf16");
const GEMV1G: [&str; 12] = names!(
    "gemv1g_", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq4_nl", "iq4_xs"
);
const GEMV8G: [&str; 12] = names!(
    "gemv8g_", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    "iq4_nl", "iq4_xs"
);
const GEMVG_F: [&str; 3] = names!("gemvg_", "f32", "f16", "bf16");

/// Grouping on unless `KILN_GEMV_GROUP=0`.
fn group_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMV_GROUP").map_or(true, |v| v != "0"))
}

/// Groups of the pipelined kernel's types on it unless `KILN_GEMV_PIPE_GROUP=0`.
fn group_pipe_on() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMV_PIPE_GROUP").map_or(true, |v| v != "0"))
}

/// GLU-mode launches on unless `KILN_GEMV_GLU=0` (then matmul_many + glu).
fn glu_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMV_GLU").map_or(true, |v| v != "0"))
}

/// Which segmented kernel a group runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKernel {
    /// `gemv1s_<type>`: one kernel, x quantized in shared memory.
    OneKernel,
    /// `quant_x_<type>` + `gemv8s_<type>`.
    TwoKernels,
    /// `gemvs_<float type>`.
    Float,
    /// `quant_x_q4_k2` + `gemvps_<type>` / `gemvpg_<type>` (the bulk-copy ring, the types of
    /// matmul_q/pipe.rs).
    Pipe,
}

impl CudaBackend {
    /// `Backend::matmul_many`: one launch for the group where it applies, else one matmul each.
    pub(crate) fn op_matmul_many(
        &self,
        x: View<'_>,
        parts: &[(&Weight, ViewMut<'_>)],
    ) -> Result<()> {
        if self.matmul_group(x, parts, true)?.is_none() && !self.matmul_many_mma(x, parts, true)? {
            for (w, out) in parts {
                self.op_matmul(x, w, *out)?;
            }
        }
        Ok(())
    }

    /// Runs `parts` as one segmented launch if they qualify (module doc) and says which kernel
    /// ran; `None`: nothing was launched (the caller runs one matmul per part). `tuned`: also
    /// require the tuned crossover to pick the fused kernel at one row for every part (the
    /// runtime's rule); tests and benches pass false to run the segmented kernel regardless.
    pub fn matmul_group(
        &self,
        x: View<'_>,
        parts: &[(&Weight, ViewMut<'_>)],
        tuned: bool,
    ) -> Result<Option<GroupKernel>> {
        self.group_launch(x, parts, tuned, None)
    }

    /// `Backend::matmul_glu`: out = act(x·Gᵀ) ⊙ x·Uᵀ as one GLU-mode launch where it applies
    /// (as [`Self::matmul_group`], with G and U of one shape), else matmul_many then glu.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_matmul_glu(
        &self,
        x: View<'_>,
        gate: &Weight,
        up: &Weight,
        act: Activation,
        g_out: ViewMut<'_>,
        u_out: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        if self
            .matmul_glu_group(x, gate, up, act, [g_out, u_out, out], true)?
            .is_none()
        {
            self.op_matmul_many(x, &[(gate, g_out), (up, u_out)])?;
            self.op_glu(g_out.as_view(), u_out.as_view(), act, out)?;
        }
        Ok(())
    }

    /// The GLU-mode launch (`gemv1g_`, `quant_x` + `gemv8g_`, `gemvg_`) if it applies: `outs`
    /// = [g_out, u_out, out] (the first two only qualify the call; the kernel writes `out`
    /// `[m, n]` alone; m = 1, or up to 4 on the pipelined kernels). `tuned` as in
    /// [`Self::matmul_group`].
    pub fn matmul_glu_group(
        &self,
        x: View<'_>,
        gate: &Weight,
        up: &Weight,
        act: Activation,
        [g_out, u_out, out]: [ViewMut<'_>; 3],
        tuned: bool,
    ) -> Result<Option<GroupKernel>> {
        let n = gate.shape().dim(0);
        let m = x.numel() / x.shape().last().max(1);
        if !glu_enabled()
            || up.shape() != gate.shape()
            || out.dtype() != DType::F32
            || out.numel() != m * n
            || out.shape().last() != n
            || out.device() != self.info.id
            || out.check_disjoint(&x).is_err()
        {
            return Ok(None);
        }
        let code = match act {
            Activation::Silu => 0,
            Activation::GeluTanh => 1,
        };
        let outp = self.ptr_mut(OpKind::Matmul, &out)?;
        self.group_launch(x, &[(gate, g_out), (up, u_out)], tuned, Some((code, outp)))
    }

    /// The segmented launch of `parts` (`glu`: GLU mode with (act code, out pointer)).
    fn group_launch(
        &self,
        x: View<'_>,
        parts: &[(&Weight, ViewMut<'_>)],
        tuned: bool,
        glu: Option<(i32, u64)>,
    ) -> Result<Option<GroupKernel>> {
        let op = OpKind::Matmul;
        let k = x.shape().last();
        // x rows: 1, or up to KILN_GEMV_PIPE_ROWS where the pipelined kernels take the group
        // (checked below); mx: their kernel for m rows.
        let m = x.numel().checked_div(k).unwrap_or(0);
        let Some(mx) = super::pipe::pipe_m_index(m, false) else {
            return Ok(None);
        };
        if !group_enabled()
            || !(2..=GEMV_NS).contains(&parts.len())
            || x.dtype() != DType::F32
            || k == 0
            || x.numel() != m * k
            || super::super::matmul_mma::forced_path().is_some()
        {
            return Ok(None);
        }
        let dt = parts[0].0.dtype();
        if !chunked_ok(dt, k) || !DType::WEIGHT_TYPES.contains(&dt) {
            return Ok(None);
        }
        let mut segs = GemvSegs::default();
        let (mut groups, mut bytes) = (0, 0);
        // gemv_pipe_auto is false for a type the pipelined kernel does not take.
        let pipe_t = super::pipe::pipe_type(dt);
        let mut pipe = group_pipe_on()
            && super::pipe::gemv_pipe_auto(dt)
            && !super::pipe::grouped(self.ctx.ordinal());
        if !self.parts_fit(&x, parts, dt, [m, k]) {
            return Ok(None);
        }
        for (i, (w, out)) in parts.iter().enumerate() {
            let s = w.shape();
            let cw: &CudaWeight = self.weight(op, w)?;
            if tuned && self.crossover_or_tune(w, cw)?.max_fused_rows < m {
                return Ok(None);
            }
            let n = s.dim(0);
            segs.body[i] = cw.body_ptr();
            segs.head[i] = cw.head_ptr();
            segs.y[i] = self.ptr_mut(op, out)?;
            segs.n[i] = arg_i32(op, "n", n)?;
            groups += n.div_ceil(R);
            bytes += cw.mem.slice.len();
            pipe &= self.gemv_pipe_applies(cw, k);
        }
        if let Some((_, outp)) = glu {
            // GLU mode: the kernel writes act(gate)·up into `out` only.
            segs.y = [outp, 0, 0];
        }
        if m > 1 && !pipe {
            // Only the pipelined kernels have forms for m > 1.
            return Ok(None);
        }
        let act = glu.map(|g| g.0);
        let xp = self.ptr(op, &x)?;
        let ki = arg_i32(op, "k", k)?;
        let mi = arg_i32(op, "m", m)?;
        let Some(ti) = type_index(dt) else {
            return Ok(None);
        };
        let sms = self.info.caps.compute_units.max(1) as usize;
        if ti < FLOAT_TYPES {
            if !xp.is_multiple_of(16) {
                return Ok(None);
            }
            let name = m1_kernel(
                dt,
                if glu.is_some() {
                    GEMVG_F[ti]
                } else {
                    GEMVS_F[ti]
                },
            );
            let occ = self.occupancy(name, 128, 0)?;
            let (blocks, s) = m1_grid(dt, groups, k, sms, occ);
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            self.launch_segs(name, cfg, &segs, &[xp], ki, None, s as i32, act)?;
            return Ok(Some(GroupKernel::Float));
        }
        if let (true, Some(pt)) = (pipe, pipe_t) {
            // GLU mode: a group is R/2 gate rows and the same R/2 up rows.
            let (name, groups) = match glu {
                Some(_) => (pt.glu[mx], parts[0].0.shape().dim(0).div_ceil(R / 2)),
                None => (pt.segs[mx], groups),
            };
            let (_, cfg, s) = self.gemv_pipe_prepare(pt, name, groups, k)?;
            // The scratch is shared: hold its lock until both kernels are enqueued.
            let (_guard, xqs) = self.gemv_pipe_quant_x(xp, m, k)?;
            self.launch_segs(name, cfg, &segs, &xqs, ki, Some(mi), s, act)?;
            return Ok(Some(GroupKernel::Pipe));
        }
        let qi = ti - FLOAT_TYPES;
        let smem = x_units(dt, k) * 24;
        if GEMV1_AUTO[qi]
            && gemv1_auto_on()
            && bytes <= GEMV1_MAX_BYTES
            && xp.is_multiple_of(16)
            && smem <= GEMV1_MAX_SMEM
        {
            let name = if glu.is_some() {
                GEMV1G[qi]
            } else {
                GEMV1S[qi]
            };
            let occ = self.occupancy(name, GEMV1_THREADS, smem)?;
            let (blocks, s) = gemv1_grid(dt, groups * R, k, sms, occ);
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (GEMV1_THREADS, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            self.launch_segs(name, cfg, &segs, &[xp], ki, None, s as i32, act)?;
            return Ok(Some(GroupKernel::OneKernel));
        }
        let units = x_units(dt, k);
        // The scratch is shared: hold its lock until both kernels are enqueued.
        let (_guard, scratch) = self.matmul_scratch(fused_scratch_bytes(dt, 1, k))?;
        let (xq, xs) = (scratch, scratch + (units * 16) as u64);
        self.launch_quant_x(QUANT_X[qi], xp, xq, xs, ki, 1, units)?;
        let name = m1_kernel(
            dt,
            if glu.is_some() {
                GEMV8G[qi]
            } else {
                GEMV8S[qi]
            },
        );
        let (blocks, s) = m1_grid(dt, groups, k, sms, self.occupancy(name, 128, 0)?);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_segs(name, cfg, &segs, &[xq, xs], ki, None, s as i32, act)?;
        Ok(Some(GroupKernel::TwoKernels))
    }

    /// Whether `parts` qualify for one shared-x launch over x `[m, k]`: every weight of `dt`,
    /// `[n_i, k]`, on this device; every output f32 `[m, n_i]` on this device, disjoint from x
    /// and from the outputs before it.
    pub(crate) fn parts_fit(
        &self,
        x: &View<'_>,
        parts: &[(&Weight, ViewMut<'_>)],
        dt: DType,
        [m, k]: [usize; 2],
    ) -> bool {
        parts.iter().enumerate().all(|(i, (w, out))| {
            let s = w.shape();
            w.dtype() == dt
                && w.device() == self.info.id
                && s.rank() == 2
                && s.dim(1) == k
                && out.dtype() == DType::F32
                && out.numel() == m * s.dim(0)
                && out.shape().last() == s.dim(0)
                && out.device() == self.info.id
                && out.check_disjoint(x).is_ok()
                && parts[..i]
                    .iter()
                    .all(|(_, o)| out.check_disjoint(&o.as_view()).is_ok())
        })
    }

    /// A segmented kernel: (segs, x pointers, k[, m], S[, act]); `x` = [x] (`gemv1s_`/`gemvs_`
    /// and their GLU forms: one pointer) or [xq, xs] (`gemv8s_`, `gemv8g_`, `gemvps_`,
    /// `gemvpg_`); `m` (x rows) for the pipelined kernels; `act` for the GLU kernels.
    #[allow(clippy::too_many_arguments)]
    fn launch_segs(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        segs: &GemvSegs,
        x: &[u64],
        k: i32,
        m: Option<i32>,
        s: i32,
        act: Option<i32>,
    ) -> Result<()> {
        let f = self.function(&MATMUL_Q, name)?;
        // (segs, x pointers, k[, m], S[, act]) in parameter order, at most 7.
        let mut args = [Arg::raw(segs); 7];
        let mut len = 1;
        for (slot, p) in args[1..].iter_mut().zip(x) {
            *slot = Arg::U64(p);
            len += 1;
        }
        args[len] = Arg::I32(&k);
        len += 1;
        if let Some(m) = &m {
            args[len] = Arg::I32(m);
            len += 1;
        }
        args[len] = Arg::I32(&s);
        len += 1;
        if let Some(a) = &act {
            args[len] = Arg::I32(a);
            len += 1;
        }
        let args = &args[..len];
        // SAFETY: the kernel's parameters are (GemvSegs by value, x or xq + xs, k[, m], S[, act]); GemvSegs
        // is #[repr(C)] with the kernel struct's layout (3 body, 3 head, 3 y pointers, 3 i32
        // rows). Each segment's body/head is a prepared [n_s, k] weight of one dtype (rows whole
        // blocks, checked), y_s holds m·n_s f32 (checked, disjoint from x and each other; m = 1
        // except for the pipelined kernels, which take m ≤ their M); x holds k f32 at a 16-byte aligned address
        // (gemv1s_/gemvs_), or xq/xs are quant_x's scratch for the m rows written just before on
        // this stream (gemvps_/gemvpg_<type>[_m2|_m4]: quant_x_q4_k2's, in their lane order). W rows
        // are clamped to n_s − 1, writes bounded by n_s; the
        // dynamic shared memory is gemv1s_'s x_units·24 bytes or gemvp's ring (allowed by
        // gemv_pipe_prepare; its weights checked by gemv_pipe_applies: 16-byte aligned, k a
        // multiple of 2048). A
        // programmatic dependent: x is read and y written only after griddepcontrol.wait. GLU
        // kernels read segments 0 (gate) and 1 (up), both n × k, and write y_0 = out [m, n].
        unsafe { self.launch_pdl(&f, "launch segmented gemv", cfg, args) }
    }
}
