//! The memory planner: the exact device bytes a model will take on each device — weights (by
//! role, per file dtype, as each backend stores them), the f32 norm/bias buffer, the paged KV
//! cache, the step's activations and scratch, and the backend's own workspace — computed from
//! metadata before anything is allocated, with a per-device reserve. A model that does not fit
//! is refused with the numbers ([`MemoryPlan::check_fits`]), never by running out of memory.
//!
//! Where each number comes from (so it equals what loading allocates):
//! - weights: [`ModelMeta`] walks the tensors like the loader; each matrix is priced by
//!   `Backend::weight_bytes` (the backend's repacked size); the parameter buffer packs every
//!   norm weight and bias as f32, each starting at a multiple of 64 floats (weights.rs).
//! - KV: per layer K and V `[blocks, n_kv_local, block_size, head_dim]` of the KV dtype, with
//!   `blocks` = `kv_blocks` (default: max_seqs full contexts) + 1 null block (kv_cache.rs).
//! - activations: `Plan::bytes_for` (runtime/plan.rs), the same table `Plan::new` allocates.
//! - workspace: `Backend::workspace_bytes` for the matmuls the device runs (cuBLASLt workspace
//!   and GEMM scratch on CUDA, the parameter ring on wgpu, nothing on the reference backend).
//!
//! Multi-device layouts (the runtime's): a layer split gives stage 0 the embedding, the last
//! stage the output matrix and final norm (and the embedding again when the output is tied),
//! each stage its layers; the split is chosen in proportion to each device's free memory unless
//! given. Tensor parallelism over W ranks gives rank r n_heads/W query heads, n_kv/W KV heads
//! (1 replicated when n_kv < W), ffn/W (and expert ff/W) columns, the whole embedding on every
//! rank, the output matrix on rank 0 (runtime/shard.rs `local_config` is the rank's view). The
//! loader packs the final norm into every device's parameter buffer; so does the plan.

mod assign;
mod meta;
mod report;

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use kiln_core::{Backend, DType, DeviceId, MatmulUse, Weight};

pub use meta::{FfnMeta, LayerMeta, ModelMeta, ParamMeta, TensorMeta};
pub use report::human_bytes;

use crate::error::{ModelError, Result};
use crate::runtime::RuntimeOptions;
use crate::runtime::plan::PlanDims;
use crate::runtime::weights::{Ffn, Weights};

/// The default reserve: 5 % of each device's memory (the CUDA context, the allocator's
/// rounding, other processes).
pub const DEFAULT_RESERVE: Reserve = Reserve::Percent(5.0);

/// How the model is spread over the devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parallel {
    /// One device holds everything.
    Single,
    /// Consecutive layers per device; `Some(counts)`: layers per device as given, else in
    /// proportion to free memory.
    Layer(Option<Vec<usize>>),
    /// Every layer sharded over all devices.
    Tensor,
}

impl Parallel {
    pub fn name(&self) -> &'static str {
        match self {
            Parallel::Single => "single",
            Parallel::Layer(_) => "layer",
            Parallel::Tensor => "tensor",
        }
    }
}

/// Memory kept free on a device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reserve {
    Bytes(u64),
    /// Percent of the device's memory.
    Percent(f64),
}

impl Reserve {
    /// The reserved bytes on a device of `capacity` bytes (a percentage of an unknown
    /// capacity is 0).
    pub fn bytes(&self, capacity: Option<u64>) -> u64 {
        match *self {
            Reserve::Bytes(b) => b,
            Reserve::Percent(p) => (capacity.unwrap_or(0) as f64 * p / 100.0).ceil() as u64,
        }
    }
}

impl std::fmt::Display for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reserve::Bytes(b) => f.write_str(&human_bytes(*b)),
            Reserve::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Reserve {
    type Err = ModelError;
    /// `5%`, `1GiB`, `512MiB`, `1.5GB`, `1048576`.
    fn from_str(s: &str) -> Result<Reserve> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if (0.0..100.0).contains(&v) => Ok(Reserve::Percent(v)),
                _ => Err(ModelError::Runtime(format!(
                    "reserve '{s}': a percentage must be in [0, 100)"
                ))),
            };
        }
        parse_bytes(t).map(Reserve::Bytes)
    }
}

/// `24GiB`, `512MiB`, `1.5GB`, `4096`, `1K` → bytes (binary KiB/MiB/GiB/TiB and K/M/G/T,
/// decimal kB/MB/GB/TB).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024f64.powi(2),
        "G" | "GiB" => 1024f64.powi(3),
        "T" | "TiB" => 1024f64.powi(4),
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => {
            return Err(ModelError::Runtime(format!(
                "'{s}': unknown unit '{other}' (B, KiB, MiB, GiB, TiB, kB, MB, GB, TB)"
            )));
        }
    };
    match num.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok((v * mult).round() as u64),
        _ => Err(ModelError::Runtime(format!(
            "'{s}' is not a byte count like 24GiB or 512MiB"
        ))),
    }
}

