//! Streaming generation for one sequence: prefill the prompt in chunks, then decode, sampling
//! on the host, with text streamed through an iterator ([`Generator::stream`]) or a callback
//! ([`Generator::generate`]).
//!
//! Text is released only when complete: a character split over byte tokens comes out whole,
//! and text that could still become a stop string is held back until it cannot. Generation
//! ends at an end-of-generation token (unless `ignore_eos`), a stop string (cut from the
//! text), `max_tokens`, or a full context. The sequence's KV stays cached between calls: a new
//! prompt that starts with the tokens already cached (the next turn of a chat) only prefills
//! the rest.

use std::time::{Duration, Instant};

use super::kv_cache::SeqId;
use super::model::Model;
use super::sampler::{Sampler, SamplingParams};
use super::step::{Runtime, RuntimeOptions, SeqInput, StepStats};
use super::stop::StopText;
use crate::error::Result;
use crate::tokenizer::StreamDecoder;

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings, matched on the detokenized text.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token (it is the last generated id).
    Eos,
    /// This stop string appeared (the text ends before it).
    Stop(String),
    MaxTokens,
    /// The planned context is full.
    Context,
}

/// A generated token and the text it completed (possibly empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    pub id: u32,
    pub text: String,
}

/// The outcome of a generation.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub stop_reason: Option<StopReason>,
    /// Prompt tokens actually prefilled (fewer when a cached prefix was reused).
    pub prefilled: usize,
    /// From the start of the request to the first sampled token.
    pub ttft: Duration,
    /// From the first to the last sampled token.
    pub decode_time: Duration,
}

impl Generation {
    /// Tokens per second after the first token (0 with fewer than 2 tokens).
    pub fn decode_tok_s(&self) -> f64 {
        let n = self.generated_ids.len().saturating_sub(1);
        let s = self.decode_time.as_secs_f64();
        if n == 0 || s == 0.0 {
            0.0
        } else {
            n as f64 / s
        }
    }
}

/// Generation state for one sequence of a model.
pub struct Generator<'m> {
    model: &'m Model,
    rt: Runtime,
    seq: SeqId,
    /// Tokens whose K/V are cached for `seq`.
    cached: Vec<u32>,
    /// Logits after the last cached token `[vocab]`.
    last_logits: Vec<f32>,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Generator({:?}, {} cached tokens)",
            self.model,
            self.cached.len()
        )
    }
}

impl<'m> Generator<'m> {
    pub fn new(model: &'m Model, opts: RuntimeOptions) -> Result<Generator<'m>> {
        let mut rt = Runtime::new(model, opts)?;
        let seq = rt.add_sequence();
        Ok(Generator {
            model,
            rt,
            seq,
            cached: Vec::new(),
            last_logits: Vec::new(),
        })
    }
    pub fn model(&self) -> &'m Model {
        self.model
    }
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }
    pub fn stats(&self) -> StepStats {
        self.rt.stats()
    }
    /// Forget the cached tokens.
    pub fn reset(&mut self) -> Result<()> {
        self.rt.kv_mut().truncate(self.seq, 0)?;
        self.cached.clear();
        Ok(())
    }

    /// Tokenize `prompt` like llama.cpp's completion endpoint (BOS per the model's metadata,
    /// special-token text parsed) and generate, calling `on_token` for every token.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Generation> {
        let ids = self.model.tokenizer().encode_prompt(prompt)?;
        self.generate_ids(&ids, opts, on_token)
    }

    /// Generate after the token ids `prompt`.
    pub fn generate_ids(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Generation> {
        let mut s = self.stream(prompt, opts)?;
        for ev in s.by_ref() {
            on_token(&ev?);
        }
        Ok(s.into_generation())
    }

    /// Prefill `prompt` and return an iterator over generated tokens.
    pub fn stream<'g>(
        &'g mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
    ) -> Result<TokenStream<'g, 'm>> {
        let started = Instant::now();
        let model: &'m Model = self.model;
        let mut out = Generation {
            prompt_ids: prompt.to_vec(),
            ..Generation::default()
        };
        let mut sampler = Sampler::new(opts.sampling.clone());
        let first = if prompt.is_empty() || opts.max_tokens == 0 {
            out.stop_reason = Some(StopReason::MaxTokens);
            None
        } else {
            out.prefilled = self.prefill(prompt)?;
            let logits = self.last_logits.as_slice();
            let t = sampler.sample(logits, &self.cached);
            out.ttft = started.elapsed();
            Some(t)
        };
        Ok(TokenStream {
            g: self,
            decoder: model.tokenizer().stream_decoder(false),
            sampler,
            opts: opts.clone(),
            next: first,
            held: StopText::default(),
            out,
            first_at: Instant::now(),
        })
    }

    /// Reuse the cached prefix of `prompt`, prefill the rest in chunks; the last row's logits
    /// go to `last_logits`. Returns the number of tokens prefilled.
    fn prefill(&mut self, prompt: &[u32]) -> Result<usize> {
        let mut common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        if common == prompt.len() {
            common -= 1; // one token must run to produce logits
        }
        self.rt.kv_mut().truncate(self.seq, common)?;
        self.cached.truncate(common);
        let chunk = self.rt.options().chunk;
        for part in prompt[common..].chunks(chunk) {
            let logits = self.rt.step(&[SeqInput {
                seq: self.seq,
                tokens: part,
            }])?;
            let row = logits.row(logits.rows - 1);
            self.last_logits.clear();
            self.last_logits.extend_from_slice(row);
            self.cached.extend_from_slice(part);
        }
        Ok(prompt.len() - common)
    }

    /// Feed one token; its logits go to `last_logits`.
    fn feed(&mut self, t: u32) -> Result<()> {
        let logits = self.rt.step(&[SeqInput {
            seq: self.seq,
            tokens: std::slice::from_ref(&t),
        }])?;
        let row = logits.row(logits.rows - 1);
        self.last_logits.clear();
        self.last_logits.extend_from_slice(row);
        self.cached.push(t);
        Ok(())
    }
}

