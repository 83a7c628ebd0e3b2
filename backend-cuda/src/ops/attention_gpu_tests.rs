//! GPU checks of the split-KV decode merge (skipped without CUDA; a failure under
//! KILN_REQUIRE=cuda): the merge the device takes by default — inside a thread-block cluster on
//! sm_90+ (attention_launch.rs), the fused merge (counters created by `attention_scratch_bytes`)
//! before it or under `KILN_ATTN_CLUSTER=0` — and the attn_combine fallback of the fused form
//! (first use inside a capture, no counters yet; not reached when clusters merge) all match the
//! reference backend, in plain calls and in graph replays, and leave every counter at 0. The
//! batch has a split row with empty splits (2999 keys), a one-split row and an invalid one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use super::*;
use kiln_core::convert::{from_f32, i32_bytes, to_f32};
use kiln_core::reference::ReferenceBackend;
use kiln_core::{Backend, BackendProvider, Buffer, Probe, Shape};

use crate::CudaProvider;

fn gpu() -> Option<Arc<CudaBackend>> {
    match CudaProvider.probe() {
        Probe::Found(_) => Some(CudaProvider.open_cuda(0).expect("cuda:0 opens")),
        Probe::NotFound(why) => {
            let req = std::env::var("KILN_REQUIRE").unwrap_or_default();
            assert!(
                !req.split(',').any(|s| s.trim() == "cuda"),
                "KILN_REQUIRE=cuda but CUDA was not found: {why}"
            );
            println!("skipped: CUDA not found ({why})");
            None
        }
    }
}

const NH: usize = 32;
const NKV: usize = 8;
const HD: usize = 128;
const BS: usize = 16;
/// Decode rows (q_len 1): long (split), one chunk, and an invalid one (kv_len 0 < q_len).
const KV_LENS: [i32; 4] = [4096, 2999, 100, 0];
/// The reference backend rejects invalid sequences: it gets a valid length there (row unused).
const REF_KV_LENS: [i32; 4] = [4096, 2999, 100, 1];

struct Case {
    q: Buffer,
    k: Buffer,
    v: Buffer,
    q_starts: Buffer,
    kv_lens: Buffer,
    tables: Buffer,
    out: Buffer,
    blocks: usize,
    max_blocks: usize,
    /// The lengths the device sees (an invalid sequence has 0) and the batch's bound.
    lens: Vec<i32>,
    max_kv: usize,
}

fn upload(be: &dyn Backend, bytes: &[u8]) -> Buffer {
    let b = be.alloc(bytes.len()).unwrap();
    be.write(&b, 0, bytes).unwrap();
    b
}

fn case(be: &dyn Backend, host: &HostData, kv_lens: &[i32]) -> Case {
    Case {
        q: upload(be, &from_f32(DType::F32, &host.q).unwrap()),
        k: upload(be, &from_f32(DType::F16, &host.k).unwrap()),
        v: upload(be, &from_f32(DType::F16, &host.v).unwrap()),
        q_starts: upload(be, &i32_bytes(&host.q_starts)),
        kv_lens: upload(be, &i32_bytes(kv_lens)),
        tables: upload(be, &i32_bytes(&host.tables)),
        out: be.alloc(host.q.len() * 4).unwrap(),
        blocks: host.blocks,
        max_blocks: host.max_blocks,
        lens: kv_lens.to_vec(),
        max_kv: host.max_blocks * BS,
    }
}

struct HostData {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    q_starts: Vec<i32>,
    tables: Vec<i32>,
    blocks: usize,
    max_blocks: usize,
}

/// `n` sequences of up to `max_kv` keys.
fn host_data(n: usize, max_kv: usize) -> HostData {
    let mut seed = 0x9e37_79b9_u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let max_blocks = max_kv / BS;
    let blocks = n * max_blocks;
    let q = (0..n * NH * HD).map(|_| rnd()).collect();
    let k = (0..blocks * NKV * BS * HD).map(|_| rnd()).collect();
    let v = (0..blocks * NKV * BS * HD).map(|_| rnd()).collect();
    // Scrambled block order (every entry inside the cache).
    let tables = (0..blocks)
        .map(|i| ((i * 37 + 11) % blocks) as i32)
        .collect();
    HostData {
        q,
        k,
        v,
        q_starts: (0..=n as i32).collect(),
        tables,
        blocks,
        max_blocks,
    }
}

