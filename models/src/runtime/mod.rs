//! The model runtime: weights prepared on a backend ([`Model`]), the memory plan and paged KV
//! cache allocated once, one forward step over a ragged batch ([`Runtime::step`]), sampling, and
//! streaming generation ([`Generator`]).

pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod plan;
pub mod sampler;
pub mod shard;
pub mod step;
pub mod stop;
pub mod weights;

pub use generate::{GenerateOptions, Generation, Generator, StopReason, TokenEvent, TokenStream};
pub use kv_cache::{BlockPool, KvCache, SeqId};
pub use model::{
    BackendChoice, LoadEvent, LoadOptions, Model, ModelShard, Placement, is_gpu_adapter,
    open_backend,
};
pub use sampler::{Sampler, SamplingParams};
pub use shard::{Parallel, TpRank, even_split, local_config};
pub use step::{Logits, Runtime, RuntimeOptions, SeqInput, StepStats};
pub use stop::StopText;
pub use weights::HostTensors;
