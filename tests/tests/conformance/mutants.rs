//! Tests of the tests: `Mutant` wraps a fresh reference device and plants one bug in one op;
//! each `mutant_*` test runs a conformance case on the clean wrapper (must pass) and on the
//! bugged one (must fail). The bugs are the kind a kernel gets wrong: an unwritten row, a
//! window off by one, swapped KV pages, a dropped token, a skipped rotary pair, a wrong eps,
//! the other activation, a scale off by 2⁻²⁰, the other MoE normalization, a lost element.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use kiln_core::{
    Activation, AttnParams, Backend, BackendKind, BackendProvider, DType, DeviceInfo, HostTensor,
    MoeExperts, MoeGating, MoeRouting, OpKind, PagedKv, ReferenceProvider, Result, RopeFreqs,
    RopeParams, RopeScaling, RopeStyle, SeqBatch, Shape, View, ViewMut, Weight,
};
use kiln_tests::harness;

use super::{attention, copy, embed, glu, kv_append, matmul, moe, rms_norm, rope};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    MatmulLastRowUnwritten,
    AttnWindowPlusOne,
    AttnFirstBlocksSwapped,
    KvAppendDropsLastToken,
    RopeSkipsLastPair,
    RmsNormEpsTimes100,
    GluOtherActivation,
    EmbedScaleOff,
    MoeOtherNormalization,
    CopyLastElementLost,
}

struct Mutant {
    inner: Arc<dyn Backend>,
    bug: Bug,
}

impl Mutant {
    fn new(bug: Bug) -> Mutant {
        let inner = ReferenceProvider::default().open(0).unwrap();
        Mutant { inner, bug }
    }
    /// A copy of an i32 device tensor with `f` applied (reads and writes through `inner`).
    fn edit_i32<'a>(
        &self,
        v: View<'_>,
        keep: &'a mut Option<kiln_core::Buffer>,
        f: impl FnOnce(&mut [i32]),
    ) -> View<'a> {
        let mut bytes = vec![0u8; v.bytes()];
        self.inner.read(v.buffer(), v.offset(), &mut bytes).unwrap();
        let mut vals: Vec<i32> = bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        f(&mut vals);
        let out: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        let buf = self.inner.alloc(out.len()).unwrap();
        self.inner.write(&buf, 0, &out).unwrap();
        let buf = keep.insert(buf);
        buf.view(0, v.shape(), DType::I32).unwrap()
    }
}

