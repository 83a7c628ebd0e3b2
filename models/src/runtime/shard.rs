//! How a model is spread over devices, and the host-side slicing that makes a device's share.
//!
//! Layer split ([`Parallel::Layer`]): device i holds consecutive layers; the first also holds
//! the embedding, the last the final norm and the output matrix (the embedding table again
//! when the output is tied). The hidden rows `[T, H]` are handed from one stage to the next
//! through host memory, so any mix of backends works.
//!
//! Tensor parallelism ([`Parallel::Tensor`]) over a group of W devices, rank r:
//!
//! ```text
//! q, k, v   rows of its heads: q heads [r·Hq/W, (r+1)·Hq/W); KV heads [r·Hkv/W, ..) or, when
//!           Hkv < W, the one KV head its query heads read (replicated on W/Hkv ranks)
//! o         columns of its query heads        → partial sums, all-reduce, then + bias (rank 0)
//! gate, up  rows [r·F/W, (r+1)·F/W)  (MoE: per expert)
//! down      columns of the same range          → partial sums, all-reduce
//! norms, router, embedding: replicated; output matrix and final norm: rank 0 only
//! ```
//!
//! Each rank runs the unchanged block on its [`local_config`] (its head and FFN counts): the
//! only new operation is the all-reduce after the two row-parallel matmuls. Column cuts of a
//! quantized matrix must fall on block boundaries (32 or 256 values): a model whose per-rank
//! width is not a whole number of blocks is refused with the tensor and the numbers.

use std::ops::Range;

use kiln_core::{HostTensor, Shape};

use crate::arch::ModelConfig;
use crate::error::{ModelError, Result};

/// How a model uses several devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parallel {
    /// Consecutive layers per device: `counts[i]` layers on device i (sum = n_layers); empty:
    /// the memory planner's split (in proportion to free memory).
    Layer(Vec<usize>),
    /// Heads and FFN columns sharded over every device, all-reduce after o and down.
    Tensor,
}

/// Rank `rank` of a tensor-parallel group of `world` devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpRank {
    pub rank: usize,
    pub world: usize,
}

impl TpRank {
    fn part(&self, n: usize) -> Range<usize> {
        let w = n / self.world;
        self.rank * w..(self.rank + 1) * w
    }
    /// This rank's query heads.
    pub fn heads(&self, cfg: &ModelConfig) -> Range<usize> {
        self.part(cfg.n_heads)
    }
    /// This rank's KV heads (one replicated head when there are fewer KV heads than ranks).
    pub fn kv_heads(&self, cfg: &ModelConfig) -> Range<usize> {
        if cfg.n_kv_heads >= self.world {
            self.part(cfg.n_kv_heads)
        } else {
            let h = self.rank * cfg.n_kv_heads / self.world;
            h..h + 1
        }
    }
    /// This rank's share of an FFN of `n` columns.
    pub fn ffn(&self, n: usize) -> Range<usize> {
        self.part(n)
    }
    /// This rank's rows of a vocabulary of `n` (any `n`: shares differ by at most one).
    pub fn vocab(&self, n: usize) -> Range<usize> {
        self.rank * n / self.world..(self.rank + 1) * n / self.world
    }
}

/// The vocabulary rows (output-matrix rows, logit columns) a device computes, or `None` when
/// it computes no logits. Tensor-parallel ranks split an untied output matrix by vocabulary:
/// each computes its columns of every logits row and the host joins them (no collective, and
/// the LM head's bytes and time are shared instead of all on rank 0). A tied one (the
/// embedding table) stays whole on rank 0: splitting it would need a second copy of the rows
/// on every rank. `head`: the spec's head flag (single device, last stage, TP rank 0).
pub(crate) fn head_rows(
    head: bool,
    tp: Option<TpRank>,
    tied: bool,
    vocab: usize,
) -> Option<Range<usize>> {
    match tp {
        Some(tp) if !tied => Some(tp.vocab(vocab)),
        _ => head.then_some(0..vocab),
    }
}

