//! Sampling a token from a logits row on the host, in llama.cpp's default order: penalties
//! (repetition, frequency, presence over the last `penalty_last_n` tokens) → top-k → top-p →
//! min-p → temperature → draw. Temperature 0 is greedy (argmax after penalties). With a seed
//! the draws are deterministic.
//!
//! Buffers are kept between calls (candidate list, penalty counts), so sampling allocates
//! nothing after the first token.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick the next token.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens; 1 = off.
    pub repetition_penalty: f32,
    /// Subtract once per recent token present; 0 = off.
    pub presence_penalty: f32,
    /// Subtract per occurrence of a recent token; 0 = off.
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at (llama.cpp `repeat_last_n`).
    pub penalty_last_n: usize,
    /// Seed of the random draws; `None` = from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Argmax decoding.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }
    fn penalties(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// A sampler: parameters, random state and reusable buffers.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    cand: Vec<(u32, f32)>,
    counts: HashMap<u32, u32>,
    overrides: Vec<(u32, f32)>,
    /// The logits with penalties applied (only when there are penalties).
    work: Vec<f32>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .finish()
    }
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            params,
            rng,
            cand: Vec::new(),
            counts: HashMap::new(),
            overrides: Vec::new(),
            work: Vec::new(),
        }
    }
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token from `logits` given the tokens so far (`history`, for penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.penalize(logits, history);
        let logits: &[f32] = if self.overrides.is_empty() {
            logits
        } else {
            self.work.clear();
            self.work.extend_from_slice(logits);
            for &(id, l) in &self.overrides {
                self.work[id as usize] = l;
            }
            &self.work
        };
        let p = &self.params;
        if p.temperature <= 0.0 {
            // Greedy: argmax, lowest id on ties; NaN never wins.
            let mut best = (0u32, f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                if l > best.1 {
                    best = (i as u32, l);
                }
            }
            return best.0;
        }
        // Candidates (id, logit), penalties applied, NaN dropped.
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l)),
        );
        if self.cand.is_empty() {
            return 0;
        }
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, desc);
            self.cand.truncate(p.top_k);
        } else if p.min_p > 0.0 {
            // min-p in logit space before the full sort: p_i ≥ min_p·p_max ⇔ l_i ≥ l_max + ln(min_p).
            let max = self
                .cand
                .iter()
                .map(|c| c.1)
                .fold(f32::NEG_INFINITY, f32::max);
            let cut = max + p.min_p.ln();
            self.cand.retain(|c| c.1 >= cut);
        }
        self.cand.sort_unstable_by(desc);
        // Probabilities at temperature 1 for top-p / min-p.
        let max = self.cand[0].1;
        let z: f64 = self.cand.iter().map(|c| ((c.1 - max) as f64).exp()).sum();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.cand.len();
            for (i, c) in self.cand.iter().enumerate() {
                cum += ((c.1 - max) as f64).exp() / z;
                if cum >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let cut = max + p.min_p.ln();
            let keep = self.cand.iter().take_while(|c| c.1 >= cut).count();
            self.cand.truncate(keep.max(1));
        }
        // Temperature, softmax, draw.
        let t = p.temperature as f64;
        let w: f64 = self
            .cand
            .iter()
            .map(|c| ((c.1 - max) as f64 / t).exp())
            .sum();
        let mut r = self.rng.random::<f64>() * w;
        for c in &self.cand {
            r -= ((c.1 - max) as f64 / t).exp();
            if r <= 0.0 {
                return c.0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }

    /// Penalised logits of the recent tokens, into `overrides`.
    fn penalize(&mut self, logits: &[f32], history: &[u32]) {
        self.overrides.clear();
        let p = &self.params;
        if !p.penalties() {
            return;
        }
        self.counts.clear();
        let start = history.len().saturating_sub(p.penalty_last_n);
        for &t in &history[start..] {
            *self.counts.entry(t).or_insert(0) += 1;
        }
        for (&id, &n) in &self.counts {
            let Some(&l) = logits.get(id as usize) else {
                continue;
            };
            let mut l = if l > 0.0 {
                l / p.repetition_penalty
            } else {
                l * p.repetition_penalty
            };
            l -= n as f32 * p.frequency_penalty + p.presence_penalty;
            self.overrides.push((id, l));
        }
        self.overrides.sort_unstable_by_key(|o| o.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams {
            seed: Some(7),
            ..SamplingParams::default()
        };
        f(&mut p);
        Sampler::new(p)
    }

    #[test]
    fn greedy_and_penalties() {
        let logits = [1.0, 3.0, 2.0, f32::NAN];
        let mut s = with(|p| p.temperature = 0.0);
        assert_eq!(s.sample(&logits, &[]), 1);
        // repetition penalty 2 on token 1: 3 → 1.5 < 2
        let mut s = with(|p| {
            p.temperature = 0.0;
            p.repetition_penalty = 2.0;
        });
        assert_eq!(s.sample(&logits, &[1]), 2);
        // frequency: token 1 seen twice, 3 − 2·0.8 = 1.4 < 2
        let mut s = with(|p| {
            p.temperature = 0.0;
            p.frequency_penalty = 0.8;
        });
        assert_eq!(s.sample(&logits, &[1, 1]), 2);
        // presence 1.5: 3 − 1.5 = 1.5 < 2; outside penalty_last_n it does not count
        let mut s = with(|p| {
            p.temperature = 0.0;
            p.presence_penalty = 1.5;
            p.penalty_last_n = 1;
        });
        assert_eq!(s.sample(&logits, &[1, 0]), 1);
        assert_eq!(s.sample(&logits, &[0, 1]), 2);
    }

    #[test]
    fn truncation_and_seeds() {
        let logits: Vec<f32> = (0..100).map(|i| i as f32 * 0.1).collect();
        // top_k 1 is greedy whatever the temperature
        let mut s = with(|p| p.top_k = 1);
        assert!((0..20).all(|_| s.sample(&logits, &[]) == 99));
        // top-k 3: only the 3 best appear
        let mut s = with(|p| {
            p.top_k = 3;
            p.top_p = 1.0;
            p.min_p = 0.0;
            p.temperature = 5.0;
        });
        let seen: std::collections::HashSet<u32> =
            (0..200).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(seen, [97, 98, 99].into_iter().collect());
        // min-p 0.9: p_i ≥ 0.9 p_max ⇔ l_i ≥ l_max + ln 0.9 ≈ 9.9 − 0.105: ids 99 and 98
        let mut s = with(|p| {
            p.top_k = 0;
            p.top_p = 1.0;
            p.min_p = 0.9;
            p.temperature = 1.0;
        });
        let seen: std::collections::HashSet<u32> =
            (0..200).map(|_| s.sample(&logits, &[])).collect();
        assert_eq!(seen, [98, 99].into_iter().collect());
        // top-p tiny: only the best
        let mut s = with(|p| {
            p.top_k = 0;
            p.min_p = 0.0;
            p.top_p = 0.01;
        });
        assert!((0..20).all(|_| s.sample(&logits, &[]) == 99));
        // same seed, same draws; another seed, other draws
        let draw = |seed| {
            let mut s = with(|p| {
                p.seed = Some(seed);
                p.top_k = 0;
                p.top_p = 1.0;
                p.min_p = 0.0;
                p.temperature = 3.0;
            });
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
