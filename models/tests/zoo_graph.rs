//! The decode step is graph-capturable: a test backend that records ops like a CUDA graph
//! (during `capture` nothing runs; the op list keeps its buffers and arguments; `replay` runs
//! it again on the buffers' current contents) must give the same logits as eager steps. Any
//! per-step value kept on the host (a position, a length, a block id, a row count) would be
//! frozen into the recording and break the replayed steps.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod zoo_util;

use std::sync::{Arc, Mutex};

use kiln_core::*;
use kiln_models::runtime::SeqInput;
use kiln_models::{LoadOptions, Model, Runtime, RuntimeOptions};
use zoo_util::{cases, max_diff, zoo};

fn own(v: View<'_>) -> Tensor {
    Tensor::new(v.buffer().clone(), v.offset(), v.shape(), v.dtype()).unwrap()
}
fn own_mut(v: ViewMut<'_>) -> Tensor {
    own(v.as_view())
}

/// A recorded op with owned arguments.
enum Op {
    Matmul(Tensor, Weight, Tensor),
    Attention(
        Tensor,
        Tensor,
        Tensor,
        [Tensor; 3],
        usize,
        usize,
        AttnParams,
        Option<Tensor>,
        Tensor,
    ),
    KvAppend(Tensor, Tensor, Tensor, Tensor, Tensor),
    RmsNorm(Tensor, Tensor, f32, Tensor),
    Rope(Tensor, Tensor, Tensor, RopeParams),
    Glu(Tensor, Tensor, Activation, Tensor),
    Add(Tensor, Tensor, Tensor),
    AddBias(Tensor, Tensor, Tensor),
    Gather(Tensor, Tensor, Tensor),
    Embed(Tensor, Weight, f32, Tensor),
    Moe(
        Tensor,
        Tensor,
        [Weight; 3],
        Activation,
        MoeRouting,
        Option<Tensor>,
        Tensor,
    ),
}

fn run(b: &dyn Backend, op: &Op) -> Result<()> {
    match op {
        Op::Matmul(x, w, o) => b.matmul(x.view(), w, o.view_mut()),
        Op::Attention(q, k, v, [qs, kl, bt], mq, mk, p, s, o) => {
            let kv = PagedKv::new(k.view_mut(), v.view_mut())?;
            let batch = SeqBatch {
                q_starts: qs.view(),
                kv_lens: kl.view(),
                block_tables: bt.view(),
                max_q_len: *mq,
                max_kv_len: *mk,
            };
            b.attention(
                q.view(),
                &kv,
                &batch,
                p,
                s.as_ref().map(Tensor::view_mut),
                o.view_mut(),
            )
        }
        Op::KvAppend(k, v, ck, cv, s) => b.kv_append(
            k.view(),
            v.view(),
            &PagedKv::new(ck.view_mut(), cv.view_mut())?,
            s.view(),
        ),
        Op::RmsNorm(x, w, e, o) => b.rms_norm(x.view(), w.view(), *e, o.view_mut()),
        Op::Rope(x, p, f, rp) => b.rope(x.view_mut(), p.view(), f.view(), rp),
        Op::Glu(g, u, a, o) => b.glu(g.view(), u.view(), *a, o.view_mut()),
        Op::Add(a, c, o) => b.add(a.view(), c.view(), o.view_mut()),
        Op::AddBias(x, c, o) => b.add_bias(x.view(), c.view(), o.view_mut()),
        Op::Gather(x, i, o) => b.gather(x.view(), i.view(), o.view_mut()),
        Op::Embed(i, t, s, o) => b.embed(i.view(), t, *s, o.view_mut()),
        Op::Moe(x, r, [g, u, d], a, ro, s, o) => {
            let ex = MoeExperts {
                gate: g,
                up: u,
                down: d,
                act: *a,
            };
            b.moe(
                x.view(),
                r.view(),
                &ex,
                ro,
                s.as_ref().map(Tensor::view_mut),
                o.view_mut(),
            )
        }
    }
}

/// The reference backend with CUDA-graph-like capture.
struct Recorder {
    inner: Arc<ReferenceBackend>,
    rec: Mutex<Option<Vec<Op>>>,
    captures: Mutex<usize>,
    /// The next this many captures fail (nothing recorded runs), as a CUDA capture that
    /// another thread invalidated: with `fail_in_op` the first op recorded returns the error
    /// (a launch into the invalidated capture), else the capture's end does.
    fail: Mutex<usize>,
    fail_in_op: bool,
}

