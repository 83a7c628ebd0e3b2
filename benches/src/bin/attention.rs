//! Paged attention, Llama-3-8B shape (32 query heads, 8 KV heads, head_dim 128, block size 16):
//! - decode (one query per sequence) at 1k / 4k / 16k context, batch 1 and 32: GB/s of the K/V
//!   bytes read (plus q and out) and the fraction of the measured copy bandwidth (target ≥ 80%
//!   at 4k on H100/H200), after a "read floor" row per case: the backend's read probe over as
//!   many bytes, timed the same way (`kiln_benches::read_floor`). KV caches are rotated (disjoint block tables into one big cache) so the
//!   working set exceeds `--rotate-mib` (default 512 MiB, above any L2).
//! - decode of one tensor-parallel rank of that model (TP2: 16 query heads, 4 KV heads) at 512
//!   context, batch 1 (the shape a TP2 decode step runs per layer).
//! - causal prefill of one 4096-token sequence: TFLOP/s (4·head_dim FLOPs per kept (query, key,
//!   head)) and the fraction of a dense bf16 matmul measured first (8192×8192×8192).
//!
//! `attention --backend cuda|wgpu|reference [--quick] [--types f16,bf16] [--json FILE]`
//! (`--types` picks the KV cache dtypes; default f16 and bf16).

use kiln_benches::{
    Args, Report, Row, copy_bandwidth, open, random_weight, rotation_copies, run_main, time_calls,
};
use kiln_core::{
    AttnParams, Backend, Buffer, DType, HostTensor, OpKind, PagedKv, Result, SeqBatch, Shape,
};

const N_HEADS: usize = 32;
const N_KV: usize = 8;
const HD: usize = 128;
const BS: usize = 16;

fn main() {
    run_main(|| {
        let args = Args::parse()?;
        let be = open(&args)?;
        let mut rep = Report::new(&*be, &args);
        let copy = copy_bandwidth(&*be, if args.quick { 64 } else { 256 })?;
        rep.header("attention (32 q heads, 8 kv heads, hd 128, block 16)");
        rep.push(Row {
            bench: "copy".into(),
            case: "d2d f32 copy (ceiling)".into(),
            us: 0.0,
            gbs: Some(copy / 1e9),
            tflops: None,
            pct: Some(100.0),
            note: "read+write bytes".into(),
        })?;
        // wgpu: the vec4 copy probe is the ceiling (kiln_benches::wgpu_ceiling); the decode rows
        // are wall clock per call there (no graphs on wgpu), so it is a strict one.
        let copy = kiln_benches::wgpu_ceiling(&mut rep, copy, args.quick)?;
        let dense = if args.quick {
            None
        } else {
            Some(dense_ceiling(&*be, &mut rep)?)
        };
        let ctxs: &[usize] = if args.quick {
            &[1024, 4096]
        } else {
            &[1024, 4096, 16384]
        };
        for kv in args.types_or(&[DType::F16, DType::BF16]) {
            if !be.supports(OpKind::Attention, kv) {
                println!("attention {kv}: not supported on {}", be.info().id);
                continue;
            }
            for &ctx in ctxs {
                for batch in [1usize, 32] {
                    decode(&*be, &args, &mut rep, kv, Heads::FULL, ctx, batch, copy)?;
                }
            }
            decode(&*be, &args, &mut rep, kv, Heads::TP2, 512, 1, copy)?;
            prefill(&*be, &args, &mut rep, kv, 4096, dense)?;
        }
        Ok(())
    })
}

fn upload_i32(be: &dyn Backend, v: &[i32]) -> Result<Buffer> {
    let b = be.alloc(v.len() * 4)?;
    be.write(&b, 0, &kiln_core::convert::i32_bytes(v))?;
    Ok(b)
}

/// Query and KV heads of a decode case: the whole model, or one TP2 rank's half.
#[derive(Clone, Copy)]
struct Heads {
    q: usize,
    kv: usize,
    tag: &'static str,
}

impl Heads {
    const FULL: Heads = Heads {
        q: N_HEADS,
        kv: N_KV,
        tag: "",
    };
    const TP2: Heads = Heads {
        q: N_HEADS / 2,
        kv: N_KV / 2,
        tag: " tp2-rank (16 q / 4 kv heads)",
    };
}

/// A cache `[blocks, n_kv, 16, 128]` of `kv` filled with a repeated random pattern.
fn cache(be: &dyn Backend, kv: DType, n_kv: usize, blocks: usize, seed: u64) -> Result<Buffer> {
    let elems = blocks * n_kv * BS * HD;
    let bytes = kv.bytes_for(elems)?;
    let b = be.alloc(bytes)?;
    let chunk_elems = (1usize << 20).min(elems);
    let pattern = random_weight(kv, 1, chunk_elems, seed);
    let mut at = 0;
    while at < bytes {
        let n = pattern.len().min(bytes - at);
        be.write(&b, at, &pattern[..n])?;
        at += n;
    }
    Ok(b)
}

