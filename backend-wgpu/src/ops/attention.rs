//! Paged attention (prefill + decode, ragged batch), `shaders/attention.wgsl`.
//!
//! Long decode contexts are split over several workgroups per (token, head) when the grid
//! would otherwise be small; the splits write partial (acc, max, sum) rows to the scratch
//! buffer the caller sized with `attention_scratch_bytes`, and `combine` merges them.

use kiln_core::backend::check;
use kiln_core::{AttnParams, DType, Error, OpKind, PagedKv, Result, SeqBatch, View, ViewMut};

use crate::device::WgpuBackend;
use crate::ops::{bytes_of, elem_bytes, float_only, load_fn, load2_fn, u32_of};
use crate::pipeline_cache::ShaderSpec;

const SRC: &str = include_str!("../../shaders/attention.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");

/// Keys per split below which splitting does not pay.
const KEYS_PER_SPLIT: usize = 512;
const MAX_SPLITS: usize = 32;
/// Workgroups the split aims for (a few per compute unit on large GPUs); no split when
/// (tokens · heads) alone reaches it.
const TARGET_GRID: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    n_seqs: u32,
    block_size: u32,
    max_blocks: u32,
    n_splits: u32,
    scale: f32,
    softcap: f32,
    window: u32,
    causal: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    o_off: u32,
    qs_off: u32,
    kl_off: u32,
    bt_off: u32,
    s_off: u32,
}

fn splits(p: &AttnParams, n_tokens: usize, b: &SeqBatch<'_>) -> usize {
    let grid = (n_tokens * p.n_heads).max(1);
    if grid >= TARGET_GRID || b.max_kv_len <= KEYS_PER_SPLIT {
        return 1;
    }
    b.max_kv_len
        .div_ceil(KEYS_PER_SPLIT)
        .min(TARGET_GRID.div_ceil(grid))
        .min(MAX_SPLITS)
}

pub(crate) fn scratch_bytes(p: &AttnParams, n_tokens: usize, b: &SeqBatch<'_>) -> usize {
    let s = splits(p, n_tokens, b);
    if s <= 1 {
        return 0;
    }
    n_tokens * p.n_heads * s * (p.head_dim + 2) * 4
}

pub(crate) fn attention(
    be: &WgpuBackend,
    q: View<'_>,
    kv: &PagedKv<'_>,
    b: &SeqBatch<'_>,
    p: &AttnParams,
    scratch: Option<ViewMut<'_>>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Attention;
    float_only(op, "KV cache", kv.dtype())?;
    check::dtype(op, "q", q.dtype(), &[DType::F32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    for (w, v) in [
        ("q_starts", &b.q_starts),
        ("kv_lens", &b.kv_lens),
        ("block_tables", &b.block_tables),
    ] {
        check::dtype(op, w, v.dtype(), &[DType::I32])?;
    }
    let hd = p.head_dim;
    if hd == 0 || hd > 256 {
        return Err(Error::shape(
            op,
            format!("head_dim {hd}: this backend takes 1..=256"),
        ));
    }
    if p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
        return Err(Error::shape(
            op,
            format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                p.n_heads, p.n_kv_heads
            ),
        ));
    }
    check::eq(op, "cache head_dim", kv.head_dim(), hd)?;
    check::eq(op, "cache kv heads", kv.n_kv_heads(), p.n_kv_heads)?;
    let qs = q.shape();
    if qs.rank() != 3 || qs.dim(1) != p.n_heads || qs.dim(2) != hd || out.shape() != qs {
        return Err(Error::shape(
            op,
            format!(
                "q {qs} and out {} must be [n_tokens, {}, {hd}]",
                out.shape(),
                p.n_heads
            ),
        ));
    }
    let n_tokens = qs.dim(0);
    let n_seqs = b.n_seqs();
    check::eq(op, "q_starts vs n_seqs + 1", b.q_starts.numel(), n_seqs + 1)?;
    if b.block_tables.shape().rows() != n_seqs {
        return Err(Error::shape(
            op,
            format!(
                "block_tables {} must be [{n_seqs}, max_blocks]",
                b.block_tables.shape()
            ),
        ));
    }
    out.check_disjoint(&q)?;
    if n_tokens == 0 || n_seqs == 0 {
        return Ok(());
    }
    u32_of(op, "q elements", q.numel())?;
    let mut n_splits = splits(p, n_tokens, b);
    let need = scratch_bytes(p, n_tokens, b);
    let scratch = match scratch {
        Some(s) if n_splits > 1 && s.bytes() >= need && s.dtype() == DType::F32 => Some(s),
        _ => {
            n_splits = 1;
            None
        }
    };
    let bq = be.bind_view(op, &q, "q")?;
    let bk = be.bind_out(op, &kv.k, "K cache")?;
    let bv = be.bind_out(op, &kv.v, "V cache")?;
    let bqs = be.bind_view(op, &b.q_starts, "q_starts")?;
    let bkl = be.bind_view(op, &b.kv_lens, "kv_lens")?;
    let bbt = be.bind_view(op, &b.block_tables, "block_tables")?;
    let bo = be.bind_out(op, &out, "out")?;
    let bs = match &scratch {
        Some(s) => be.bind_out(op, s, "attention scratch")?,
        None => be.bind_out(op, &out, "out")?,
    };
    let kd = kv.dtype();
    let prm = Params {
        n_tokens: n_tokens as u32,
        n_heads: p.n_heads as u32,
        n_kv: p.n_kv_heads as u32,
        head_dim: hd as u32,
        n_seqs: n_seqs as u32,
        block_size: u32_of(op, "block_size", kv.block_size())?,
        max_blocks: u32_of(op, "max_blocks", b.max_blocks())?,
        n_splits: n_splits as u32,
        scale: p.scale,
        softcap: p.softcap.unwrap_or(0.0),
        window: u32_of(op, "window", p.window.unwrap_or(0))?,
        causal: u32::from(p.causal),
        q_off: bq.elem_off(4),
        k_off: bk.elem_off(elem_bytes(kd)),
        v_off: bv.elem_off(elem_bytes(kd)),
        o_off: bo.elem_off(4),
        qs_off: bqs.elem_off(4),
        kl_off: bkl.elem_off(4),
        bt_off: bbt.elem_off(4),
        s_off: bs.elem_off(4),
    };
    let spec = || {
        ShaderSpec::new("attention", &[REDUCE, SRC], "attn")
            .sub("LOAD_K", load_fn("load_k", "K", kd))
            .sub("LOAD_K2", load2_fn("load_k2", "K", kd))
            .sub("LOAD_V", load_fn("load_v", "V", kd))
    };
    let pipe = be.pipeline(spec().over("SPLIT", if n_splits > 1 { 1.0 } else { 0.0 }))?;
    let (gx, gy) = be.grid(u32_of(op, "tokens · heads", n_tokens * p.n_heads)?);
    be.dispatch(
        &pipe,
        bytes_of(&prm),
        &[
            bq.entry(1),
            bk.entry(2),
            bv.entry(3),
            bqs.entry(4),
            bkl.entry(5),
            bbt.entry(6),
            bo.entry(7),
            bs.entry(8),
        ],
        (gx, gy, n_splits as u32),
    )?;
    if n_splits > 1 {
        let mut c = spec();
        c.entry = "combine";
        let comb = be.pipeline(c)?;
        be.dispatch(
            &comb,
            bytes_of(&prm),
            &[bo.entry(7), bs.entry(8)],
            (gx, gy, 1),
        )?;
    }
    Ok(())
}
