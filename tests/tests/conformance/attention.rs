//! attention: paged, ragged batches mixing decode rows and prefill chunks, GQA 8:1 / MQA / MHA,
//! head_dim 64/128/256, shuffled block tables, sliding window, softcap, f32/f16/bf16 caches.
//!
//! Cache rows that hold no token of any sequence (the tail of each sequence's last block, unused
//! blocks, and the block that pads the block tables) are NaN: an attention kernel must not let
//! bytes beyond a sequence's KV length reach its output (a masked score times a NaN V row is
//! NaN), since real caches hold stale or uninitialised data there.

use kiln_core::{AttnParams, Backend, DType, OpKind, PagedKv, SeqBatch};
use kiln_tests::oracle::attention::Seq;
use kiln_tests::{conformance, data, dev, harness, oracle, require_op, tolerance};

/// One attention case.
pub(crate) struct Setup {
    /// (q_len, kv_len) per sequence, in batch order.
    pub(crate) seqs: &'static [(usize, usize)],
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) block_size: usize,
    pub(crate) kv: DType,
    pub(crate) causal: bool,
    pub(crate) window: Option<usize>,
    pub(crate) softcap: Option<f32>,
    /// None: 1/sqrt(head_dim).
    pub(crate) scale: Option<f32>,
    /// Standard deviation of K (larger makes the softcap matter).
    pub(crate) k_std: f32,
    /// Pass max_q_len / max_kv_len twice the real ones (they "may be loose").
    pub(crate) loose_bounds: bool,
}

pub(crate) const BASE: Setup = Setup {
    seqs: &[],
    n_heads: 16,
    n_kv_heads: 2,
    head_dim: 128,
    block_size: 16,
    kv: DType::F32,
    causal: true,
    window: None,
    softcap: None,
    scale: None,
    k_std: 1.0,
    loose_bounds: false,
};

/// Decode rows (q_len 1) next to prefill chunks (q_len up to 70 > block_size) with KV lengths
/// from 1 to 2900, block-aligned and not.
pub(crate) const MIXED: &[(usize, usize)] = &[
    (1, 1),
    (1, 2900),
    (37, 37),
    (70, 1500),
    (1, 17),
    (19, 119),
    (16, 16),
    (1, 33),
];