impl Backend for Mutant {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn supports(&self, op: OpKind, dtype: DType) -> bool {
        self.inner.supports(op, dtype)
    }
    fn alloc(&self, bytes: usize) -> Result<kiln_core::Buffer> {
        self.inner.alloc(bytes)
    }
    fn write(&self, dst: &kiln_core::Buffer, offset: usize, src: &[u8]) -> Result<()> {
        self.inner.write(dst, offset, src)
    }
    fn read(&self, src: &kiln_core::Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.inner.read(src, offset, dst)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight> {
        self.inner.prepare_weight(w)
    }
    fn matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        if self.bug == Bug::MatmulLastRowUnwritten {
            let m = x.shape().dim(0) - 1;
            return self.inner.matmul(x.narrow(0, m)?, w, out.narrow(0, m)?);
        }
        self.inner.matmul(x, w, out)
    }
    fn attention_scratch_bytes(
        &self,
        p: &AttnParams,
        n_tokens: usize,
        batch: &SeqBatch<'_>,
    ) -> usize {
        self.inner.attention_scratch_bytes(p, n_tokens, batch)
    }
    fn attention(
        &self,
        q: View<'_>,
        kv: &PagedKv<'_>,
        batch: &SeqBatch<'_>,
        p: &AttnParams,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        match self.bug {
            Bug::AttnWindowPlusOne => {
                let p2 = AttnParams {
                    window: p.window.map(|w| w + 1),
                    ..*p
                };
                self.inner.attention(q, kv, batch, &p2, scratch, out)
            }
            Bug::AttnFirstBlocksSwapped => {
                let mut keep = None;
                let mb = batch.max_blocks();
                let tables = self.edit_i32(batch.block_tables, &mut keep, |t| {
                    for row in t.chunks_exact_mut(mb) {
                        row.swap(0, 1);
                    }
                });
                let b2 = SeqBatch {
                    block_tables: tables,
                    ..*batch
                };
                self.inner.attention(q, kv, &b2, p, scratch, out)
            }
            _ => self.inner.attention(q, kv, batch, p, scratch, out),
        }
    }
    fn kv_append(&self, k: View<'_>, v: View<'_>, kv: &PagedKv<'_>, slots: View<'_>) -> Result<()> {
        if self.bug == Bug::KvAppendDropsLastToken {
            let n = k.shape().dim(0) - 1;
            return self
                .inner
                .kv_append(k.narrow(0, n)?, v.narrow(0, n)?, kv, slots.narrow(0, n)?);
        }
        self.inner.kv_append(k, v, kv, slots)
    }
    fn rms_norm(&self, x: View<'_>, w: View<'_>, eps: f32, out: ViewMut<'_>) -> Result<()> {
        let eps = if self.bug == Bug::RmsNormEpsTimes100 {
            eps * 100.0
        } else {
            eps
        };
        self.inner.rms_norm(x, w, eps, out)
    }
    fn rope(
        &self,
        x: ViewMut<'_>,
        positions: View<'_>,
        inv_freq: View<'_>,
        p: &RopeParams,
    ) -> Result<()> {
        if self.bug == Bug::RopeSkipsLastPair {
            let p2 = RopeParams {
                n_rot: p.n_rot - 2,
                ..*p
            };
            return self
                .inner
                .rope(x, positions, inv_freq.narrow(0, p.n_rot / 2 - 1)?, &p2);
        }
        self.inner.rope(x, positions, inv_freq, p)
    }
    fn glu(&self, gate: View<'_>, up: View<'_>, act: Activation, out: ViewMut<'_>) -> Result<()> {
        let act = match (self.bug, act) {
            (Bug::GluOtherActivation, Activation::Silu) => Activation::GeluTanh,
            (Bug::GluOtherActivation, Activation::GeluTanh) => Activation::Silu,
            (_, a) => a,
        };
        self.inner.glu(gate, up, act, out)
    }
    fn add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.inner.add(a, b, out)
    }
    fn add_bias(&self, x: View<'_>, bias: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.inner.add_bias(x, bias, out)
    }
    fn gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.inner.gather(x, ids, out)
    }
    fn embed(&self, ids: View<'_>, table: &Weight, scale: f32, out: ViewMut<'_>) -> Result<()> {
        let scale = if self.bug == Bug::EmbedScaleOff {
            scale * (1.0 + 1.0 / 1048576.0)
        } else {
            scale
        };
        self.inner.embed(ids, table, scale, out)
    }
    fn moe_scratch_bytes(
        &self,
        n_tokens: usize,
        experts: &MoeExperts<'_>,
        r: &MoeRouting,
    ) -> usize {
        self.inner.moe_scratch_bytes(n_tokens, experts, r)
    }
    fn moe(
        &self,
        x: View<'_>,
        router_logits: View<'_>,
        experts: &MoeExperts<'_>,
        r: &MoeRouting,
        scratch: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let r2 = match (self.bug, r.gating) {
            (Bug::MoeOtherNormalization, MoeGating::SoftmaxTopK { renormalize }) => MoeRouting {
                gating: MoeGating::SoftmaxTopK {
                    renormalize: !renormalize,
                },
                ..*r
            },
            _ => *r,
        };
        self.inner.moe(x, router_logits, experts, &r2, scratch, out)
    }
    fn copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
        if self.bug == Bug::CopyLastElementLost {
            let n = src.numel() - 1;
            let s = src.reshape(Shape::d1(src.numel()))?.narrow(0, n)?;
            let d = dst.reshape(Shape::d1(dst.numel()))?.narrow(0, n)?;
            return self.inner.copy(s, d);
        }
        self.inner.copy(src, dst)
    }
}

