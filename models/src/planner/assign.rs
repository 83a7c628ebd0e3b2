//! Which device holds what (single, layer split, tensor-parallel shards) and the bytes of each
//! part on its backend.

use std::ops::Range;
use std::sync::Arc;

use kiln_core::{Backend, DType, MatmulUse, OpKind, Shape};

use super::meta::{FfnMeta, ModelMeta, ParamMeta, TensorMeta};
use super::{DevicePlan, MemoryPlan, Parallel, PlanOptions, WeightLine, human_bytes};
use crate::arch::{ModelConfig, Role};
use crate::error::{ModelError, Result};
use crate::runtime::plan::{Plan, PlanDims};
use crate::runtime::shard::local_config;
use crate::runtime::{TpRank, even_split};

/// What one device holds (runtime/shard.rs `ShardSpec`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Part {
    layers: Range<usize>,
    embed: bool,
    head: bool,
    shard: Option<TpRank>,
}

/// What every device plan shares.
struct Ctx<'a> {
    meta: &'a ModelMeta,
    dims: PlanDims,
    kv_dtype: DType,
    kv_blocks: usize,
}

pub(super) fn plan(
    meta: &ModelMeta,
    devices: &[Arc<dyn Backend>],
    opts: &PlanOptions,
) -> Result<MemoryPlan> {
    let cfg = &meta.config;
    let ro = &opts.runtime;
    let n = devices.len();
    if n == 0 {
        return Err(ModelError::Runtime("plan: no devices given".into()));
    }
    // As Runtime::new sizes it.
    let dims = ro.dims(cfg.context_length)?;
    let kv_blocks = ro.kv_blocks.unwrap_or(ro.max_seqs * dims.max_blocks()) + 1;
    let ctx = Ctx {
        meta,
        dims,
        kv_dtype: ro.kv_dtype,
        kv_blocks,
    };
    let given = opts
        .capacity
        .as_ref()
        .map(|v| v.iter().map(|&c| Some(c)).collect::<Vec<_>>());
    let capacity = per_device("--memory", given.as_deref(), n, |i| {
        Some(devices[i].info().memory_bytes).filter(|&m| m > 0)
    })?;
    let reserves = per_device("--reserve", Some(&opts.reserve), n, |_| {
        super::DEFAULT_RESERVE
    })?;
    let reserve: Vec<u64> = (0..n).map(|i| reserves[i].bytes(capacity[i])).collect();
    for b in devices {
        for op in [OpKind::Attention, OpKind::KvAppend] {
            if !b.supports(op, ro.kv_dtype) {
                return Err(ModelError::backend(
                    format!("a {} KV cache on {}", ro.kv_dtype, b.id()),
                    kiln_core::Error::Unsupported {
                        op,
                        dtype: ro.kv_dtype,
                        backend: b.id().to_string(),
                    },
                ));
            }
        }
    }
    let l = cfg.n_layers;
    let parts = match &opts.parallel {
        Parallel::Single => {
            if n != 1 {
                return Err(ModelError::Runtime(format!(
                    "plan: {n} devices given for a single-device plan (use a layer or tensor split)"
                )));
            }
            vec![Part {
                layers: 0..l,
                embed: true,
                head: true,
                shard: None,
            }]
        }
        Parallel::Tensor => (0..n)
            .map(|rank| Part {
                layers: 0..l,
                embed: true,
                head: rank == 0,
                shard: Some(TpRank { rank, world: n }),
            })
            .collect(),
        Parallel::Layer(Some(counts)) => {
            if counts.len() != n || counts.iter().sum::<usize>() != l || counts.contains(&0) {
                return Err(ModelError::Runtime(format!(
                    "layers {counts:?}: need one count ≥ 1 per device ({n} devices) summing to the model's {l} layers"
                )));
            }
            stages(counts)
        }
        Parallel::Layer(None) => stages(&choose_split(&ctx, devices, &capacity, &reserve)?),
    };
    let mut plans = devices
        .iter()
        .zip(&parts)
        .enumerate()
        .map(|(i, (b, p))| device_plan(&ctx, b, p, capacity[i], reserve[i]))
        .collect::<Result<Vec<_>>>()?;
    for (d, &c) in plans.iter_mut().zip(&opts.collective) {
        d.collective = c;
    }
    Ok(MemoryPlan {
        model: meta.path.display().to_string(),
        arch: cfg.arch_name.clone(),
        parallel: opts.parallel.clone(),
        dims,
        kv_dtype: ro.kv_dtype,
        kv_blocks,
        devices: plans,
    })
}

