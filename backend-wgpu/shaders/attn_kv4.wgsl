// attn_kv4.wgsl — what the two decode kernels that read K/V as vec4 words share
// (attention_dec.wgsl, attention_keys.wgsl; after attn_params.wgsl): their bindings (the entries
// ops/attention.rs builds for both), a workgroup's sequence and heads, and a quad's component by
// index. W4 = vec4s per K/V row.

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

// Workgroup `id` = ((seq · nq + query tile) · n_kv + KV head) · n_hg + head group (nq query
// tiles per sequence; 1 in attention_keys): its sequence s, KV head, first query head h0 (of
// GH per group), the row of its block table, and the batch entries of s.
struct SeqWg {
    s: u32,
    kvh: u32,
    h0: u32,
    bt0: u32,
    q0: u32,
    q_len: u32,
    kv_len: u32,
}

fn seq_wg(id: u32, n_hg: u32, nq: u32, gh: u32) -> SeqWg {
    var w: SeqWg;
    w.s = id / (nq * P.n_kv * n_hg);
    w.kvh = (id / n_hg) % P.n_kv;
    w.h0 = w.kvh * (P.n_heads / P.n_kv) + (id % n_hg) * gh;
    w.bt0 = P.bt_off + w.s * P.max_blocks;
    w.q0 = u32(QST[P.qs_off + w.s]);
    w.q_len = u32(max(QST[P.qs_off + w.s + 1u] - QST[P.qs_off + w.s], 0));
    w.kv_len = u32(max(KL[P.kl_off + w.s], 0));
    return w;
}