/// Rank `tp`'s view of the model: its query heads, KV heads and FFN widths. Refuses a group
/// the model cannot be split over, naming the counts.
pub fn local_config(cfg: &ModelConfig, tp: TpRank) -> Result<ModelConfig> {
    let w = tp.world;
    let bad = |what: String| {
        Err(ModelError::Runtime(format!(
            "{}: cannot split over {w} devices: {what}",
            cfg.origin
        )))
    };
    if w == 0 || tp.rank >= w {
        return bad(format!("rank {} of {w}", tp.rank));
    }
    if !cfg.n_heads.is_multiple_of(w) {
        return bad(format!("{} attention heads", cfg.n_heads));
    }
    let kv_ok = if cfg.n_kv_heads >= w {
        cfg.n_kv_heads.is_multiple_of(w)
    } else {
        w.is_multiple_of(cfg.n_kv_heads)
    };
    if !kv_ok {
        return bad(format!(
            "{} KV heads (need a multiple of {w}, or a divisor of it)",
            cfg.n_kv_heads
        ));
    }
    let dense = cfg.layers.iter().any(|l| !l.moe);
    if dense && !cfg.ffn.is_multiple_of(w) {
        return bad(format!("an FFN of {} columns", cfg.ffn));
    }
    let mut local = cfg.clone();
    local.n_heads = cfg.n_heads / w;
    local.n_kv_heads = tp.kv_heads(cfg).len();
    if dense {
        local.ffn = cfg.ffn / w;
    }
    if let Some(m) = &mut local.moe {
        if !m.ff.is_multiple_of(w) {
            return bad(format!("an expert FFN of {} columns", m.ff));
        }
        m.ff /= w;
    }
    Ok(local)
}

/// A cut of a matrix `[.., n, k]` (each leading index, e.g. an expert, cut alike).
#[derive(Clone, Debug)]
pub(crate) enum Cut {
    /// Output rows `n` in the range.
    Rows(Range<usize>),
    /// Input columns `k` in the range (block-aligned for quantized types).
    Cols(Range<usize>),
}

/// The bytes and shape of `t` cut by `cut`.
pub(crate) fn cut(t: &HostTensor<'_>, cut: &Cut) -> std::result::Result<(Vec<u8>, Shape), String> {
    let dims = t.shape.dims();
    let r = dims.len();
    if r < 2 {
        return Err(format!("cannot cut a tensor of shape {}", t.shape));
    }
    let (n, k) = (dims[r - 2], dims[r - 1]);
    let lead: usize = dims[..r - 2].iter().product();
    let bytes = |m: usize| t.dtype.bytes_for(m).map_err(|e| e.to_string());
    let row = bytes(k)?;
    let mut out_dims = dims.to_vec();
    let mut out = Vec::new();
    match cut {
        Cut::Rows(range) => {
            if range.end > n {
                return Err(format!("rows {range:?} of {n}"));
            }
            out.reserve(lead * range.len() * row);
            for e in 0..lead {
                let base = e * n * row;
                out.extend_from_slice(&t.data[base + range.start * row..base + range.end * row]);
            }
            out_dims[r - 2] = range.len();
        }
        Cut::Cols(range) => {
            let blk = t.dtype.block_size();
            if range.end > k || !range.start.is_multiple_of(blk) || !range.len().is_multiple_of(blk)
            {
                return Err(format!(
                    "columns {range:?} of {k} do not fall on {} blocks of {blk} values",
                    t.dtype
                ));
            }
            let (from, len) = (bytes(range.start)?, bytes(range.len())?);
            out.reserve(lead * n * len);
            for i in 0..lead * n {
                let at = i * row + from;
                out.extend_from_slice(&t.data[at..at + len]);
            }
            out_dims[r - 1] = range.len();
        }
    }
    let shape = match out_dims.as_slice() {
        [a, b] => Shape::d2(*a, *b),
        [a, b, c] => Shape::d3(*a, *b, *c),
        _ => return Err(format!("cannot cut a tensor of shape {}", t.shape)),
    };
    Ok((out, shape))
}

/// An f32 vector's elements `range` (biases of sharded projections).
pub(crate) fn cut_vec(v: &[f32], range: &Range<usize>) -> Vec<f32> {
    v.get(range.clone())
        .map(<[f32]>::to_vec)
        .unwrap_or_default()
}

/// What one device loads.
#[derive(Clone, Debug)]
pub(crate) struct ShardSpec {
    /// Layers held (global indices).
    pub layers: Range<usize>,
    /// Holds the embedding (computes the first rows).
    pub embed: bool,
    /// Holds the final norm and output matrix (computes the logits).
    pub head: bool,
    /// Tensor-parallel rank, `None` for a whole-width share.
    pub tp: Option<TpRank>,
}