fn params() -> AttnParams {
    AttnParams {
        n_heads: NH,
        n_kv_heads: NKV,
        head_dim: HD,
        scale: 1.0 / (HD as f32).sqrt(),
        causal: true,
        window: None,
        softcap: None,
    }
}

/// Runs attention on `c` (out poisoned with NaN first) and returns out.
fn run(be: &dyn Backend, c: &Case, scratch: &Buffer, sb: usize) -> Vec<f32> {
    let n = c.lens.len();
    be.write(&c.out, 0, &vec![0xff; n * NH * HD * 4]).unwrap();
    call(be, c, scratch, sb).unwrap();
    let mut bytes = vec![0u8; n * NH * HD * 4];
    be.read(&c.out, 0, &mut bytes).unwrap();
    to_f32(DType::F32, &bytes).unwrap()
}

fn call(be: &dyn Backend, c: &Case, scratch: &Buffer, sb: usize) -> Result<()> {
    let n = c.lens.len();
    let cs = Shape::new(&[c.blocks, NKV, BS, HD])?;
    let kv = PagedKv::new(
        c.k.view_mut(0, cs, DType::F16)?,
        c.v.view_mut(0, cs, DType::F16)?,
    )?;
    let qs = Shape::new(&[n, NH, HD])?;
    let sv = scratch.view_mut(0, Shape::d1(sb.max(4) / 4), DType::F32)?;
    be.attention(
        c.q.view(0, qs, DType::F32)?,
        &kv,
        &batch(c)?,
        &params(),
        (sb > 0).then_some(sv),
        c.out.view_mut(0, qs, DType::F32)?,
    )
}

fn batch(c: &Case) -> Result<SeqBatch<'_>> {
    let n = c.lens.len();
    Ok(SeqBatch {
        q_starts: c.q_starts.view(0, Shape::d1(n + 1), DType::I32)?,
        kv_lens: c.kv_lens.view(0, Shape::d1(n), DType::I32)?,
        block_tables: c.tables.view(0, Shape::d2(n, c.max_blocks), DType::I32)?,
        max_q_len: 1,
        max_kv_len: c.max_kv,
    })
}

/// Max |a − b| over rows valid in `b`; invalid rows (NaN in the reference's poisoned output)
/// must be left unwritten (NaN) in `a` too.
fn max_err(a: &[f32], b: &[f32], kv_lens: &[i32]) -> f32 {
    let row = NH * HD;
    let mut worst = 0f32;
    for (s, &kv) in kv_lens.iter().enumerate() {
        for i in s * row..(s + 1) * row {
            if kv == 0 {
                assert!(a[i].is_nan(), "invalid sequence {s} was written");
            } else {
                worst = worst.max((a[i] - b[i]).abs());
            }
        }
    }
    worst
}

/// Poisons `c.out`, replays `g` and returns the max error against `want` (`max_err`).
fn replay_err(be: &dyn Backend, g: &dyn kiln_core::Replay, c: &Case, want: &[f32]) -> f32 {
    be.write(&c.out, 0, &vec![0xff; want.len() * 4]).unwrap();
    g.replay().unwrap();
    let mut bytes = vec![0u8; want.len() * 4];
    be.read(&c.out, 0, &mut bytes).unwrap();
    max_err(&to_f32(DType::F32, &bytes).unwrap(), want, &c.lens)
}

/// Three plain calls, then three replays of one captured call, each within 2e-3 of `want` (the
/// output poisoned before each); `after` checks more after every one (`merge` names them).
fn calls_and_replays(be: &Arc<CudaBackend>, c: &Case, want: &[f32], merge: &str, after: &dyn Fn()) {
    let n = c.lens.len();
    let sb = be.attention_scratch_bytes(&params(), n, &batch(c).unwrap());
    let scratch = be.alloc(sb.max(4)).unwrap();
    for rep in 0..3 {
        let err = max_err(&run(&**be, c, &scratch, sb), want, &c.lens);
        assert!(err < 2e-3, "{merge} call {rep}: max err {err}");
        after();
    }
    let g = be
        .capture(&mut || call(&**be, c, &scratch, sb))
        .unwrap()
        .expect("CUDA captures graphs");
    for rep in 0..3 {
        let err = replay_err(&**be, &*g, c, want);
        assert!(err < 2e-3, "{merge} replay {rep}: max err {err}");
        after();
    }
}

