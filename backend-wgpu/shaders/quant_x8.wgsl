// quant_x8.wgsl — x (f32 [k], k a multiple of 16) rounded to int8 per group of 16 elements,
// once per one-row GEMV call, for gemv_x8.wgsl's XQG variant (which then reads x's groups
// from this buffer instead of rounding the whole x in every workgroup).
//
// Thread mapping: one invocation per group g < k/16 (workgroups of 64, grid folded into
// (x, y) as everywhere): 4 vec4 loads of x, one vec4<u32> of packed int8 and one (d, d·Σq)
// pair written. Bytes moved: k·4 read, k·1.5 written. FLOPs: ≈ 6 per element.
//
// The arithmetic is gemv_x8.wgsl's quant_x, line for line (d = max|x|/127 rounded up to 22
// significant bits, q = clamp(round(x/d), ±127), NaN d for a group with a non-finite x), so
// both variants give bit-identical x groups; its accuracy note applies.

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
    let ex = vec4<u32>(0x7f800000u);
    let lo = vec4<f32>(-127.0);
    let hi = vec4<f32>(127.0);
    let b = P.x4 + 4u * g;
    let v0 = X[b];
    let v1 = X[b + 1u];
    let v2 = X[b + 2u];
    let v3 = X[b + 3u];
    let m4 = max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3)));
    let amax = max(max(m4.x, m4.y), max(m4.z, m4.w));
    // non-finite: an exponent of all ones (bit test: the compiler may assume no NaN)
    let nf = any((bitcast<vec4<u32>>(v0) & ex) == ex) || any((bitcast<vec4<u32>>(v1) & ex) == ex)
          || any((bitcast<vec4<u32>>(v2) & ex) == ex) || any((bitcast<vec4<u32>>(v3) & ex) == ex);
    let d = bitcast<f32>((bitcast<u32>(amax / 127.0) + 3u) & 0xfffffffcu);
    let id = select(0.0, 1.0 / d, amax > 0.0);
    let q0 = vec4<i32>(clamp(round(v0 * id), lo, hi));
    let q1 = vec4<i32>(clamp(round(v1 * id), lo, hi));
    let q2 = vec4<i32>(clamp(round(v2 * id), lo, hi));
    let q3 = vec4<i32>(clamp(round(v3 * id), lo, hi));
    QQ[g] = vec4<u32>(pack4xI8(q0), pack4xI8(q1), pack4xI8(q2), pack4xI8(q3));
    let s4 = q0 + q1 + q2 + q3;
    let dd = select(d, bitcast<f32>(0x7fc00000u), nf);
    QD[g] = vec2<f32>(dd, dd * f32(s4.x + s4.y + s4.z + s4.w));
}
