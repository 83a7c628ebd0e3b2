//! glu (kernels/act.cu).

use kiln_core::{Activation, OpKind, Result, View, ViewMut};

use super::f32_only;
use crate::device::CudaBackend;
use crate::module_cache::ACT;
use crate::ops::launch::Arg;

impl CudaBackend {
    /// out = act(gate) ⊙ up, all f32 `[rows, n]`.
    pub(crate) fn op_glu(
        &self,
        gate: View<'_>,
        up: View<'_>,
        act: Activation,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let op = OpKind::Glu;
        f32_only(op, "gate", &gate)?;
        f32_only(op, "up", &up)?;
        f32_only(op, "out", &out.as_view())?;
        if up.shape() != gate.shape() || out.shape() != gate.shape() {
            return Err(kiln_core::Error::shape(
                op,
                format!(
                    "gate {}, up {} and out {} must have the same shape",
                    gate.shape(),
                    up.shape(),
                    out.shape()
                ),
            ));
        }
        out.check_disjoint(&gate)?;
        out.check_disjoint(&up)?;
        let count = gate.numel() as i64;
        if count == 0 {
            return Ok(());
        }
        let a: i32 = match act {
            Activation::Silu => 0,
            Activation::GeluTanh => 1,
        };
        let (gp, upp, op_) = (
            self.ptr(op, &gate)?,
            self.ptr(op, &up)?,
            self.ptr_mut(op, &out)?,
        );
        let f = self.function(&ACT, "glu_f32")?;
        let cfg = self.grid_1d(gate.numel());
        let args = [
            Arg::U64(&gp),
            Arg::U64(&upp),
            Arg::U64(&op_),
            Arg::I64(&count),
            Arg::I32(&a),
        ];
        // SAFETY: gate, up and out hold `count` f32 each (checked above), out disjoint; the
        // arguments match glu_f32's parameters; the kernel waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch glu_f32", cfg, &args) }
    }
}
