//! Paged attention (prefill + decode, ragged batch) through `shaders/attention_dec.wgsl`:
//! one workgroup per (sequence, query tile, KV head, group of its query heads) with ≤ 8
//! (token, head) rows sharing every K/V tile it reads (coalesced, staged in workgroup
//! memory): decode batches (n_tokens = n_seqs) take one token and up to 8 heads of a GQA
//! group, prefill batches tiles of 8 / heads tokens. head_dims whose rows are not 32..256
//! words (and f32 caches past 256 words) use `shaders/attention.wgsl`'s per-(token, head)
//! kernel, as do `KILN_WGPU_ATTN=0` (both) / `=decode` (prefill) and `set_attn_decode(false)`
//! / `set_attn_prefill(false)` (comparison).
//!
//! Decode batches with f16/bf16 caches and head_dim 64/128/256 take
//! `shaders/attention_keys.wgsl` instead where the adapter has subgroups of ≥ 4 invocations
//! (key-parallel scores from K in registers, no K/V staging; `KILN_WGPU_ATTN=tiles` or
//! `set_attn_keys(false)` keeps them on attention_dec.wgsl for comparison).
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
const DEC: &str = include_str!("../../shaders/attention_dec.wgsl");
const KEYS: &str = include_str!("../../shaders/attention_keys.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
/// The uniform both shaders read (`Params` below is its twin).
const PARAMS: &str = include_str!("../../shaders/attn_params.wgsl");
/// The two vec4-word decode kernels' bindings and helpers.
const KV4: &str = include_str!("../../shaders/attn_kv4.wgsl");

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
    n_qt: u32,
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

/// Words of the decode kernel's workgroup K/V tiles (each): 2048 (16 KiB of K + V), or 1024
/// with `KILN_WGPU_ATTN_TILE=1024` (A/B: half the workgroup memory, twice the barriers).
const DEC_TILE_WORDS: usize = 2048;

fn dec_tile_words() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        env_usize("KILN_WGPU_ATTN_TILE")
            .filter(|v| *v == 1024)
            .unwrap_or(DEC_TILE_WORDS)
    })
}
/// Decode: fewest keys per split, most splits, and the workgroups the split aims for
/// (`KILN_WGPU_ATTN_KEYS`, `KILN_WGPU_ATTN_GRID` override the first and the last: A/B).
const DEC_KEYS_PER_SPLIT: usize = 128;
const DEC_MAX_SPLITS: usize = 64;
// attention.wgsl's `combine` merges at most 128 splits.
const _: () = assert!(MAX_SPLITS <= 128 && DEC_MAX_SPLITS <= 128);
const DEC_TARGET_GRID: usize = 2048;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok().filter(|v| *v > 0)
}

fn dec_keys() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| env_usize("KILN_WGPU_ATTN_KEYS").unwrap_or(DEC_KEYS_PER_SPLIT))
}

fn dec_target() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| env_usize("KILN_WGPU_ATTN_GRID").unwrap_or(DEC_TARGET_GRID))
}

/// attention_keys.wgsl: keys per chunk (its workgroup score area holds NK × quads vec4s), the
/// fewest keys per split and the workgroups the split aims for (`KILN_WGPU_ATTN_KEYS`,
/// `KILN_WGPU_ATTN_GRID` override the last two, as for attention_dec.wgsl: A/B).
const KEYS_CHUNK: usize = 512;
const KEYS_PER_SPLIT_K: usize = 64;
const KEYS_TARGET_GRID: usize = 512;
/// More splits cost more in `combine` than they give (H200: 64 splits of 64 keys 33.4 µs, 32
/// of 128 24.3 µs at 4096 keys, batch 1; BENCHMARKS.md stop 21).
const KEYS_MAX_SPLITS: usize = 32;