pub(crate) fn attention_case(b: &dyn Backend, s: Setup) {
    if !require_op(b, OpKind::Attention, s.kv) {
        return;
    }
    let mut rng = harness::rng();
    let (nh, nkv, hd, bs) = (s.n_heads, s.n_kv_heads, s.head_dim, s.block_size);

    // Block tables: every sequence gets distinct blocks from a shuffled pool; entries past a
    // sequence's last block point at a NaN-filled block.
    let need: Vec<usize> = s.seqs.iter().map(|&(_, kv)| kv.div_ceil(bs)).collect();
    let total: usize = need.iter().sum();
    let num_blocks = total + 3;
    let mut pool: Vec<usize> = (0..num_blocks).collect();
    rng.shuffle(&mut pool);
    let pad_block = pool[total];
    let max_blocks = need.iter().max().unwrap() + 1;
    let mut seqs = Vec::new();
    let (mut used, mut q_start) = (0, 0);
    for (&(q_len, kv_len), &nb) in s.seqs.iter().zip(&need) {
        assert!(q_len <= kv_len);
        seqs.push(Seq {
            q_start,
            q_len,
            kv_len,
            blocks: pool[used..used + nb].to_vec(),
        });
        used += nb;
        q_start += q_len;
    }
    let n_tokens = q_start;

    // Cache [num_blocks, n_kv_heads, block_size, head_dim]: NaN except the sequences' tokens.
    let cache_len = num_blocks * nkv * bs * hd;
    let (mut kc, mut vc) = (vec![f32::NAN; cache_len], vec![f32::NAN; cache_len]);
    for sq in &seqs {
        for pos in 0..sq.kv_len {
            for h in 0..nkv {
                let at = ((sq.blocks[pos / bs] * nkv + h) * bs + pos % bs) * hd;
                for d in 0..hd {
                    kc[at + d] = rng.normal() * s.k_std;
                    vc[at + d] = rng.normal();
                }
            }
        }
    }
    let (kc, vc) = (data::round_to(s.kv, &kc), data::round_to(s.kv, &vc));
    let cache_shape = [num_blocks, nkv, bs, hd];
    let k_t = dev::upload_floats(b, s.kv, &cache_shape, &kc);
    let v_t = dev::upload_floats(b, s.kv, &cache_shape, &vc);

    let q = rng.normals(n_tokens * nh * hd, 1.0);
    let q_t = dev::upload_f32(b, &[n_tokens, nh, hd], &q);
    let q_starts: Vec<i32> = seqs
        .iter()
        .map(|x| x.q_start as i32)
        .chain([n_tokens as i32])
        .collect();
    let kv_lens: Vec<i32> = seqs.iter().map(|x| x.kv_len as i32).collect();
    let mut tables = vec![pad_block as i32; seqs.len() * max_blocks];
    for (i, sq) in seqs.iter().enumerate() {
        for (j, &blk) in sq.blocks.iter().enumerate() {
            tables[i * max_blocks + j] = blk as i32;
        }
    }
    let qs_t = dev::upload_i32(b, &[seqs.len() + 1], &q_starts);
    let kl_t = dev::upload_i32(b, &[seqs.len()], &kv_lens);
    let bt_t = dev::upload_i32(b, &[seqs.len(), max_blocks], &tables);
    let slack = if s.loose_bounds { 2 } else { 1 };
    let batch = SeqBatch {
        q_starts: qs_t.view(),
        kv_lens: kl_t.view(),
        block_tables: bt_t.view(),
        max_q_len: s.seqs.iter().map(|x| x.0).max().unwrap() * slack,
        max_kv_len: s.seqs.iter().map(|x| x.1).max().unwrap() * slack,
    };
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: s.scale.unwrap_or(1.0 / (hd as f32).sqrt()),
        causal: s.causal,
        window: s.window,
        softcap: s.softcap,
    };
    let kv = PagedKv::new(k_t.view_mut(), v_t.view_mut()).unwrap();
    let scratch = dev::scratch(b, b.attention_scratch_bytes(&p, n_tokens, &batch));
    let out = dev::output(b, DType::F32, &[n_tokens, nh, hd]);
    dev::ok(
        "attention",
        b.attention(
            q_t.view(),
            &kv,
            &batch,
            &p,
            scratch.as_ref().map(|t| t.view_mut()),
            out.view_mut(),
        ),
    );
    let got = dev::read_out(b, &out, "attention out");
    let exp = oracle::attention::attention(&q, &kc, &vc, bs, &seqs, &p);
    let what = format!(
        "attention {} heads {nh}/{nkv} hd {hd} bs {bs} causal {} window {:?} softcap {:?} seqs {:?}",
        s.kv, s.causal, s.window, s.softcap, s.seqs
    );
    tolerance::check(
        b,
        OpKind::Attention,
        s.kv,
        &what,
        &[n_tokens, nh, hd],
        &got,
        &exp,
    );
}

/// Bad arguments return Err, never panic; views of another device give WrongDevice.
fn attention_errors_case(b: &dyn Backend) {
    let (nh, nkv, hd, bs, nb) = (4, 2, 64, 16, 4);
    let mut rng = harness::rng();
    let cache =
        |b: &dyn Backend| dev::upload_f32(b, &[nb, nkv, bs, hd], &vec![0.5; nb * nkv * bs * hd]);
    let (k_t, v_t) = (cache(b), cache(b));
    let q = dev::upload_f32(b, &[3, nh, hd], &rng.normals(3 * nh * hd, 1.0));
    let qs = dev::upload_i32(b, &[2], &[0, 3]);
    let kl = dev::upload_i32(b, &[1], &[20]);
    let bt = dev::upload_i32(b, &[1, 2], &[2, 0]);
    let batch = SeqBatch {
        q_starts: qs.view(),
        kv_lens: kl.view(),
        block_tables: bt.view(),
        max_q_len: 3,
        max_kv_len: 20,
    };
    let p = AttnParams {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        scale: 0.125,
        causal: true,
        window: None,
        softcap: None,
    };
    let kv = PagedKv::new(k_t.view_mut(), v_t.view_mut()).unwrap();
    let out = dev::output(b, DType::F32, &[3, nh, hd]);
    let scratch = dev::scratch(b, b.attention_scratch_bytes(&p, 3, &batch));
    let sc = || scratch.as_ref().map(|t| t.view_mut());

    let out_bad = dev::output(b, DType::F32, &[3, nh, hd + 1]);
    dev::expect_err("attention out head_dim 65", || {
        b.attention(q.view(), &kv, &batch, &p, sc(), out_bad.view_mut())
    });
    let p_bad = AttnParams { head_dim: 128, ..p };
    dev::expect_err("attention params head_dim 128 vs cache 64", || {
        b.attention(q.view(), &kv, &batch, &p_bad, sc(), out.view_mut())
    });
    let p_gqa = AttnParams { n_kv_heads: 3, ..p };
    dev::expect_err("attention n_kv_heads 3 vs cache 2", || {
        b.attention(q.view(), &kv, &batch, &p_gqa, sc(), out.view_mut())
    });
    let kl_f = dev::upload_f32(b, &[1], &[20.0]);
    let batch_f = SeqBatch {
        kv_lens: kl_f.view(),
        ..batch
    };
    dev::expect_err("attention kv_lens f32", || {
        b.attention(q.view(), &kv, &batch_f, &p, sc(), out.view_mut())
    });
    let qs_bad = dev::upload_i32(b, &[3], &[0, 3, 3]);
    let batch_n = SeqBatch {
        q_starts: qs_bad.view(),
        ..batch
    };
    dev::expect_err("attention q_starts [3] for 1 sequence", || {
        b.attention(q.view(), &kv, &batch_n, &p, sc(), out.view_mut())
    });
    let qf = dev::upload_f32(dev::foreign(), &[3, nh, hd], &rng.normals(3 * nh * hd, 1.0));
    dev::expect_wrong_device(
        b,
        OpKind::Attention,
        DType::F32,
        "attention q on another device",
        || b.attention(qf.view(), &kv, &batch, &p, sc(), out.view_mut()),
    );
    let (kf, vf) = (cache(dev::foreign()), cache(dev::foreign()));
    let kvf = PagedKv::new(kf.view_mut(), vf.view_mut()).unwrap();
    dev::expect_wrong_device(
        b,
        OpKind::Attention,
        DType::F32,
        "attention cache on another device",
        || b.attention(q.view(), &kvf, &batch, &p, sc(), out.view_mut()),
    );
}

