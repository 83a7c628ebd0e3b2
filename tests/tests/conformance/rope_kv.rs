//! rope_kv_append (q and k rotated, the rotated k and v appended to the paged cache, as one op):
//! the result must equal the backend's own rope(q), rope(k), kv_append(k, v) bit for bit — q, k
//! and both whole caches (rows not addressed keep their contents; negative slots skip). Both
//! rope styles, n_rot < head_dim, GQA, f32/f16/bf16 caches. (rope and kv_append are checked
//! against their oracles in their own files.)

use kiln_core::{Backend, DType, OpKind, PagedKv, RopeFreqs, RopeParams, RopeScaling, RopeStyle};
use kiln_tests::{conformance, data, dev, harness, require_op};

struct Case {
    style: RopeStyle,
    heads: (usize, usize),
    head_dim: usize,
    n_rot: usize,
    cache: DType,
}

fn rope_kv_case(b: &dyn Backend, c: Case) {
    if !require_op(b, OpKind::Rope, DType::F32) || !require_op(b, OpKind::KvAppend, c.cache) {
        return;
    }
    let mut rng = harness::rng();
    let ((nh, nkv), hd, n_tokens, (num_blocks, bs)) = (c.heads, c.head_dim, 23, (12, 16));
    let freqs = RopeFreqs {
        base: 500000.0,
        scaling: RopeScaling::None,
    };
    let inv_freq = freqs.inv_freq(c.n_rot).unwrap();
    let positions: Vec<i32> = (0..n_tokens).map(|_| rng.below(9000) as i32).collect();
    let mut all: Vec<i32> = (0..(num_blocks * bs) as i32).collect();
    rng.shuffle(&mut all);
    let slots: Vec<i32> = (0..n_tokens)
        .map(|t| if t % 7 == 3 { -1 } else { all[t] })
        .collect();
    let q = rng.activations(n_tokens * nh * hd, 1.0);
    let k = rng.activations(n_tokens * nkv * hd, 2.0);
    let v = rng.activations(n_tokens * nkv * hd, 0.5);
    let cache_shape = [num_blocks, nkv, bs, hd];
    let cache0 = data::round_to(c.cache, &rng.normals(num_blocks * nkv * bs * hd, 1.0));
    let p = RopeParams {
        style: c.style,
        n_rot: c.n_rot,
    };
    // Two identical sets of device buffers: one for the fused op, one for the three ops.
    let run = |fused: bool| {
        let q_t = dev::upload_f32(b, &[n_tokens, nh, hd], &q);
        let k_t = dev::upload_f32(b, &[n_tokens, nkv, hd], &k);
        let v_t = dev::upload_f32(b, &[n_tokens, nkv, hd], &v);
        let kc = dev::upload_floats(b, c.cache, &cache_shape, &cache0);
        let vc = dev::upload_floats(b, c.cache, &cache_shape, &cache0);
        let pos = dev::upload_i32(b, &[n_tokens], &positions);
        let f = dev::upload_f32(b, &[c.n_rot / 2], &inv_freq);
        let s = dev::upload_i32(b, &[n_tokens], &slots);
        let kv = PagedKv::new(kc.view_mut(), vc.view_mut()).unwrap();
        if fused {
            dev::ok(
                "rope_kv_append",
                b.rope_kv_append(
                    q_t.view_mut(),
                    k_t.view_mut(),
                    v_t.view(),
                    pos.view(),
                    f.view(),
                    &p,
                    &kv,
                    s.view(),
                ),
            );
        } else {
            dev::ok("rope q", b.rope(q_t.view_mut(), pos.view(), f.view(), &p));
            dev::ok("rope k", b.rope(k_t.view_mut(), pos.view(), f.view(), &p));
            dev::ok(
                "kv_append",
                b.kv_append(k_t.view(), v_t.view(), &kv, s.view()),
            );
        }
        [&q_t, &k_t, &kc, &vc].map(|t| dev::read_out(b, t, "rope_kv_append output"))
    };
    let (got, want) = (run(true), run(false));
    for (name, (g, w)) in ["q", "k", "K cache", "V cache"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        for (i, (a, e)) in g.iter().zip(w).enumerate() {
            assert_eq!(
                a.to_bits(),
                e.to_bits(),
                "rope_kv_append {name}[{i}] = {a}, rope + kv_append gives {e} ({:?} hd {hd} n_rot {} \
                 heads {nh}/{nkv} cache {}; {})",
                c.style,
                c.n_rot,
                c.cache,
                harness::context()
            );
        }
    }
}