/// What to plan for.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    pub parallel: Parallel,
    /// The runtime sizes (max_seqs, chunk, context, block_size, kv_dtype, kv_blocks,
    /// all_logits), as `Runtime::new` takes them.
    pub runtime: RuntimeOptions,
    /// One reserve for every device, or one per device.
    pub reserve: Vec<Reserve>,
    /// Device memory to plan for instead of what the devices report (one value for all, or
    /// one per device). A device reporting 0 bytes (wgpu) has an unknown capacity otherwise.
    pub capacity: Option<Vec<u64>>,
    /// Bytes the tensor-parallel group's collective holds on each device
    /// (`Collective::device_bytes`, measured when the group was created); empty: none.
    pub collective: Vec<u64>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            parallel: Parallel::Single,
            runtime: RuntimeOptions::default(),
            reserve: vec![DEFAULT_RESERVE],
            capacity: None,
            collective: Vec::new(),
        }
    }
}

/// Bytes of the matrices of one role and file dtype on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightLine {
    /// `embed`, `output`, `attn` (q, k, v, o), `ffn` (gate, up, down), `router`, `experts`.
    pub role: &'static str,
    pub dtype: DType,
    pub tensors: usize,
    pub bytes: usize,
}

/// One device's share.
#[derive(Clone, Debug, PartialEq)]
pub struct DevicePlan {
    pub device: DeviceId,
    pub name: String,
    /// Device memory (given, or as the device reports it); `None` when the device does not
    /// report it (wgpu adapters) and none was given: the plan cannot check that it fits.
    pub capacity: Option<u64>,
    pub reserve: u64,
    /// The layers this device holds (all of them under tensor parallelism, each sharded).
    pub layers: Range<usize>,
    /// Holds the embedding table.
    pub embed: bool,
    /// Computes the final norm and the logits.
    pub head: bool,
    /// Matrices by role and dtype, as this backend stores them.
    pub weights: Vec<WeightLine>,
    /// The f32 norm/bias buffer.
    pub params: usize,
    pub kv: usize,
    /// KV bytes one token takes in one layer on this device (K and V).
    pub kv_token_layer: usize,
    /// Activation buffers, step staging, attention and MoE scratch.
    pub activations: usize,
    /// The backend's own allocations (library workspace, matmul scratch).
    pub workspace: usize,
    /// The collective's own buffers on this device (NCCL communicator, P2P staging).
    pub collective: u64,
    /// The matmuls the workspace is sized for (what [`matmul_uses`] gives for the loaded
    /// weights; pass them to `Backend::reserve_workspace`).
    pub matmuls: Vec<MatmulUse>,
}

impl DevicePlan {
    /// Matrices plus the parameter buffer: what `Weights::bytes` reports.
    pub fn weight_bytes(&self) -> usize {
        self.weights.iter().map(|w| w.bytes).sum::<usize>() + self.params
    }
    /// Everything the model needs on this device (the reserve not included).
    pub fn total(&self) -> u64 {
        (self.weight_bytes() + self.kv + self.activations + self.workspace) as u64 + self.collective
    }
    /// Capacity minus reserve (`None`: capacity unknown).
    pub fn available(&self) -> Option<u64> {
        self.capacity.map(|c| c.saturating_sub(self.reserve))
    }
    /// Whether the total fits the available bytes; true when the capacity is unknown (nothing
    /// to check against: the plan says so).
    pub fn fits(&self) -> bool {
        self.available().is_none_or(|a| self.total() <= a)
    }
}

/// The plan for every device.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// The model file or directory.
    pub model: String,
    pub arch: String,
    pub parallel: Parallel,
    pub dims: PlanDims,
    pub kv_dtype: DType,
    /// KV blocks per layer, the null block included.
    pub kv_blocks: usize,
    pub devices: Vec<DevicePlan>,
}

impl MemoryPlan {
    /// Layers per device.
    pub fn layer_counts(&self) -> Vec<usize> {
        self.devices.iter().map(|d| d.layers.len()).collect()
    }
    pub fn fits(&self) -> bool {
        self.devices.iter().all(DevicePlan::fits)
    }
    /// `Ok` when every device fits; else an error naming the model and, for every device, the
    /// bytes needed (by part) and available.
    pub fn check_fits(&self) -> Result<()> {
        if self.fits() {
            return Ok(());
        }
        Err(ModelError::Runtime(report::refusal(self)))
    }
}

/// The matmuls a device's steps run with its loaded `w`, in the plan's order: the output
/// matrix at the logit rows (on the device computing logits), then per layer q, k, v, o and
/// gate, up, down (or the router) at `dims.max_tokens` rows. What a runtime passes to
/// `Backend::reserve_workspace` so that the planned workspace is the allocated one.
pub fn matmul_uses(w: &Weights, dims: PlanDims) -> Vec<MatmulUse> {
    let at = |m: &Weight, max_rows: usize| MatmulUse {
        dtype: m.dtype(),
        shape: m.shape(),
        max_rows,
    };
    let t = dims.max_tokens;
    let mut v: Vec<MatmulUse> = w.output.iter().map(|o| at(o, dims.logit_rows())).collect();
    for l in &w.layers {
        v.extend([at(&l.q, t), at(&l.k, t), at(&l.v, t), at(&l.o, t)]);
        match &l.ffn {
            Ffn::Dense { gate, up, down } => v.extend([at(gate, t), at(up, t), at(down, t)]),
            Ffn::Moe { router, .. } => v.push(at(router, t)),
        }
    }
    v
}

/// Plan `meta` on `devices` (opened backends: their `weight_bytes`, scratch and workspace
/// sizes are asked; nothing is allocated but a few-KiB staging buffer per device).
pub fn plan(
    meta: &ModelMeta,
    devices: &[Arc<dyn Backend>],
    opts: &PlanOptions,
) -> Result<MemoryPlan> {
    assign::plan(meta, devices, opts)
}
