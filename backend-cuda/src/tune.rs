//! The matmul crossover tuner: per (device, dtype, n, k), which of the three matmul paths runs
//! at each row count m: the fused dequant GEMV/GEMM kernel (m ≤ `max_fused_rows`), the int8
//! tensor-core GEMM of the block types (m ≤ `max_mma_rows`), else dequantize + cuBLASLt.
//! Measured on first use (or by `CudaBackend::tune_matmul`, which `kiln tune` calls), persisted
//! with `kiln_core::tune::TuneCache` under a device key made of the GPU name, compute capability
//! and driver, and used by dispatch. Entries persisted before the mma path existed (no
//! `max_mma_rows` key), or against older mma kernels of their type (`mma_rev`), are ignored on
//! load, so those shapes are measured again.
//!
//! Measurement: for m in `LADDER`, every applicable path runs on scratch buffers with the L2
//! cache flushed before every timed run (as in decode, where other layers' weights evict this
//! one); the time is the median of `REPS` runs, each bracketed by CUDA events. `max_fused_rows`
//! is the last m of the ladder's prefix where the fused kernel is fastest; `max_mma_rows` (≥ it)
//! the last m of the prefix where the fused or mma kernel beats the dense path (the ladder stops
//! after two dense wins in a row). Float weights have no mma path: `max_mma_rows` =
//! `max_fused_rows` and `mma_us` is empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use kiln_core::tune::TuneCache;
use kiln_core::{DType, DeviceInfo, Error, Result, Weight};
use serde_json::json;

use crate::buffer::CudaWeight;
use crate::device::CudaBackend;

/// Row counts the tuner measures.
pub const LADDER: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
const REPS: usize = 7;
/// Bytes written between timed runs to evict the weight from L2 (H100/H200 L2 is 50/60 MiB).
pub(crate) const FLUSH_BYTES: usize = 192 << 20;

/// One tuning result.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneResult {
    pub dtype: DType,
    pub n: usize,
    pub k: usize,
    /// Row counts measured, with the median time (µs) of each path.
    pub m: Vec<usize>,
    pub fused_us: Vec<f64>,
    pub dense_us: Vec<f64>,
    /// The mma path's median times (empty for float weights, which it does not take); for
    /// Q4_K at m ≤ 64 the int8 kernel `mq4k`.
    pub mma_us: Vec<f64>,
    /// Q4_K: the f16 kernel `mh4k` at the rungs m ≤ 64 (empty otherwise).
    pub mh_us: Vec<f64>,
    /// Q4_K on sm_90: the pipelined int8 kernel `mp4k` at the rungs 2 ≤ m ≤ 8 (empty
    /// otherwise), and its tensor-copy flavour `mpt4k`.
    pub mp_us: Vec<f64>,
    pub mpt_us: Vec<f64>,
    /// The dispatch uses the fused kernel for m ≤ this.
    pub max_fused_rows: usize,
    /// ... and the mma kernel for max_fused_rows < m ≤ this (dense above).
    pub max_mma_rows: usize,
    /// Q4_K: the mma path runs the f16 kernel for this ≤ m ≤ 64, the int8 one below.
    pub min_mh_rows: usize,
    /// Q4_K: the mma path runs `mp4k` for 2 ≤ m ≤ this (0: never) ...
    pub max_mp_rows: usize,
    /// ... in its tensor-copy flavour (`mpt4k`) if that was faster at most of those rungs.
    pub mp_tensor: bool,
}

/// The two crossovers of one (dtype, n, k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossover {
    /// Fused kernel for m ≤ this.
    pub max_fused_rows: usize,
    /// mma kernel for max_fused_rows < m ≤ this; dense above.
    pub max_mma_rows: usize,
    /// Q4_K: f16 kernel (`mh4k`) for this ≤ m ≤ 64 on the mma path, int8 (`mq4k`) below;
    /// usize::MAX for the other types.
    pub min_mh_rows: usize,
    /// Q4_K: the pipelined int8 kernel (`mp4k`) for 2 ≤ m ≤ this on the mma path, before the
    /// choice above; 0 for the other types and where it never wins.
    pub max_mp_rows: usize,
    /// ... its tensor-copy flavour (`mpt4k`).
    pub mp_tensor: bool,
}

