//! glu: out = act(gate) ⊙ up for SiLU and tanh-GELU, including gates far out in both tails
//! (where a naive exp/tanh overflows to inf/NaN). f32 required, f16/bf16 optional.

use kiln_core::{Activation, Backend, DType, OpKind};
use kiln_tests::{conformance, data, dev, harness, optional_op, oracle, require_op, tolerance};

pub(crate) fn glu_case(b: &dyn Backend, dt: DType, act: Activation, rows: usize, n: usize) {
    let ok = if dt == DType::F32 {
        require_op(b, OpKind::Glu, dt)
    } else {
        optional_op(b, OpKind::Glu, dt)
    };
    if !ok {
        return;
    }
    let mut rng = harness::rng();
    let mut gate = rng.activations(rows * n, 2.0);
    // Tails: |gate| up to 200 (f16 storage keeps them finite).
    for (i, v) in [
        -200.0, -90.0, -30.0, -10.0, 10.0, 30.0, 90.0, 200.0, 0.0, -0.0,
    ]
    .iter()
    .enumerate()
    {
        gate[i * 7] = *v;
    }
    let gate = data::round_to(dt, &gate);
    let up = data::round_to(dt, &rng.activations(rows * n, 1.0));
    let shape = [rows, n];
    let g_t = dev::upload_floats(b, dt, &shape, &gate);
    let u_t = dev::upload_floats(b, dt, &shape, &up);
    let out = dev::output(b, dt, &shape);
    dev::ok("glu", b.glu(g_t.view(), u_t.view(), act, out.view_mut()));
    let got = dev::read_out(b, &out, "glu out");
    let exp = oracle::glu::glu(&gate, &up, act);
    let what = format!("glu {act:?} {dt} [{rows}, {n}]");
    tolerance::check(b, OpKind::Glu, dt, &what, &shape, &got, &exp);
}

fn glu_errors_case(b: &dyn Backend) {
    let g = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let u = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let out = dev::output(b, DType::F32, &[3, 64]);
    let u_bad = dev::upload_f32(b, &[3, 65], &vec![1.0; 195]);
    dev::expect_err("glu up [3,65] vs gate [3,64]", || {
        b.glu(g.view(), u_bad.view(), Activation::Silu, out.view_mut())
    });
    let out_bad = dev::output(b, DType::F32, &[2, 64]);
    dev::expect_err("glu out [2,64]", || {
        b.glu(g.view(), u.view(), Activation::Silu, out_bad.view_mut())
    });
    let g_i = dev::upload_i32(b, &[3, 64], &[1; 192]);
    dev::expect_err("glu gate i32", || {
        b.glu(g_i.view(), u.view(), Activation::Silu, out.view_mut())
    });
    let gf = dev::upload_f32(dev::foreign(), &[3, 64], &vec![1.0; 192]);
    dev::expect_wrong_device(
        b,
        OpKind::Glu,
        DType::F32,
        "glu gate on another device",
        || b.glu(gf.view(), u.view(), Activation::GeluTanh, out.view_mut()),
    );
}

conformance! {
    glu_silu_f32 => glu_case(DType::F32, Activation::Silu, 7, 11011);
    glu_gelu_tanh_f32 => glu_case(DType::F32, Activation::GeluTanh, 33, 4099);
    glu_silu_f16 => glu_case(DType::F16, Activation::Silu, 7, 4099);
    glu_gelu_tanh_bf16 => glu_case(DType::BF16, Activation::GeluTanh, 7, 4099);
    glu_errors => glu_errors_case();
}
