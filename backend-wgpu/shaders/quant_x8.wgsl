// quant_x8.wgsl — x (f32 [k], k a multiple of 16) rounded to int8 per group of 16 elements,
// once per one-row GEMV call, for gemv_x8.wgsl's XQG variant (which then reads x's groups
// from this buffer instead of rounding the whole x in every workgroup).
//
// Thread mapping: one invocation per group g < k/16 (workgroups of 64, grid folded into
// (x, y) as everywhere): 4 vec4 loads of x, one vec4<u32> of packed int8 and one (d, d·Σq)
// pair written. Bytes moved: k·4 read, k·1.5 written. FLOPs: ≈ 6 per element.
//
// The arithmetic is round_x8.wgsl's round_x16, which gemv_x8.wgsl's quant_x calls too, so
// both variants give bit-identical x groups; gemv_x8's accuracy note applies.

// The same uniform as gemv_x8.wgsl's (both dispatches of one call share one params slot).
struct Params {
    n_c: u32,
    k: u32,
    r0: u32,
    bpr: u32,
    d_base: u32,
    x4: u32,
    o_off: u32,
    chunks: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<vec4<f32>>;   // [k/4]
@group(0) @binding(2) var<storage, read_write> QQ: array<vec4<u32>>;  // [k/16] int8 quants
@group(0) @binding(3) var<storage, read_write> QD: array<vec2<f32>>;  // [k/16] (d, d·Σq)

@compute @workgroup_size(64)
fn quant_x8(@builtin(global_invocation_id) gid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * 64u;
    if g >= P.k / 16u {
        return;
    }
    let b = P.x4 + 4u * g;
    let r = round_x16(X[b], X[b + 1u], X[b + 2u], X[b + 3u]);
    QQ[g] = r.q;
    QD[g] = r.dq;
}
