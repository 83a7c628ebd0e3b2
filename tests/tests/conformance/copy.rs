//! copy: every f32/f16/bf16 → f32/f16/bf16 conversion (round to nearest even), into a
//! different shape of the same element count, with specials (±0, ±inf, f16 overflow,
//! subnormals). gather: rows by index. read_rows: strided device → host rows.

use kiln_core::{Backend, DType, OpKind};
use kiln_tests::{conformance, data, dev, harness, oracle, require_op, tolerance};

pub(crate) fn copy_case(b: &dyn Backend, src: DType, dst: DType) {
    if !require_op(b, OpKind::Copy, src) || !require_op(b, OpKind::Copy, dst) {
        return;
    }
    let mut rng = harness::rng();
    let (rows, n) = (33, 4099);
    let mut v = rng.activations(rows * n, 10.0);
    let specials = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        65504.0,
        65519.0,
        65520.0,
        -1e6,
        3.0e38,
        1e-7,
        -3e-8,
        6.0e-5,
        1e-40,
        -1e-39,
        1.0 + f32::EPSILON,
        1.0 + 1.0 / 2048.0, // f16 tie
        1.0 + 3.0 / 4096.0, // f16 tie
    ];
    for (i, s) in specials.iter().enumerate() {
        v[i * 131] = *s;
    }
    // Values just off f16/bf16 rounding ties.
    for i in 0..200 {
        let t = 1.0 + (2 * i + 1) as f32 / 2048.0; // halfway between two f16 values
        v[5000 + i] = if i % 2 == 0 {
            t
        } else {
            f32::from_bits(t.to_bits() + 1)
        };
    }
    let v = data::round_to(src, &v);
    let s_t = dev::upload_floats(b, src, &[rows, n], &v);
    let out = dev::output(b, dst, &[3, 11, n]);
    dev::ok("copy", b.copy(s_t.view(), out.view_mut()));
    let got = dev::read_out(b, &out, "copy out");
    let exp = oracle::copy::copy(&v, dst);
    tolerance::check(
        b,
        OpKind::Copy,
        dst,
        &format!("copy {src} -> {dst}"),
        &[3, 11, n],
        &got,
        &exp,
    );
}

fn copy_errors_case(b: &dyn Backend) {
    let s = dev::upload_f32(b, &[3, 64], &vec![1.0; 192]);
    let out_bad = dev::output(b, DType::F16, &[3, 63]);
    dev::expect_err("copy 192 elements into 189", || {
        b.copy(s.view(), out_bad.view_mut())
    });
    let out_i = dev::output(b, DType::I32, &[3, 64]);
    dev::expect_err("copy f32 -> i32", || b.copy(s.view(), out_i.view_mut()));
    let out = dev::output(b, DType::BF16, &[192]);
    let sf = dev::upload_f32(dev::foreign(), &[3, 64], &vec![1.0; 192]);
    dev::expect_wrong_device(
        b,
        OpKind::Copy,
        DType::F32,
        "copy src on another device",
        || b.copy(sf.view(), out.view_mut()),
    );
    let of = dev::output(dev::foreign(), DType::F16, &[192]);
    dev::expect_wrong_device(
        b,
        OpKind::Copy,
        DType::F32,
        "copy dst on another device",
        || b.copy(s.view(), of.view_mut()),
    );
}

fn gather_case(b: &dyn Backend, dt: DType, rows: usize, d: usize) {
    if !require_op(b, OpKind::Gather, dt) {
        return;
    }
    let mut rng = harness::rng();
    let x = data::round_to(dt, &rng.normals(rows * d, 1.0));
    let mut ids: Vec<i32> = (0..11).map(|_| rng.below(rows) as i32).collect();
    ids[0] = 0;
    ids[1] = rows as i32 - 1;
    ids[2] = ids[3];
    let x_t = dev::upload_floats(b, dt, &[rows, d], &x);
    let i_t = dev::upload_i32(b, &[ids.len()], &ids);
    let out = dev::output(b, dt, &[ids.len(), d]);
    dev::ok("gather", b.gather(x_t.view(), i_t.view(), out.view_mut()));
    let got = dev::read_out(b, &out, "gather out");
    let exp = oracle::copy::gather(&x, &ids, d);
    tolerance::check(
        b,
        OpKind::Gather,
        dt,
        &format!("gather {dt} ids {ids:?}"),
        &[ids.len(), d],
        &got,
        &exp,
    );
}

