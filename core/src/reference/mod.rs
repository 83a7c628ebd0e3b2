//! The reference backend: host memory, plain readable math, f32 with f64 accumulation where
//! it matters, multithreaded with rayon. It is the oracle of the conformance suite and runs
//! small models on machines without a GPU.
//!
//! Each op family lives in its own file (`matmul.rs`, `attention.rs`, ...) as functions over
//! slices, so the math reads without the buffer plumbing, which is here and in `mem.rs`.

mod act;
mod attention;
mod copy;
mod embed;
mod kv;
mod matmul;
mod mem;
mod moe;
mod norm;
#[cfg(test)]
mod op_tests;
mod rope;

use std::sync::{Arc, Mutex};

use crate::backend::*;
use crate::devices::{BackendKind, BackendProvider, Caps, DeviceId, DeviceInfo, Probe};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Buffer, HostTensor, View, ViewMut, Weight};

pub(crate) use mem::{Access, HostMem};

/// A host-memory device. Several can exist (`reference:0`, `reference:1`, ...) to test
/// multi-device code without GPUs; each has its own memory and queue.
pub struct ReferenceBackend {
    info: DeviceInfo,
    queue: Mutex<()>,
}

impl ReferenceBackend {
    pub fn new(index: u32) -> ReferenceBackend {
        ReferenceBackend {
            info: host_info(index),
            queue: Mutex::new(()),
        }
    }

    /// Exclusive access to this device's memory for one op.
    pub(crate) fn access(&self) -> Access<'_> {
        // A poisoned lock only means another op panicked; the memory is plain bytes.
        let g = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        Access::new(g, self.info.id)
    }

    fn check_dev(&self, op: OpKind, d: DeviceId) -> Result<()> {
        check::device(op, self.info.id, d)
    }
}

/// The weight as kept by the reference backend: the file's bytes, unchanged.
pub(crate) struct HostWeight {
    pub(crate) data: Vec<u8>,
}

impl HostWeight {
    pub(crate) fn of(w: &Weight) -> Result<&HostWeight> {
        w.downcast::<HostWeight>()
            .ok_or_else(|| Error::Invalid(format!("{w:?} was not prepared by a reference backend")))
    }
}

fn host_info(index: u32) -> DeviceInfo {
    let threads = rayon::current_num_threads() as u32;
    let mem = host_memory_bytes().unwrap_or(0);
    DeviceInfo {
        id: DeviceId::new(BackendKind::Reference, index),
        name: cpu_name().unwrap_or_else(|| "host CPU".into()),
        vendor: "host".into(),
        memory_bytes: mem,
        driver: format!("reference, {threads} threads"),
        caps: Caps {
            f16: true,
            bf16: true,
            subgroups: false,
            max_buffer_bytes: mem,
            max_binding_bytes: mem,
            shared_memory_bytes: 0,
            compute_capability: None,
            compute_units: threads,
            tensor_cores: false,
        },
    }
}

fn read_proc(path: &str, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn host_memory_bytes() -> Option<u64> {
    let kb = read_proc("/proc/meminfo", "MemTotal")?;
    kb.trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

fn cpu_name() -> Option<String> {
    read_proc("/proc/cpuinfo", "model name")
}

/// Provider for discovery: the reference backend is always present. `open(i)` makes a fresh
/// device `reference:i`, so tests can build groups of several host devices.
pub struct ReferenceProvider {
    /// How many devices `probe` lists (1 by default, `KILN_VIRTUAL_DEVICES` when set).
    pub count: u32,
}

impl Default for ReferenceProvider {
    /// One device, or `KILN_VIRTUAL_DEVICES` of them.
    fn default() -> Self {
        ReferenceProvider {
            count: crate::devices::virtual_devices(),
        }
    }
}

impl BackendProvider for ReferenceProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Reference
    }
    fn probe(&self) -> Probe {
        Probe::Found((0..self.count).map(host_info).collect())
    }
    fn open(&self, index: u32) -> Result<Arc<dyn Backend>> {
        Ok(Arc::new(ReferenceBackend::new(index)))
    }
}

impl Backend for ReferenceBackend {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn supports(&self, op: OpKind, dtype: DType) -> bool {
        use OpKind::*;
        match op {
            Matmul | Embed | Moe => DType::WEIGHT_TYPES.contains(&dtype),
            Attention | KvAppend | Copy | AllReduce => dtype.is_float(),
            RmsNorm | Rope | Glu | Add | AddBias => dtype == DType::F32,
            Gather => !dtype.is_quantized(),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        let mem = HostMem::new(bytes)?;
        Ok(Buffer::new(Arc::new(mem), bytes, self.info.id))
    }

    fn write(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        let a = self.access();
        a.bytes_mut(dst, offset, src.len())?.copy_from_slice(src);
        Ok(())
    }

    fn read(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        let a = self.access();
        dst.copy_from_slice(a.bytes(src, offset, dst.len())?);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight> {
        let w = HostTensor::new(w.dtype, w.shape, w.data)?;
        if !DType::WEIGHT_TYPES.contains(&w.dtype) {
            return Err(check::unsupported(OpKind::Matmul, w.dtype, &self.info));
        }
        if w.shape.last() % w.dtype.block_size() != 0 {
            return Err(Error::Quant {
                dtype: w.dtype,
                msg: format!(
                    "rows of {} elements are not whole blocks of {}",
                    w.shape.last(),
                    w.dtype.block_size()
                ),
            });
        }
        let mut data = Vec::new();
        data.try_reserve_exact(w.data.len())
            .map_err(|_| Error::OutOfMemory {
                device: self.info.id.to_string(),
                requested: w.data.len() as u64,
            })?;
        data.extend_from_slice(w.data);
        let bytes = data.len();
        Ok(Weight::new(
            Arc::new(HostWeight { data }),
            w.shape,
            w.dtype,
            self.info.id,
            bytes,
        ))
    }

    fn matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        matmul::matmul(self, x, w, out)
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
        attention::attention(self, q, kv, batch, p, scratch, out)
    }

    fn kv_append(&self, k: View<'_>, v: View<'_>, kv: &PagedKv<'_>, slots: View<'_>) -> Result<()> {
        kv::kv_append(self, k, v, kv, slots)
    }

    fn rms_norm(&self, x: View<'_>, w: View<'_>, eps: f32, out: ViewMut<'_>) -> Result<()> {
        norm::rms_norm(self, x, w, eps, out)
    }

    fn rope(
        &self,
        x: ViewMut<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
    ) -> Result<()> {
        rope::rope(self, x, positions, inv_freq, p)
    }

    fn glu(&self, gate: View<'_>, up: View<'_>, act: Activation, out: ViewMut<'_>) -> Result<()> {
        act::glu(self, gate, up, act, out)
    }

    fn add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        act::add(self, a, b, out)
    }

    fn add_bias(&self, x: View<'_>, bias: View<'_>, out: ViewMut<'_>) -> Result<()> {
        act::add_bias(self, x, bias, out)
    }

    fn gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        embed::gather(self, x, ids, out)
    }

    fn embed(&self, ids: View<'_>, table: &Weight, scale: f32, out: ViewMut<'_>) -> Result<()> {
        embed::embed(self, ids, table, scale, out)
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
        moe::moe(self, x, router_logits, experts, r, scratch, out)
    }

    fn copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
        copy::copy(self, src, dst)
    }
}
