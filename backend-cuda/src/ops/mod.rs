//! Op bodies of `CudaBackend`, one file per kernel file (`norm.rs` ↔ `kernels/norm.cu`). Each
//! validates its arguments (shapes, dtypes, devices, overlap) with messages naming the op, then
//! calls one typed launch function holding the SAFETY argument for its kernel.

mod act;
mod add;
mod attention;
mod attention_launch;
mod copy;
mod embed;
mod kv_append;
pub(crate) mod launch;
pub(crate) mod matmul_mma;
pub(crate) mod matmul_q;
mod moe;
mod norm;
mod rope;

use kiln_core::backend::check;
use kiln_core::{DType, OpKind, Result, View};

/// Error unless `v` is f32.
pub(crate) fn f32_only(op: OpKind, what: &str, v: &View<'_>) -> Result<()> {
    check::dtype(op, what, v.dtype(), &[DType::F32])
}

/// i32 as a kernel argument, with a clear error past the kernels' 32-bit index limits.
pub(crate) fn arg_i32(op: OpKind, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        kiln_core::Error::shape(op, format!("{what} = {v} exceeds the 32-bit kernel limit"))
    })
}
