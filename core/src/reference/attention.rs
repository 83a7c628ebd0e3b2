//! `attention` over the paged KV cache, for a ragged batch of sequences.
//!
//! Buffers: q, out f32 `[n_tokens, n_heads, head_dim]`; cache k, v `[num_blocks, n_kv_heads,
//! block_size, head_dim]` (f32/f16/bf16); q_starts i32 `[n_seqs + 1]`, kv_lens i32 `[n_seqs]`,
//! block_tables i32 `[n_seqs, max_blocks]`.
//!
//! Math (backend.rs `AttnParams`): query j of sequence s sits at position
//! p = kv_len − q_len + j; query head h reads KV head h / (n_heads / n_kv_heads); the score of
//! key position k is `scale · q·k` (dot in f32 lanes folded into f64, see `matmul`), then
//! `softcap · tanh(s / softcap)`; keys are kept iff k ≤ p (causal) and k > p − W (window W);
//! out = Σ softmax(s)_k · v_k with the softmax (max, exp, sum) and the weighted sum in f64.
//!
//! Work split: one task per (token, KV head), covering the n_heads / n_kv_heads query heads
//! that share the KV head, so every key and value row is read and converted once per task.
//! Each output element is computed by one task in a fixed order: results do not depend on the
//! thread count. Cost per (token, head): 4 · keys · head_dim FLOPs.

use rayon::prelude::*;

use super::ReferenceBackend;
use super::copy::Floats;
use super::matmul::dot;
use crate::backend::{AttnParams, OpKind, PagedKv, SeqBatch, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{View, ViewMut};

/// Where one query row sits: its sequence and its KV position.
#[derive(Clone, Copy)]
struct Query {
    seq: usize,
    pos: usize,
}

/// Everything a task needs, validated: reading through it cannot index out of bounds.
struct Plan<'a> {
    queries: Vec<Query>,
    kv_lens: Vec<usize>,
    /// i32 `[n_seqs, max_blocks]`; every entry a task reads is in 0..num_blocks.
    tables: &'a [i32],
    max_blocks: usize,
    block_size: usize,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scale: f64,
    causal: bool,
    window: Option<usize>,
    softcap: Option<f64>,
}

fn err(msg: String) -> Error {
    Error::shape(OpKind::Attention, msg)
}

fn nonneg(what: &str, s: usize, v: i32) -> Result<usize> {
    usize::try_from(v).map_err(|_| err(format!("{what}[{s}] = {v} is negative")))
}

impl Plan<'_> {
    /// Key positions `lo..hi` a query at `pos` of a sequence of `kv_len` attends to.
    fn key_range(&self, pos: usize, kv_len: usize) -> (usize, usize) {
        let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let hi = if self.causal { pos + 1 } else { kv_len };
        (lo, hi)
    }
}

/// Check the ragged batch against the cache and build the per-token table.
#[allow(clippy::too_many_arguments)]
fn plan<'a>(
    p: &AttnParams,
    batch: &SeqBatch<'_>,
    q_starts: &[i32],
    kv_lens: &[i32],
    tables: &'a [i32],
    n_tokens: usize,
    num_blocks: usize,
    block_size: usize,
) -> Result<Plan<'a>> {
    let n_seqs = kv_lens.len();
    let max_blocks = batch.max_blocks();
    let mut plan = Plan {
        queries: Vec::with_capacity(n_tokens),
        kv_lens: Vec::with_capacity(n_seqs),
        tables,
        max_blocks,
        block_size,
        n_heads: p.n_heads,
        n_kv: p.n_kv_heads,
        head_dim: p.head_dim,
        scale: p.scale as f64,
        causal: p.causal,
        window: p.window,
        softcap: p.softcap.map(f64::from),
    };
    if q_starts.first() != Some(&0) {
        return Err(err(format!(
            "q_starts[0] = {:?}, must be 0 (every query row belongs to a sequence)",
            q_starts.first()
        )));
    }
    for s in 0..n_seqs {
        let q0 = nonneg("q_starts", s, q_starts[s])?;
        let q1 = nonneg("q_starts", s + 1, q_starts[s + 1])?;
        if q1 < q0 || q1 > n_tokens {
            return Err(err(format!(
                "q_starts[{s}..={}] = {q0}..{q1} is not an increasing range inside {n_tokens} query rows",
                s + 1
            )));
        }
        let q_len = q1 - q0;
        let kv_len = nonneg("kv_lens", s, kv_lens[s])?;
        let cap = max_blocks.saturating_mul(block_size);
        if q_len > kv_len || kv_len > cap {
            return Err(err(format!(
                "sequence {s}: q_len {q_len} ≤ kv_len {kv_len} ≤ max_blocks {max_blocks} × block_size {block_size} does not hold"
            )));
        }
        if q_len > batch.max_q_len || kv_len > batch.max_kv_len {
            return Err(err(format!(
                "sequence {s}: q_len {q_len} / kv_len {kv_len} exceed the batch bounds max_q_len {} / max_kv_len {}",
                batch.max_q_len, batch.max_kv_len
            )));
        }
        plan.kv_lens.push(kv_len);
        if q_len == 0 {
            continue;
        }
        // The keys read by this sequence's queries span lo(first query)..kv_len.
        let first = kv_len - q_len;
        let (lo, _) = plan.key_range(first, kv_len);
        for i in lo / block_size..kv_len.div_ceil(block_size) {
            let id = tables[s * max_blocks + i];
            if id < 0 || id as usize >= num_blocks {
                return Err(err(format!(
                    "block_tables[{s}][{i}] = {id} is not a block of the cache (0..{num_blocks})"
                )));
            }
        }
        plan.queries.extend((0..q_len).map(|j| Query {
            seq: s,
            pos: first + j,
        }));
    }
    if q_starts[n_seqs] as usize != n_tokens || plan.queries.len() != n_tokens {
        return Err(err(format!(
            "q_starts[{n_seqs}] = {} but q has {n_tokens} rows",
            q_starts[n_seqs]
        )));
    }
    Ok(plan)
}