fn rope_kv_errors_case(b: &dyn Backend) {
    let (n, nkv, hd) = (3, 2, 64);
    let q = dev::upload_f32(b, &[n, 4, hd], &vec![1.0; n * 4 * hd]);
    let k = dev::upload_f32(b, &[n, nkv, hd], &vec![1.0; n * nkv * hd]);
    let v = dev::upload_f32(b, &[n, nkv, hd], &vec![1.0; n * nkv * hd]);
    let cache =
        |b: &dyn Backend| dev::upload_f32(b, &[4, nkv, 16, hd], &vec![0.0; 4 * nkv * 16 * hd]);
    let (kc, vc) = (cache(b), cache(b));
    let kv = PagedKv::new(kc.view_mut(), vc.view_mut()).unwrap();
    let pos = dev::upload_i32(b, &[n], &[0, 1, 2]);
    let f = dev::upload_f32(b, &[32], &[0.5; 32]);
    let s = dev::upload_i32(b, &[n], &[0, 5, 17]);
    let p = RopeParams {
        style: RopeStyle::Neox,
        n_rot: 64,
    };
    let k_bad = dev::upload_f32(b, &[n, 3, hd], &vec![1.0; n * 3 * hd]);
    dev::expect_err("rope_kv_append k with 3 heads for a 2-head cache", || {
        b.rope_kv_append(
            q.view_mut(),
            k_bad.view_mut(),
            v.view(),
            pos.view(),
            f.view(),
            &p,
            &kv,
            s.view(),
        )
    });
    let pos_n = dev::upload_i32(b, &[2], &[0, 1]);
    dev::expect_err("rope_kv_append 2 positions for 3 tokens", || {
        b.rope_kv_append(
            q.view_mut(),
            k.view_mut(),
            v.view(),
            pos_n.view(),
            f.view(),
            &p,
            &kv,
            s.view(),
        )
    });
    let f_bad = dev::upload_f32(b, &[31], &[0.5; 31]);
    dev::expect_err("rope_kv_append inv_freq [31] for n_rot 64", || {
        b.rope_kv_append(
            q.view_mut(),
            k.view_mut(),
            v.view(),
            pos.view(),
            f_bad.view(),
            &p,
            &kv,
            s.view(),
        )
    });
}

conformance! {
    rope_kv_append_neox_gqa_f16 => rope_kv_case(Case { style: RopeStyle::Neox, heads: (8, 2), head_dim: 128, n_rot: 128, cache: DType::F16 });
    rope_kv_append_interleaved_partial_bf16 => rope_kv_case(Case { style: RopeStyle::Interleaved, heads: (4, 4), head_dim: 64, n_rot: 32, cache: DType::BF16 });
    rope_kv_append_neox_partial_f32 => rope_kv_case(Case { style: RopeStyle::Neox, heads: (6, 3), head_dim: 256, n_rot: 64, cache: DType::F32 });
    // An odd number of rotary pairs (wgpu's one-pass shader takes pairs two at a time: it runs
    // the three ops here) and a tail that is not a multiple of 4.
    rope_kv_append_neox_odd_pairs_f16 => rope_kv_case(Case { style: RopeStyle::Neox, heads: (4, 2), head_dim: 64, n_rot: 34, cache: DType::F16 });
    rope_kv_append_errors => rope_kv_errors_case();
}
