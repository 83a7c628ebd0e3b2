//! Architectures: one [`ModelConfig`] from config.json or GGUF metadata, the tensor names of
//! each family, and the transformer block written as backend ops ([`block`]).

pub mod block;
pub mod config;
mod gemma3;
mod llama;
pub mod names;
mod qwen;

pub use config::{Arch, LayerSpec, ModelConfig, MoeConfig, WeightFormat};
pub use names::{Global, Role};
