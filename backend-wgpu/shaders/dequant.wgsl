// dequant.wgsl — dequantization of one 32-element group of a prepared weight, for every
// weight dtype (one `//#if W_<TYPE>` block is kept by the templating step).
//
// Prepared layout (see src/weight.rs): a weight is split into row chunks, one storage buffer
// each, bound as `W: array<u32>`. Rows are [bpr blocks] in GGUF order, except that types
// whose block is not a multiple of 4 bytes (Q4_0, IQ4_NL, Q5_0, Q8_0, Q3_K, Q6_K) have their
// f16 super-scale `d` moved out of the block into a packed f16 array starting at word
// P.d_base (one half per block, in block order). Every block then starts on a word boundary
// and every multi-byte field sits inside one word.
//
// Contract: the including shader has `P.bpr` (blocks per row), `P.d_base`, `P.k` (row
// length) and `W`. `dq_group(r, g)` fills `dq` with elements 32g..32g+31 of chunk row r.

var<private> dq: array<vec4<f32>, 8>;

const KVALUES = array<f32, 16>(-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
                               1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);

fn nib4(w: u32, shift: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(shift, shift + 8u, shift + 16u, shift + 24u)) & vec4<u32>(15u);
}

fn bytes4(w: u32) -> vec4<u32> {
    return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
}

fn sbytes4(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)))) >> vec4<u32>(24u));
}

// The moved-out f16 d of block b.
fn split_d(b: u32) -> f32 {
    return f16_half(W[P.d_base + (b >> 1u)], b & 1u);
}

// Byte i of the block starting at word bw.
fn blk_byte(bw: u32, i: u32) -> u32 {
    return byte_of(W[bw + (i >> 2u)], i);
}

fn kv4(n: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(KVALUES[n.x], KVALUES[n.y], KVALUES[n.z], KVALUES[n.w]);
}

//#if W_F32
fn dq_group(r: u32, g: u32) {
    let base = r * P.k + g * 32u;
    for (var i = 0u; i < 8u; i++) {
        let o = base + 4u * i;
        dq[i] = vec4<f32>(bitcast<f32>(W[o]), bitcast<f32>(W[o + 1u]), bitcast<f32>(W[o + 2u]), bitcast<f32>(W[o + 3u]));
    }
}
//#endif

//#if W_F16
fn dq_group(r: u32, g: u32) {
    let base = (r * P.k + g * 32u) / 2u;
    for (var i = 0u; i < 8u; i++) {
        let a = W[base + 2u * i];
        let b = W[base + 2u * i + 1u];
        dq[i] = vec4<f32>(f16_half(a, 0u), f16_half(a, 1u), f16_half(b, 0u), f16_half(b, 1u));
    }
}
//#endif

//#if W_BF16
fn dq_group(r: u32, g: u32) {
    let base = (r * P.k + g * 32u) / 2u;
    for (var i = 0u; i < 8u; i++) {
        let a = W[base + 2u * i];
        let b = W[base + 2u * i + 1u];
        dq[i] = vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u),
                          bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
    }
}
//#endif

//#if W_Q4_0
// main block: qs[16] (4 words); w = d·(q − 8)
fn dq_group(r: u32, g: u32) {
    let b = r * P.bpr + g;
    let bw = b * 4u;
    let d = split_d(b);
    for (var i = 0u; i < 4u; i++) {
        let w = W[bw + i];
        dq[i] = d * (vec4<f32>(nib4(w, 0u)) - 8.0);
        dq[i + 4u] = d * (vec4<f32>(nib4(w, 4u)) - 8.0);
    }
}
//#endif

//#if W_IQ4_NL
// main block: qs[16] (4 words); w = d·kvalues[q]
fn dq_group(r: u32, g: u32) {
    let b = r * P.bpr + g;
    let bw = b * 4u;
    let d = split_d(b);
    for (var i = 0u; i < 4u; i++) {
        let w = W[bw + i];
        dq[i] = d * kv4(nib4(w, 0u));
        dq[i + 4u] = d * kv4(nib4(w, 4u));
    }
}
//#endif

//#if W_Q4_1
// block (5 words): d f16 | m f16 | qs[16]; w = d·q + m
fn dq_group(r: u32, g: u32) {
    let bw = (r * P.bpr + g) * 5u;
    let w0 = W[bw];
    let d = f16_half(w0, 0u);
    let m = f16_half(w0, 1u);
    for (var i = 0u; i < 4u; i++) {
        let w = W[bw + 1u + i];
        dq[i] = d * vec4<f32>(nib4(w, 0u)) + m;
        dq[i + 4u] = d * vec4<f32>(nib4(w, 4u)) + m;
    }
}
//#endif

