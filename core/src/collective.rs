//! Collectives across the devices of a group.

use std::sync::Arc;

use crate::backend::{Backend, OpKind};
use crate::devices::DeviceId;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{View, ViewMut};

/// One per group of devices. `bufs[i]` lives on the group's device i; all have the same shape
/// and dtype; after the call every one holds the elementwise sum.
pub trait Collective: Send + Sync {
    fn devices(&self) -> Vec<DeviceId>;
    fn all_reduce_sum(&self, bufs: &[ViewMut<'_>]) -> Result<()>;
    /// The all-reduce of a tensor-parallel partial sum fused with the residual add and the
    /// next RMS norm: on every member i, sum = res + Σ_j part_j (the parts summed in member
    /// order, then the residual added, exactly as `all_reduce_sum` then `Backend::add` would)
    /// and out = rms_norm(sum)·w. Returns Ok(false), having done nothing, where the group
    /// cannot fuse these operands (the default): the caller then runs `all_reduce_sum` and
    /// `Backend::add_rms_norm`. The parts are inputs here (left as they were).
    fn all_reduce_add_rms_norm(&self, members: &[ResidualNorm<'_>], eps: f32) -> Result<bool> {
        let _ = (members, eps);
        Ok(false)
    }
    /// Device memory the group itself holds on each member, in `devices()` order (communicator
    /// buffers, staging): what a memory plan must leave for it. Zeros when it holds none.
    fn device_bytes(&self) -> Vec<u64> {
        vec![0; self.devices().len()]
    }
}

/// One member's operands of [`Collective::all_reduce_add_rms_norm`]: part, res, sum, out f32
/// `[rows, dim]` and w f32 `[dim]`, all on the member's device.
pub struct ResidualNorm<'a> {
    pub part: View<'a>,
    pub res: View<'a>,
    pub w: View<'a>,
    pub sum: ViewMut<'a>,
    pub out: ViewMut<'a>,
}

/// All-reduce through host memory: works for any mix of backends (wgpu adapters, a CUDA card
/// next to an AMD card, reference devices). Reads every buffer, sums in f32 in device order
/// (deterministic), writes the sum back to every device.
pub struct HostStagedAllReduce {
    members: Vec<Arc<dyn Backend>>,
}

impl HostStagedAllReduce {
    pub fn new(members: Vec<Arc<dyn Backend>>) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::Invalid("all-reduce group has no devices".into()));
        }
        Ok(HostStagedAllReduce { members })
    }
}

impl Collective for HostStagedAllReduce {
    fn devices(&self) -> Vec<DeviceId> {
        self.members.iter().map(|b| b.id()).collect()
    }

    fn all_reduce_sum(&self, bufs: &[ViewMut<'_>]) -> Result<()> {
        let op = OpKind::AllReduce;
        crate::backend::check::eq(
            op,
            "buffers vs group devices",
            bufs.len(),
            self.members.len(),
        )?;
        let (shape, dtype) = (bufs[0].shape(), bufs[0].dtype());
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::shape(
                op,
                format!("all-reduce of {dtype} (f32/f16/bf16 only)"),
            ));
        }
        let mut sum = vec![0f32; shape.numel()];
        let mut bytes = vec![0u8; bufs[0].bytes()];
        for (b, dev) in bufs.iter().zip(&self.members) {
            crate::backend::check::device(op, dev.id(), b.device())?;
            if b.shape() != shape || b.dtype() != dtype {
                return Err(Error::shape(
                    op,
                    format!("{} {} vs {} {}", b.shape(), b.dtype(), shape, dtype),
                ));
            }
            dev.read(b.buffer(), b.offset(), &mut bytes)?;
            for (s, v) in sum
                .iter_mut()
                .zip(crate::convert::to_f32_iter(dtype, &bytes))
            {
                *s += v;
            }
        }
        let out = crate::convert::from_f32(dtype, &sum)?;
        for (b, dev) in bufs.iter().zip(&self.members) {
            dev.write(b.buffer(), b.offset(), &out)?;
        }
        Ok(())
    }
}