/// The case passes on the clean wrapper and fails with `bug` planted.
fn caught(name: &str, bug: Bug, case: impl Fn(&dyn Backend)) {
    harness::run(BackendKind::Reference, name, |_| {
        case(&Mutant::new(Bug::None))
    });
    let r = catch_unwind(AssertUnwindSafe(|| {
        harness::run(BackendKind::Reference, name, |_| case(&Mutant::new(bug)))
    }));
    assert!(r.is_err(), "{name}: the planted bug {bug:?} was not caught");
    println!("ok: {name}: planted {bug:?} was caught");
}

#[test]
fn mutant_matmul_last_row_unwritten() {
    caught("matmul_q4_k_gemm", Bug::MatmulLastRowUnwritten, |b| {
        matmul::matmul_gemm_case(b, DType::Q4_K)
    });
}

#[test]
fn mutant_attention_window_off_by_one() {
    caught(
        "attention_window_hd128_gqa8_f32",
        Bug::AttnWindowPlusOne,
        |b| {
            attention::attention_case(
                b,
                attention::Setup {
                    seqs: attention::MIXED,
                    window: Some(100),
                    ..attention::BASE
                },
            )
        },
    );
}

#[test]
fn mutant_attention_pages_swapped() {
    caught(
        "attention_mixed_hd128_gqa8_f16",
        Bug::AttnFirstBlocksSwapped,
        |b| {
            attention::attention_case(
                b,
                attention::Setup {
                    seqs: attention::MIXED,
                    kv: DType::F16,
                    ..attention::BASE
                },
            )
        },
    );
}

#[test]
fn mutant_kv_append_drops_last_token() {
    caught("kv_append_bf16_hd128", Bug::KvAppendDropsLastToken, |b| {
        kv_append::kv_append_case(b, DType::BF16, 8, 16, 128)
    });
}

#[test]
fn mutant_rope_skips_last_pair() {
    caught("rope_neox_hd128_llama3", Bug::RopeSkipsLastPair, |b| {
        rope::rope_case(
            b,
            DType::F32,
            RopeStyle::Neox,
            128,
            128,
            RopeFreqs {
                base: 500000.0,
                scaling: rope::llama3(),
            },
        )
    });
    caught(
        "rope_interleaved_hd256_nrot64_linear",
        Bug::RopeSkipsLastPair,
        |b| {
            let freqs = RopeFreqs {
                base: 1e6,
                scaling: RopeScaling::Linear { factor: 4.0 },
            };
            rope::rope_case(b, DType::F32, RopeStyle::Interleaved, 256, 64, freqs)
        },
    );
}

#[test]
fn mutant_rms_norm_wrong_eps() {
    caught("rms_norm_f32_d4096", Bug::RmsNormEpsTimes100, |b| {
        rms_norm::rms_norm_case(b, DType::F32, &[1, 7, 33], 4096, 1e-5)
    });
}

#[test]
fn mutant_glu_other_activation() {
    caught("glu_silu_f32", Bug::GluOtherActivation, |b| {
        glu::glu_case(b, DType::F32, Activation::Silu, 7, 11011)
    });
}

#[test]
fn mutant_embed_scale_off_by_2pow20() {
    caught("embed_q6_k", Bug::EmbedScaleOff, |b| {
        embed::embed_case(b, DType::Q6_K, 1.0)
    });
}

#[test]
fn mutant_moe_other_normalization() {
    caught("moe_q8_0", Bug::MoeOtherNormalization, |b| {
        moe::moe_case(
            b,
            moe::Setup {
                dt: DType::Q8_0,
                ..moe::MIXTRAL
            },
        )
    });
}

#[test]
fn mutant_copy_last_element_lost() {
    caught("copy_f32_to_bf16", Bug::CopyLastElementLost, |b| {
        copy::copy_case(b, DType::F32, DType::BF16)
    });
}