//#if W_Q5_0
// main block (5 words): qh u32 | qs[16]; q = nibble | qh bit e << 4; w = d·(q − 16)
fn dq_group(r: u32, g: u32) {
    let b = r * P.bpr + g;
    let bw = b * 5u;
    let d = split_d(b);
    let qh = W[bw];
    for (var i = 0u; i < 4u; i++) {
        let w = W[bw + 1u + i];
        let e = 4u * i;
        let hl = (vec4<u32>(qh) >> vec4<u32>(e, e + 1u, e + 2u, e + 3u)) & vec4<u32>(1u);
        let hh = (vec4<u32>(qh) >> vec4<u32>(e + 16u, e + 17u, e + 18u, e + 19u)) & vec4<u32>(1u);
        dq[i] = d * (vec4<f32>(nib4(w, 0u) | (hl << vec4<u32>(4u))) - 16.0);
        dq[i + 4u] = d * (vec4<f32>(nib4(w, 4u) | (hh << vec4<u32>(4u))) - 16.0);
    }
}
//#endif

//#if W_Q5_1
// block (6 words): d f16 | m f16 | qh u32 | qs[16]; w = d·q + m
fn dq_group(r: u32, g: u32) {
    let bw = (r * P.bpr + g) * 6u;
    let w0 = W[bw];
    let d = f16_half(w0, 0u);
    let m = f16_half(w0, 1u);
    let qh = W[bw + 1u];
    for (var i = 0u; i < 4u; i++) {
        let w = W[bw + 2u + i];
        let e = 4u * i;
        let hl = (vec4<u32>(qh) >> vec4<u32>(e, e + 1u, e + 2u, e + 3u)) & vec4<u32>(1u);
        let hh = (vec4<u32>(qh) >> vec4<u32>(e + 16u, e + 17u, e + 18u, e + 19u)) & vec4<u32>(1u);
        dq[i] = d * vec4<f32>(nib4(w, 0u) | (hl << vec4<u32>(4u))) + m;
        dq[i + 4u] = d * vec4<f32>(nib4(w, 4u) | (hh << vec4<u32>(4u))) + m;
    }
}
//#endif

//#if W_Q8_0
// main block: qs i8[32] (8 words); w = d·q
fn dq_group(r: u32, g: u32) {
    let b = r * P.bpr + g;
    let bw = b * 8u;
    let d = split_d(b);
    for (var i = 0u; i < 8u; i++) {
        dq[i] = d * sbytes4(W[bw + i]);
    }
}
//#endif

//#if W_Q2_K
// block (21 words): scales u8[16] | qs[64] | d f16 | dmin f16; group g = 4h + s:
// element 32g + l: q = (qs[32h + l] >> 2s) & 3, sc = scales[2g + l/16]
fn dq_group(r: u32, gg: u32) {
    let bw = (r * P.bpr + gg / 8u) * 21u;
    let g = gg % 8u;
    let h = g / 4u;
    let s = g % 4u;
    let wd = W[bw + 20u];
    let d = f16_half(wd, 0u);
    let dmin = f16_half(wd, 1u);
    for (var half = 0u; half < 2u; half++) {
        let sc = blk_byte(bw, 2u * g + half);
        let dl = d * f32(sc & 15u);
        let ml = dmin * f32(sc >> 4u);
        for (var i = 0u; i < 4u; i++) {
            let w = W[bw + 4u + 8u * h + 4u * half + i];
            let q = (bytes4(w) >> vec4<u32>(2u * s)) & vec4<u32>(3u);
            dq[4u * half + i] = dl * vec4<f32>(q) - ml;
        }
    }
}
//#endif

//#if W_Q3_K
// main block (27 words): hmask[32] | qs[64] | scales[12]; d moved out. group g = 4h + s:
// element 32g + l: q = ((qs[32h + l] >> 2s) & 3) − (hmask[l] bit g ? 0 : 4), 6-bit signed
// scale i = 2g + l/16.
fn q3_scale(bw: u32, i: u32) -> f32 {
    var lo: u32;
    if i < 8u {
        lo = blk_byte(bw, 96u + i) & 15u;
    } else {
        lo = blk_byte(bw, 96u + i - 8u) >> 4u;
    }
    let hi = (blk_byte(bw, 104u + i % 4u) >> (2u * (i / 4u))) & 3u;
    return f32(i32(lo | (hi << 4u)) - 32);
}
fn dq_group(r: u32, gg: u32) {
    let b = r * P.bpr + gg / 8u;
    let bw = b * 27u;
    let g = gg % 8u;
    let h = g / 4u;
    let s = g % 4u;
    let d = split_d(b);
    for (var half = 0u; half < 2u; half++) {
        let dl = d * q3_scale(bw, 2u * g + half);
        for (var i = 0u; i < 4u; i++) {
            let j = 4u * half + i; // word of the 32 bytes covering l = 4j..4j+3
            let q2 = (bytes4(W[bw + 8u + 8u * h + j]) >> vec4<u32>(2u * s)) & vec4<u32>(3u);
            let hb = (bytes4(W[bw + j]) >> vec4<u32>(g)) & vec4<u32>(1u);
            let q = vec4<f32>(q2) - 4.0 * (1.0 - vec4<f32>(hb));
            dq[j] = dl * q;
        }
    }
}
//#endif