fn params(h: Heads) -> AttnParams {
    AttnParams {
        n_heads: h.q,
        n_kv_heads: h.kv,
        head_dim: HD,
        scale: 1.0 / (HD as f32).sqrt(),
        causal: true,
        window: None,
        softcap: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn decode(
    be: &dyn Backend,
    args: &Args,
    rep: &mut Report,
    kv: DType,
    h: Heads,
    ctx: usize,
    batch: usize,
    copy: f64,
) -> Result<()> {
    let blocks_per_seq = ctx.div_ceil(BS);
    let kv_bytes = 2 * kv.bytes_for(batch * ctx * h.kv * HD)?;
    let copies = rotation_copies(kv_bytes, args.rotate_bytes);
    let blocks = copies * batch * blocks_per_seq;
    let (k, v) = (
        cache(be, kv, h.kv, blocks, 1)?,
        cache(be, kv, h.kv, blocks, 2)?,
    );
    let shape = Shape::new(&[blocks, h.kv, BS, HD])?;
    let paged = PagedKv::new(k.view_mut(0, shape, kv)?, v.view_mut(0, shape, kv)?)?;
    // Copy c uses blocks [c·batch·bps, (c+1)·batch·bps), sequence s its own run of them.
    let tables: Vec<Buffer> = (0..copies)
        .map(|c| {
            let t: Vec<i32> = (0..batch * blocks_per_seq)
                .map(|i| (c * batch * blocks_per_seq + i) as i32)
                .collect();
            upload_i32(be, &t)
        })
        .collect::<Result<_>>()?;
    let q_starts = upload_i32(be, &(0..=batch as i32).collect::<Vec<_>>())?;
    let kv_lens = upload_i32(be, &vec![ctx as i32; batch])?;
    let qn = batch * h.q * HD;
    let q = be.alloc(qn * 4)?;
    be.write(&q, 0, &random_weight(DType::F32, 1, qn, 3))?;
    let out = be.alloc(qn * 4)?;
    let qs = Shape::new(&[batch, h.q, HD])?;
    let p = params(h);
    let sb = be.attention_scratch_bytes(
        &p,
        batch,
        &decode_batch(&q_starts, &kv_lens, &tables[0], batch, blocks_per_seq, ctx)?,
    );
    let scratch = be.alloc(sb.max(4))?;
    let calls = copies.max(if args.quick { 8 } else { 32 });
    let (qv, ov) = (q.view(0, qs, DType::F32)?, out.view_mut(0, qs, DType::F32)?);
    let sv = scratch.view_mut(0, Shape::d1(sb.max(4) / 4), DType::F32)?;
    let mut call = |i: usize| {
        let b = decode_batch(
            &q_starts,
            &kv_lens,
            &tables[i % copies],
            batch,
            blocks_per_seq,
            ctx,
        )?;
        be.attention(qv, &paged, &b, &p, (sb > 0).then_some(sv), ov)
    };
    let reps = if args.quick { 3 } else { 7 };
    let secs = time_calls(be, calls, reps, &mut call)?;
    let bytes = (kv_bytes + 2 * qn * 4) as f64;
    // The read floor of this many K/V bytes (kiln_benches::read_floor), and each row on the
    // same clock (CUDA: every row; wgpu: b2b) as a fraction of it.
    let floor = kiln_benches::read_floor(be, kv_bytes, copies, calls, reps)?;
    if let Some(f) = floor {
        let case = format!(
            "read floor ctx {ctx} batch {batch}{} ({})",
            h.tag,
            kv.name()
        );
        rep.push(kiln_benches::floor_row(
            "attn-dec", case, f, kv_bytes, copy, copies,
        ))?;
    }
    let cuda = be.info().id.kind == kiln_core::BackendKind::Cuda;
    let mut row = |secs: f64, how: &str| {
        let of_floor = match floor {
            Some(f) if cuda || how == " b2b" => {
                format!(", {:.1} % of the read floor", 100.0 * f / secs)
            }
            _ => String::new(),
        };
        rep.push(Row {
            bench: "attn-dec".into(),
            case: format!("{} ctx {ctx} batch {batch}{}{how}", kv.name(), h.tag),
            us: secs * 1e6,
            gbs: Some(bytes / secs / 1e9),
            tflops: Some(4.0 * (batch * ctx * h.q * HD) as f64 / secs / 1e12),
            pct: Some(100.0 * bytes / secs / copy),
            note: format!(
                "{:.1} MB K+V per call, {copies} caches rotated, scratch {sb} B{of_floor}",
                kv_bytes as f64 / 1e6
            ),
        })
    };
    row(secs, "")?;
    // wgpu has no graphs: the row above is the host's clock over recorded calls (CPU-bound for
    // small calls). The b2b row is the GPU's clock: `calls` calls in one submission, GPU
    // timestamps at the ends (the gemv bench's b2b method).
    #[cfg(feature = "wgpu")]
    if let Some(w) = kiln_benches::opened_wgpu() {
        // One recorded op per call (the decode kernels' split and combine go as one
        // `dispatch2`); the per-(token, head) kernel's split (`KILN_WGPU_ATTN=0`) records two,
        // which the span timer refuses: no b2b row then.
        match kiln_benches::gpu_b2b(&w, calls, reps, 1, &mut call) {
            Ok(Some(t)) => row(t, " b2b")?,
            Ok(None) => {}
            Err(e) => eprintln!("attn-dec b2b skipped: {e}"),
        }
    }
    Ok(())
}

/// One decode step's batch: `batch` sequences of one query at position ctx − 1.
fn decode_batch<'a>(
    q_starts: &'a Buffer,
    kv_lens: &'a Buffer,
    table: &'a Buffer,
    batch: usize,
    blocks_per_seq: usize,
    ctx: usize,
) -> Result<SeqBatch<'a>> {
    Ok(SeqBatch {
        q_starts: q_starts.view(0, Shape::d1(batch + 1), DType::I32)?,
        kv_lens: kv_lens.view(0, Shape::d1(batch), DType::I32)?,
        block_tables: table.view(0, Shape::d2(batch, blocks_per_seq), DType::I32)?,
        max_q_len: 1,
        max_kv_len: ctx,
    })
}

