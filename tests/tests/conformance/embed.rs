//! embed: out[i] = scale · table[ids[i]] for all 15 weight dtypes (vocab 1003, dim 2304),
//! ids with repeats and both ends of the vocabulary, scale 1 and √dim (gemma).

use kiln_core::{Backend, DType, OpKind};
use kiln_tests::data::{self, WeightSource};
use kiln_tests::{conformance, dev, harness, oracle, require_op, tolerance};

pub(crate) fn embed_case(b: &dyn Backend, dt: DType, scale: f32) {
    if !require_op(b, OpKind::Embed, dt) {
        return;
    }
    let mut rng = harness::rng();
    let (vocab, dim) = (1003, 2304);
    let w = data::random_weight(
        &mut rng,
        dt,
        &[vocab, dim],
        0.02,
        WeightSource::RandomBlocks,
    );
    let table = data::dequantize(&w);
    let weight = dev::prepare(b, &w);
    let mut ids: Vec<i32> = (0..37).map(|_| rng.below(vocab) as i32).collect();
    ids[0] = 0;
    ids[1] = vocab as i32 - 1;
    ids[5] = ids[20];
    let i_t = dev::upload_i32(b, &[ids.len()], &ids);
    let out = dev::output(b, DType::F32, &[ids.len(), dim]);
    dev::ok("embed", b.embed(i_t.view(), &weight, scale, out.view_mut()));
    let got = dev::read_out(b, &out, "embed out");
    let exp = oracle::embed::embed(&table, dim, &ids, scale);
    tolerance::check(
        b,
        OpKind::Embed,
        dt,
        &format!("embed {dt} scale {scale}"),
        &[ids.len(), dim],
        &got,
        &exp,
    );
}

fn embed_errors_case(b: &dyn Backend) {
    let mut rng = harness::rng();
    let w = data::random_weight(
        &mut rng,
        DType::F32,
        &[50, 64],
        0.02,
        WeightSource::RandomBlocks,
    );
    let weight = match b.prepare_weight(&w.host_tensor()) {
        Ok(w) => w,
        Err(e) => panic!("prepare_weight f32 [50, 64]: {e} ({})", harness::context()),
    };
    let ids = dev::upload_i32(b, &[3], &[1, 2, 49]);
    let out_bad = dev::output(b, DType::F32, &[3, 63]);
    dev::expect_err("embed out [3,63] for dim 64", || {
        b.embed(ids.view(), &weight, 1.0, out_bad.view_mut())
    });
    let out_n = dev::output(b, DType::F32, &[4, 64]);
    dev::expect_err("embed out [4,64] for 3 ids", || {
        b.embed(ids.view(), &weight, 1.0, out_n.view_mut())
    });
    let ids_f = dev::upload_f32(b, &[3], &[1.0, 2.0, 3.0]);
    let out = dev::output(b, DType::F32, &[3, 64]);
    dev::expect_err("embed ids f32", || {
        b.embed(ids_f.view(), &weight, 1.0, out.view_mut())
    });
    let idf = dev::upload_i32(dev::foreign(), &[3], &[1, 2, 49]);
    dev::expect_wrong_device(
        b,
        OpKind::Embed,
        DType::F32,
        "embed ids on another device",
        || b.embed(idf.view(), &weight, 1.0, out.view_mut()),
    );
    let wf = dev::prepare(dev::foreign(), &w);
    dev::expect_wrong_device(
        b,
        OpKind::Embed,
        DType::F32,
        "embed table of another device",
        || b.embed(ids.view(), &wf, 1.0, out.view_mut()),
    );
}

conformance! {
    embed_f32 => embed_case(DType::F32, 1.0);
    embed_f16 => embed_case(DType::F16, 48.0);
    embed_bf16 => embed_case(DType::BF16, 1.0);
    embed_q4_0 => embed_case(DType::Q4_0, 48.0);
    embed_q4_1 => embed_case(DType::Q4_1, 1.0);
    embed_q5_0 => embed_case(DType::Q5_0, 48.0);
    embed_q5_1 => embed_case(DType::Q5_1, 1.0);
    embed_q8_0 => embed_case(DType::Q8_0, 48.0);
    embed_q2_k => embed_case(DType::Q2_K, 1.0);
    embed_q3_k => embed_case(DType::Q3_K, 48.0);
    embed_q4_k => embed_case(DType::Q4_K, 1.0);
    embed_q5_k => embed_case(DType::Q5_K, 48.0);
    embed_q6_k => embed_case(DType::Q6_K, 1.0);
    embed_iq4_nl => embed_case(DType::IQ4_NL, 48.0);
    embed_iq4_xs => embed_case(DType::IQ4_XS, 1.0);
    embed_errors => embed_errors_case();
}