impl ShardSpec {
    /// The whole model on one device.
    pub fn whole(n_layers: usize) -> ShardSpec {
        ShardSpec {
            layers: 0..n_layers,
            embed: true,
            head: true,
            tp: None,
        }
    }
}

/// The shares of `n_layers` layers over `n_devices` devices under `parallel`.
pub(crate) fn shard_specs(
    n_layers: usize,
    n_devices: usize,
    parallel: Option<&Parallel>,
) -> Result<Vec<ShardSpec>> {
    match parallel {
        None if n_devices == 1 => Ok(vec![ShardSpec::whole(n_layers)]),
        None => Err(ModelError::Runtime(format!(
            "{n_devices} devices given: choose a layer split or tensor parallelism"
        ))),
        Some(Parallel::Layer(counts)) => {
            if counts.len() != n_devices
                || counts.iter().sum::<usize>() != n_layers
                || counts.contains(&0)
            {
                return Err(ModelError::Runtime(format!(
                    "layer split {counts:?} over {n_devices} devices: need one count ≥ 1 per device, summing to the model's {n_layers} layers"
                )));
            }
            let mut start = 0;
            Ok(counts
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let s = ShardSpec {
                        layers: start..start + c,
                        embed: i == 0,
                        head: i + 1 == n_devices,
                        tp: None,
                    };
                    start += c;
                    s
                })
                .collect())
        }
        Some(Parallel::Tensor) => Ok((0..n_devices)
            .map(|rank| ShardSpec {
                layers: 0..n_layers,
                embed: true,
                head: rank == 0,
                tp: Some(TpRank {
                    rank,
                    world: n_devices,
                }),
            })
            .collect()),
    }
}

/// An even layer split: `n_layers` over `n` devices, the remainder on the first ones.
pub fn even_split(n_layers: usize, n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| n_layers / n.max(1) + usize::from(i < n_layers % n.max(1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::DType;

    #[test]
    fn rows_and_cols_cut_f32_and_blocks() {
        let data: Vec<u8> = (0..2 * 3 * 4)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let t = HostTensor::new(DType::F32, Shape::d3(2, 3, 4), &data).unwrap();
        let (b, s) = cut(&t, &Cut::Rows(1..3)).unwrap();
        assert_eq!(s.dims(), &[2, 2, 4]);
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&b);
        assert_eq!(&v[..4], &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(&v[8..12], &[16.0, 17.0, 18.0, 19.0]);
        let (b, s) = cut(&t, &Cut::Cols(2..4)).unwrap();
        assert_eq!(s.dims(), &[2, 3, 2]);
        let v: Vec<f32> = bytemuck::pod_collect_to_vec(&b);
        assert_eq!(&v[..4], &[2.0, 3.0, 6.0, 7.0]);
        // Q8_0: 34-byte blocks of 32; a cut inside a block is refused.
        let q = vec![0u8; 2 * 2 * 34];
        let t = HostTensor::new(DType::Q8_0, Shape::d2(2, 64), &q).unwrap();
        assert_eq!(cut(&t, &Cut::Cols(32..64)).unwrap().0.len(), 2 * 34);
        assert!(cut(&t, &Cut::Cols(16..48)).is_err());
    }

    #[test]
    fn splits() {
        assert_eq!(even_split(5, 2), vec![3, 2]);
        let s = shard_specs(5, 2, Some(&Parallel::Layer(vec![2, 3]))).unwrap();
        assert_eq!(s[1].layers, 2..5);
        assert!(s[0].embed && !s[0].head && s[1].head && !s[1].embed);
        assert!(shard_specs(5, 2, Some(&Parallel::Layer(vec![5, 0]))).is_err());
        assert!(shard_specs(5, 2, None).is_err());
        let t = shard_specs(5, 2, Some(&Parallel::Tensor)).unwrap();
        assert!(t[0].head && !t[1].head && t[1].embed);
        let r = |rank| Some(TpRank { rank, world: 3 });
        assert_eq!(head_rows(true, r(0), false, 10), Some(0..3));
        assert_eq!(head_rows(false, r(2), false, 10), Some(6..10));
        assert_eq!(head_rows(false, r(1), true, 10), None);
        assert_eq!(head_rows(true, r(0), true, 10), Some(0..10));
        assert_eq!(head_rows(false, None, false, 10), None);
    }
}