/// The crossovers of every device of one kind in this process (one table per device key), so
/// that identical GPUs dispatch a shape alike: the first to meet a shape measures it, the others
/// reuse the result. Ranks of a tensor-parallel group that picked different paths for the same
/// matmul would round their partial sums differently, and a MoE router's near-tie could then
/// go another way than on one device (qwen3moe on two H200s: 0.71 in logits).
pub fn shared(device_key: &str) -> Arc<Mutex<Crossovers>> {
    static TABLES: OnceLock<Mutex<HashMap<String, Arc<Mutex<Crossovers>>>>> = OnceLock::new();
    let mut t = TABLES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    t.entry(device_key.to_string())
        .or_insert_with(|| Arc::new(Mutex::new(Crossovers::load(device_key))))
        .clone()
}

/// The device's crossovers, in memory and on disk.
pub struct Crossovers {
    cache: TuneCache,
    known: HashMap<String, Crossover>,
}

impl Crossovers {
    pub fn load(device_key: &str) -> Crossovers {
        let cache = TuneCache::open(device_key);
        let known = cache
            .entries()
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), persisted(k, v)?)))
            .collect();
        Crossovers { cache, known }
    }
}

/// The crossover a persisted entry `v` under key `k` holds, or None where it must be measured
/// again: fields missing (an entry from before the mma path, or a Q4_K entry from before its f16
/// or pipelined kernel), or measured against older mma kernels of its type (`mma_rev`).
fn persisted(k: &str, v: &serde_json::Value) -> Option<Crossover> {
    let q4k = k.starts_with("matmul/Q4_K/");
    let dtype = k.split('/').nth(1).unwrap_or("");
    let rev = v.get("mma_rev").map_or(Some(0), |r| r.as_u64())?;
    if rev != mma_revision(dtype) {
        return None;
    }
    let min_mh_rows = match v.get("min_mh_rows") {
        Some(r) => r.as_u64()? as usize,
        None if q4k => return None,
        None => usize::MAX,
    };
    let (max_mp_rows, mp_tensor) = match (v.get("max_mp_rows"), v.get("mp_tensor")) {
        (Some(r), Some(t)) => (r.as_u64()? as usize, t.as_bool()?),
        _ if q4k => return None,
        _ => (0, false),
    };
    Some(Crossover {
        max_fused_rows: v.get("max_fused_rows")?.as_u64()? as usize,
        max_mma_rows: v.get("max_mma_rows")?.as_u64()? as usize,
        min_mh_rows,
        max_mp_rows,
        mp_tensor,
    })
}

/// `NVIDIA_H200__sm_90__CUDA_13.0`.
pub fn device_key(info: &DeviceInfo) -> String {
    let cc = info
        .caps
        .compute_capability
        .map_or("sm_unknown".to_string(), |(a, b)| format!("sm_{a}{b}"));
    kiln_core::tune::device_key(&[&info.name, &cc, &info.driver])
}

/// The revision of a dtype's mma-path kernels (by `DType::name`), persisted with its entries:
/// an entry of another revision was measured against kernels that no longer run and is
/// measured again. Q5_K, Q6_K and Q8_0 1: `mq5k` / `mq6k` / `mq8_0` replaced the generic
/// kernel at m ≤ 64 (stop 26).
fn mma_revision(dtype: &str) -> u64 {
    match dtype {
        "Q5_K" | "Q6_K" | "Q8_0" => 1,
        _ => 0,
    }
}

fn key(dtype: DType, n: usize, k: usize) -> String {
    format!("matmul/{}/{n}x{k}", dtype.name())
}