/// attention_keys.wgsl's V keys per step: 8, or 4 with `KILN_WGPU_ATTN_VU=4` (A/B; 8 was
/// 9 % faster at 4096 keys batch 32 on the H200, BENCHMARKS.md stop 21).
fn keys_v_unroll() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        env_usize("KILN_WGPU_ATTN_VU")
            .filter(|v| *v == 4)
            .unwrap_or(8)
    })
}

/// Splits of a decode batch on attention_keys.wgsl (`grid` = workgroups without a split).
fn keys_splits(grid: usize, max_kv_len: usize) -> usize {
    // (the knobs are read once per process: this runs on every decode step)
    static V: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    let (kps, target) = *V.get_or_init(|| {
        (
            env_usize("KILN_WGPU_ATTN_KEYS").unwrap_or(KEYS_PER_SPLIT_K),
            env_usize("KILN_WGPU_ATTN_GRID").unwrap_or(KEYS_TARGET_GRID),
        )
    });
    if grid >= target || max_kv_len <= kps {
        return 1;
    }
    max_kv_len
        .div_ceil(kps)
        .min(target.div_ceil(grid.max(1)))
        .min(KEYS_MAX_SPLITS)
}

/// The decode kernel's shape for one call.
#[derive(Clone, Copy, Debug)]
struct Dec {
    /// Query heads per workgroup (a divisor of n_heads / n_kv_heads, ≤ 8).
    gh: usize,
    /// Query tokens per workgroup (prefill: 8 / gh; decode 1) and tiles per sequence.
    bq: usize,
    n_qt: usize,
    prefill: bool,
    /// Elements per u32 word of the cache.
    epw: usize,
    splits: usize,
}

/// The tiled kernel's plan, or None where it does not apply (a head_dim whose row is not
/// 32/64/128/256 words). Decode batches (n_tokens = n_seqs) split long contexts; prefill
/// batches get query tiles and no split.
fn dec_plan(p: &AttnParams, n_tokens: usize, b: &SeqBatch<'_>, kd: DType) -> Option<Dec> {
    let n_seqs = b.n_seqs();
    if p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
        return None;
    }
    let epw = if kd == DType::F32 { 1 } else { 2 };
    let w = p.head_dim / epw;
    if !p.head_dim.is_multiple_of(epw) || ![32, 64, 128, 256].contains(&w) {
        return None;
    }
    let g = p.n_heads / p.n_kv_heads;
    let gh = (1..=8.min(g)).rev().find(|d| g.is_multiple_of(*d))?;
    if n_tokens != n_seqs {
        let bq = (8 / gh).max(1);
        return Some(Dec {
            gh,
            bq,
            n_qt: b.max_q_len.div_ceil(bq).max(1),
            prefill: true,
            epw,
            splits: 1,
        });
    }
    let grid = (n_seqs * p.n_kv_heads * (g / gh)).max(1);
    let splits = if grid >= dec_target() || b.max_kv_len <= dec_keys() {
        1
    } else {
        b.max_kv_len
            .div_ceil(dec_keys())
            .min(dec_target().div_ceil(grid))
            .min(DEC_MAX_SPLITS)
    };
    Some(Dec {
        gh,
        bq: 1,
        n_qt: 1,
        prefill: false,
        epw,
        splits,
    })
}

pub(crate) fn scratch_bytes(p: &AttnParams, n_tokens: usize, b: &SeqBatch<'_>) -> usize {
    // The larger of the two kernels' needs (the cache dtype and the switch are not known
    // here; f16 and f32 caches give the same split count).
    let old = splits(p, n_tokens, b);
    let new = dec_plan(p, n_tokens, b, DType::F16)
        .into_iter()
        .chain(dec_plan(p, n_tokens, b, DType::F32))
        .map(|d| d.splits)
        .max()
        .unwrap_or(1);
    // attention_keys.wgsl's split of a decode batch (whether it runs is the backend's call)
    let keys = if n_tokens == b.n_seqs() && p.n_kv_heads > 0 {
        keys_splits(n_tokens * p.n_kv_heads, b.max_kv_len)
    } else {
        1
    };
    let s = old.max(new).max(keys);
    if s <= 1 {
        return 0;
    }
    n_tokens * p.n_heads * s * (p.head_dim + 2) * 4
}

