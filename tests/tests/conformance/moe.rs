//! moe: routed expert FFN for all 15 weight dtypes (Mixtral-style: 8 experts, top-2,
//! softmax-then-top-k renormalized, SiLU), plus both gatings with top-k ties (any tied expert
//! may win the last places: the case accepts the closest valid routing per token), top-1, and
//! a many-token batch.

use kiln_core::{Activation, Backend, DType, MoeExperts, MoeGating, MoeRouting, OpKind};
use kiln_tests::data::{self, WeightSource};
use kiln_tests::oracle::moe::{self as omoe, Experts};
use kiln_tests::{conformance, dev, harness, require_op, tolerance};

pub(crate) struct Setup {
    pub(crate) dt: DType,
    pub(crate) n_tokens: usize,
    pub(crate) n_experts: usize,
    pub(crate) dim: usize,
    pub(crate) ff: usize,
    pub(crate) routing: MoeRouting,
    pub(crate) act: Activation,
    pub(crate) ties: bool,
}

pub(crate) const MIXTRAL: Setup = Setup {
    dt: DType::F32,
    n_tokens: 9,
    n_experts: 8,
    dim: 512,
    ff: 256,
    routing: MoeRouting {
        top_k: 2,
        gating: MoeGating::SoftmaxTopK { renormalize: true },
    },
    act: Activation::Silu,
    ties: false,
};

/// Router logits `[n_tokens, experts]`; with `ties`, tokens cycle through: a tie across the
/// top-k boundary, a tie wholly inside the top k, all experts equal (if the combinations stay
/// few), and untied.
fn logits(rng: &mut data::Rng, s: &Setup) -> Vec<f32> {
    let (ne, k) = (s.n_experts, s.routing.top_k);
    let mut l = Vec::with_capacity(s.n_tokens * ne);
    for t in 0..s.n_tokens {
        let mut row: Vec<f32> = (0..ne).map(|_| rng.normal() * 1.5).collect();
        if s.ties {
            let mut order: Vec<usize> = (0..ne).collect();
            rng.shuffle(&mut order);
            match t % 4 {
                // k-1 clear winners, then 3 experts tied for the last place.
                0 if k + 2 <= ne => {
                    row.iter_mut().for_each(|v| *v = v.min(0.9));
                    for (i, &e) in order[..k - 1].iter().enumerate() {
                        row[e] = 3.0 + 0.25 * i as f32;
                    }
                    for &e in &order[k - 1..k + 2] {
                        row[e] = 2.0;
                    }
                }
                // k experts tied, all selected.
                1 => {
                    row.iter_mut().for_each(|v| *v = v.min(0.9));
                    for &e in &order[..k] {
                        row[e] = 2.5;
                    }
                }
                2 if ne <= 8 => row.iter_mut().for_each(|v| *v = 0.25),
                _ => {}
            }
        }
        l.extend(row);
    }
    l
}

pub(crate) fn moe_case(b: &dyn Backend, s: Setup) {
    if !require_op(b, OpKind::Moe, s.dt) {
        return;
    }
    let mut rng = harness::rng();
    let (ne, dim, ff) = (s.n_experts, s.dim, s.ff);
    let src = WeightSource::RandomBlocks;
    let gate = data::random_weight(&mut rng, s.dt, &[ne, ff, dim], 0.05, src);
    let up = data::random_weight(&mut rng, s.dt, &[ne, ff, dim], 0.05, src);
    let down = data::random_weight(&mut rng, s.dt, &[ne, dim, ff], 0.05, src);
    let (gd, ud, dd) = (
        data::dequantize(&gate),
        data::dequantize(&up),
        data::dequantize(&down),
    );
    let (gw, uw, dw) = (
        dev::prepare(b, &gate),
        dev::prepare(b, &up),
        dev::prepare(b, &down),
    );
    let experts = MoeExperts {
        gate: &gw,
        up: &uw,
        down: &dw,
        act: s.act,
    };

    let x = rng.activations(s.n_tokens * dim, 1.0);
    let l = logits(&mut rng, &s);
    let x_t = dev::upload_f32(b, &[s.n_tokens, dim], &x);
    let l_t = dev::upload_f32(b, &[s.n_tokens, ne], &l);
    let scratch = dev::scratch(b, b.moe_scratch_bytes(s.n_tokens, &experts, &s.routing));
    let out = dev::output(b, DType::F32, &[s.n_tokens, dim]);
    dev::ok(
        "moe",
        b.moe(
            x_t.view(),
            l_t.view(),
            &experts,
            &s.routing,
            scratch.as_ref().map(|t| t.view_mut()),
            out.view_mut(),
        ),
    );
    let got = dev::read_out(b, &out, "moe out");
    let ex = Experts {
        gate: &gd,
        up: &ud,
        down: &dd,
        n_experts: ne,
        ff,
        dim,
        act: s.act,
    };
    let cands = omoe::moe(&x, &l, &ex, &s.routing);
    let (exp, ambiguous) = omoe::pick(&got, &cands, dim);
    if s.ties {
        assert!(ambiguous > 0, "the ties case made no ambiguous token");
    }
    let what = format!(
        "moe {} tokens {} experts {ne} top {} {:?} {:?} dim {dim} ff {ff} ({ambiguous} tokens with tied routings)",
        s.dt, s.n_tokens, s.routing.top_k, s.routing.gating, s.act
    );
    tolerance::check(b, OpKind::Moe, s.dt, &what, &[s.n_tokens, dim], &got, &exp);
}

