//! kiln-wgpu: kiln's portable backend — WGSL compute shaders through wgpu (Vulkan first, also
//! Metal and DX12). CPU Vulkan drivers such as Mesa's lavapipe are valid devices: that is how
//! CI runs this backend.
//!
//! Layout: `device.rs` (adapters, device, command batching), `buffer.rs` (buffers, host
//! transfers, view bindings), `pipeline_cache.rs` (shader templating + cache), `weight.rs`
//! (prepare_weight: aligned repack, row chunks under the binding cap), `tune.rs` (measured
//! GEMV/GEMM crossover), `ops/<op>.rs` next to `shaders/<op>.wgsl`.

mod buffer;
mod device;
mod error;
mod ops;
mod pipeline_cache;
mod profile;
mod timer;
mod tune;
mod weight;

use std::sync::Arc;

pub use device::WgpuBackend;
pub use error::WgpuError;
pub use ops::matmul::MatmulPath;
pub use profile::PassTime;
pub use tune::TuneResult;

use kiln_core::{
    Activation, AttnParams, Backend, BackendKind, BackendProvider, Buffer, DType, DeviceInfo,
    HostTensor, MatmulUse, MoeExperts, MoeRouting, OpKind, PagedKv, Probe, Result, RopeParams,
    SeqBatch, Shape, View, ViewMut, Weight,
};

/// Discovery entry point for wgpu adapters.
#[derive(Default)]
pub struct WgpuProvider;

impl BackendProvider for WgpuProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }
    fn probe(&self) -> Probe {
        match device::adapters() {
            Err(why) => Probe::NotFound(why),
            Ok(v) if v.is_empty() => Probe::NotFound(
                "no Vulkan/Metal/DX12 adapter (install a Vulkan driver, e.g. mesa-vulkan-drivers)"
                    .into(),
            ),
            Ok(v) => Probe::Found(
                v.iter()
                    .enumerate()
                    .map(|(i, a)| device::device_info(i as u32, a))
                    .collect(),
            ),
        }
    }
    fn open(&self, index: u32) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(WgpuBackend::open(index)?))
    }
}

impl WgpuBackend {
    /// Run `matmul` through one explicit kernel, ignoring the tuned crossover.
    pub fn matmul_with(
        &self,
        x: View<'_>,
        w: &Weight,
        out: ViewMut<'_>,
        path: MatmulPath,
    ) -> Result<()> {
        ops::matmul::matmul_with(self, x, w, out, path)
    }

    /// The kernel `matmul` picks for m x rows of a weight of this dtype and shape.
    pub fn matmul_path(&self, dtype: DType, n: usize, k: usize, m: usize) -> MatmulPath {
        self.choose_path(dtype, n, k, m)
    }

    /// Device-to-device byte copy through the API's copy command (no shader): the copy
    /// bandwidth benchmarks compare against. Offsets and length must be multiples of 4.
    pub fn copy_buffer(
        &self,
        src: &Buffer,
        src_off: usize,
        dst: &Buffer,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        let (s, d) = (self.mem(OpKind::Copy, src)?, self.mem(OpKind::Copy, dst)?);
        let ok = |o: usize, b: &Buffer| {
            o.is_multiple_of(4) && o.checked_add(len).is_some_and(|e| e <= b.len())
        };
        if !len.is_multiple_of(4) || !ok(src_off, src) || !ok(dst_off, dst) {
            return Err(kiln_core::Error::View(format!(
                "copy_buffer of {len} bytes from {src_off} to {dst_off}: needs 4-byte multiples inside both buffers"
            )));
        }
        self.record(|enc| {
            enc.copy_buffer_to_buffer(&s.buf, src_off as u64, &d.buf, dst_off as u64, len as u64)
        })
    }

    /// The shader-copy bandwidth probe (`shaders/copy_v4.wgsl`): copies the first `bytes` of
    /// `src` to `dst` with 16-byte loads, `per_invocation` (1, 2, 4 or 8) of them in flight
    /// per invocation. Benchmarks time it as the adapter's streaming ceiling (read + write).
    /// `bytes` must be a multiple of 16, inside both buffers, below 2^36.
    pub fn copy_probe(
        &self,
        src: &Buffer,
        dst: &Buffer,
        bytes: usize,
        per_invocation: u32,
    ) -> Result<()> {
        let (s, d) = (self.mem(OpKind::Copy, src)?, self.mem(OpKind::Copy, dst)?);
        let n4 = u32::try_from(bytes / 16)
            .ok()
            .filter(|_| bytes.is_multiple_of(16));
        let Some(n4) = n4.filter(|_| bytes <= src.len() && bytes <= dst.len()) else {
            return Err(kiln_core::Error::View(format!(
                "copy_probe of {bytes} bytes: needs a multiple of 16 inside both buffers ({} and {} bytes), below 2^36",
                src.len(),
                dst.len()
            )));
        };
        if ![1, 2, 4, 8].contains(&per_invocation) {
            return Err(kiln_core::Error::Invalid(format!(
                "copy_probe: {per_invocation} vec4s per invocation (expected 1, 2, 4 or 8)"
            )));
        }
        ops::copy::copy_v4(self, &s.buf, &d.buf, n4, per_invocation, false)
    }

