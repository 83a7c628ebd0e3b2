//! One request inside the scheduler: its tokens, sampler, detokenizer and stop-string state,
//! and where its KV lives. Text handling follows [`crate::runtime::generate`]: text is released
//! only when complete and when it can no longer be the start of a stop string.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{Event, EventSink, FinishReason, Finished, RequestId};
use crate::runtime::generate::{GenerateOptions, StopReason, TokenEvent};
use crate::runtime::{Sampler, SeqId, StopText};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// A request as the scheduler holds it.
pub(crate) struct Req<'m> {
    pub id: RequestId,
    pub opts: GenerateOptions,
    pub prompt_len: usize,
    /// Prompt then generated tokens: the sampling history, and what the KV must hold.
    pub tokens: Vec<u32>,
    /// Tokens generated so far (the tail of `tokens`).
    pub generated: usize,
    /// The sequence in the KV cache while running; `None` while waiting.
    pub seq: Option<SeqId>,
    /// Tokens of `tokens` whose K/V are cached in `seq`.
    pub fed: usize,
    /// Prefix-cache keys of the full blocks of `seq`, in order.
    pub keys: Vec<u64>,
    pub sampler: Sampler,
    decoder: StreamDecoder<'m>,
    /// Text not yet released (it may be the start of a stop string).
    held: StopText,
    sink: Box<dyn EventSink>,
    pub cancel: Arc<AtomicBool>,
    /// Prompt tokens served from the prefix cache (first admission).
    pub cached_tokens: usize,
    pub preemptions: u32,
    pub submitted: Instant,
    /// Whether the request still counts against the engine's queue bound.
    pub queued: bool,
}

impl<'m> Req<'m> {
    pub fn new(
        id: RequestId,
        tok: &'m Tokenizer,
        prompt: Vec<u32>,
        opts: GenerateOptions,
        sink: Box<dyn EventSink>,
        cancel: Arc<AtomicBool>,
    ) -> Req<'m> {
        Req {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            generated: 0,
            seq: None,
            fed: 0,
            keys: Vec::new(),
            sampler: Sampler::new(opts.sampling.clone()),
            opts,
            decoder: tok.stream_decoder(false),
            held: StopText::default(),
            sink,
            cancel,
            cached_tokens: 0,
            preemptions: 0,
            submitted: Instant::now(),
            queued: true,
        }
    }

    /// Cancelled by its handle, or nobody listens any more.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.sink.is_closed()
    }

    /// Tokens still to run before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.fed
    }

    /// Take sampled token `t`: stream it, and return why the request ends, if it does.
    /// `context`: the planned tokens per sequence.
    pub fn accept(
        &mut self,
        t: u32,
        tok: &Tokenizer,
        context: usize,
    ) -> crate::Result<Option<StopReason>> {
        self.tokens.push(t);
        self.generated += 1;
        let mut stop = None;
        let text = if !self.opts.ignore_eos && tok.is_eog(t) {
            stop = Some(StopReason::Eos);
            self.release(true, &mut stop)
        } else {
            if let Some(piece) = self.decoder.push(t)? {
                self.held.push(&piece);
            }
            let mut text = self.release(false, &mut stop);
            if stop.is_none() {
                if self.generated >= self.opts.max_tokens {
                    stop = Some(StopReason::MaxTokens);
                } else if self.tokens.len() > context {
                    // The next step would feed a token past the planned context.
                    stop = Some(StopReason::Context);
                }
                if stop.is_some() {
                    text.push_str(&self.release(true, &mut stop));
                }
            }
            text
        };
        if !self.sink.send(Event::Token(TokenEvent { id: t, text })) {
            self.cancel.store(true, Ordering::Relaxed);
        }
        Ok(stop)
    }

    /// Release the held text up to where a stop string could still begin; a stop string found
    /// sets `stop` and cuts the text before it.
    fn release(&mut self, done: bool, stop: &mut Option<StopReason>) -> String {
        let (out, hit) = self.held.release(&self.opts.stop, done);
        if let (Some(s), None) = (hit, stop.as_ref()) {
            *stop = Some(StopReason::Stop(s));
        }
        out
    }

    /// Send the final event (the request leaves the scheduler).
    pub fn finish(mut self, reason: FinishReason) -> FinishReason {
        let ev = Finished {
            id: self.id,
            reason: reason.clone(),
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens,
            preemptions: self.preemptions,
            elapsed: self.submitted.elapsed(),
        };
        let _ = self.sink.send(Event::Finished(ev));
        reason
    }
}
