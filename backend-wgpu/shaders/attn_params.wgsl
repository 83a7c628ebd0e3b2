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