fn counters_of(be: &CudaBackend) -> Vec<i32> {
    be.attn_counters_host().unwrap()
}

#[test]
fn split_decode_merge_fused_and_fallback_match_reference_and_reset_counters() {
    let Some(be) = gpu() else { return };
    let host = host_data(KV_LENS.len(), 4096);
    let rf = ReferenceBackend::new(0);
    let rc = case(&rf, &host, &REF_KV_LENS);
    let rsb = rf.attention_scratch_bytes(&params(), KV_LENS.len(), &batch(&rc).unwrap());
    let want = run(&rf, &rc, &rf.alloc(rsb.max(4)).unwrap(), rsb);

    // Fused: attention_scratch_bytes (planning, before any capture) creates the counters.
    let c = case(&*be, &host, &KV_LENS);
    let pl = be.attn_plan(&params(), &batch(&c).unwrap());
    assert!(pl.splits > 1 && pl.counters > 0, "{pl:?}");
    let cl = be
        .attn_cluster_plan(HD, DType::F16, &pl, NKV, KV_LENS.len())
        .unwrap();
    let merge = if cl.is_some() { "cluster" } else { "fused" };
    calls_and_replays(&be, &c, &want, merge, &|| {
        assert!(counters_of(&be).iter().all(|&x| x == 0));
    });
    println!("{merge}: {pl:?}, cluster plan {cl:?}");

    // Fallback: a fresh backend (own stream, no counters yet) whose first call is captured
    // merges with attn_combine (or, with clusters, in them); it still matches, and creates no
    // counters inside the capture.
    let be2 = CudaProvider.open_cuda(0).unwrap();
    let c2 = case(&*be2, &host, &KV_LENS);
    let sb2 = be2
        .attn_plan(&params(), &batch(&c2).unwrap())
        .scratch_bytes();
    let scratch2 = be2.alloc(sb2.max(4)).unwrap();
    let g2 = be2
        .capture(&mut || call(&*be2, &c2, &scratch2, sb2))
        .unwrap()
        .expect("CUDA captures graphs");
    for rep in 0..2 {
        let err = replay_err(&*be2, &*g2, &c2, &want);
        assert!(err < 2e-3, "attn_combine replay {rep}: max err {err}");
    }
    assert!(
        counters_of(&be2).is_empty(),
        "counters created during capture"
    );
}

/// The cluster merge where the device takes it (sm_90+, `KILN_ATTN_CLUSTER` ≥ 2): one sequence
/// of 300 keys under a 512-key bound, so 8 splits of 64 keys of which 5 hold keys (3 merge
/// empty states), 8 clusters; plain calls and graph replays against the reference backend,
/// output poisoned before each.
#[test]
fn cluster_merge_with_empty_splits_matches_reference() {
    let Some(be) = gpu() else { return };
    let host = host_data(1, 512);
    let rf = ReferenceBackend::new(0);
    let rc = case(&rf, &host, &[300]);
    let rsb = rf.attention_scratch_bytes(&params(), 1, &batch(&rc).unwrap());
    let want = run(&rf, &rc, &rf.alloc(rsb.max(4)).unwrap(), rsb);
    let c = case(&*be, &host, &[300]);
    let pl = be.attn_plan(&params(), &batch(&c).unwrap());
    let cl = be.attn_cluster_plan(HD, DType::F16, &pl, NKV, 1).unwrap();
    let sm90 = be.info().caps.compute_capability.is_some_and(|c| c.0 >= 9);
    let on = super::super::attention_launch::cluster_cap() >= pl.splits;
    assert_eq!(cl.is_some(), sm90 && on, "{pl:?}, cluster plan {cl:?}");
    if cl.is_none() {
        println!("skipped: no cluster merge here ({pl:?})");
        return;
    }
    assert_eq!((pl.splits, pl.chunk), (8, 64), "{pl:?}");
    calls_and_replays(&be, &c, &want, "cluster", &|| {});
    println!("cluster: {pl:?}, {cl:?}");
}
