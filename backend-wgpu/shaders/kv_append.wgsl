// kv_append.wgsl — write k, v [n_tokens, n_kv_heads, head_dim] into the paged cache
// [blocks, n_kv_heads, block_size, head_dim] at slot = block·block_size + row (slot < 0: skip).
// Thread mapping: one invocation per (token, kv head, output word of the head row), K and V
// both, 256 per workgroup, 2-D folded grid. Moves 2·(in + out element bytes) per element.

struct Params {
    n_words: u32,     // n_tokens · n_kv_heads · words_per_row
    words_per_row: u32,
    n_kv: u32,
    block_size: u32,
    head_dim: u32,
    k_off: u32,
    v_off: u32,
    kc_off: u32,      // cache element offsets (word-aligned for 16-bit caches)
    vc_off: u32,
    s_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> K: array<u32>;
@group(0) @binding(2) var<storage, read_write> V: array<u32>;
@group(0) @binding(3) var<storage, read_write> KC: array<u32>;
@group(0) @binding(4) var<storage, read_write> VC: array<u32>;
@group(0) @binding(5) var<storage, read_write> Slots: array<i32>;

{{LOAD_K}}
{{LOAD_V}}
{{PACK}}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let id = (wid.x + wid.y * nwg.x) * 256u + li;
    if id >= P.n_words {
        return;
    }
    let wr = id % P.words_per_row;
    let th = id / P.words_per_row; // token · n_kv + head
    let tok = th / P.n_kv;
    let h = th % P.n_kv;
    let slot = Slots[P.s_off + tok];
    if slot < 0 {
        return;
    }
    let blk = u32(slot) / P.block_size;
    let row = u32(slot) % P.block_size;
    let src = th * P.head_dim;                                   // element index in k/v
    let dst = ((blk * P.n_kv + h) * P.block_size + row) * P.head_dim; // element index in cache
    KC[(P.kc_off + dst) / EPW + wr] = pack_word(0u, src, wr);
    VC[(P.vc_off + dst) / EPW + wr] = pack_word(1u, src, wr);
}