/// One value for every device, or one per device.
fn per_device<T: Clone>(
    what: &str,
    given: Option<&[T]>,
    n: usize,
    default: impl Fn(usize) -> T,
) -> Result<Vec<T>> {
    match given {
        None | Some([]) => Ok((0..n).map(default).collect()),
        Some([one]) => Ok(vec![one.clone(); n]),
        Some(v) if v.len() == n => Ok(v.to_vec()),
        Some(v) => Err(ModelError::Runtime(format!(
            "{what}: {} values for {n} devices (give one for all or one per device)",
            v.len()
        ))),
    }
}

/// Consecutive layer ranges; stage 0 holds the embedding, the last stage the head.
fn stages(counts: &[usize]) -> Vec<Part> {
    let mut start = 0;
    let last = counts.len().saturating_sub(1);
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let p = Part {
                layers: start..start + c,
                embed: i == 0,
                head: i == last,
                shard: None,
            };
            start += c;
            p
        })
        .collect()
}

/// The model as one device sees it (as `Runtime::new` hands it to `Plan::new`): a
/// tensor-parallel rank's heads and FFN widths, else the whole config.
fn device_config(cfg: &ModelConfig, shard: Option<TpRank>) -> Result<ModelConfig> {
    match shard {
        Some(tp) => local_config(cfg, tp),
        None => Ok(cfg.clone()),
    }
}

/// Matrices and matmuls of one device, priced by its backend.
struct Weights<'b> {
    backend: &'b dyn Backend,
    lines: Vec<WeightLine>,
    uses: Vec<MatmulUse>,
}

impl Weights<'_> {
    /// Add `t` stored as `shape` (its shard's shape); `rows`: the rows of x it is multiplied
    /// with (`None`: not a `matmul` weight — embedding table, experts).
    fn add(
        &mut self,
        role: &'static str,
        t: &TensorMeta,
        shape: &[usize],
        rows: Option<usize>,
    ) -> Result<()> {
        let ctx = |e| {
            ModelError::backend(
                format!(
                    "{}: pricing tensor '{}' {shape:?}",
                    self.backend.id(),
                    t.name
                ),
                e,
            )
        };
        let k = shape.last().copied().unwrap_or(0);
        if !k.is_multiple_of(t.dtype.block_size()) {
            return Err(ModelError::Runtime(format!(
                "tensor '{}' ({}): a shard's rows of {k} are not whole {}-element blocks",
                t.name,
                t.dtype,
                t.dtype.block_size()
            )));
        }
        let s = Shape::new(shape).map_err(ctx)?;
        let bytes = self.backend.weight_bytes(t.dtype, &s).map_err(ctx)?;
        match self
            .lines
            .iter_mut()
            .find(|l| l.role == role && l.dtype == t.dtype)
        {
            Some(l) => {
                l.tensors += 1;
                l.bytes += bytes;
            }
            None => self.lines.push(WeightLine {
                role,
                dtype: t.dtype,
                tensors: 1,
                bytes,
            }),
        }
        if let Some(max_rows) = rows {
            self.uses.push(MatmulUse {
                dtype: t.dtype,
                shape: s,
                max_rows,
            });
        }
        Ok(())
    }
}

/// Bytes of the f32 parameter buffer holding vectors of these lengths, each starting at a
/// multiple of 64 floats (runtime/weights.rs `Loader::param`).
pub(super) fn param_buffer_bytes(lens: &[usize]) -> usize {
    let mut floats = 0usize;
    for &len in lens {
        floats = floats.div_ceil(64) * 64 + len;
    }
    floats * 4
}

/// The length of a parameter on a shard (biases of sharded projections are sliced to the
/// rank's heads; the output bias is added once, by rank 0), or `None` when the shard does not
/// hold it. `local`: the shard's config.
fn param_len(p: &ParamMeta, local: &ModelConfig, shard: Option<TpRank>) -> Option<usize> {
    let Some(tp) = shard else { return Some(p.len) };
    match p.role {
        Some(Role::QBias) => Some(local.q_dim()),
        Some(Role::KBias | Role::VBias) => Some(local.kv_dim()),
        Some(Role::OBias) => (tp.rank == 0).then_some(p.len),
        _ => Some(p.len),
    }
}

