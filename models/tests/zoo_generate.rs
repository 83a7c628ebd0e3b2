//! The generation API on zoo models (reference backend): stop strings cut the text and are
//! never streamed, the iterator and the callback agree, seeded sampling is reproducible, and a
//! prompt that extends the cached tokens (a chat's next turn) gives the same tokens as a fresh
//! run while prefilling only the new part.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod zoo_util;

use std::sync::Arc;

use kiln_core::{Backend, DType, ReferenceBackend};
use kiln_models::{
    GenerateOptions, Generator, LoadOptions, Model, RuntimeOptions, SamplingParams, StopReason,
};
use zoo_util::{cases, zoo};

fn model(name: &str) -> Option<Model> {
    let Some(z) = zoo() else {
        println!("skipped: zoo not found");
        return None;
    };
    let b: Arc<dyn Backend> = Arc::new(ReferenceBackend::new(0));
    Some(Model::load(z.join(name).to_str().unwrap(), b, &LoadOptions::default()).unwrap())
}

fn ropts() -> RuntimeOptions {
    RuntimeOptions {
        context: Some(256),
        chunk: 32,
        kv_dtype: DType::F32,
        ..RuntimeOptions::default()
    }
}

#[test]
fn stop_strings_and_streaming() {
    let Some(m) = model("gemma3") else { return };
    let ids = cases(&zoo().unwrap().join("gemma3"))[0].ids.clone();
    let mut g = Generator::new(&m, ropts()).unwrap();
    // Greedy gives 'se' × 24 (reference.json): "eses" first appears in "sesese", so the text
    // is "s"; the "e" of the first token is held back while it may start the stop string.
    let o = GenerateOptions {
        max_tokens: 24,
        sampling: SamplingParams::greedy(),
        stop: vec!["eses".into()],
        ignore_eos: true,
    };
    let mut streamed = String::new();
    let out = g
        .generate_ids(&ids, &o, &mut |t| streamed.push_str(&t.text))
        .unwrap();
    assert_eq!(out.text, "s");
    assert_eq!(streamed, "s");
    assert_eq!(out.stop_reason, Some(StopReason::Stop("eses".into())));
    assert_eq!(out.generated_ids, vec![273, 273, 273]);
    // No stop: 24 tokens, iterator text = callback text = detokenized ids.
    let o = GenerateOptions { stop: vec![], ..o };
    let mut s = g.stream(&ids, &o).unwrap();
    let mut it_text = String::new();
    for ev in s.by_ref() {
        it_text.push_str(&ev.unwrap().text);
    }
    let out = s.into_generation();
    assert_eq!(out.stop_reason, Some(StopReason::MaxTokens));
    assert_eq!(it_text, "se".repeat(24));
    assert_eq!(
        out.text,
        m.tokenizer()
            .decode_with(&out.generated_ids, false)
            .unwrap()
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let Some(m) = model("qwen3") else { return };
    let ids = cases(&zoo().unwrap().join("qwen3"))[1].ids.clone();
    let run = |seed| {
        let mut g = Generator::new(&m, ropts()).unwrap();
        let o = GenerateOptions {
            max_tokens: 20,
            sampling: SamplingParams {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: Some(seed),
                ..SamplingParams::default()
            },
            stop: vec![],
            ignore_eos: true,
        };
        g.generate_ids(&ids, &o, &mut |_| {}).unwrap().generated_ids
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn cached_prefix_is_reused() {
    let Some(m) = model("mistral") else { return };
    let c = &cases(&zoo().unwrap().join("mistral"))[1];
    let o = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        stop: vec![],
        ignore_eos: true,
    };
    let mut g = Generator::new(&m, ropts()).unwrap();
    let first = g.generate_ids(&c.ids[..40], &o, &mut |_| {}).unwrap();
    assert_eq!(first.prefilled, 40);
    // next "turn": the first prompt, then more tokens
    let second = g.generate_ids(&c.ids, &o, &mut |_| {}).unwrap();
    assert!(second.prefilled <= c.ids.len() - 40, "{}", second.prefilled);
    let mut fresh = Generator::new(&m, ropts()).unwrap();
    let want = fresh.generate_ids(&c.ids, &o, &mut |_| {}).unwrap();
    assert_eq!(second.generated_ids, want.generated_ids);
    // the same prompt again: only its last token runs
    let third = g.generate_ids(&c.ids, &o, &mut |_| {}).unwrap();
    assert_eq!(third.prefilled, 1);
    assert_eq!(third.generated_ids, want.generated_ids);
}
