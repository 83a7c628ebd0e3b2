//! kv_append (kernels/kv_append.cu).

use kiln_core::backend::check;
use kiln_core::{DType, Error, OpKind, PagedKv, Result, View};

use super::arg_i32;
use crate::buffer::float_code;
use crate::device::CudaBackend;
use crate::module_cache::KV_APPEND;
use crate::ops::launch::Arg;

const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

impl CudaBackend {
    /// k, v `[n_tokens, n_kv_heads, head_dim]` → cache `[blocks, n_kv_heads, block_size,
    /// head_dim]` at slots i32 `[n_tokens]` (negative = skip; a slot ≥ blocks·block_size is
    /// skipped too, since the kernel cannot report it).
    pub(crate) fn op_kv_append(
        &self,
        k: View<'_>,
        v: View<'_>,
        kv: &PagedKv<'_>,
        slots: View<'_>,
    ) -> Result<()> {
        let op = OpKind::KvAppend;
        let n_tokens = self.kv_append_tokens(k, v, kv, slots)?;
        let (nkv, hd) = (kv.n_kv_heads(), kv.head_dim());
        if n_tokens == 0 {
            return Ok(());
        }
        let (kp, vp, sp) = (self.ptr(op, &k)?, self.ptr(op, &v)?, self.ptr(op, &slots)?);
        let (kc, vc) = (self.ptr_mut(op, &kv.k)?, self.ptr_mut(op, &kv.v)?);
        let in_dt = float_code(k.dtype()).unwrap_or(0);
        let kv_dt = float_code(kv.dtype()).unwrap_or(0);
        let (nt, nh, hdi, bs) = (
            arg_i32(op, "n_tokens", n_tokens)?,
            arg_i32(op, "n_kv_heads", nkv)?,
            arg_i32(op, "head_dim", hd)?,
            arg_i32(op, "block_size", kv.block_size())?,
        );
        let total_slots = (kv.num_blocks() * kv.block_size()) as i64;
        let f = self.function(&KV_APPEND, "kv_append")?;
        let cfg = self.grid_1d(k.numel());
        let args = [
            Arg::U64(&kp),
            Arg::U64(&vp),
            Arg::I32(&in_dt),
            Arg::U64(&kc),
            Arg::U64(&vc),
            Arg::I32(&kv_dt),
            Arg::U64(&sp),
            Arg::I32(&nt),
            Arg::I32(&nh),
            Arg::I32(&hdi),
            Arg::I32(&bs),
            Arg::I64(&total_slots),
        ];
        // SAFETY: k, v hold n_tokens·n_kv_heads·head_dim elements, slots n_tokens i32 (checked);
        // the caches are [blocks, n_kv_heads, block_size, head_dim] and the kernel skips slots
        // outside [0, blocks·block_size); the arguments match kv_append's parameters; the kernel
        // waits first (pdl_enter).
        unsafe { self.launch_pdl(&f, "launch kv_append", cfg, &args) }
    }
}

impl CudaBackend {
    /// The token count of a valid kv_append call, or the error naming what is wrong.
    pub(crate) fn kv_append_tokens(
        &self,
        k: View<'_>,
        v: View<'_>,
        kv: &PagedKv<'_>,
        slots: View<'_>,
    ) -> Result<usize> {
        let op = OpKind::KvAppend;
        check::dtype(op, "k", k.dtype(), &FLOATS)?;
        check::dtype(op, "v", v.dtype(), &FLOATS)?;
        check::dtype(op, "cache", kv.dtype(), &FLOATS)?;
        check::dtype(op, "slots", slots.dtype(), &[DType::I32])?;
        if k.shape() != v.shape() || k.dtype() != v.dtype() {
            return Err(Error::shape(
                op,
                format!(
                    "k {} {} and v {} {} differ",
                    k.shape(),
                    k.dtype(),
                    v.shape(),
                    v.dtype()
                ),
            ));
        }
        let (nkv, hd) = (kv.n_kv_heads(), kv.head_dim());
        let per_tok = nkv * hd;
        if per_tok == 0 || !k.numel().is_multiple_of(per_tok) || k.shape().last() != hd {
            return Err(Error::shape(
                op,
                format!("k {} is not [n_tokens, {nkv}, {hd}]", k.shape()),
            ));
        }
        let n_tokens = k.numel() / per_tok;
        check::eq(op, "slots vs n_tokens", slots.numel(), n_tokens)?;
        for (name, c) in [("K cache", &kv.k), ("V cache", &kv.v)] {
            c.check_disjoint(&k)
                .map_err(|e| Error::shape(op, format!("{name}: {e}")))?;
            c.check_disjoint(&v)
                .map_err(|e| Error::shape(op, format!("{name}: {e}")))?;
            c.check_disjoint(&slots)
                .map_err(|e| Error::shape(op, format!("{name}: {e}")))?;
        }
        Ok(n_tokens)
    }
}
