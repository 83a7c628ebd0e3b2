// sincos.wgsl — the (sin, cos) that rope.wgsl and rope_kv.wgsl share (their header says why it is
// computed here and not with the built-ins).

// (sin, cos) of a, accurate to ~1e-7 absolute for |a| < 2^17·π/2.
fn sincos(a: f32) -> vec2<f32> {
    let k = round(a * 0.63661977236758134);
    // π/2 split in three parts; k·P1 is exact for |k| < 2^16.
    let r = ((a - k * 1.5703125) - k * 4.8375129699707031e-4) - k * 7.5497899548918821e-8;
    let r2 = r * r;
    let s = r + r * r2 * (-1.6666667e-1 + r2 * (8.3333333e-3 + r2 * (-1.9841270e-4 + r2 * 2.7557319e-6)));
    let c = 1.0 + r2 * (-0.5 + r2 * (4.1666667e-2 + r2 * (-1.3888889e-3 + r2 * (2.4801587e-5 - r2 * 2.7557319e-7))));
    let q = i32(k) & 3;
    if q == 0 {
        return vec2<f32>(s, c);
    } else if q == 1 {
        return vec2<f32>(c, -s);
    } else if q == 2 {
        return vec2<f32>(-s, -c);
    }
    return vec2<f32>(-c, s);
}
