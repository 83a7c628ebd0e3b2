// attn_kv4.wgsl — what the two decode kernels that read K/V as vec4 words share
// (attention_dec.wgsl, attention_keys.wgsl; after attn_params.wgsl): their bindings (the entries
// ops/attention.rs builds for both) and a quad's component by index. W4 = vec4s per K/V row.

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> Q: array<f32>;   // [n_tokens, n_heads, hd]
@group(0) @binding(2) var<storage, read> K: array<vec4<u32>>;   // [blocks, n_kv, bs, W4]
@group(0) @binding(3) var<storage, read> V: array<vec4<u32>>;   // [blocks, n_kv, bs, W4]
@group(0) @binding(4) var<storage, read_write> QST: array<i32>; // [n_seqs + 1]
@group(0) @binding(5) var<storage, read_write> KL: array<i32>;  // [n_seqs]
@group(0) @binding(6) var<storage, read_write> BT: array<i32>;  // [n_seqs, max_blocks]
@group(0) @binding(7) var<storage, read_write> O: array<f32>;   // [n_tokens, n_heads, hd]
@group(0) @binding(8) var<storage, read_write> S: array<f32>;   // [n_tokens·n_heads, splits, hd + 2]

// Component r % 4 of a quad (selects: no dynamic vector indexing, which costs 2–4× on NVIDIA's
// Vulkan; BENCHMARKS.md "vattn").
fn comp(v: vec4<f32>, r: u32) -> f32 {
    let k = r % 4u;
    return select(select(select(v.x, v.y, k == 1u), v.z, k == 2u), v.w, k == 3u);
}
