// common.wgsl — helpers every kiln shader gets (prepended by the templating step).
// No entry points here. Conversions are done by bit manipulation so that f16 subnormals are
// kept exactly (unpack2x16float may flush them, and GGUF scale fields are often subnormal).

// f16 bits (the low 16 bits of h) -> f32, exact for normals, subnormals, zeros, inf and NaN.
fn f16_bits(h: u32) -> f32 {
    let s = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    let normal = bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
    // m · 2^-24 is a normal f32 for every f16 subnormal, so no f32 denormal is involved.
    let sub = bitcast<f32>(bitcast<u32>(f32(m) * 5.9604645e-8) | s);
    let special = bitcast<f32>(s | 0x7f800000u | (m << 13u));
    return select(select(normal, special, e == 31u), sub, e == 0u);
}

// Half `i` (0 = low, 1 = high) of a word as f16 -> f32.
fn f16_half(w: u32, i: u32) -> f32 {
    return f16_bits((w >> (i * 16u)) & 0xffffu);
}

// bf16 bits -> f32 (exact).
fn bf16_bits(h: u32) -> f32 {
    return bitcast<f32>((h & 0xffffu) << 16u);
}

// f32 -> f16 bits, round to nearest even (matches the `half` crate), inf on overflow.
fn f32_to_f16_bits(f: f32) -> u32 {
    let x = bitcast<u32>(f);
    let s = (x >> 16u) & 0x8000u;
    let e = i32((x >> 23u) & 0xffu);
    let m = x & 0x7fffffu;
    if e == 255 {
        return s | 0x7c00u | select(0u, 0x200u | (m >> 13u), m != 0u);
    }
    let he = e - 112;
    if he >= 31 {
        return s | 0x7c00u;
    }
    if he <= 0 {
        if he < -10 {
            return s;
        }
        let mm = m | 0x800000u;
        let shift = u32(14 - he);
        let halfway = 1u << (shift - 1u);
        var r = mm >> shift;
        let rem = mm & ((1u << shift) - 1u);
        if rem > halfway || (rem == halfway && (r & 1u) == 1u) {
            r += 1u;
        }
        return s | r;
    }
    var r = (u32(he) << 10u) | (m >> 13u);
    let rem = m & 0x1fffu;
    if rem > 0x1000u || (rem == 0x1000u && (r & 1u) == 1u) {
        r += 1u;
    }
    return s | r;
}

// f32 -> bf16 bits, round to nearest even, NaN kept quiet.
fn f32_to_bf16_bits(f: f32) -> u32 {
    let x = bitcast<u32>(f);
    if (x & 0x7fffffffu) > 0x7f800000u {
        return (x >> 16u) | 0x40u;
    }
    return (x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u;
}

// Byte `i` of a u32 array given as word + byte index.
fn byte_of(w: u32, i: u32) -> u32 {
    return (w >> ((i & 3u) * 8u)) & 0xffu;
}

// Sign-extend the byte b (0..255) to i32.
fn sext8(b: u32) -> i32 {
    return (i32(b << 24u)) >> 24u;
}