impl WgpuBackend {
    /// Decode batches through attention_dec.wgsl (default true; false keeps them on the
    /// older per-(token, head) kernel for comparison; `KILN_WGPU_ATTN=0` sets false for the
    /// whole process).
    pub fn set_attn_decode(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.attn_decode = on;
    }

    /// Prefill batches through attention_dec.wgsl's query tiles (default true; false as
    /// `set_attn_decode`; `KILN_WGPU_ATTN=0` or `=decode` set false for the process).
    pub fn set_attn_prefill(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.attn_prefill = on;
    }

    /// Decode batches through attention_keys.wgsl where it applies (default true; false
    /// keeps them on attention_dec.wgsl; `KILN_WGPU_ATTN=tiles` sets false for the process).
    pub fn set_attn_keys(&self, on: bool) {
        let mut t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        t.attn_keys = on;
    }

    /// (decode, prefill) through the tiled kernel.
    fn attn_tiled(&self) -> (bool, bool) {
        let t = self.tuning.lock().unwrap_or_else(|e| e.into_inner());
        (t.attn_decode, t.attn_prefill)
    }

    /// Whether decode batches (f16/bf16 caches, head_dim 64/128/256) take attention_keys.wgsl
    /// on this adapter: switched on and subgroups of 4..=128 invocations (its 4 lanes per key
    /// share a subgroup; 128 / subgroup size partials fit its tables).
    pub fn attention_keys_available(&self) -> bool {
        let on = self
            .tuning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attn_keys;
        on && self.subgroups && self.subgroup_min >= 4 && self.subgroup_max <= 128
    }
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
    let kd = kv.dtype();
    let (on_dec, on_pre) = be.attn_tiled();
    let dec = dec_plan(p, n_tokens, b, kd).filter(|d| if d.prefill { on_pre } else { on_dec });
    let keys = dec.filter(|d| {
        !d.prefill && d.epw == 2 && [64, 128, 256].contains(&hd) && be.attention_keys_available()
    });
    let mut n_splits = match (keys, dec) {
        (Some(d), _) => keys_splits(
            n_seqs * p.n_kv_heads * (p.n_heads / p.n_kv_heads / d.gh),
            b.max_kv_len,
        ),
        (None, Some(d)) => d.splits,
        (None, None) => splits(p, n_tokens, b),
    };
    let need = n_tokens * p.n_heads * n_splits * (hd + 2) * 4;
    let scratch = match scratch {
        // Raw bytes whatever the view's dtype (the runtime passes a u8 view; requiring f32
        // here kept every decode step of the runtime unsplit), 4-byte aligned for the f32 rows.
        Some(s) if n_splits > 1 && s.bytes() >= need && s.offset().is_multiple_of(4) => Some(s),
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
        n_qt: u32_of(op, "query tiles", dec.map_or(1, |d| d.n_qt))?,
    };
    // The decode kernel reads K/V as vec4 words: the cache views must start 16-byte aligned.
    let dec = dec.filter(|d| {
        let a = 4 * d.epw as u32;
        prm.k_off.is_multiple_of(a) && prm.v_off.is_multiple_of(a)
    });
    let spec = || {
        ShaderSpec::new("attention", &[PARAMS, REDUCE, SRC], "attn")
            .sub("LOAD_K", load_fn("load_k", "K", kd))
            .sub("LOAD_K2", load2_fn("load_k2", "K", kd))
            .sub("LOAD_V", load_fn("load_v", "V", kd))
    };
    let split = if n_splits > 1 { 1.0 } else { 0.0 };
    let comb = || {
        let mut c = spec();
        c.entry = "combine";
        be.pipeline(c)
    };
    let (hx, hy) = be.grid(u32_of(op, "tokens · heads", n_tokens * p.n_heads)?);
    let entries = [
        bq.entry(1),
        bk.entry(2),
        bv.entry(3),
        bqs.entry(4),
        bkl.entry(5),
        bbt.entry(6),
        bo.entry(7),
        bs.entry(8),
    ];
    // The decode kernels (attention_keys, attention_dec): the spec and the workgroups of
    // one split; with several splits `combine` goes with them as one pair.
    let g = p.n_heads / p.n_kv_heads;
    let tiled = if let Some(d) = keys.filter(|_| dec.is_some()) {
        let nq = d.gh.div_ceil(4);
        let spec = ShaderSpec::new("attention_keys", &[PARAMS, KV4, KEYS], "attn_keys")
            .sub("HD", hd.to_string())
            .sub("GH", d.gh.to_string())
            .sub("NK", KEYS_CHUNK.to_string())
            .sub("VU", keys_v_unroll().to_string())
            .sub("QS_N", (d.gh * hd / 4).to_string())
            .sub("PS_N", (KEYS_CHUNK * nq).max(1024).to_string())
            .sub("UNPACK", unpack_fn(kd))
            .over("SPLIT", split);
        Some((spec, n_seqs * p.n_kv_heads * (g / d.gh)))
    } else if let Some(d) = dec {
        let w = hd / d.epw;
        let tw = dec_tile_words();
        let (tk, nph) = (tw / w, (128 / w).max(1));
        let kt_n = (tk * (w / 4 + 1)).max((nph - 1) * w * 4);
        let spec = ShaderSpec::new("attention_dec", &[PARAMS, KV4, DEC], "attn_dec")
            .sub("HD", hd.to_string())
            .sub("EPW", d.epw.to_string())
            .sub("GH", d.gh.to_string())
            .sub("BQ", d.bq.to_string())
            .sub("PREFILL", d.prefill.to_string())
            .sub("TW", tw.to_string())
            .sub("KT_N", kt_n.to_string())
            .sub("QS_N", (d.gh * d.bq * (hd / 4 + 1)).to_string())
            .sub("PS_N", (tk * 8).to_string())
            .sub("NPH", nph.to_string())
            .sub("CPI", (w / 128).max(1).to_string())
            .sub("UNPACK", unpack_fn(kd))
            .over("SPLIT", split);
        Some((spec, n_seqs * d.n_qt * p.n_kv_heads * (g / d.gh)))
    } else {
        None
    };
    if let Some((spec, wgs)) = tiled {
        let pipe = be.pipeline(spec)?;
        let (gx, gy) = be.grid(u32_of(op, "attention workgroups", wgs)?);
        let grid = (gx, gy, n_splits as u32);
        if n_splits > 1 {
            let comb = comb()?;
            return be.dispatch2(
                bytes_of(&prm),
                (&pipe, &entries, grid),
                (&comb, &[bo.entry(7), bs.entry(8)], (hx, hy, 1)),
            );
        }
        return be.dispatch(&pipe, bytes_of(&prm), &entries, grid);
    }
    let pipe = be.pipeline(spec().over("SPLIT", split))?;
    be.dispatch(&pipe, bytes_of(&prm), &entries, (hx, hy, n_splits as u32))?;
    if n_splits > 1 {
        let comb = comb()?;
        be.dispatch(
            &comb,
            bytes_of(&prm),
            &[bo.entry(7), bs.entry(8)],
            (hx, hy, 1),
        )?;
    }
    Ok(())
}

/// WGSL: `fn unpack_kv(w: u32) -> vec2<f32>`, the two 16-bit elements of a word (f16: the
/// hardware conversion, which may flush f16 subnormals to zero: |error| < 6.2e-5, far below
/// attention's tolerance) or the one f32 element and 0.
fn unpack_fn(d: DType) -> String {
    let body = match d {
        DType::F16 => "return unpack2x16float(w);",
        DType::BF16 => "return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));",
        _ => "return vec2<f32>(bitcast<f32>(w), 0.0);",
    };
    format!("fn unpack_kv(w: u32) -> vec2<f32> {{ {body} }}")
}