/// Generated tokens, one per `next()`; see [`Generator::stream`].
pub struct TokenStream<'g, 'm> {
    g: &'g mut Generator<'m>,
    decoder: StreamDecoder<'m>,
    sampler: Sampler,
    opts: GenerateOptions,
    /// The sampled token not yet returned.
    next: Option<u32>,
    /// Text not yet released (it may be the start of a stop string).
    held: StopText,
    out: Generation,
    first_at: Instant,
}

impl std::fmt::Debug for TokenStream<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenStream({} tokens)", self.out.generated_ids.len())
    }
}

impl TokenStream<'_, '_> {
    /// The generation so far (complete once the iterator returned `None`).
    pub fn generation(&self) -> &Generation {
        &self.out
    }
    pub fn into_generation(self) -> Generation {
        self.out
    }

    fn finish(&mut self, reason: StopReason) {
        if self.out.stop_reason.is_none() {
            self.out.stop_reason = Some(reason);
        }
        self.next = None;
        self.out.decode_time = self.first_at.elapsed();
    }

    /// Release the held text up to where a stop string could still begin; a stop string found
    /// finishes the generation.
    fn release(&mut self, done: bool) -> String {
        let (out, hit) = self.held.release(&self.opts.stop, done);
        if let Some(s) = hit {
            self.finish(StopReason::Stop(s));
        }
        out
    }

    fn advance(&mut self) -> Result<Option<TokenEvent>> {
        let Some(t) = self.next.take() else {
            return Ok(None);
        };
        if self.out.generated_ids.is_empty() {
            self.first_at = Instant::now();
        }
        self.out.generated_ids.push(t);
        let tok = self.g.model.tokenizer();
        if !self.opts.ignore_eos && tok.is_eog(t) {
            let text = self.release(true);
            self.out.text.push_str(&text);
            self.finish(StopReason::Eos);
            return Ok(Some(TokenEvent { id: t, text }));
        }
        if let Some(piece) = self.decoder.push(t)? {
            self.held.push(&piece);
        }
        let mut text = self.release(false);
        if self.out.stop_reason.is_none() {
            if self.out.generated_ids.len() >= self.opts.max_tokens {
                text.push_str(&self.release(true));
                self.finish(StopReason::MaxTokens);
            } else if self.g.cached.len() + 1 > self.g.rt.context() {
                text.push_str(&self.release(true));
                self.finish(StopReason::Context);
            } else {
                self.g.feed(t)?;
                self.next = Some(self.sampler.sample(&self.g.last_logits, &self.g.cached));
            }
        }
        self.out.text.push_str(&text);
        Ok(Some(TokenEvent { id: t, text }))
    }
}

impl Iterator for TokenStream<'_, '_> {
    type Item = Result<TokenEvent>;
    fn next(&mut self) -> Option<Result<TokenEvent>> {
        match self.advance() {
            Ok(Some(ev)) => Some(Ok(ev)),
            Ok(None) => None,
            Err(e) => {
                self.next = None;
                Some(Err(e))
            }
        }
    }
}