fn device_plan(
    ctx: &Ctx<'_>,
    backend: &Arc<dyn Backend>,
    part: &Part,
    capacity: Option<u64>,
    reserve: u64,
) -> Result<DevicePlan> {
    let meta = ctx.meta;
    let cfg = &meta.config;
    let lc = device_config(cfg, part.shard)?;
    let (h, t) = (cfg.hidden, ctx.dims.max_tokens);
    let (ffn, moe_ff) = (lc.ffn, lc.moe.as_ref().map_or(0, |m| m.ff));
    let mut w = Weights {
        backend: backend.as_ref(),
        lines: Vec::new(),
        uses: Vec::new(),
    };
    let mut params = Vec::new();
    if part.embed {
        w.add("embed", &meta.embed, &meta.embed.shape, None)?;
    }
    let vocab_rows =
        crate::runtime::shard::head_rows(part.head, part.shard, meta.output.is_none(), cfg.vocab);
    if let Some(cols) = &vocab_rows {
        let rows = Some(ctx.dims.logit_rows());
        match &meta.output {
            // Its rows of the vocabulary (all, or a tensor-parallel rank's share).
            Some(o) => w.add("output", o, &[cols.len(), h], rows)?,
            // Tied: the embedding table is the output matrix; a device without the embedding
            // holds its own copy.
            None if !part.embed => w.add("output", &meta.embed, &meta.embed.shape, rows)?,
            None => {
                let e = &meta.embed;
                let s = Shape::new(&e.shape)
                    .map_err(|err| ModelError::backend(format!("tensor '{}'", e.name), err))?;
                w.uses.push(MatmulUse {
                    dtype: e.dtype,
                    shape: s,
                    max_rows: ctx.dims.logit_rows(),
                });
            }
        }
    }
    // The loader packs the final norm first on every device (only the head uses it).
    params.push(meta.output_norm.len);
    let (q, kv) = (lc.q_dim(), lc.kv_dim());
    let mut moe_dtypes = None;
    for l in part.layers.clone() {
        let lm = &meta.layers[l];
        w.add("attn", &lm.q, &[q, h], Some(t))?;
        w.add("attn", &lm.k, &[kv, h], Some(t))?;
        w.add("attn", &lm.v, &[kv, h], Some(t))?;
        w.add("attn", &lm.o, &[h, q], Some(t))?;
        params.extend(
            lm.params
                .iter()
                .filter_map(|p| param_len(p, &lc, part.shard)),
        );
        match &lm.ffn {
            FfnMeta::Dense { gate, up, down } => {
                w.add("ffn", gate, &[ffn, h], Some(t))?;
                w.add("ffn", up, &[ffn, h], Some(t))?;
                w.add("ffn", down, &[h, ffn], Some(t))?;
            }
            FfnMeta::Moe {
                router,
                gate,
                up,
                down,
            } => {
                let e = router.shape[0];
                w.add("router", router, &router.shape, Some(t))?;
                w.add("experts", gate, &[e, moe_ff, h], None)?;
                w.add("experts", up, &[e, moe_ff, h], None)?;
                w.add("experts", down, &[e, h, moe_ff], None)?;
                moe_dtypes.get_or_insert((gate.dtype, up.dtype, down.dtype));
            }
        }
    }
    let n_layers = part.layers.len();
    let kv_dt = ctx.kv_dtype;
    let kv_err = |e| ModelError::backend(format!("{} KV cache", kv_dt), e);
    let kv_token_layer = 2 * kv_dt.bytes_for(kv).map_err(kv_err)?;
    let per_layer = kv_dt
        .bytes_for(ctx.kv_blocks * kv * ctx.dims.block_size)
        .map_err(kv_err)?;
    let head_cols = vocab_rows.as_ref().map(|r| r.len());
    let activations = Plan::bytes_for(backend, &lc, ctx.dims, head_cols, moe_dtypes)?;
    let workspace = backend.workspace_bytes(&w.uses);
    let matmuls = w.uses;
    let info = backend.info();
    Ok(DevicePlan {
        device: info.id,
        name: info.name.clone(),
        capacity,
        reserve,
        layers: part.layers.clone(),
        embed: part.embed,
        head: vocab_rows.is_some(),
        weights: w.lines,
        params: param_buffer_bytes(&params),
        kv: 2 * n_layers * per_layer,
        kv_token_layer,
        activations,
        workspace,
        collective: 0,
        matmuls,
    })
}