impl Recorder {
    fn new(fail: usize, fail_in_op: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            inner: Arc::new(ReferenceBackend::new(0)),
            rec: Mutex::new(None),
            captures: Mutex::new(0),
            fail: Mutex::new(fail),
            fail_in_op,
        })
    }
}

fn invalidated() -> Error {
    Error::backend(
        "recorder",
        "capture invalidated (test: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED)",
    )
}

struct Graph {
    inner: Arc<ReferenceBackend>,
    ops: Vec<Op>,
}

impl Replay for Graph {
    fn replay(&self) -> Result<()> {
        self.ops
            .iter()
            .try_for_each(|op| run(self.inner.as_ref(), op))
    }
}

impl Recorder {
    /// Record `op` while capturing, else run it.
    fn go(&self, op: Op) -> Result<()> {
        let mut rec = self.rec.lock().unwrap();
        match rec.as_mut() {
            Some(_) if self.fail_in_op && *self.fail.lock().unwrap() > 0 => Err(invalidated()),
            Some(list) => {
                list.push(op);
                Ok(())
            }
            None => {
                drop(rec);
                run(self.inner.as_ref(), &op)
            }
        }
    }
}

impl Backend for Recorder {
    fn info(&self) -> &DeviceInfo {
        self.inner.info()
    }
    fn supports(&self, op: OpKind, dtype: DType) -> bool {
        self.inner.supports(op, dtype)
    }
    fn alloc(&self, bytes: usize) -> Result<Buffer> {
        assert!(
            self.rec.lock().unwrap().is_none(),
            "alloc inside a captured step"
        );
        self.inner.alloc(bytes)
    }
    fn write(&self, dst: &Buffer, offset: usize, src: &[u8]) -> Result<()> {
        assert!(
            self.rec.lock().unwrap().is_none(),
            "host write inside a captured step"
        );
        self.inner.write(dst, offset, src)
    }
    fn read(&self, src: &Buffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        assert!(
            self.rec.lock().unwrap().is_none(),
            "host read inside a captured step"
        );
        self.inner.read(src, offset, dst)
    }
    fn synchronize(&self) -> Result<()> {
        assert!(
            self.rec.lock().unwrap().is_none(),
            "synchronize inside a captured step"
        );
        Ok(())
    }
    fn prepare_weight(&self, w: &HostTensor<'_>) -> Result<Weight> {
        self.inner.prepare_weight(w)
    }
    fn matmul(&self, x: View<'_>, w: &Weight, out: ViewMut<'_>) -> Result<()> {
        self.go(Op::Matmul(own(x), w.clone(), own_mut(out)))
    }
    fn attention_scratch_bytes(&self, p: &AttnParams, n: usize, b: &SeqBatch<'_>) -> usize {
        self.inner.attention_scratch_bytes(p, n, b)
    }
    fn attention(
        &self,
        q: View<'_>,
        kv: &PagedKv<'_>,
        b: &SeqBatch<'_>,
        p: &AttnParams,
        s: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let tables = [own(b.q_starts), own(b.kv_lens), own(b.block_tables)];
        self.go(Op::Attention(
            own(q),
            own_mut(kv.k),
            own_mut(kv.v),
            tables,
            b.max_q_len,
            b.max_kv_len,
            *p,
            s.map(own_mut),
            own_mut(out),
        ))
    }
    fn kv_append(&self, k: View<'_>, v: View<'_>, kv: &PagedKv<'_>, slots: View<'_>) -> Result<()> {
        self.go(Op::KvAppend(
            own(k),
            own(v),
            own_mut(kv.k),
            own_mut(kv.v),
            own(slots),
        ))
    }
    fn rms_norm(&self, x: View<'_>, w: View<'_>, eps: f32, out: ViewMut<'_>) -> Result<()> {
        self.go(Op::RmsNorm(own(x), own(w), eps, own_mut(out)))
    }
    fn rope(&self, x: ViewMut<'_>, pos: View<'_>, f: View<'_>, p: &RopeParams) -> Result<()> {
        self.go(Op::Rope(own_mut(x), own(pos), own(f), *p))
    }
    fn glu(&self, g: View<'_>, u: View<'_>, a: Activation, out: ViewMut<'_>) -> Result<()> {
        self.go(Op::Glu(own(g), own(u), a, own_mut(out)))
    }
    fn add(&self, a: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.go(Op::Add(own(a), own(b), own_mut(out)))
    }
    fn add_bias(&self, x: View<'_>, b: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.go(Op::AddBias(own(x), own(b), own_mut(out)))
    }
    fn gather(&self, x: View<'_>, ids: View<'_>, out: ViewMut<'_>) -> Result<()> {
        self.go(Op::Gather(own(x), own(ids), own_mut(out)))
    }
    fn embed(&self, ids: View<'_>, t: &Weight, scale: f32, out: ViewMut<'_>) -> Result<()> {
        self.go(Op::Embed(own(ids), t.clone(), scale, own_mut(out)))
    }
    fn moe(
        &self,
        x: View<'_>,
        r: View<'_>,
        e: &MoeExperts<'_>,
        ro: &MoeRouting,
        s: Option<ViewMut<'_>>,
        out: ViewMut<'_>,
    ) -> Result<()> {
        let w = [e.gate.clone(), e.up.clone(), e.down.clone()];
        self.go(Op::Moe(
            own(x),
            own(r),
            w,
            e.act,
            *ro,
            s.map(own_mut),
            own_mut(out),
        ))
    }
    fn copy(&self, src: View<'_>, dst: ViewMut<'_>) -> Result<()> {
        assert!(
            self.rec.lock().unwrap().is_none(),
            "copy is not recorded by this test backend"
        );
        self.inner.copy(src, dst)
    }
    fn capture(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<Option<Box<dyn Replay>>> {
        *self.rec.lock().unwrap() = Some(Vec::new());
        let r = f();
        let ops = self.rec.lock().unwrap().take().unwrap_or_default();
        let mut fail = self.fail.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(r.err().unwrap_or_else(invalidated));
        }
        r?;
        *self.captures.lock().unwrap() += 1;
        Ok(Some(Box::new(Graph {
            inner: self.inner.clone(),
            ops,
        })))
    }
}