/// Per-task scratch.
#[derive(Default)]
struct Scratch {
    /// `[group, keys]` scores, then exp(score − max).
    scores: Vec<f64>,
    /// `[group, head_dim]` Σ weights · v.
    acc: Vec<f64>,
    /// one K or V row as f32 `[head_dim]`.
    row: Vec<f32>,
    /// `[group]` softmax denominators.
    sums: Vec<f64>,
}

/// Cache element offset of key position `key` of sequence `seq`, KV head `g`.
fn row_offset(pl: &Plan<'_>, seq: usize, key: usize, g: usize) -> usize {
    let block = pl.tables[seq * pl.max_blocks + key / pl.block_size] as usize;
    ((block * pl.n_kv + g) * pl.block_size + key % pl.block_size) * pl.head_dim
}

/// The op's inputs: q `[n_tokens, n_heads, head_dim]` and the cache's K and V.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    q: &'a [f32],
    k: Floats<'a>,
    v: Floats<'a>,
}

/// One (token t, KV head g) task: writes `out_g` = out[t, g·group .. (g+1)·group, :].
fn task(pl: &Plan<'_>, inp: Inputs<'_>, t: usize, g: usize, sc: &mut Scratch, out_g: &mut [f32]) {
    let hd = pl.head_dim;
    let group = pl.n_heads / pl.n_kv;
    let Query { seq, pos } = pl.queries[t];
    let (lo, hi) = pl.key_range(pos, pl.kv_lens[seq]);
    let n = hi.saturating_sub(lo);
    if n == 0 {
        // Unreachable after `plan` (a query always sees its own position), kept total.
        out_g.fill(0.0);
        return;
    }
    let q_head = |j: usize| {
        let h = g * group + j;
        &inp.q[(t * pl.n_heads + h) * hd..(t * pl.n_heads + h + 1) * hd]
    };
    sc.scores.resize(group * n, 0.0);
    sc.row.resize(hd, 0.0);
    for (i, key) in (lo..hi).enumerate() {
        inp.k.read(row_offset(pl, seq, key, g), &mut sc.row);
        for j in 0..group {
            let mut s = pl.scale * dot(q_head(j), &sc.row);
            if let Some(c) = pl.softcap {
                s = c * (s / c).tanh();
            }
            sc.scores[j * n + i] = s;
        }
    }
    sc.sums.clear();
    for j in 0..group {
        let sj = &mut sc.scores[j * n..(j + 1) * n];
        let max = sj.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for s in sj.iter_mut() {
            *s = (*s - max).exp();
        }
        sc.sums.push(sj.iter().sum());
    }
    sc.acc.clear();
    sc.acc.resize(group * hd, 0.0);
    for (i, key) in (lo..hi).enumerate() {
        inp.v.read(row_offset(pl, seq, key, g), &mut sc.row);
        for j in 0..group {
            let w = sc.scores[j * n + i];
            for (a, v) in sc.acc[j * hd..(j + 1) * hd].iter_mut().zip(&sc.row) {
                *a += w * *v as f64;
            }
        }
    }
    for j in 0..group {
        for (o, a) in out_g[j * hd..(j + 1) * hd]
            .iter_mut()
            .zip(&sc.acc[j * hd..(j + 1) * hd])
        {
            *o = (a / sc.sums[j]) as f32;
        }
    }
}