conformance! {
    attention_mixed_hd128_gqa8_f32 => attention_case(Setup { seqs: MIXED, ..BASE });
    attention_mixed_hd128_gqa8_f16 => attention_case(Setup { seqs: MIXED, kv: DType::F16, ..BASE });
    attention_mixed_hd128_gqa8_bf16 => attention_case(Setup { seqs: MIXED, kv: DType::BF16, ..BASE });
    attention_decode_hd64_mqa_bs32_f16 => attention_case(Setup {
        seqs: &[(1, 1), (1, 31), (1, 32), (1, 33), (1, 517), (1, 1024), (1, 2048), (1, 3999), (1, 4000)],
        n_heads: 8, n_kv_heads: 1, head_dim: 64, block_size: 32, kv: DType::F16, loose_bounds: true, ..BASE
    });
    attention_prefill_hd128_mqa_bs64_f32 => attention_case(Setup {
        seqs: &[(200, 200), (65, 130), (1, 64)],
        n_heads: 8, n_kv_heads: 1, block_size: 64, ..BASE
    });
    attention_window_softcap_hd256_bf16 => attention_case(Setup {
        seqs: &[(70, 70), (33, 200), (1, 300), (1, 64), (1, 65)],
        n_heads: 8, n_kv_heads: 4, head_dim: 256, kv: DType::BF16, window: Some(64),
        softcap: Some(20.0), scale: Some(1.0 / 16.0), k_std: 3.0, ..BASE
    });
    attention_window_hd128_gqa8_f32 => attention_case(Setup { seqs: MIXED, window: Some(100), ..BASE });
    // Odd and non-power-of-two block sizes, odd window starts: the CUDA decode kernel copies K/V
    // rows in pairs, falling back to single rows at range edges and for odd block sizes.
    attention_decode_hd128_bs15_f16 => attention_case(Setup {
        seqs: &[(1, 1), (1, 2), (1, 15), (1, 16), (1, 31), (2, 40), (1, 301), (1, 1001), (1, 2900)],
        block_size: 15, kv: DType::F16, ..BASE
    });
    attention_window_hd128_bs24_bf16 => attention_case(Setup {
        seqs: MIXED, block_size: 24, kv: DType::BF16, window: Some(37), ..BASE
    });
    attention_softcap_hd128_gqa8_f16 => attention_case(Setup { seqs: MIXED, kv: DType::F16, softcap: Some(5.0), k_std: 4.0, ..BASE });
    attention_noncausal_hd64_f32 => attention_case(Setup {
        seqs: &[(10, 10), (5, 40), (1, 7)],
        n_heads: 4, n_kv_heads: 4, head_dim: 64, causal: false, scale: Some(0.3), ..BASE
    });
    attention_errors => attention_errors_case();
}