impl CudaBackend {
    /// The persisted fused crossover (max fused rows) of (dtype, n, k), if measured.
    pub fn crossover(&self, dtype: DType, n: usize, k: usize) -> Option<usize> {
        self.crossovers_of(dtype, n, k).map(|c| c.max_fused_rows)
    }

    /// Both persisted crossovers of (dtype, n, k), if measured.
    pub fn crossovers_of(&self, dtype: DType, n: usize, k: usize) -> Option<Crossover> {
        let c = self.crossovers.lock().unwrap_or_else(|e| e.into_inner());
        c.known.get(&key(dtype, n, k)).copied()
    }

    /// Every persisted crossover of this device: `matmul/<dtype>/<n>x<k>` → max fused rows.
    pub fn crossover_table(&self) -> Vec<(String, usize)> {
        let c = self.crossovers.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = c
            .known
            .iter()
            .map(|(k, v)| (k.clone(), v.max_fused_rows))
            .collect();
        v.sort();
        v
    }

    /// The crossovers for dispatch: measured now if unknown. While a graph is being captured
    /// nothing can be measured; the fused kernel (correct for any m) is used without persisting.
    pub(crate) fn crossover_or_tune(&self, w: &Weight, cw: &CudaWeight) -> Result<Crossover> {
        let (n, k) = (w.shape().dim(0), w.shape().dim(1));
        if let Some(x) = self.crossovers_of(w.dtype(), n, k) {
            return Ok(x);
        }
        if self.capturing()? {
            return Ok(Crossover {
                max_fused_rows: usize::MAX,
                max_mma_rows: usize::MAX,
                min_mh_rows: usize::MAX,
                max_mp_rows: 0,
                mp_tensor: false,
            });
        }
        let r = self.tune_inner(cw, n, k)?;
        Ok(Crossover {
            max_fused_rows: r.max_fused_rows,
            max_mma_rows: r.max_mma_rows,
            min_mh_rows: r.min_mh_rows,
            max_mp_rows: r.max_mp_rows,
            mp_tensor: r.mp_tensor,
        })
    }

