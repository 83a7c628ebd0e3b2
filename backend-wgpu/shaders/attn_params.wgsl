// attn_params.wgsl — the uniform both attention shaders read (attention.wgsl, attention_dec.wgsl;
// its Rust twin is ops/attention.rs's `Params`).

struct Params {
    n_tokens: u32,
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    n_seqs: u32,
    block_size: u32,
    max_blocks: u32,
    n_splits: u32,
    scale: f32,
    softcap: f32,   // 0 = off
    window: u32,    // 0 = off
    causal: u32,
    q_off: u32,
    k_off: u32,     // elements (a multiple of 4·EPW: vec4-aligned)
    v_off: u32,
    o_off: u32,
    qs_off: u32,
    kl_off: u32,
    bt_off: u32,
    s_off: u32,
    n_qt: u32,      // query tiles per sequence in the grid (prefill; 1 for decode)
}

// (Functions here use the uniform `P` each shader declares after this file.)
// Key range [lo, hi) of the query at position qpos (causal, window).
fn key_range(qpos: u32, kv_len: u32) -> vec2<u32> {
    var hi = kv_len;
    if P.causal != 0u {
        hi = min(hi, qpos + 1u);
    }
    var lo = 0u;
    if P.window != 0u && qpos + 1u > P.window {
        lo = qpos + 1u - P.window;
    }
    return vec2<u32>(lo, max(hi, lo));
}
