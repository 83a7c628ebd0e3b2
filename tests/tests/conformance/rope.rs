//! rope (in place): both styles, llama3-scaled, linear-scaled, plain and divisor tables from
//! `RopeFreqs::inv_freq`, n_rot < head_dim, head_dim 64/128/256, positions up to 32768.
//! The dims past n_rot must come back bit-identical.

use kiln_core::{Backend, DType, OpKind, RopeFreqs, RopeParams, RopeScaling, RopeStyle};
use kiln_tests::{conformance, data, dev, harness, optional_op, oracle, require_op, tolerance};

pub(crate) fn llama3() -> RopeScaling {
    RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    }
}

pub(crate) fn rope_case(
    b: &dyn Backend,
    dt: DType,
    style: RopeStyle,
    head_dim: usize,
    n_rot: usize,
    freqs: RopeFreqs,
) {
    let ok = if dt == DType::F32 {
        require_op(b, OpKind::Rope, dt)
    } else {
        optional_op(b, OpKind::Rope, dt)
    };
    if !ok {
        return;
    }
    let mut rng = harness::rng();
    let (n_tokens, n_heads) = (37, 6);
    let inv_freq = freqs.inv_freq(n_rot).unwrap();
    let mut positions: Vec<i32> = (0..n_tokens).map(|_| rng.below(32769) as i32).collect();
    positions[..4].copy_from_slice(&[0, 1, 2, 8191]);
    let x = data::round_to(dt, &rng.activations(n_tokens * n_heads * head_dim, 1.0));
    let shape = [n_tokens, n_heads, head_dim];
    let x_t = dev::upload_floats(b, dt, &shape, &x);
    let p_t = dev::upload_i32(b, &[n_tokens], &positions);
    let f_t = dev::upload_f32(b, &[n_rot / 2], &inv_freq);
    let p = RopeParams { style, n_rot };
    dev::ok("rope", b.rope(x_t.view_mut(), p_t.view(), f_t.view(), &p));
    let got = dev::read_out(b, &x_t, "rope x");
    let (exp, angle_err) = oracle::rope::rope(&x, &positions, &inv_freq, n_heads, head_dim, &p);
    // Dims past n_rot: untouched, bit for bit.
    for (i, (&g, &e)) in got.iter().zip(&x).enumerate() {
        if i % head_dim >= n_rot && g.to_bits() != e.to_bits() {
            panic!(
                "rope changed dim {} (≥ n_rot {n_rot}) at {}: {e} → {g} ({})",
                i % head_dim,
                tolerance::index(&shape, i),
                harness::context()
            );
        }
    }
    let what = format!(
        "rope {dt} {style:?} hd {head_dim} n_rot {n_rot} {:?}",
        freqs.scaling
    );
    tolerance::check_with_atol(b, OpKind::Rope, dt, &what, &shape, &got, &exp, &angle_err);
}

fn rope_errors_case(b: &dyn Backend) {
    let (n, nh, hd) = (3, 2, 64);
    let x = dev::upload_f32(b, &[n, nh, hd], &vec![1.0; n * nh * hd]);
    let pos = dev::upload_i32(b, &[n], &[0, 1, 2]);
    let f = dev::upload_f32(b, &[32], &[0.5; 32]);
    let p = RopeParams {
        style: RopeStyle::Neox,
        n_rot: 64,
    };
    let f_bad = dev::upload_f32(b, &[31], &[0.5; 31]);
    dev::expect_err("rope inv_freq [31] for n_rot 64", || {
        b.rope(x.view_mut(), pos.view(), f_bad.view(), &p)
    });
    let f_big = dev::upload_f32(b, &[64], &vec![0.5; 64]);
    let p_big = RopeParams { n_rot: 128, ..p };
    dev::expect_err("rope n_rot 128 > head_dim 64", || {
        b.rope(x.view_mut(), pos.view(), f_big.view(), &p_big)
    });
    let p_odd = RopeParams { n_rot: 63, ..p };
    dev::expect_err("rope n_rot 63 (odd)", || {
        b.rope(x.view_mut(), pos.view(), f.view(), &p_odd)
    });
    let pos_n = dev::upload_i32(b, &[2], &[0, 1]);
    dev::expect_err("rope 2 positions for 3 tokens", || {
        b.rope(x.view_mut(), pos_n.view(), f.view(), &p)
    });
    let pos_f = dev::upload_f32(b, &[n], &[0.0, 1.0, 2.0]);
    dev::expect_err("rope positions f32", || {
        b.rope(x.view_mut(), pos_f.view(), f.view(), &p)
    });
    let xf = dev::upload_f32(dev::foreign(), &[n, nh, hd], &vec![1.0; n * nh * hd]);
    dev::expect_wrong_device(
        b,
        OpKind::Rope,
        DType::F32,
        "rope x on another device",
        || b.rope(xf.view_mut(), pos.view(), f.view(), &p),
    );
    let ff = dev::upload_f32(dev::foreign(), &[32], &[0.5; 32]);
    dev::expect_wrong_device(
        b,
        OpKind::Rope,
        DType::F32,
        "rope inv_freq on another device",
        || b.rope(x.view_mut(), pos.view(), ff.view(), &p),
    );
}

conformance! {
    rope_neox_hd128_llama3 => rope_case(DType::F32, RopeStyle::Neox, 128, 128, RopeFreqs { base: 500000.0, scaling: llama3() });
    rope_interleaved_hd128_llama3 => rope_case(DType::F32, RopeStyle::Interleaved, 128, 128, RopeFreqs { base: 500000.0, scaling: llama3() });
    rope_neox_hd64_nrot32 => rope_case(DType::F32, RopeStyle::Neox, 64, 32, RopeFreqs { base: 10000.0, scaling: RopeScaling::None });
    rope_interleaved_hd256_nrot64_linear => rope_case(DType::F32, RopeStyle::Interleaved, 256, 64, RopeFreqs { base: 1e6, scaling: RopeScaling::Linear { factor: 4.0 } });
    rope_neox_hd256 => rope_case(DType::F32, RopeStyle::Neox, 256, 256, RopeFreqs { base: 1e6, scaling: RopeScaling::None });
    rope_interleaved_hd128_divisors => rope_case(DType::F32, RopeStyle::Interleaved, 128, 128, RopeFreqs {
        base: 500000.0, scaling: RopeScaling::Divisors((0..64).map(|i| 1.0 + (i % 8) as f32).collect())
    });
    rope_neox_hd128_f16 => rope_case(DType::F16, RopeStyle::Neox, 128, 128, RopeFreqs { base: 500000.0, scaling: llama3() });
    rope_neox_hd128_bf16 => rope_case(DType::BF16, RopeStyle::Neox, 128, 128, RopeFreqs { base: 500000.0, scaling: llama3() });
    rope_errors => rope_errors_case();
}
