// rope.wgsl — rotary embedding in place over the first n_rot dims of every head (f32).
// Thread mapping: one invocation per (token, head, pair i < n_rot/2), 256 per workgroup,
// 2-D folded grid. STYLE 0 = NeoX pairs (i, i + n_rot/2), 1 = interleaved (2i, 2i+1).
// Moves 16 bytes (2 reads, 2 writes) and ~40 FLOPs per pair.
//
// The angle is fl32(pos · inv_freq[i]) (one correctly rounded f32 multiply, as an f32 host
// implementation computes it); sin/cos are evaluated here with a Cody-Waite reduction by π/2
// and short polynomials, because Vulkan only promises 2^-11 absolute accuracy for sin/cos and
// only inside [-π, π], while angles reach 10^5 rad.

override STYLE: u32 = 0u;

struct Params {
    n_pairs: u32, // n_tokens · n_heads · n_rot/2
    n_heads: u32,
    head_dim: u32,
    half_rot: u32,
    x_off: u32,
    p_off: u32,
    f_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>; // [n_tokens, n_heads, head_dim]
@group(0) @binding(2) var<storage, read_write> Pos: array<i32>; // [n_tokens]
@group(0) @binding(3) var<storage, read_write> F: array<f32>; // [n_rot/2]

// sincos: sincos.wgsl (shared with rope_kv.wgsl).

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let id = (wid.x + wid.y * nwg.x) * 256u + li;
    if id >= P.n_pairs {
        return;
    }
    let i = id % P.half_rot;
    let th = id / P.half_rot; // token · n_heads + head
    let tok = th / P.n_heads;
    let base = P.x_off + th * P.head_dim;
    var a = base + i;
    var b = base + i + P.half_rot;
    if STYLE == 1u {
        a = base + 2u * i;
        b = a + 1u;
    }
    let ang = f32(Pos[P.p_off + tok]) * F[P.f_off + i];
    let sc = sincos(ang);
    let x0 = X[a];
    let x1 = X[b];
    X[a] = x0 * sc.y - x1 * sc.x;
    X[b] = x0 * sc.x + x1 * sc.y;
}