fn moe_errors_case(b: &dyn Backend) {
    let mut rng = harness::rng();
    let (ne, dim, ff) = (4, 64, 32);
    let src = WeightSource::RandomBlocks;
    let gate = data::random_weight(&mut rng, DType::F32, &[ne, ff, dim], 0.05, src);
    let up = data::random_weight(&mut rng, DType::F32, &[ne, ff, dim], 0.05, src);
    let down = data::random_weight(&mut rng, DType::F32, &[ne, dim, ff], 0.05, src);
    let prep = |w: &data::HostWeight| match b.prepare_weight(&w.host_tensor()) {
        Ok(w) => w,
        Err(e) => panic!(
            "prepare_weight {} {}: {e} ({})",
            w.shape,
            w.dtype,
            harness::context()
        ),
    };
    let (gw, uw, dw) = (prep(&gate), prep(&up), prep(&down));
    let experts = MoeExperts {
        gate: &gw,
        up: &uw,
        down: &dw,
        act: Activation::Silu,
    };
    let r = MoeRouting {
        top_k: 2,
        gating: MoeGating::TopKSoftmax,
    };
    let x = dev::upload_f32(b, &[3, dim], &rng.normals(3 * dim, 1.0));
    let l = dev::upload_f32(b, &[3, ne], &rng.normals(3 * ne, 1.0));
    let out = dev::output(b, DType::F32, &[3, dim]);
    let scratch = dev::scratch(b, b.moe_scratch_bytes(3, &experts, &r));
    let sc = || scratch.as_ref().map(|t| t.view_mut());
    let l_bad = dev::upload_f32(b, &[3, ne + 1], &rng.normals(3 * (ne + 1), 1.0));
    dev::expect_err("moe logits for 5 experts, weights have 4", || {
        b.moe(x.view(), l_bad.view(), &experts, &r, sc(), out.view_mut())
    });
    let x_bad = dev::upload_f32(b, &[3, dim + 32], &rng.normals(3 * (dim + 32), 1.0));
    dev::expect_err("moe x dim 96 vs experts 64", || {
        b.moe(x_bad.view(), l.view(), &experts, &r, sc(), out.view_mut())
    });
    let r_bad = MoeRouting { top_k: 5, ..r };
    dev::expect_err("moe top_k 5 of 4 experts", || {
        b.moe(x.view(), l.view(), &experts, &r_bad, sc(), out.view_mut())
    });
    let bad_experts = MoeExperts { up: &dw, ..experts };
    dev::expect_err("moe up with down's shape", || {
        b.moe(x.view(), l.view(), &bad_experts, &r, sc(), out.view_mut())
    });
    let xf = dev::upload_f32(dev::foreign(), &[3, dim], &rng.normals(3 * dim, 1.0));
    dev::expect_wrong_device(
        b,
        OpKind::Moe,
        DType::F32,
        "moe x on another device",
        || b.moe(xf.view(), l.view(), &experts, &r, sc(), out.view_mut()),
    );
}

macro_rules! all_types {
    ($($name:ident => $dt:expr;)*) => {
        conformance! { $($name => moe_case(Setup { dt: $dt, ..MIXTRAL });)* }
    };
}

all_types! {
    moe_f32 => DType::F32;
    moe_f16 => DType::F16;
    moe_bf16 => DType::BF16;
    moe_q4_0 => DType::Q4_0;
    moe_q4_1 => DType::Q4_1;
    moe_q5_0 => DType::Q5_0;
    moe_q5_1 => DType::Q5_1;
    moe_q8_0 => DType::Q8_0;
    moe_q2_k => DType::Q2_K;
    moe_q3_k => DType::Q3_K;
    moe_q4_k => DType::Q4_K;
    moe_q5_k => DType::Q5_K;
    moe_q6_k => DType::Q6_K;
    moe_iq4_nl => DType::IQ4_NL;
    moe_iq4_xs => DType::IQ4_XS;
}

conformance! {
    moe_topk_softmax_ties_q8_0 => moe_case(Setup {
        dt: DType::Q8_0, n_tokens: 12,
        routing: MoeRouting { top_k: 2, gating: MoeGating::TopKSoftmax }, ties: true, ..MIXTRAL
    });
    moe_softmax_topk_ties_mixtral_bf16 => moe_case(Setup { dt: DType::BF16, n_tokens: 12, ties: true, ..MIXTRAL });
    moe_softmax_topk_norenorm_ties_q4_k => moe_case(Setup {
        dt: DType::Q4_K, n_tokens: 12, n_experts: 16,
        routing: MoeRouting { top_k: 4, gating: MoeGating::SoftmaxTopK { renormalize: false } },
        act: Activation::GeluTanh, ties: true, ..MIXTRAL
    });
    moe_top1_f16 => moe_case(Setup {
        dt: DType::F16, routing: MoeRouting { top_k: 1, gating: MoeGating::TopKSoftmax }, ..MIXTRAL
    });
    moe_many_tokens_q4_k => moe_case(Setup {
        dt: DType::Q4_K, n_tokens: 67, n_experts: 16, dim: 1024, ff: 512, ..MIXTRAL
    });
    moe_errors => moe_errors_case();
}
