//! add (out = a + b, any shape) and add_bias (bias `[n]` broadcast over rows).
//! f32 required, f16/bf16 optional.

use kiln_core::{Backend, DType, OpKind};
use kiln_tests::{conformance, data, dev, harness, optional_op, oracle, require_op, tolerance};

fn need(b: &dyn Backend, op: OpKind, dt: DType) -> bool {
    if dt == DType::F32 {
        require_op(b, op, dt)
    } else {
        optional_op(b, op, dt)
    }
}

pub(crate) fn add_case(b: &dyn Backend, dt: DType, shape: &[usize]) {
    if !need(b, OpKind::Add, dt) {
        return;
    }
    let mut rng = harness::rng();
    let n: usize = shape.iter().product();
    let a = data::round_to(dt, &rng.activations(n, 1.0));
    let c = data::round_to(dt, &rng.activations(n, 3.0));
    let a_t = dev::upload_floats(b, dt, shape, &a);
    let c_t = dev::upload_floats(b, dt, shape, &c);
    let out = dev::output(b, dt, shape);
    dev::ok("add", b.add(a_t.view(), c_t.view(), out.view_mut()));
    let got = dev::read_out(b, &out, "add out");
    tolerance::check(
        b,
        OpKind::Add,
        dt,
        &format!("add {dt}"),
        shape,
        &got,
        &oracle::add::add(&a, &c),
    );
}

fn add_bias_case(b: &dyn Backend, dt: DType, rows: usize, n: usize) {
    if !need(b, OpKind::AddBias, dt) {
        return;
    }
    let mut rng = harness::rng();
    let x = data::round_to(dt, &rng.activations(rows * n, 1.0));
    let bias = data::round_to(dt, &rng.normals(n, 0.5));
    let x_t = dev::upload_floats(b, dt, &[rows, n], &x);
    let b_t = dev::upload_floats(b, dt, &[n], &bias);
    let out = dev::output(b, dt, &[rows, n]);
    dev::ok(
        "add_bias",
        b.add_bias(x_t.view(), b_t.view(), out.view_mut()),
    );
    let got = dev::read_out(b, &out, "add_bias out");
    let exp = oracle::add::add_bias(&x, &bias);
    tolerance::check(
        b,
        OpKind::AddBias,
        dt,
        &format!("add_bias {dt}"),
        &[rows, n],
        &got,
        &exp,
    );
}

fn add_errors_case(b: &dyn Backend) {
    let a = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let out = dev::output(b, DType::F32, &[3, 64]);
    let c_bad = dev::upload_f32(b, &[3, 65], &vec![1.0; 195]);
    dev::expect_err("add b [3,65] vs a [3,64]", || {
        b.add(a.view(), c_bad.view(), out.view_mut())
    });
    let out_bad = dev::output(b, DType::F32, &[64, 3]);
    dev::expect_err("add out [64,3] vs a [3,64]", || {
        b.add(a.view(), a.view(), out_bad.view_mut())
    });
    let a_i = dev::upload_i32(b, &[3, 64], &[1; 192]);
    dev::expect_err("add a i32", || b.add(a_i.view(), a.view(), out.view_mut()));
    let af = dev::upload_f32(dev::foreign(), &[3, 64], &vec![1.0; 192]);
    dev::expect_wrong_device(
        b,
        OpKind::Add,
        DType::F32,
        "add b on another device",
        || b.add(a.view(), af.view(), out.view_mut()),
    );
    let of = dev::output(dev::foreign(), DType::F32, &[3, 64]);
    dev::expect_wrong_device(
        b,
        OpKind::Add,
        DType::F32,
        "add out on another device",
        || b.add(a.view(), a.view(), of.view_mut()),
    );
    // The output may not overlap an input.
    dev::expect_err("add out aliasing a", || {
        b.add(a.view(), a.view(), a.view_mut())
    });
}

fn add_bias_errors_case(b: &dyn Backend) {
    let x = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let bias = dev::upload_f32(b, &[64], &vec![1.0; 64]);
    let out = dev::output(b, DType::F32, &[3, 64]);
    let b_bad = dev::upload_f32(b, &[63], &vec![1.0; 63]);
    dev::expect_err("add_bias bias [63] for rows of 64", || {
        b.add_bias(x.view(), b_bad.view(), out.view_mut())
    });
    let out_bad = dev::output(b, DType::F32, &[4, 64]);
    dev::expect_err("add_bias out [4,64]", || {
        b.add_bias(x.view(), bias.view(), out_bad.view_mut())
    });
    let bf = dev::upload_f32(dev::foreign(), &[64], &vec![1.0; 64]);
    dev::expect_wrong_device(
        b,
        OpKind::AddBias,
        DType::F32,
        "add_bias bias on another device",
        || b.add_bias(x.view(), bf.view(), out.view_mut()),
    );
}

conformance! {
    add_f32_2d => add_case(DType::F32, &[33, 4099]);
    add_f32_3d => add_case(DType::F32, &[5, 7, 129]);
    add_f32_1d_odd => add_case(DType::F32, &[1001]);
    add_f16 => add_case(DType::F16, &[33, 4099]);
    add_bf16 => add_case(DType::BF16, &[33, 4099]);
    add_errors => add_errors_case();
    add_bias_f32 => add_bias_case(DType::F32, 33, 4099);
    add_bias_f32_one_row => add_bias_case(DType::F32, 1, 3072);
    add_bias_f16 => add_bias_case(DType::F16, 7, 1024);
    add_bias_errors => add_bias_errors_case();
}
