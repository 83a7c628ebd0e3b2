//! The reference backend with matmul inputs rounded the way a tensor-core GEMM rounds them:
//! - `Rounding::Cuda`, CUDA's dense GEMM path (backend-cuda/src/ops/matmul_q.rs: above the
//!   crossover, x is converted to f16 for f16 weights and to bf16 for bf16 and quantized
//!   weights; f32 weights keep f32 x);
//! - `Rounding::F16`, wgpu's cooperative-matrix GEMM (backend-wgpu/shaders/gemm_coop.wgsl: x
//!   clamped to f16 and the weights dequantized to f16 for every weight type). Emulated: x, and
//!   the values of f32/bf16 weights (quantized weights keep their values: their f16 rounding is
//!   not emulated).
//!
//! Every matmul of the emulation rounds (also the few-row ones the real backends run exactly),
//! so it is the conservative side. Its logits tell how far an exact implementation of that
//! arithmetic lands from the f32 reference, which is the stated tolerance of a backend that
//! computes that way (zoo/README: "backends computing in f16/bf16 need looser, stated
//! tolerances").
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers

use std::sync::Arc;

use half::{bf16, f16};
use kiln_core::*;

pub struct RoundedActs {
    pub inner: Arc<dyn Backend>,
    pub mode: Rounding,
}

/// How a backend's many-row matmul rounds its inputs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    Cuda,
    F16,
}

/// The rounding of `b`'s many-row matmul, `None` where it computes in f32.
pub fn act_rounding(b: &dyn Backend) -> Option<Rounding> {
    match b.id().kind {
        BackendKind::Cuda => Some(Rounding::Cuda),
        BackendKind::Wgpu if b.info().caps.tensor_cores => Some(Rounding::F16),
        _ => None,
    }
}

fn to_f16(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
}

fn round_x(mode: Rounding, dtype: DType, x: &mut [f32]) {
    match (mode, dtype) {
        (Rounding::F16, _) | (Rounding::Cuda, DType::F16) => to_f16(x),
        (Rounding::Cuda, DType::F32) => {}
        (Rounding::Cuda, _) => x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
    }
}

/// Weight bytes with f32/bf16 values rounded to f16 (`Rounding::F16`), else `None`.
fn f16_weight(w: &HostTensor<'_>) -> Option<Vec<u8>> {
    match w.dtype {
        DType::F32 => Some(
            w.data
                .chunks_exact(4)
                .flat_map(|b| {
                    let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    f16::from_f32(v).to_f32().to_le_bytes()
                })
                .collect(),
        ),
        DType::BF16 => Some(
            w.data
                .chunks_exact(2)
                .flat_map(|b| {
                    let v = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                    bf16::from_f32(f16::from_f32(v).to_f32()).to_le_bytes()
                })
                .collect(),
        ),
        _ => None,
    }
}

impl Backend for RoundedActs {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn supports(&self, op: OpKind, dtype: DType) -> bool {
        self.inner.supports(op, dtype)
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        self.inner.alloc(bytes)
    }
    fn write(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.write(dst, offset, src)
    }
    fn read(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.inner.read(src, offset, dst)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight> {
        match (self.mode, f16_weight(w)) {
            (Rounding::F16, Some(data)) => self
                .inner
                .prepare_weight(&HostTensor::new(w.dtype, w.shape, &data)?),
            _ => self.inner.prepare_weight(w),
        }
    }
    /// x f32 `[m, k]` is rounded to the weight's GEMM input type into a scratch copy.
    fn matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        let exact = self.mode == Rounding::Cuda && w.dtype() == DType::F32;
        if x.dtype() != DType::F32 || exact {
            return self.inner.matmul(x, w, out);
        }
        let mut bytes = vec![0u8; x.bytes()];
        self.inner.read(x.buffer(), x.offset(), &mut bytes)?;
        let mut v: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        round_x(self.mode, w.dtype(), &mut v);
        let buf = self.inner.alloc(bytes.len())?;
        let raw: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        self.inner.write(&buf, 0, &raw)?;
        let xr = View::new(&buf, 0, x.shape(), DType::F32)?;
        self.inner.matmul(xr, w, out)
    }
    fn attention_scratch_bytes(&self, p: &AttnParams, n: usize, b: &SeqBatch<'_>) -> usize {
        self.inner.attention_scratch_bytes(p, n, b)
    }
    fn attention(
        &self,
        q: View<'_>,
        kv: &PagedKv<'_>,
        b: &SeqBatch<'_>,
        p: &AttnParams,
        s: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        self.inner.attention(q, kv, b, p, s, out)
    }
    fn kv_append(&self, k: View<'_>, v: View<'_>, kv: &PagedKv<'_>, slots: View<'_>) -> Result<()> {
        self.inner.kv_append(k, v, kv, slots)
    }
    fn rms_norm(&self, x: View<'_>, w: View<'_>, eps: f32, out: ViewMut<'_>) -> Result<()> {
        self.inner.rms_norm(x, w, eps, out)
    }
    fn rope(&self, x: ViewMut<'_>, pos: View<'_>, f: View<'_>, p: &RopeParams) -> Result<()> {
        self.inner.rope(x, pos, f, p)
    }
    fn glu(&self, g: View<'_>, u: View<'_>, a: Activation, out: ViewMut<'_>) -> Result<()> {
        self.inner.glu(g, u, a, out)
    }
    fn add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.inner.add(a, b, out)
    }
    fn add_bias(&self, x: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.inner.add_bias(x, b, out)
    }
    fn gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.inner.gather(x, ids, out)
    }
    fn embed(&self, ids: View<'_>, t: &Weight, scale: f32, out: ViewMut<'_>) -> Result<()> {
        self.inner.embed(ids, t, scale, out)
    }
    fn moe_scratch_bytes(&self, n: usize, e: &MoeExperts<'_>, r: &MoeRouting) -> usize {
        self.inner.moe_scratch_bytes(n, e, r)
    }
    fn moe(
        &self,
        x: View<'_>,
        r: View<'_>,
        e: &MoeExperts<'_>,
        ro: &MoeRouting,
        s: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        self.inner.moe(x, r, e, ro, s, out)
    }
    fn copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
        self.inner.copy(src, dst)
    }
}
