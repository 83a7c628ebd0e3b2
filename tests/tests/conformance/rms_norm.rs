//! rms_norm: out = x / sqrt(mean(x²) + eps) · w per row, dims 4096, 4099 (odd), 2304; rows of
//! very different scales (so eps matters on some and large sums on others). f32 activations
//! are required; f16/bf16 are optional. add_rms_norm (the residual add fused with the next
//! norm, f32): sum = a + b must equal the f32 sum bit for bit, out = rms_norm(sum)·w within
//! rms_norm's tolerance; both outputs poisoned first.

use kiln_core::{Backend, DType, OpKind};
use kiln_tests::{conformance, data, dev, harness, optional_op, oracle, require_op, tolerance};

/// Random rows at scales 1, 1e-3 and 300 in turn (eps matters on some, large sums on others).
fn scaled_rows(rng: &mut data::Rng, rows: usize, dim: usize) -> Vec<f32> {
    let mut x = rng.activations(rows * dim, 1.0);
    for (r, row) in x.chunks_exact_mut(dim).enumerate() {
        let s = [1.0, 1e-3, 300.0][r % 3];
        row.iter_mut().for_each(|v| *v *= s);
    }
    x
}

pub(crate) fn rms_norm_case(b: &dyn Backend, dt: DType, rows_list: &[usize], dim: usize, eps: f32) {
    let ok = if dt == DType::F32 {
        require_op(b, OpKind::RmsNorm, dt)
    } else {
        optional_op(b, OpKind::RmsNorm, dt)
    };
    if !ok {
        return;
    }
    let mut rng = harness::rng();
    let w: Vec<f32> = (0..dim).map(|_| 1.0 + 0.2 * rng.normal()).collect();
    let w_t = dev::upload_f32(b, &[dim], &w);
    for &rows in rows_list {
        let x = data::round_to(dt, &scaled_rows(&mut rng, rows, dim));
        let x_t = dev::upload_floats(b, dt, &[rows, dim], &x);
        let out = dev::output(b, dt, &[rows, dim]);
        dev::ok(
            "rms_norm",
            b.rms_norm(x_t.view(), w_t.view(), eps, out.view_mut()),
        );
        let got = dev::read_out(b, &out, "rms_norm out");
        let exp = oracle::rms_norm::rms_norm(&x, &w, eps, dim);
        let what = format!("rms_norm {dt} rows {rows} dim {dim} eps {eps:e}");
        tolerance::check(b, OpKind::RmsNorm, dt, &what, &[rows, dim], &got, &exp);
    }
}

fn rms_norm_errors_case(b: &dyn Backend) {
    let x = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let w = dev::upload_f32(b, &[64], &vec![1.0; 64]);
    let out = dev::output(b, DType::F32, &[3, 64]);
    let w_bad = dev::upload_f32(b, &[63], &vec![1.0; 63]);
    dev::expect_err("rms_norm w [63] for dim 64", || {
        b.rms_norm(x.view(), w_bad.view(), 1e-5, out.view_mut())
    });
    let out_bad = dev::output(b, DType::F32, &[4, 64]);
    dev::expect_err("rms_norm out [4,64] for x [3,64]", || {
        b.rms_norm(x.view(), w.view(), 1e-5, out_bad.view_mut())
    });
    let x_i = dev::upload_i32(b, &[3, 64], &[1; 192]);
    dev::expect_err("rms_norm x i32", || {
        b.rms_norm(x_i.view(), w.view(), 1e-5, out.view_mut())
    });
    let xf = dev::upload_f32(dev::foreign(), &[3, 64], &vec![1.0; 192]);
    dev::expect_wrong_device(
        b,
        OpKind::RmsNorm,
        DType::F32,
        "rms_norm x on another device",
        || b.rms_norm(xf.view(), w.view(), 1e-5, out.view_mut()),
    );
    let of = dev::output(dev::foreign(), DType::F32, &[3, 64]);
    dev::expect_wrong_device(
        b,
        OpKind::RmsNorm,
        DType::F32,
        "rms_norm out on another device",
        || b.rms_norm(x.view(), w.view(), 1e-5, of.view_mut()),
    );
}