#[test]
fn replayed_decode_steps_match_eager_ones() {
    let Some(zoo) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    for m in ["llama3", "qwen2", "gemma3", "mixtral", "qwen3moe"] {
        let dir = zoo.join(m);
        let cs = cases(&dir);
        let rec = Recorder::new(0, false);
        let model =
            Model::load(dir.to_str().unwrap(), rec.clone(), &LoadOptions::default()).unwrap();
        let opts = RuntimeOptions {
            max_seqs: 2,
            chunk: 8,
            context: Some(128),
            kv_dtype: DType::F32,
            ..RuntimeOptions::default()
        };
        let mut rt = Runtime::new(&model, opts).unwrap();
        let (a, b) = (rt.add_sequence(), rt.add_sequence());
        let (ia, ib) = (&cs[0].ids, &cs[1].ids);
        let mut worst = 0f32;
        // single-sequence decode (bucket 1): warm-up, capture, replays across block boundaries
        for (i, t) in ia.iter().enumerate() {
            let l = rt
                .step(&[SeqInput {
                    seq: a,
                    tokens: std::slice::from_ref(t),
                }])
                .unwrap();
            worst = worst.max(max_diff(l.row(0), cs[0].row(i)));
        }
        // two sequences (bucket 2): b prefills a chunk, then both decode together
        rt.step(&[SeqInput {
            seq: b,
            tokens: &ib[..8],
        }])
        .unwrap();
        let c = rt.add_sequence();
        rt.remove_sequence(c);
        let a2 = rt.add_sequence();
        for i in 0..30 {
            let l = rt
                .step(&[
                    SeqInput {
                        seq: b,
                        tokens: &ib[8 + i..9 + i],
                    },
                    SeqInput {
                        seq: a2,
                        tokens: &ia[i..i + 1],
                    },
                ])
                .unwrap();
            worst = worst.max(max_diff(l.row(0), cs[1].row(8 + i)));
            worst = worst.max(max_diff(l.row(1), cs[0].row(i)));
        }
        let st = rt.stats();
        let captures = *rec.captures.lock().unwrap();
        println!(
            "{m}: {} decode steps, {} replayed, {captures} captures; max |Δ| vs reference {worst:.2e}",
            st.decode_steps, st.replayed
        );
        assert_eq!(captures, 2, "one capture per bucket");
        assert!(st.replayed as usize >= ia.len() - 1 + 29, "{st:?}");
        assert!(worst <= 1e-3, "{m}: {worst}");
    }
}