//#if W_Q4_K
// block (36 words): d | dmin | scales[12] | qs[128]; group g: chunk c = g/2, low nibbles
// for even g, high for odd; 6-bit (sc, m) pairs.
fn k4_scale_min(bw: u32, j: u32) -> vec2<f32> {
    var sc: u32;
    var m: u32;
    if j < 4u {
        sc = blk_byte(bw, 4u + j) & 63u;
        m = blk_byte(bw, 8u + j) & 63u;
    } else {
        sc = (blk_byte(bw, 8u + j) & 15u) | ((blk_byte(bw, j) >> 6u) << 4u);
        m = (blk_byte(bw, 8u + j) >> 4u) | ((blk_byte(bw, 4u + j) >> 6u) << 4u);
    }
    return vec2<f32>(f32(sc), f32(m));
}
fn dq_group(r: u32, gg: u32) {
    let bw = (r * P.bpr + gg / 8u) * 36u;
    let g = gg % 8u;
    let w0 = W[bw];
    let sm = k4_scale_min(bw, g);
    let dl = f16_half(w0, 0u) * sm.x;
    let ml = f16_half(w0, 1u) * sm.y;
    let qw = bw + 4u + 8u * (g / 2u);
    let sh = 4u * (g % 2u);
    for (var i = 0u; i < 8u; i++) {
        dq[i] = dl * vec4<f32>(nib4(W[qw + i], sh)) - ml;
    }
}
//#endif

//#if W_Q5_K
// block (44 words): d | dmin | scales[12] | qh[32] | qs[128]; as Q4_K plus bit g of qh[l].
fn k4_scale_min(bw: u32, j: u32) -> vec2<f32> {
    var sc: u32;
    var m: u32;
    if j < 4u {
        sc = blk_byte(bw, 4u + j) & 63u;
        m = blk_byte(bw, 8u + j) & 63u;
    } else {
        sc = (blk_byte(bw, 8u + j) & 15u) | ((blk_byte(bw, j) >> 6u) << 4u);
        m = (blk_byte(bw, 8u + j) >> 4u) | ((blk_byte(bw, 4u + j) >> 6u) << 4u);
    }
    return vec2<f32>(f32(sc), f32(m));
}
fn dq_group(r: u32, gg: u32) {
    let bw = (r * P.bpr + gg / 8u) * 44u;
    let g = gg % 8u;
    let w0 = W[bw];
    let sm = k4_scale_min(bw, g);
    let dl = f16_half(w0, 0u) * sm.x;
    let ml = f16_half(w0, 1u) * sm.y;
    let qw = bw + 12u + 8u * (g / 2u);
    let sh = 4u * (g % 2u);
    for (var i = 0u; i < 8u; i++) {
        let hb = (bytes4(W[bw + 4u + i]) >> vec4<u32>(g)) & vec4<u32>(1u);
        dq[i] = dl * vec4<f32>(nib4(W[qw + i], sh) | (hb << vec4<u32>(4u))) - ml;
    }
}
//#endif

//#if W_Q6_K
// main block (52 words): ql[128] | qh[64] | scales i8[16]; d moved out. group g = 4h + t:
// element 32g + l: low 4 bits from ql[64h + 32(t&1) + l] (shift 4(t>>1)), high 2 bits from
// qh[32h + l] >> 2t; w = d·scales[2g + l/16]·(q − 32).
fn dq_group(r: u32, gg: u32) {
    let b = r * P.bpr + gg / 8u;
    let bw = b * 52u;
    let g = gg % 8u;
    let h = g / 4u;
    let t = g % 4u;
    let d = split_d(b);
    let lw = bw + 16u * h + 8u * (t & 1u);
    let hw = bw + 32u + 8u * h;
    let lsh = 4u * (t >> 1u);
    for (var half = 0u; half < 2u; half++) {
        let dl = d * f32(sext8(blk_byte(bw, 192u + 2u * g + half)));
        for (var i = 0u; i < 4u; i++) {
            let j = 4u * half + i;
            let lo = (bytes4(W[lw + j]) >> vec4<u32>(lsh)) & vec4<u32>(15u);
            let hi = (bytes4(W[hw + j]) >> vec4<u32>(2u * t)) & vec4<u32>(3u);
            dq[j] = dl * (vec4<f32>(lo | (hi << vec4<u32>(4u))) - 32.0);
        }
    }
}
//#endif

//#if W_IQ4_XS
// block (34 words): d f16 | scales_h u16 | scales_l[4] | qs[128]; sub-block g uses
// qs[16g..16g+15] in nibble order A; w = d·(ls − 32)·kvalues[q].
fn dq_group(r: u32, gg: u32) {
    let bw = (r * P.bpr + gg / 8u) * 34u;
    let g = gg % 8u;
    let w0 = W[bw];
    let d = f16_half(w0, 0u);
    let sh = w0 >> 16u;
    let ls = ((blk_byte(bw, 4u + g / 2u) >> (4u * (g % 2u))) & 15u) | (((sh >> (2u * g)) & 3u) << 4u);
    let dl = d * f32(i32(ls) - 32);
    for (var i = 0u; i < 4u; i++) {
        let w = W[bw + 2u + 4u * g + i];
        dq[i] = dl * kv4(nib4(w, 0u));
        dq[i + 4u] = dl * kv4(nib4(w, 4u));
    }
}
//#endif