pub(crate) fn add_rms_norm_case(b: &dyn Backend, rows_list: &[usize], dim: usize, eps: f32) {
    if !require_op(b, OpKind::RmsNorm, DType::F32) {
        return;
    }
    let mut rng = harness::rng();
    let w: Vec<f32> = (0..dim).map(|_| 1.0 + 0.2 * rng.normal()).collect();
    let w_t = dev::upload_f32(b, &[dim], &w);
    for &rows in rows_list {
        let a = scaled_rows(&mut rng, rows, dim);
        let c = rng.activations(rows * dim, 0.5);
        let (a_t, c_t) = (
            dev::upload_f32(b, &[rows, dim], &a),
            dev::upload_f32(b, &[rows, dim], &c),
        );
        let sum = dev::output(b, DType::F32, &[rows, dim]);
        let out = dev::output(b, DType::F32, &[rows, dim]);
        dev::ok(
            "add_rms_norm",
            b.add_rms_norm(
                a_t.view(),
                c_t.view(),
                w_t.view(),
                eps,
                sum.view_mut(),
                out.view_mut(),
            ),
        );
        let got_sum = dev::read_out(b, &sum, "add_rms_norm sum");
        let want_sum: Vec<f32> = a.iter().zip(&c).map(|(x, y)| x + y).collect();
        for (j, (g, e)) in got_sum.iter().zip(&want_sum).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "add_rms_norm rows {rows} dim {dim}: sum[{j}] = {g}, a + b = {e} (must be exact)"
            );
        }
        let got = dev::read_out(b, &out, "add_rms_norm out");
        let exp = oracle::rms_norm::rms_norm(&want_sum, &w, eps, dim);
        let what = format!("add_rms_norm rows {rows} dim {dim} eps {eps:e}");
        tolerance::check(
            b,
            OpKind::RmsNorm,
            DType::F32,
            &what,
            &[rows, dim],
            &got,
            &exp,
        );
    }
}

fn add_rms_norm_errors_case(b: &dyn Backend) {
    let x = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let y = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let w = dev::upload_f32(b, &[64], &vec![1.0; 64]);
    let sum = dev::output(b, DType::F32, &[3, 64]);
    let out = dev::output(b, DType::F32, &[3, 64]);
    let y_bad = dev::upload_f32(b, &[4, 64], &vec![1.0; 256]);
    dev::expect_err("add_rms_norm b [4,64] for a [3,64]", || {
        b.add_rms_norm(
            x.view(),
            y_bad.view(),
            w.view(),
            1e-5,
            sum.view_mut(),
            out.view_mut(),
        )
    });
    let w_bad = dev::upload_f32(b, &[63], &vec![1.0; 63]);
    dev::expect_err("add_rms_norm w [63] for dim 64", || {
        b.add_rms_norm(
            x.view(),
            y.view(),
            w_bad.view(),
            1e-5,
            sum.view_mut(),
            out.view_mut(),
        )
    });
    dev::expect_err("add_rms_norm out = sum (same bytes)", || {
        b.add_rms_norm(
            x.view(),
            y.view(),
            w.view(),
            1e-5,
            sum.view_mut(),
            sum.view_mut(),
        )
    });
}

conformance! {
    add_rms_norm_f32_d4096 => add_rms_norm_case(&[1, 7, 33], 4096, 1e-5);
    add_rms_norm_f32_d2304 => add_rms_norm_case(&[5], 2304, 1e-6);
    add_rms_norm_f32_d4099 => add_rms_norm_case(&[2, 3], 4099, 1e-6);
    add_rms_norm_errors => add_rms_norm_errors_case();
    rms_norm_f32_d4096 => rms_norm_case(DType::F32, &[1, 7, 33], 4096, 1e-5);
    rms_norm_f32_d4099 => rms_norm_case(DType::F32, &[2, 3], 4099, 1e-6);
    rms_norm_f32_d2304 => rms_norm_case(DType::F32, &[5], 2304, 1e-6);
    rms_norm_f16_d4096 => rms_norm_case(DType::F16, &[1, 7], 4096, 1e-5);
    rms_norm_bf16_d4096 => rms_norm_case(DType::BF16, &[1, 7], 4096, 1e-5);
    rms_norm_errors => rms_norm_errors_case();
}
