//! The serving engine: continuous batching over the paged KV cache with prefix caching.
//!
//! [`Scheduler`] is the synchronous core: every [`Scheduler::step`] admits waiting requests
//! while KV blocks and the per-step token budget allow, and runs ONE [`Runtime::step`] whose
//! ragged batch mixes decode rows (one token per running sequence) with prefill chunks of
//! newly admitted or partly prefilled prompts; then it samples per sequence (each request's
//! own [`Sampler`](crate::runtime::Sampler), seeded or not) and streams [`Event`]s to each
//! request's [`EventSink`]. Requests end on EOS, a stop string, `max_tokens` or the context;
//! cancelled ones (their handle's flag, or a sink whose receiver is gone) leave at the next
//! step and free their blocks.
//!
//! KV blocks: prompts share full blocks through the [`PrefixCache`] (hash chain of parent key
//! and block tokens; a fresh block at the first divergent block). Blocks freed by finished
//! requests stay cached (idle) and are evicted least recently used first, only when the pool
//! needs them. When blocks run out for the running batch, the youngest running request is
//! preempted: its sequence is dropped and it goes back to the front of the queue with its
//! prompt and generated tokens, to be recomputed (its stream goes on without repeating a
//! token; its sampler keeps its random state). [`Scheduler::check_blocks`] verifies the
//! accounting: free + idle cached + in use == total, and every reference is accounted for.
//!
//! [`Engine`] runs a scheduler on its own thread and hands out [`RequestHandle`]s; the server
//! (`kiln serve`) and `kiln bench serve` use it.
//!
//! [`Runtime::step`]: crate::runtime::Runtime::step

mod handle;
mod prefix;
mod registry;
mod request;
mod scheduler;

use std::time::Duration;

pub use handle::{Engine, RequestHandle, ShutdownMode};
pub use prefix::{PrefixCache, ROOT, block_key};
pub use registry::{
    EngineLoaderFn, Footprint, FootprintFn, Lease, LoaderFn, ModelSpec, ModelState, ModelStatus,
    Registry, Served,
};
pub use scheduler::{BlockCounts, EngineOptions, EngineStats, Scheduler};

use crate::runtime::generate::{StopReason, TokenEvent};

/// A request's identity in the engine.
pub type RequestId = u64;

/// What a request streams: tokens (with the text they complete), then one [`Finished`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Token(TokenEvent),
    Finished(Finished),
}

/// The last event of every request.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub id: RequestId,
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    /// How often the request was preempted and recomputed.
    pub preemptions: u32,
    /// From submission to the end.
    pub elapsed: Duration,
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Generation stopped normally (EOS, stop string, max_tokens, context).
    Stop(StopReason),
    /// Cancelled by its handle, by a dropped receiver, or by an engine shutdown.
    Cancelled,
    /// The request could not be served (bad prompt, a failed step); the message says why.
    Error(String),
}

/// Where a request's events go. `send` returns false when nobody listens any more (the request
/// is then cancelled); `is_closed` lets the scheduler notice that before the next token.
pub trait EventSink: Send {
    fn send(&mut self, ev: Event) -> bool;
    fn is_closed(&self) -> bool {
        false
    }
}

impl EventSink for std::sync::mpsc::Sender<Event> {
    fn send(&mut self, ev: Event) -> bool {
        std::sync::mpsc::Sender::send(self, ev).is_ok()
    }
}

/// A sink that calls a closure (tests, benchmarks); it never closes.
pub struct FnSink<F: FnMut(Event) + Send>(pub F);

impl<F: FnMut(Event) + Send> EventSink for FnSink<F> {
    fn send(&mut self, ev: Event) -> bool {
        (self.0)(ev);
        true
    }
}