fn check_params(p: &AttnParams, kv: &PagedKv<'_>) -> Result<()> {
    if p.n_heads == 0
        || p.n_kv_heads == 0
        || p.head_dim == 0
        || !p.n_heads.is_multiple_of(p.n_kv_heads)
    {
        return Err(err(format!(
            "n_heads {} must be a positive multiple of n_kv_heads {} and head_dim {} > 0",
            p.n_heads, p.n_kv_heads, p.head_dim
        )));
    }
    if kv.k.shape() != kv.v.shape() || kv.k.dtype() != kv.v.dtype() || kv.k.shape().rank() != 4 {
        return Err(err(format!(
            "cache K {} {} and V {} {} must both be [blocks, kv_heads, block_size, head_dim]",
            kv.k.shape(),
            kv.k.dtype(),
            kv.v.shape(),
            kv.v.dtype()
        )));
    }
    check::eq(
        OpKind::Attention,
        "cache kv_heads vs n_kv_heads",
        kv.n_kv_heads(),
        p.n_kv_heads,
    )?;
    check::eq(
        OpKind::Attention,
        "cache head_dim vs head_dim",
        kv.head_dim(),
        p.head_dim,
    )?;
    if kv.block_size() == 0 {
        return Err(err("cache block_size is 0".into()));
    }
    if !p.scale.is_finite() {
        return Err(err(format!("scale {} is not finite", p.scale)));
    }
    if let Some(c) = p.softcap
        && !(c.is_finite() && c > 0.0)
    {
        return Err(err(format!("softcap {c} must be finite and > 0")));
    }
    if p.window == Some(0) {
        return Err(err(
            "window 0 masks every key (use None for no window)".into()
        ));
    }
    Ok(())
}

/// The `attention` op: validate everything that could index out of bounds, then compute.
pub(super) fn attention(
    b: &ReferenceBackend,
    q: View<'_>,
    kv: &PagedKv<'_>,
    batch: &SeqBatch<'_>,
    p: &AttnParams,
    scratch: Option<ViewMut<'_>>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Attention;
    for d in [
        q.device(),
        out.device(),
        kv.k.device(),
        kv.v.device(),
        batch.q_starts.device(),
        batch.kv_lens.device(),
        batch.block_tables.device(),
    ] {
        b.check_dev(op, d)?;
    }
    if let Some(s) = scratch {
        b.check_dev(op, s.device())?;
    }
    check::dtype(op, "q", q.dtype(), &[DType::F32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    check::dtype(
        op,
        "cache",
        kv.dtype(),
        &[DType::F32, DType::F16, DType::BF16],
    )?;
    for (what, v) in [
        ("q_starts", &batch.q_starts),
        ("kv_lens", &batch.kv_lens),
        ("block_tables", &batch.block_tables),
    ] {
        check::dtype(op, what, v.dtype(), &[DType::I32])?;
    }
    check_params(p, kv)?;
    let qs = q.shape();
    if qs.rank() != 3 || qs.dim(1) != p.n_heads || qs.dim(2) != p.head_dim {
        return Err(err(format!(
            "q {qs} must be [n_tokens, n_heads {}, head_dim {}]",
            p.n_heads, p.head_dim
        )));
    }
    if out.shape() != qs {
        return Err(err(format!("out {} must have q's shape {qs}", out.shape())));
    }
    let n_seqs = batch.n_seqs();
    check::eq(
        op,
        "q_starts elements vs n_seqs + 1",
        batch.q_starts.numel(),
        n_seqs + 1,
    )?;
    let bt = batch.block_tables.shape();
    if bt.rank() != 2 || bt.dim(0) != n_seqs {
        return Err(err(format!(
            "block_tables {bt} must be [n_seqs {n_seqs}, max_blocks]"
        )));
    }

    let a = b.access();
    let q_starts = a.i32s(&batch.q_starts)?;
    let kv_lens = a.i32s(&batch.kv_lens)?;
    let tables = a.i32s(&batch.block_tables)?;
    let pl = plan(
        p,
        batch,
        q_starts,
        kv_lens,
        tables,
        qs.dim(0),
        kv.num_blocks(),
        kv.block_size(),
    )?;
    let inp = Inputs {
        q: a.f32s(&q)?,
        k: Floats::new(op, "cache K", kv.dtype(), a.input(&kv.k.as_view())?)?,
        v: Floats::new(op, "cache V", kv.dtype(), a.input(&kv.v.as_view())?)?,
    };
    let o = a.f32s_mut(&out)?;
    let group = p.n_heads / p.n_kv_heads;
    // out `[n_tokens, n_kv, group, head_dim]`: chunk i is token i / n_kv, KV head i % n_kv.
    o.par_chunks_mut(group * p.head_dim)
        .enumerate()
        .for_each_init(Scratch::default, |sc, (i, out_g)| {
            task(&pl, inp, i / pl.n_kv, i % pl.n_kv, sc, out_g)
        });
    Ok(())
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