/// Past 256 positions the decode step moves to the next KV-length class (its own graph):
/// replayed steps on both sides of the boundary equal eager ones (graphs off).
#[test]
fn kv_length_classes_replay_like_eager() {
    let Some(zoo) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let dir = zoo.join("gemma3"); // window 16 + a global layer
    let ids = &cases(&dir)[1].ids;
    let tokens: Vec<u32> = ids.iter().cycle().take(300).copied().collect();
    let rec = Recorder::new(0, false);
    let model = Model::load(dir.to_str().unwrap(), rec.clone(), &LoadOptions::default()).unwrap();
    let opts = |graphs| RuntimeOptions {
        context: Some(600),
        kv_dtype: DType::F32,
        graphs,
        ..RuntimeOptions::default()
    };
    let (mut g, mut e) = (
        Runtime::new(&model, opts(true)).unwrap(),
        Runtime::new(&model, opts(false)).unwrap(),
    );
    let (sg, se) = (g.add_sequence(), e.add_sequence());
    let mut worst = 0f32;
    for t in &tokens {
        let t = std::slice::from_ref(t);
        let a = g
            .step(&[SeqInput { seq: sg, tokens: t }])
            .unwrap()
            .data
            .to_vec();
        let b = e.step(&[SeqInput { seq: se, tokens: t }]).unwrap();
        worst = worst.max(max_diff(&a, b.data));
    }
    let captures = *rec.captures.lock().unwrap();
    println!(
        "300 decode steps: {} replayed, {captures} captures, max |Δ| replay vs eager {worst:.2e}",
        g.stats().replayed
    );
    assert_eq!(captures, 2, "classes 256 and 512");
    assert_eq!(g.stats().replayed, 300 - 4 + 2);
    assert_eq!(worst, 0.0);
}

/// A capture that fails after the step recorded without error (CUDA: invalidated by another
/// backend of the device, e.g. a second model tuning on another thread) must not fail the
/// step: it runs eagerly, the next step captures again, and after CAPTURE_TRIES (3) failures
/// the pair stays eager. Every step's logits equal the eager runtime's.
#[test]
fn failed_captures_fall_back_to_eager_steps() {
    let Some(zoo) = zoo() else {
        println!("skipped: zoo not found");
        return;
    };
    let dir = zoo.join("llama3");
    let ids = &cases(&dir)[0].ids;
    let steps = ids.len().min(12);
    // (captures that fail, captures that succeed, replayed steps, failures counted)
    // Step 1 runs eagerly (warm-up), each failed capture costs one more eager step, and the
    // step that captures also replays its graph.
    let cases = [(1, 1, steps - 2, 1), (2, 1, steps - 3, 2), (5, 0, 0, 3)];
    for (in_op, (fail, want_captures, want_replayed, want_failed)) in [false, true]
        .into_iter()
        .flat_map(|o| cases.map(|c| (o, c)))
    {
        let rec = Recorder::new(fail, in_op);
        let model =
            Model::load(dir.to_str().unwrap(), rec.clone(), &LoadOptions::default()).unwrap();
        let opts = |graphs| RuntimeOptions {
            context: Some(128),
            kv_dtype: DType::F32,
            graphs,
            ..RuntimeOptions::default()
        };
        let mut g = Runtime::new(&model, opts(true)).unwrap();
        let mut e = Runtime::new(&model, opts(false)).unwrap();
        let (sg, se) = (g.add_sequence(), e.add_sequence());
        let mut worst = 0f32;
        for t in &ids[..steps] {
            let t = std::slice::from_ref(t);
            let a = g
                .step(&[SeqInput { seq: sg, tokens: t }])
                .unwrap_or_else(|err| panic!("{fail} failing captures: a step failed: {err}"))
                .data
                .to_vec();
            let b = e.step(&[SeqInput { seq: se, tokens: t }]).unwrap();
            worst = worst.max(max_diff(&a, b.data));
        }
        let (st, captures) = (g.stats(), *rec.captures.lock().unwrap());
        println!(
            "{fail} failing (in an op: {in_op}): {steps} steps, {} replayed, {captures} captures, {} failures, max |Δ| {worst:.2e}",
            st.replayed, st.capture_failures
        );
        assert_eq!(captures, want_captures, "{fail} failing captures");
        assert_eq!(
            st.replayed as usize, want_replayed,
            "{fail} failing captures"
        );
        assert_eq!(st.capture_failures, want_failed, "{fail} failing captures");
        assert_eq!(
            worst, 0.0,
            "{fail} failing captures: logits differ from eager steps"
        );
    }
}
