// quant_x8.wgsl — x (f32 [k], or [m, k] with m = P.mx.x ≤ 8 contiguous rows; k a multiple of
// 16) rounded to int8 per group of 16 elements, once per GEMV call, for gemv_x8.wgsl's XQG
// variant and gemv_x8m.wgsl (which then read x's groups from this buffer instead of rounding
// the whole x in every workgroup).
//
// Thread mapping: one invocation per group g < m·k/16 (workgroups of 64, grid folded into
// (x, y) as everywhere): 4 vec4 loads of x, one vec4<u32> of packed int8 and one (d, d·Σq)
// pair written. Bytes moved: m·k·4 read, m·k·1.5 written. FLOPs: ≈ 6 per element.
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
    pad: array<vec4<u32>, 4>,
    mx: vec4<u32>,  // x rows (0 or 1: one), as gemv_x8m.wgsl's
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<vec4<f32>>;   // [m·k/4]
@group(0) @binding(2) var<storage, read_write> QQ: array<vec4<u32>>;  // [m·k/16] int8 quants
@group(0) @binding(3) var<storage, read_write> QD: array<vec2<f32>>;  // [m·k/16] (d, d·Σq)

@compute @workgroup_size(64)
fn quant_x8(@builtin(global_invocation_id) gid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * 64u;
    // rows of x are contiguous and k is a multiple of 16: MX rows are MX·k/16 groups
    if g >= P.k / 16u * max(P.mx.x, 1u) {
        return;
    }
    let b = P.x4 + 4u * g;
    let r = round_x16(X[b], X[b + 1u], X[b + 2u], X[b + 3u]);
    QQ[g] = r.q;
    QD[g] = r.dq;
}