fn prefill(
    be: &dyn Backend,
    args: &Args,
    rep: &mut Report,
    kv: DType,
    n: usize,
    dense: Option<f64>,
) -> Result<()> {
    let bps = n.div_ceil(BS);
    let (k, v) = (cache(be, kv, N_KV, bps, 4)?, cache(be, kv, N_KV, bps, 5)?);
    let shape = Shape::new(&[bps, N_KV, BS, HD])?;
    let paged = PagedKv::new(k.view_mut(0, shape, kv)?, v.view_mut(0, shape, kv)?)?;
    let table = upload_i32(be, &(0..bps as i32).collect::<Vec<_>>())?;
    let q_starts = upload_i32(be, &[0, n as i32])?;
    let kv_lens = upload_i32(be, &[n as i32])?;
    let qn = n * N_HEADS * HD;
    let q = be.alloc(qn * 4)?;
    be.write(&q, 0, &random_weight(DType::F32, 1, qn, 6))?;
    let out = be.alloc(qn * 4)?;
    let qs = Shape::new(&[n, N_HEADS, HD])?;
    let b = SeqBatch {
        q_starts: q_starts.view(0, Shape::d1(2), DType::I32)?,
        kv_lens: kv_lens.view(0, Shape::d1(1), DType::I32)?,
        block_tables: table.view(0, Shape::d2(1, bps), DType::I32)?,
        max_q_len: n,
        max_kv_len: n,
    };
    let p = params(Heads::FULL);
    let sb = be.attention_scratch_bytes(&p, n, &b);
    let scratch = be.alloc(sb.max(4))?;
    let sv = scratch.view_mut(0, Shape::d1(sb.max(4) / 4), DType::F32)?;
    let (qv, ov) = (q.view(0, qs, DType::F32)?, out.view_mut(0, qs, DType::F32)?);
    let secs = time_calls(
        be,
        if args.quick { 2 } else { 5 },
        if args.quick { 3 } else { 5 },
        &mut |_| be.attention(qv, &paged, &b, &p, (sb > 0).then_some(sv), ov),
    )?;
    // Causal: query j sees j + 1 keys.
    let pairs = (n * (n + 1) / 2) as f64;
    let flops = 4.0 * pairs * (N_HEADS * HD) as f64;
    rep.push(Row {
        bench: "attn-pre".into(),
        case: format!("{} causal {n} tokens", kv.name()),
        us: secs * 1e6,
        gbs: None,
        tflops: Some(flops / secs / 1e12),
        pct: dense.map(|c| 100.0 * flops / secs / c),
        note: "% of dense bf16 matmul".into(),
    })
}

/// FLOP/s of the backend's dense bf16 matmul at 8192³ (the compute ceiling of this bench).
fn dense_ceiling(be: &dyn Backend, rep: &mut Report) -> Result<f64> {
    let n = 8192;
    let w = random_weight(DType::BF16, n, n, 9);
    let wt = be.prepare_weight(&HostTensor::new(DType::BF16, Shape::d2(n, n), &w)?)?;
    drop(w);
    let x = be.alloc(n * n * 4)?;
    be.write(&x, 0, &random_weight(DType::F32, n, n, 10))?;
    let y = be.alloc(n * n * 4)?;
    let (xv, yv) = (
        x.view(0, Shape::d2(n, n), DType::F32)?,
        y.view_mut(0, Shape::d2(n, n), DType::F32)?,
    );
    let secs = time_calls(be, 3, 5, &mut |_| be.matmul(xv, &wt, yv))?;
    let flops = 2.0 * (n * n * n) as f64 / secs;
    rep.push(Row {
        bench: "dense".into(),
        case: format!("bf16 matmul {n}³ (ceiling)"),
        us: secs * 1e6,
        gbs: None,
        tflops: Some(flops / 1e12),
        pct: Some(100.0),
        note: "f32 x converted to bf16 inside".into(),
    })?;
    Ok(flops)
}
