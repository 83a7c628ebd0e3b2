// rope_kv.wgsl — rope_kv_append in one pass: q [n_tokens, n_heads, head_dim] and k [n_tokens,
// n_kv, head_dim] (f32) rotated in place exactly as rope.wgsl rotates them (same angle, same
// sincos, same expressions), and the rotated k and v (f32) written into the paged cache
// [blocks, n_kv, block_size, head_dim] at slot = block·block_size + row exactly as
// kv_append.wgsl writes them (slot < 0 or past the cache: no cache write; q and k are rotated
// whatever the slot). One pass instead of three (rope q, rope k, kv_append): each dispatch costs
// its launch and a barrier (~5 + 7 µs on an H200's Vulkan with a pass per op; less with
// one-pass recording, still not free).
//
// Thread mapping: one invocation per item, 256 per workgroup, 2-D folded grid. Items: first
// n_tokens·n_heads·half q pairs (rope.wgsl's mapping); then per (token, kv head) `per_head`
// items:
//   - g < half/2: k pairs 2g and 2g + 1 together. Their four elements are two whole cache words
//     of a 16-bit cache (NeoX: elements 2g, 2g + 1 and half + 2g, half + 2g + 1; interleaved:
//     4g .. 4g + 3), so no invocation reads a k element that another writes and no cache word
//     is written by two (WGSL has no 16-bit stores). Needs half even: the host runs the three
//     ops otherwise.
//   - then a word of k's non-rotary tail [n_rot, head_dim) (copied), then a word of v.
// Bytes: q 16 per pair; k 16 per pair + the cache's element size per element; v 4 + the cache's
// element size per element. ~40 FLOPs per pair (sincos).

override STYLE: u32 = 0u;

struct Params {
    n_q: u32,        // n_tokens · n_heads · half
    n_items: u32,    // n_q + n_tokens · n_kv · per_head
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    half_rot: u32,
    tail_words: u32, // (head_dim − n_rot) / EPW
    per_head: u32,   // half/2 + tail_words + head_dim / EPW
    block_size: u32,
    total_slots: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    kc_off: u32,     // cache element offsets (word-aligned for 16-bit caches)
    vc_off: u32,
    p_off: u32,
    f_off: u32,
    s_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> Q: array<f32>;  // [n_tokens, n_heads, head_dim]
@group(0) @binding(2) var<storage, read_write> K: array<f32>;  // [n_tokens, n_kv, head_dim]
@group(0) @binding(3) var<storage, read_write> V: array<f32>;  // [n_tokens, n_kv, head_dim]
@group(0) @binding(4) var<storage, read_write> KC: array<u32>; // cache words
@group(0) @binding(5) var<storage, read_write> VC: array<u32>;
@group(0) @binding(6) var<storage, read_write> Pos: array<i32>; // [n_tokens]
@group(0) @binding(7) var<storage, read_write> F: array<f32>;   // [n_rot/2]
@group(0) @binding(8) var<storage, read_write> Slots: array<i32>; // [n_tokens]

{{PACK}}

// Elements (a, b) of rotary pair i of a head row.
fn pair_at(i: u32) -> vec2<u32> {
    if STYLE == 1u {
        return vec2<u32>(2u * i, 2u * i + 1u);
    }
    return vec2<u32>(i, i + P.half_rot);
}

// Rotate pair i of the head row at element `base` of Q (which = 0) or K (1) in place, as
// rope.wgsl does; returns the new values.
fn rot(which: u32, base: u32, i: u32, tok: u32) -> vec2<f32> {
    let e = pair_at(i);
    let ang = f32(Pos[P.p_off + tok]) * F[P.f_off + i];
    let sc = sincos(ang);
    var x0: f32;
    var x1: f32;
    if which == 0u {
        x0 = Q[base + e.x];
        x1 = Q[base + e.y];
    } else {
        x0 = K[base + e.x];
        x1 = K[base + e.y];
    }
    let y = vec2<f32>(x0 * sc.y - x1 * sc.x, x0 * sc.x + x1 * sc.y);
    if which == 0u {
        Q[base + e.x] = y.x;
        Q[base + e.y] = y.y;
    } else {
        K[base + e.x] = y.x;
        K[base + e.y] = y.y;
    }
    return y;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let id = (wid.x + wid.y * nwg.x) * 256u + li;
    if id >= P.n_items {
        return;
    }
    if id < P.n_q {
        let th = id / P.half_rot; // token · n_heads + head
        rot(0u, P.q_off + th * P.head_dim, id % P.half_rot, th / P.n_heads);
        return;
    }
    let u = id - P.n_q;
    let j = u % P.per_head;
    let th = u / P.per_head; // token · n_kv + kv head
    let tok = th / P.n_kv;
    let h = th % P.n_kv;
    let src = th * P.head_dim; // element index in k / v
    let slot = Slots[P.s_off + tok];
    let cached = slot >= 0 && u32(slot) < P.total_slots;
    let blk = u32(max(slot, 0)) / P.block_size;
    let row = u32(max(slot, 0)) % P.block_size;
    let dst = ((blk * P.n_kv + h) * P.block_size + row) * P.head_dim; // element index in cache
    let pairs2 = P.half_rot / 2u;
    if j < pairs2 {
        let ya = rot(1u, P.k_off + src, 2u * j, tok);
        let yb = rot(1u, P.k_off + src, 2u * j + 1u, tok);
        if cached {
            let ea = pair_at(2u * j);
            if STYLE == 1u {
                // Elements 4j .. 4j + 3 = (ya.x, ya.y, yb.x, yb.y).
                put2(dst + ea.x, ya.x, ya.y);
                put2(dst + ea.x + 2u, yb.x, yb.y);
            } else {
                // Elements 2j, 2j + 1 = (ya.x, yb.x); half + 2j, half + 2j + 1 = (ya.y, yb.y).
                put2(dst + ea.x, ya.x, yb.x);
                put2(dst + ea.y, ya.y, yb.y);
            }
        }
        return;
    }
    if !cached {
        return;
    }
    if j < pairs2 + P.tail_words {
        // A word of k's non-rotary tail, from element n_rot = 2·half on.
        let e = 2u * P.half_rot + (j - pairs2) * EPW;
        KC[(P.kc_off + dst + e) / EPW] = pack_word(0u, src + e);
        return;
    }
    let e = (j - pairs2 - P.tail_words) * EPW;
    VC[(P.vc_off + dst + e) / EPW] = pack_word(1u, src + e);
}