    /// The read probe: `copy_probe`'s loads of `bytes` of `src` and no store (what a GEMV that
    /// reads that many weight bytes cannot beat). `dst` (≥ 16 bytes) is bound, never written.
    pub fn read_probe(&self, src: &Buffer, dst: &Buffer, bytes: usize) -> Result<()> {
        let (s, d) = (self.mem(OpKind::Copy, src)?, self.mem(OpKind::Copy, dst)?);
        let Some(n4) = u32::try_from(bytes / 16)
            .ok()
            .filter(|_| bytes.is_multiple_of(16) && bytes <= src.len() && dst.len() >= 16)
        else {
            return Err(kiln_core::Error::View(format!(
                "read_probe of {bytes} bytes: needs a multiple of 16 inside the source ({} bytes), below 2^36, and 16 bytes of destination ({})",
                src.len(),
                dst.len()
            )));
        };
        ops::copy::copy_v4(self, &s.buf, &d.buf, n4, 4, true)
    }

    /// Bytes `prepare` will allocate for a `dtype` weight of `shape` (see weight.rs): per row
    /// chunk, the repacked blocks (split types: the blocks without their f16 `d`, then the `d`
    /// array padded to 4 bytes; other types: the bytes padded to 4). The same checks as
    /// `prepare`, so a weight it would refuse is refused here with the same error.
    fn prepared_bytes(&self, dtype: DType, shape: &Shape) -> Result<usize> {
        let op = OpKind::Matmul;
        if !DType::WEIGHT_TYPES.contains(&dtype) {
            return Err(kiln_core::backend::check::unsupported(
                op, dtype, &self.info,
            ));
        }
        if !(2..=3).contains(&shape.rank()) {
            return Err(kiln_core::Error::shape(
                op,
                format!("weight {shape} must be [n, k] or [experts, n, k]"),
            ));
        }
        let k = shape.last();
        if !k.is_multiple_of(32) {
            return Err(kiln_core::Error::Quant {
                dtype,
                msg: format!("rows of {k} elements: the wgpu backend needs k % 32 == 0"),
            });
        }
        let rows = shape.rows();
        let row_bytes = dtype.bytes_for(k)?;
        let cap = self.max_binding();
        if row_bytes as u64 + 4 > cap {
            return Err(self.limit_error(
                format!("one row of a {shape} {dtype} weight"),
                row_bytes as u64 + 4,
                cap,
            ));
        }
        let per_chunk = (((cap - 4) / row_bytes as u64) as usize).max(1);
        // Bytes of one chunk of `r` rows as `weight::repack` lays it out.
        let chunk = |r: usize| match weight::split_d(dtype) {
            Some((_, keep)) => {
                let nb = r * (k / dtype.block_size());
                nb * keep + (nb * 2).div_ceil(4) * 4
            }
            None => (r * row_bytes).div_ceil(4) * 4,
        };
        let full = rows / per_chunk;
        Ok(full * chunk(per_chunk) + chunk(rows % per_chunk))
    }

    /// The number of row chunks (separate bindings) a prepared weight was split into.
    pub fn weight_chunks(&self, w: &Weight) -> Result<usize> {
        Ok(weight::WgpuWeight::of(w, OpKind::Matmul)?.chunks.len())
    }
}

impl Backend for WgpuBackend {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn supports(&self, op: OpKind, dtype: DType) -> bool {
        use OpKind::*;
        match op {
            Matmul | Embed | Moe => DType::WEIGHT_TYPES.contains(&dtype),
            Attention | KvAppend | Copy | AllReduce => dtype.is_float(),
            RmsNorm | Rope | Glu | Add | AddBias => dtype == DType::F32,
            Gather => matches!(dtype, DType::F32 | DType::I32 | DType::U32),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        self.alloc_buffer(bytes)
    }

    fn write(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        self.write_bytes(dst, offset, src)
    }

    fn read(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.read_bytes(src, offset, dst)
    }

    fn synchronize(&self) -> Result<()> {
        self.wait_idle()
    }

    fn prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight> {
        self.prepare(w)
    }

    fn weight_bytes(&self, dtype: DType, shape: &Shape) -> Result<usize> {
        self.prepared_bytes(dtype, shape)
    }

