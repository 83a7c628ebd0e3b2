//! The shard-index parser (`model.safetensors.index.json`) and the JSON-object check used for
//! config.json on arbitrary bytes: Ok or Err, never a panic; accepted shard names are plain
//! relative paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    if let Ok(idx) = kiln_models::parse_index(data, "fuzz.index.json") {
        assert!(!idx.weight_map.is_empty());
        for s in &idx.shards {
            assert!(
                Path::new(s)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)))
            );
        }
    }
    let _ = kiln_models::format::hf_dir::parse_json_object(data, "config.json");
});
