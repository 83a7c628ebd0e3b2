// round_x8.wgsl — one 16-element group of x rounded to int8 (CUDA's q8_group arithmetic), the
// one definition gemv_x8.wgsl's per-workgroup quant_x and quant_x8.wgsl's pre-pass both call,
// so the two give bit-identical groups: d = max|x|/127 rounded up to 22 significant bits,
// q = clamp(round(x/d), ±127) packed 4 per u32, and (d, d·Σq); d is NaN for a group with a
// non-finite x (an exponent of all ones: a bit test, since the compiler may assume no NaN).
// FLOPs: ≈ 6 per element; no memory access (the caller loads and stores).

struct XGroup {
    q: vec4<u32>,   // 16 int8 quants
    dq: vec2<f32>,  // (d, d·Σq)
}

fn round_x16(v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> XGroup {
    let ex = vec4<u32>(0x7f800000u);
    let lo = vec4<f32>(-127.0);
    let hi = vec4<f32>(127.0);
    let m4 = max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3)));
    let amax = max(max(m4.x, m4.y), max(m4.z, m4.w));
    let nf = any((bitcast<vec4<u32>>(v0) & ex) == ex) || any((bitcast<vec4<u32>>(v1) & ex) == ex)
          || any((bitcast<vec4<u32>>(v2) & ex) == ex) || any((bitcast<vec4<u32>>(v3) & ex) == ex);
    let d = bitcast<f32>((bitcast<u32>(amax / 127.0) + 3u) & 0xfffffffcu);
    let id = select(0.0, 1.0 / d, amax > 0.0);
    let q0 = vec4<i32>(clamp(round(v0 * id), lo, hi));
    let q1 = vec4<i32>(clamp(round(v1 * id), lo, hi));
    let q2 = vec4<i32>(clamp(round(v2 * id), lo, hi));
    let q3 = vec4<i32>(clamp(round(v3 * id), lo, hi));
    let s4 = q0 + q1 + q2 + q3;
    let dd = select(d, bitcast<f32>(0x7fc00000u), nf);
    return XGroup(vec4<u32>(pack4xI8(q0), pack4xI8(q1), pack4xI8(q2), pack4xI8(q3)),
                  vec2<f32>(dd, dd * f32(s4.x + s4.y + s4.z + s4.w)));
}