/// Layers per device in proportion to each device's free memory (capacity − reserve − the
/// costs that do not depend on the layer count), measured in layers of that device's backend;
/// then layers move from a device over its capacity to the one with the most room left.
fn choose_split(
    ctx: &Ctx<'_>,
    devices: &[Arc<dyn Backend>],
    capacity: &[Option<u64>],
    reserve: &[u64],
) -> Result<Vec<usize>> {
    let n = devices.len();
    let l = ctx.meta.config.n_layers;
    if l < n {
        return Err(ModelError::Runtime(format!(
            "{}: {l} layers cannot be split over {n} devices (each needs at least one)",
            ctx.meta.path.display()
        )));
    }
    // With every layer on device i (in its position): fixed bytes and bytes per layer.
    let mut free = Vec::with_capacity(n);
    let mut per_layer = Vec::with_capacity(n);
    for (i, b) in devices.iter().enumerate() {
        let all = Part {
            layers: 0..l,
            embed: i == 0,
            head: i == n - 1,
            shard: None,
        };
        let none = Part {
            layers: 0..0,
            ..all.clone()
        };
        let full = device_plan(ctx, b, &all, capacity[i], reserve[i])?;
        let bare = device_plan(ctx, b, &none, capacity[i], reserve[i])?;
        let layers_bytes = (full.weight_bytes() + full.kv) - (bare.weight_bytes() + bare.kv);
        // Activations and workspace as sized for every layer (the most any stage needs).
        let fixed = bare.weight_bytes() + full.activations + full.workspace;
        per_layer.push((layers_bytes as u64 / l as u64).max(1));
        free.push(full.available().map(|a| a as i128 - fixed as i128));
    }
    // A device that does not report its memory counts as the average of those that do.
    let known: Vec<i128> = free.iter().flatten().copied().collect();
    if known.is_empty() {
        return Ok(even_split(l, n));
    }
    let avg = known.iter().sum::<i128>() / known.len() as i128;
    let free: Vec<i128> = free.iter().map(|f| f.unwrap_or(avg)).collect();
    // Capacity in layers of each device.
    let cap: Vec<f64> = (0..n)
        .map(|i| (free[i].max(0) as f64) / per_layer[i] as f64)
        .collect();
    let total: f64 = cap.iter().sum();
    let mut counts = if total > 0.0 {
        largest_remainder(&cap, l)
    } else {
        // No device has room for anything: an even split, which the plan then refuses.
        even_split(l, n)
    };
    if total > 0.0 {
        // Move layers off devices over their capacity while another has room for one.
        for _ in 0..l {
            let slack = |i: usize, c: &[usize]| free[i] - (c[i] as u64 * per_layer[i]) as i128;
            let over = (0..n)
                .filter(|&i| slack(i, &counts) < 0 && counts[i] > 1)
                .min_by_key(|&i| slack(i, &counts));
            let room = (0..n)
                .filter(|&i| slack(i, &counts) >= per_layer[i] as i128)
                .max_by_key(|&i| slack(i, &counts));
            match (over, room) {
                (Some(a), Some(b)) if a != b => {
                    counts[a] -= 1;
                    counts[b] += 1;
                }
                _ => break,
            }
        }
    }
    if let Some(i) = counts.iter().position(|&c| c == 0) {
        return Err(ModelError::Runtime(format!(
            "{}: device {} gets zero layers: {} free after its reserve {} and fixed costs, one layer takes {} (counts {counts:?}; give --layers to choose)",
            ctx.meta.path.display(),
            devices[i].id(),
            human_bytes(free[i].max(0) as u64),
            human_bytes(reserve[i]),
            human_bytes(per_layer[i]),
        )));
    }
    Ok(counts)
}

/// Split `total` into integer parts proportional to `weights` (largest remainder).
fn largest_remainder(weights: &[f64], total: usize) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| w / sum * total as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    let short = total.saturating_sub(counts.iter().sum());
    for &i in order.iter().cycle().take(short) {
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_pad_each_start_to_64_floats() {
        // 128 floats, then 64 (starts at 128), then 3 (starts at 192): 195 floats.
        assert_eq!(param_buffer_bytes(&[128, 64, 3]), 195 * 4);
        // 3, then 128 starting at 64: 192 floats.
        assert_eq!(param_buffer_bytes(&[3, 128]), 192 * 4);
        assert_eq!(param_buffer_bytes(&[]), 0);
    }

    #[test]
    fn remainders_go_to_the_largest_fractions() {
        assert_eq!(largest_remainder(&[1.0, 1.0], 5), vec![3, 2]);
        assert_eq!(largest_remainder(&[3.0, 1.0], 8), vec![6, 2]);
        assert_eq!(largest_remainder(&[2.0, 1.0, 1.0], 5), vec![3, 1, 1]);
        assert_eq!(largest_remainder(&[1.0, 0.0], 4), vec![4, 0]);
    }
}
