//! kv_append: k, v `[n_tokens, n_kv_heads, head_dim]` written into a paged cache at shuffled
//! slots (some negative = skipped), f32/f16/bf16 caches. The whole cache is compared: rows not
//! addressed must keep their previous contents.

use kiln_core::{Backend, DType, OpKind, PagedKv};
use kiln_tests::{conformance, data, dev, harness, oracle, require_op, tolerance};

pub(crate) fn kv_append_case(
    b: &dyn Backend,
    dt: DType,
    n_kv: usize,
    block_size: usize,
    head_dim: usize,
) {
    if !require_op(b, OpKind::KvAppend, dt) {
        return;
    }
    let mut rng = harness::rng();
    let (num_blocks, n_tokens) = (40, 53);
    let cache_shape = [num_blocks, n_kv, block_size, head_dim];
    let cache_len = num_blocks * n_kv * block_size * head_dim;
    // Distinct random slots; every 9th token is skipped (negative slot).
    let mut all: Vec<i32> = (0..(num_blocks * block_size) as i32).collect();
    rng.shuffle(&mut all);
    let slots: Vec<i32> = (0..n_tokens)
        .map(|t| if t % 9 == 4 { -1 - t as i32 } else { all[t] })
        .collect();
    let k0 = data::round_to(dt, &rng.normals(cache_len, 1.0));
    let v0 = data::round_to(dt, &rng.normals(cache_len, 1.0));
    let k_t = dev::upload_floats(b, dt, &cache_shape, &k0);
    let v_t = dev::upload_floats(b, dt, &cache_shape, &v0);
    // New values with a spread of magnitudes, so rounding to f16/bf16 is exercised.
    let new_shape = [n_tokens, n_kv, head_dim];
    let kn: Vec<f32> = rng.normals(n_tokens * n_kv * head_dim, 3.0);
    let vn: Vec<f32> = rng.activations(n_tokens * n_kv * head_dim, 0.7);
    let kn_t = dev::upload_f32(b, &new_shape, &kn);
    let vn_t = dev::upload_f32(b, &new_shape, &vn);
    let s_t = dev::upload_i32(b, &[n_tokens], &slots);
    let kv = PagedKv::new(k_t.view_mut(), v_t.view_mut()).unwrap();
    dev::ok(
        "kv_append",
        b.kv_append(kn_t.view(), vn_t.view(), &kv, s_t.view()),
    );
    for (name, t, c0, new) in [("K", &k_t, &k0, &kn), ("V", &v_t, &v0, &vn)] {
        let got = dev::read_out(b, t, "kv_append cache");
        let exp = oracle::kv_append::kv_append(c0, new, &slots, n_kv, block_size, head_dim, dt);
        let what =
            format!("kv_append {name} cache {dt} kv_heads {n_kv} bs {block_size} hd {head_dim}");
        tolerance::check(b, OpKind::KvAppend, dt, &what, &cache_shape, &got, &exp);
    }
}

fn kv_append_errors_case(b: &dyn Backend) {
    let (nb, nkv, bs, hd) = (4, 2, 16, 64);
    let cache =
        |b: &dyn Backend| dev::upload_f32(b, &[nb, nkv, bs, hd], &vec![0.0; nb * nkv * bs * hd]);
    let (k_t, v_t) = (cache(b), cache(b));
    let kv = PagedKv::new(k_t.view_mut(), v_t.view_mut()).unwrap();
    let new =
        |b: &dyn Backend, h: usize, d: usize| dev::upload_f32(b, &[3, h, d], &vec![1.0; 3 * h * d]);
    let (kn, vn) = (new(b, nkv, hd), new(b, nkv, hd));
    let slots = dev::upload_i32(b, &[3], &[0, 5, 17]);
    let k_bad = new(b, nkv, hd + 1);
    dev::expect_err("kv_append k head_dim 65 vs cache 64", || {
        b.kv_append(k_bad.view(), vn.view(), &kv, slots.view())
    });
    let k_h = new(b, 3, hd);
    dev::expect_err("kv_append k 3 heads vs cache 2", || {
        b.kv_append(k_h.view(), vn.view(), &kv, slots.view())
    });
    let s_n = dev::upload_i32(b, &[2], &[0, 5]);
    dev::expect_err("kv_append 2 slots for 3 tokens", || {
        b.kv_append(kn.view(), vn.view(), &kv, s_n.view())
    });
    let s_f = dev::upload_f32(b, &[3], &[0.0, 5.0, 17.0]);
    dev::expect_err("kv_append slots f32", || {
        b.kv_append(kn.view(), vn.view(), &kv, s_f.view())
    });
    let kf = new(dev::foreign(), nkv, hd);
    dev::expect_wrong_device(
        b,
        OpKind::KvAppend,
        DType::F32,
        "kv_append k on another device",
        || b.kv_append(kf.view(), vn.view(), &kv, slots.view()),
    );
    let (cf, vf) = (cache(dev::foreign()), cache(dev::foreign()));
    let kvf = PagedKv::new(cf.view_mut(), vf.view_mut()).unwrap();
    dev::expect_wrong_device(
        b,
        OpKind::KvAppend,
        DType::F32,
        "kv_append cache on another device",
        || b.kv_append(kn.view(), vn.view(), &kvf, slots.view()),
    );
}

conformance! {
    kv_append_f32_hd128 => kv_append_case(DType::F32, 8, 16, 128);
    kv_append_f16_hd128 => kv_append_case(DType::F16, 8, 16, 128);
    kv_append_bf16_hd128 => kv_append_case(DType::BF16, 8, 16, 128);
    kv_append_bf16_hd256_bs32 => kv_append_case(DType::BF16, 4, 32, 256);
    kv_append_f16_hd64_mqa => kv_append_case(DType::F16, 1, 16, 64);
    kv_append_errors => kv_append_errors_case();
}
