//! Launchers of the int8 kernels' x rounding (`mq_quant_x` for mqk.rs's mq4k / mq5k / mq6k /
//! mq8_0, `mp_quant_x` for mp4k.rs; they differ only in where they store) and of mp4k / mpt4k
//! (the kernels differ only in mpt4k's extra tensor-map parameter).

use cudarc::driver::{CudaFunction, LaunchConfig};
use kiln_core::Result;

use super::super::launch::Arg;
use super::warp_items_launch;
use crate::buffer::CudaWeight;
use crate::device::CudaBackend;
use crate::module_cache::MATMUL_MMA;

impl CudaBackend {
    /// `mq_quant_x` or `mp_quant_x` (`name`)`(x, xq, xs, k, m, mp)`: one warp per (Q4_K block
    /// column, padded x row), `warps` of them, 8 per 256-thread block, grid-stride. The two
    /// round x the same way (q4k_x_round8) and differ only in where they store: mq4k's order
    /// (xq u8 [k/256, mp, 256], xs float2 [k/256, mp/2, 8, 2]) or mp4k's fragment order (xq
    /// [k/256, mp/8, 4, 32, 16], xs [k/256, mp/8, 4, 4, 2, 2]); the same sizes either way.
    pub(super) fn launch_q4k_quant_x(
        &self,
        name: &'static str,
        x: u64,
        xqs: [u64; 2],
        dims: [i32; 5],
        warps: usize,
    ) -> Result<()> {
        let f = self.function(&MATMUL_MMA, name)?;
        let cfg = warp_items_launch(warps, self.info.caps.compute_units.max(1) as usize);
        let [_, k, m, mp, _] = dims;
        let args = [
            Arg::U64(&x),
            Arg::U64(&xqs[0]),
            Arg::U64(&xqs[1]),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&mp),
        ];
        // SAFETY: mq_quant_x / mp_quant_x(x, xq, xs, k, m, mp): x holds m·k f32 (k a multiple
        // of 256: Q4_K rows are whole blocks); xq is scratch of mp·k bytes and xs of mp·(k/32)
        // float2 (the plan's sizes, mp ≥ m; a multiple of 8 for mp4k's plan). A programmatic
        // dependent of the previous kernel: it waits (griddepcontrol.wait) before reading x or
        // writing the scratch.
        unsafe { self.launch_pdl(&f, name, cfg, &args) }
    }

    /// The int8 tensor-core Q4_K kernels `mp4k_*` / `mpt4k_*`: `(w, xq, xs, y, n, k, m, mp,
    /// blocks per split)` then `tail` (mpt4k's tensor map), a programmatic dependent of the
    /// quant_x above (it issues its first W copies, then waits).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_q4k_x8(
        &self,
        f: &CudaFunction,
        what: &'static str,
        cfg: LaunchConfig,
        w: &CudaWeight,
        x: [u64; 2],
        y: u64,
        dims: [i32; 5],
        tail: &[Arg<'_>],
    ) -> Result<()> {
        let body = w.body_ptr();
        let [n, k, m, mp, spz] = dims;
        let mut args = vec![
            Arg::U64(&body),
            Arg::U64(&x[0]),
            Arg::U64(&x[1]),
            Arg::U64(&y),
            Arg::I32(&n),
            Arg::I32(&k),
            Arg::I32(&m),
            Arg::I32(&mp),
            Arg::I32(&spz),
        ];
        args.extend_from_slice(tail);
        // SAFETY: w's body is the n × k Q4_K weight (n·k/256 blocks of 144 bytes, 16-byte
        // aligned, rows whole blocks; rows read are clamped to n − 1, block columns < k/256);
        // xq / xs were written by the matching quant_x just before on this stream, in the
        // kernel's order (read after griddepcontrol.wait; x rows / tiles read < mp); y f32: the
        // m·n output (spz unused: mp4k does not split k); writes bounded by n and m. Block size
        // within the function's limit and dynamic shared memory (the configuration's size)
        // allowed just before. `tail`: mpt4k_*'s 128-byte tensor map of
        // w (__grid_constant__, by value), encoded for this w, n, k and its box.
        unsafe { self.launch_pdl(f, what, cfg, &args) }
    }
}