    fn capturing(&self) -> Result<bool> {
        let st = self
            .stream
            .capture_status()
            .map_err(self.drv("cuStreamIsCapturing"))?;
        Ok(st != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
    }

    /// Measure (again) the crossover of a prepared 2-D weight and persist it.
    pub fn tune_matmul(&self, w: &Weight) -> Result<TuneResult> {
        let cw = self.weight(kiln_core::OpKind::Matmul, w)?;
        let s = w.shape();
        if s.rank() != 2 {
            return Err(Error::Invalid(format!("tune: weight {s} must be [n, k]")));
        }
        self.tune_inner(cw, s.dim(0), s.dim(1))
    }

    fn tune_inner(&self, w: &CudaWeight, n: usize, k: usize) -> Result<TuneResult> {
        // Every path's scratch at its largest rung, allocated once on top of the scratch stack
        // (not grown rung by rung, which would keep each smaller one alive) and freed after:
        // the runtime keeps only what its own rows need (device.rs `matmul_workspace`).
        let transient = self.push_tuning_scratch(self.tuning_scratch(w.dtype, n, k))?;
        let measured = self.tune_ladder(w, n, k);
        let freed = self.pop_tuning_scratch(transient);
        let res = measured?;
        freed?;
        let mut c = self.crossovers.lock().unwrap_or_else(|e| e.into_inner());
        let kk = key(w.dtype, n, k);
        c.known.insert(
            kk.clone(),
            Crossover {
                max_fused_rows: res.max_fused_rows,
                max_mma_rows: res.max_mma_rows,
                min_mh_rows: res.min_mh_rows,
                max_mp_rows: res.max_mp_rows,
                mp_tensor: res.mp_tensor,
            },
        );
        c.cache.insert(
            &kk,
            json!({
                "max_fused_rows": res.max_fused_rows,
                "max_mma_rows": res.max_mma_rows,
                "min_mh_rows": res.min_mh_rows,
                "max_mp_rows": res.max_mp_rows,
                "mp_tensor": res.mp_tensor,
                "mma_rev": mma_revision(w.dtype.name()),
                "m": res.m,
                "fused_us": res.fused_us,
                "mma_us": res.mma_us,
                "mh_us": res.mh_us,
                "mp_us": res.mp_us,
                "mpt_us": res.mpt_us,
                "dense_us": res.dense_us,
            }),
        )?;
        Ok(res)
    }

    /// Time every applicable path at every rung of the ladder (stopping after two dense wins
    /// in a row) and derive the crossovers.
    fn tune_ladder(&self, w: &CudaWeight, n: usize, k: usize) -> Result<TuneResult> {
        let m_max = *LADDER.last().unwrap_or(&1);
        let out = self.alloc_mem(m_max * n * 4)?;
        let flush = self.alloc_mem(FLUSH_BYTES)?;
        // Deterministic small activations (values do not change the timing, NaNs could).
        let xs: Vec<u8> = (0..m_max * k)
            .flat_map(|i| (((i % 97) as f32 - 48.0) * 1e-3).to_le_bytes())
            .collect();
        let x = self.upload(&xs)?;
        let mma_ok = crate::ops::matmul_mma::mma_supported(w.dtype, k);
        let mut res = TuneResult {
            dtype: w.dtype,
            n,
            k,
            m: Vec::new(),
            fused_us: Vec::new(),
            dense_us: Vec::new(),
            mma_us: Vec::new(),
            mh_us: Vec::new(),
            mp_us: Vec::new(),
            mpt_us: Vec::new(),
            max_fused_rows: 0,
            max_mma_rows: 0,
            min_mh_rows: usize::MAX,
            max_mp_rows: 0,
            mp_tensor: false,
        };
        // Still in the prefix of rungs from m = 2 where mp4k (either flavour) beats mq4k and
        // mh4k; rungs of that prefix where the tensor flavour was the faster one.
        let (mut mp_prefix, mut tensor_wins) = (true, 0);
        // Still in the prefix where fused (resp. fused or mma) wins at every rung.
        let (mut fused_prefix, mut quant_prefix) = (true, true);
        let mut dense_wins = 0;
        for &m in &LADDER {
            let f = self.time_path(&flush, || self.matmul_fused(x.ptr, w, out.ptr, m, n, k))?;
            let d = self.time_path(&flush, || self.matmul_dense(x.ptr, w, out.ptr, m, n, k))?;
            use crate::ops::matmul_mma::Q4kKernel;
            let q4k = mma_ok && w.dtype == DType::Q4_K && m <= 64;
            let mma = |kernel| {
                self.time_path(&flush, || {
                    self.matmul_mma_with(x.ptr, w, out.ptr, [m, n, k], kernel)
                })
            };
            let q = if mma_ok {
                let q = mma(q4k.then_some(Q4kKernel::Int8))?;
                res.mma_us.push(q);
                if q4k {
                    // The f16 kernel from the first rung where it wins at every rung up to 64.
                    let h = mma(Some(Q4kKernel::F16))?;
                    res.mh_us.push(h);
                    if h >= q {
                        res.min_mh_rows = usize::MAX;
                    } else if res.min_mh_rows == usize::MAX {
                        res.min_mh_rows = m;
                    }
                    let best = q.min(h);
                    // The pipelined kernel at 2 ≤ m ≤ 8 where it applies (sm_90).
                    if m >= 2 && self.mp4k_applies(w, m) {
                        let b = mma(Some(Q4kKernel::Pipe))?;
                        let t = mma(Some(Q4kKernel::PipeTensor))?;
                        res.mp_us.push(b);
                        res.mpt_us.push(t);
                        let p = b.min(t);
                        mp_prefix &= p < best;
                        if mp_prefix {
                            res.max_mp_rows = m;
                            tensor_wins += usize::from(t < b);
                            // The flavour faster at most rungs of the prefix (ties: tensor).
                            let rungs = res.mp_us.len();
                            res.mp_tensor = 2 * tensor_wins >= rungs;
                        }
                        best.min(p)
                    } else {
                        best
                    }
                } else {
                    q
                }
            } else {
                f64::INFINITY
            };
            res.m.push(m);
            res.fused_us.push(f);
            res.dense_us.push(d);
            fused_prefix &= f <= d && f <= q;
            quant_prefix &= f.min(q) <= d;
            if fused_prefix {
                res.max_fused_rows = m;
            }
            if quant_prefix {
                res.max_mma_rows = m;
            }
            if f.min(q) > d {
                dense_wins += 1;
                if dense_wins >= 2 {
                    break;
                }
            } else {
                dense_wins = 0;
            }
        }
        res.max_mma_rows = res.max_mma_rows.max(res.max_fused_rows);
        // The transient buffers (out, flush, x and the tuning scratch) are all alive here.
        self.stream
            .synchronize()
            .map_err(self.drv("cuStreamSynchronize"))?;
        self.note_memory_peak();
        Ok(res)
    }

    /// Median time in µs of `run` over REPS runs, each after an L2 flush.
    fn time_path(
        &self,
        flush: &crate::buffer::CudaMem,
        mut run: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        run()?; // warm-up (module load, cuBLASLt plan, scratch allocation)
        let mut times = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            self.flush_l2(flush)?;
            let t = self.time_once(&mut run)?;
            times.push(t);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[times.len() / 2])
    }