    /// The op-parameter ring and the one-row GEMV's int8-x buffer allocated when the device
    /// opened (uniforms of one command batch; 96 KiB), plus the GEMM's k-split scratch (the
    /// most any of `matmuls` needs, or what is allocated if more). Tuning at run time is off unless `KILN_WGPU_AUTOTUNE=1`, whose transient
    /// buffers this does not count; host transfers stage in host memory.
    fn workspace_bytes(&self, matmuls: &[MatmulUse]) -> usize {
        self.params_ring.size() as usize
            + self.xq_buf.size() as usize
            + ops::gemm::scratch_bound(matmuls, self.coop_matrix).max(self.gemm_scratch_bytes())
    }

    /// Allocates the GEMM's k-split scratch for the largest split product of `matmuls`.
    fn reserve_workspace(&self, matmuls: &[MatmulUse]) -> Result<()> {
        let b = ops::gemm::scratch_bound(matmuls, self.coop_matrix);
        if b > 0 {
            self.gemm_scratch(b)?;
        }
        Ok(())
    }

    fn matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        ops::matmul::matmul(self, x, w, out)
    }

    fn matmul_many(&self, x: View<'_>, parts: &[(&Weight, ViewMut<'_>)]) -> Result<()> {
        ops::matmul::matmul_many(self, x, parts)
    }

    #[allow(clippy::too_many_arguments)]
    fn matmul_glu(
        &self,
        x: View<'_>,
        gate: &Weight,
        up: &Weight,
        act: Activation,
        g_out: ViewMut<'_>,
        u_out: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        ops::matmul::matmul_glu(self, x, gate, up, act, g_out, u_out, out)
    }

    fn attention_scratch_bytes(&self, p: &AttnParams, n_tokens: usize, b: &SeqBatch<'_>) -> usize {
        ops::attention::scratch_bytes(p, n_tokens, b)
    }

    fn attention(
        &self,
        q: View<'_>,
        kv: &PagedKv<'_>,
        batch: &SeqBatch<'_>,
        p: &AttnParams,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        ops::attention::attention(self, q, kv, batch, p, scratch, out)
    }

    fn kv_append(&self, k: View<'_>, v: View<'_>, kv: &PagedKv<'_>, slots: View<'_>) -> Result<()> {
        ops::kv_append::kv_append(self, k, v, kv, slots)
    }

    fn rms_norm(&self, x: View<'_>, w: View<'_>, eps: f32, out: ViewMut<'_>) -> Result<()> {
        ops::rms_norm::rms_norm(self, x, w, eps, out)
    }

    fn add_rms_norm(
        &self,
        a: View<'_>,
        b: View<'_>,
        w: View<'_>,
        eps: f32,
        sum: ViewMut<'_>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        ops::rms_norm::add_rms_norm(self, a, b, w, eps, sum, out)
    }

    fn rope(
        &self,
        x: ViewMut<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
    ) -> Result<()> {
        ops::rope::rope(self, x, positions, inv_freq, p)
    }

    #[allow(clippy::too_many_arguments)]
    fn rope_kv_append(
        &self,
        q: ViewMut<'_>,
        k: ViewMut<'_>,
        v: View<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
        kv: &PagedKv<'_>,
        slots: View<'_>,
    ) -> Result<()> {
        ops::rope::rope_kv_append(self, q, k, v, positions, inv_freq, p, kv, slots)
    }

    fn glu(&self, gate: View<'_>, up: View<'_>, act: Activation, out: ViewMut<'_>) -> Result<()> {
        ops::glu::glu(self, gate, up, act, out)
    }

    fn add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        ops::add::add(self, a, b, out)
    }

    fn add_bias(&self, x: View<'_>, bias: View<'_>, out: ViewMut<'_>) -> Result<()> {
        ops::add::add_bias(self, x, bias, out)
    }

    fn gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        ops::gather::gather(self, x, ids, out)
    }

    fn embed(&self, ids: View<'_>, table: &Weight, scale: f32, out: ViewMut<'_>) -> Result<()> {
        ops::embed::embed(self, ids, table, scale, out)
    }

    fn moe_scratch_bytes(&self, n_tokens: usize, e: &MoeExperts<'_>, r: &MoeRouting) -> usize {
        ops::moe::scratch_bytes(n_tokens, e, r)
    }

    fn moe(
        &self,
        x: View<'_>,
        router_logits: View<'_>,
        experts: &MoeExperts<'_>,
        r: &MoeRouting,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        ops::moe::moe(self, x, router_logits, experts, r, scratch, out)
    }

    fn copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
        ops::copy::copy(self, src, dst)
    }
}