fn gather_errors_case(b: &dyn Backend) {
    let x = dev::upload_f32(b, &[5, 64], &vec![1.0; 320]);
    let ids = dev::upload_i32(b, &[2], &[4, 0]);
    let out_bad = dev::output(b, DType::F32, &[2, 65]);
    dev::expect_err("gather out [2,65] for rows of 64", || {
        b.gather(x.view(), ids.view(), out_bad.view_mut())
    });
    let out_n = dev::output(b, DType::F32, &[3, 64]);
    dev::expect_err("gather out [3,64] for 2 ids", || {
        b.gather(x.view(), ids.view(), out_n.view_mut())
    });
    let ids_f = dev::upload_f32(b, &[2], &[4.0, 0.0]);
    let out = dev::output(b, DType::F32, &[2, 64]);
    dev::expect_err("gather ids f32", || {
        b.gather(x.view(), ids_f.view(), out.view_mut())
    });
    let xf = dev::upload_f32(dev::foreign(), &[5, 64], &vec![1.0; 320]);
    dev::expect_wrong_device(
        b,
        OpKind::Gather,
        DType::F32,
        "gather x on another device",
        || b.gather(xf.view(), ids.view(), out.view_mut()),
    );
}

/// `Backend::read_rows`: `rows` rows of `width` f32 (a tensor at a guarded offset) into a host
/// matrix of `pitch` f32 per row at column `col`; everything else in the host matrix keeps its
/// poison. Exact (a copy). Bad geometry is an error, not a wild write.
fn read_rows_case(b: &dyn Backend, rows: usize, width: usize, pitch: usize, col: usize) {
    let mut rng = harness::rng();
    let v = rng.activations(rows * width, 10.0);
    let t = dev::upload_f32(b, &[rows, width], &v);
    let poison = 0xA5u8;
    let mut host = vec![poison; (rows * pitch) * 4];
    dev::ok(
        "read_rows",
        b.read_rows(
            &t.buf,
            t.offset,
            width * 4,
            rows,
            &mut host[col * 4..],
            pitch * 4,
        ),
    );
    for r in 0..rows {
        for c in 0..pitch {
            let at = (r * pitch + c) * 4;
            let got = &host[at..at + 4];
            if (col..col + width).contains(&c) {
                let want = v[r * width + c - col].to_le_bytes();
                assert_eq!(got, want, "read_rows: row {r} column {c} ({})", b.id());
            } else {
                assert!(
                    got.iter().all(|&x| x == poison),
                    "read_rows wrote outside its rows: row {r} column {c} ({})",
                    b.id()
                );
            }
        }
    }
    if rows > 1 {
        let mut small = vec![0u8; (rows - 1) * pitch * 4];
        dev::expect_err("read_rows into a destination one row short", || {
            b.read_rows(&t.buf, t.offset, width * 4, rows, &mut small, pitch * 4)
        });
        let mut big = vec![0u8; rows * width * 8];
        dev::expect_err("read_rows with a pitch below the row", || {
            b.read_rows(&t.buf, t.offset, width * 4, rows, &mut big, width * 2)
        });
    }
}

conformance! {
    read_rows_one => read_rows_case(1, 4099, 4099, 0);
    read_rows_split_vocab => read_rows_case(33, 1000, 2500, 1250);
    read_rows_contiguous => read_rows_case(7, 640, 640, 0);
    copy_f32_to_f32 => copy_case(DType::F32, DType::F32);
    copy_f32_to_f16 => copy_case(DType::F32, DType::F16);
    copy_f32_to_bf16 => copy_case(DType::F32, DType::BF16);
    copy_f16_to_f32 => copy_case(DType::F16, DType::F32);
    copy_f16_to_f16 => copy_case(DType::F16, DType::F16);
    copy_f16_to_bf16 => copy_case(DType::F16, DType::BF16);
    copy_bf16_to_f32 => copy_case(DType::BF16, DType::F32);
    copy_bf16_to_f16 => copy_case(DType::BF16, DType::F16);
    copy_bf16_to_bf16 => copy_case(DType::BF16, DType::BF16);
    copy_errors => copy_errors_case();
    gather_f32 => gather_case(DType::F32, 37, 4099);
    gather_errors => gather_errors_case();
}