    /// µs of one run, between two CUDA events on the stream.
    pub(crate) fn time_once(&self, run: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let start = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(self.drv("cuEventCreate"))?;
        let end = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(self.drv("cuEventCreate"))?;
        start
            .record(&self.stream)
            .map_err(self.drv("cuEventRecord"))?;
        run()?;
        end.record(&self.stream)
            .map_err(self.drv("cuEventRecord"))?;
        end.synchronize().map_err(self.drv("cuEventSynchronize"))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(self.drv("cuEventElapsedTime"))?;
        Ok(ms as f64 * 1e3)
    }

    fn flush_l2(&self, flush: &crate::buffer::CudaMem) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(self.drv("cuCtxSetCurrent"))?;
        // SAFETY: `flush` is a live allocation of FLUSH_BYTES.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                flush.ptr,
                0,
                FLUSH_BYTES,
                self.stream.cu_stream(),
            )
        }
        .map_err(self.drv("cuMemsetD8Async"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of a dtype whose mma kernels changed are measured again; others load.
    #[test]
    fn entries_of_older_mma_kernels_are_retuned() {
        let base = json!({"max_fused_rows": 4, "max_mma_rows": 64});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            v
        };
        // IQ4_XS (revision 0): with or without the stamp.
        assert!(persisted("matmul/IQ4_XS/4096x4096", &base).is_some());
        assert!(persisted("matmul/IQ4_XS/4096x4096", &with(json!({"mma_rev": 0}))).is_some());
        assert!(persisted("matmul/IQ4_XS/4096x4096", &with(json!({"mma_rev": 7}))).is_none());
        // Q5_K, Q6_K: only entries measured against mq5k / mq6k.
        assert!(persisted("matmul/Q5_K/4096x4096", &base).is_none());
        assert!(persisted("matmul/Q5_K/4096x4096", &with(json!({"mma_rev": 1}))).is_some());
        assert!(persisted("matmul/Q6_K/4096x4096", &base).is_none());
        let q6 = persisted("matmul/Q6_K/4096x4096", &with(json!({"mma_rev": 1})));
        assert_eq!(
            q6.map(|c| (c.max_fused_rows, c.max_mma_rows)),
            Some((4, 64))
        );
        // Q4_K still needs its own kernels' fields.
        assert!(persisted("matmul/Q4_K/4096x4096", &base).is_none());
        let q4 = with(json!({"min_mh_rows": 16, "max_mp_rows": 8, "mp_tensor": true}));
        assert!(persisted("matmul/Q4_K/4096x4096", &q4).is_some());
    }
}
