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
// length) and `W`. Per format: `hdr(r, g)` reads the group-level fields of 32-element group g
// of chunk row r (scales, word bases) into a `Hdr` of scalars, and `dqv(h, i)` returns its
// elements 4i..4i+3 — no private arrays, so everything stays in registers. `dq_group(r, g)`
// fills the private `dq` with all 32 (used by the tiled GEMM and embed).

struct Hdr {
    w: u32,
    y: u32,
    x: u32,
    z: u32,
    a: f32,
    b: f32,
    c: f32,
    e: f32,
}

var<private> dq: array<vec4<f32>, 8>;

fn dq_group(r: u32, g: u32) {
    let h = hdr(r, g);
    for (var i = 0u; i < 8u; i++) {
        dq[i] = dqv(h, i);
    }
}

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
fn hdr(r: u32, g: u32) -> Hdr {
    return Hdr(r * P.k + g * 32u, 0u, 0u, 0u, 0.0, 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let o = h.w + 4u * i;
    return vec4<f32>(bitcast<f32>(W[o]), bitcast<f32>(W[o + 1u]), bitcast<f32>(W[o + 2u]), bitcast<f32>(W[o + 3u]));
}
//#endif

//#if W_F16
fn hdr(r: u32, g: u32) -> Hdr {
    return Hdr((r * P.k + g * 32u) / 2u, 0u, 0u, 0u, 0.0, 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let a = W[h.w + 2u * i];
    let b = W[h.w + 2u * i + 1u];
    return vec4<f32>(f16_half(a, 0u), f16_half(a, 1u), f16_half(b, 0u), f16_half(b, 1u));
}
//#endif

//#if W_BF16
fn hdr(r: u32, g: u32) -> Hdr {
    return Hdr((r * P.k + g * 32u) / 2u, 0u, 0u, 0u, 0.0, 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let a = W[h.w + 2u * i];
    let b = W[h.w + 2u * i + 1u];
    return vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u),
                     bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
}
//#endif

//#if W_Q4_0
// main block: qs[16] (4 words); w = d·(q − 8)
fn hdr(r: u32, g: u32) -> Hdr {
    let b = r * P.bpr + g;
    return Hdr(b * 4u, 0u, 0u, 0u, split_d(b), 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    return h.a * (vec4<f32>(nib4(W[h.w + (i & 3u)], 4u * (i >> 2u))) - 8.0);
}
//#endif

//#if W_IQ4_NL
// main block: qs[16] (4 words); w = d·kvalues[q]
fn hdr(r: u32, g: u32) -> Hdr {
    let b = r * P.bpr + g;
    return Hdr(b * 4u, 0u, 0u, 0u, split_d(b), 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    return h.a * kv4(nib4(W[h.w + (i & 3u)], 4u * (i >> 2u)));
}
//#endif

//#if W_Q4_1
// block (5 words): d f16 | m f16 | qs[16]; w = d·q + m
fn hdr(r: u32, g: u32) -> Hdr {
    let bw = (r * P.bpr + g) * 5u;
    let w0 = W[bw];
    return Hdr(bw + 1u, 0u, 0u, 0u, f16_half(w0, 0u), f16_half(w0, 1u), 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    return h.a * vec4<f32>(nib4(W[h.w + (i & 3u)], 4u * (i >> 2u))) + h.b;
}
//#endif

//#if W_Q5_0
// main block (5 words): qh u32 | qs[16]; q = nibble | qh bit e << 4; w = d·(q − 16)
fn hdr(r: u32, g: u32) -> Hdr {
    let b = r * P.bpr + g;
    let bw = b * 5u;
    return Hdr(bw + 1u, 0u, W[bw], 0u, split_d(b), 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let e = 4u * i; // elements 4i..4i+3 (low nibbles for i < 4, high ones after)
    let hb = (vec4<u32>(h.x) >> vec4<u32>(e, e + 1u, e + 2u, e + 3u)) & vec4<u32>(1u);
    let q = nib4(W[h.w + (i & 3u)], 4u * (i >> 2u)) | (hb << vec4<u32>(4u));
    return h.a * (vec4<f32>(q) - 16.0);
}
//#endif

//#if W_Q5_1
// block (6 words): d f16 | m f16 | qh u32 | qs[16]; w = d·q + m
fn hdr(r: u32, g: u32) -> Hdr {
    let bw = (r * P.bpr + g) * 6u;
    let w0 = W[bw];
    return Hdr(bw + 2u, 0u, W[bw + 1u], 0u, f16_half(w0, 0u), f16_half(w0, 1u), 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let e = 4u * i;
    let hb = (vec4<u32>(h.x) >> vec4<u32>(e, e + 1u, e + 2u, e + 3u)) & vec4<u32>(1u);
    let q = nib4(W[h.w + (i & 3u)], 4u * (i >> 2u)) | (hb << vec4<u32>(4u));
    return h.a * vec4<f32>(q) + h.b;
}
//#endif

//#if W_Q8_0
// main block: qs i8[32] (8 words); w = d·q
fn hdr(r: u32, g: u32) -> Hdr {
    let b = r * P.bpr + g;
    return Hdr(b * 8u, 0u, 0u, 0u, split_d(b), 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    return h.a * sbytes4(W[h.w + i]);
}
//#endif

//#if W_Q2_K
// block (21 words): scales u8[16] | qs[64] | d f16 | dmin f16; group g = 4h + s:
// element 32g + l: q = (qs[32h + l] >> 2s) & 3, sc = scales[2g + l/16]
fn hdr(r: u32, gg: u32) -> Hdr {
    let bw = (r * P.bpr + gg / 8u) * 21u;
    let g = gg % 8u;
    let wd = W[bw + 20u];
    let d = f16_half(wd, 0u);
    let dmin = f16_half(wd, 1u);
    let s0 = blk_byte(bw, 2u * g);
    let s1 = blk_byte(bw, 2u * g + 1u);
    return Hdr(bw + 4u + 8u * (g / 4u), 0u, 2u * (g % 4u), 0u,
               d * f32(s0 & 15u), dmin * f32(s0 >> 4u), d * f32(s1 & 15u), dmin * f32(s1 >> 4u));
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let q = (bytes4(W[h.w + i]) >> vec4<u32>(h.x)) & vec4<u32>(3u);
    let hi = i >= 4u;
    return select(h.a, h.c, hi) * vec4<f32>(q) - select(h.b, h.e, hi);
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
fn hdr(r: u32, gg: u32) -> Hdr {
    let b = r * P.bpr + gg / 8u;
    let bw = b * 27u;
    let g = gg % 8u;
    let d = split_d(b);
    return Hdr(bw, bw + 8u + 8u * (g / 4u), g, 2u * (g % 4u),
               d * q3_scale(bw, 2u * g), 0.0, d * q3_scale(bw, 2u * g + 1u), 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let q2 = (bytes4(W[h.y + i]) >> vec4<u32>(h.z)) & vec4<u32>(3u);
    let hb = (bytes4(W[h.w + i]) >> vec4<u32>(h.x)) & vec4<u32>(1u);
    return select(h.a, h.c, i >= 4u) * (vec4<f32>(q2) - 4.0 * (1.0 - vec4<f32>(hb)));
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
fn hdr(r: u32, gg: u32) -> Hdr {
    let bw = (r * P.bpr + gg / 8u) * 36u;
    let g = gg % 8u;
    let w0 = W[bw];
    let sm = k4_scale_min(bw, g);
    return Hdr(bw + 4u + 8u * (g / 2u), 0u, 4u * (g % 2u), 0u,
               f16_half(w0, 0u) * sm.x, f16_half(w0, 1u) * sm.y, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    return h.a * vec4<f32>(nib4(W[h.w + i], h.x)) - h.b;
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
fn hdr(r: u32, gg: u32) -> Hdr {
    let bw = (r * P.bpr + gg / 8u) * 44u;
    let g = gg % 8u;
    let w0 = W[bw];
    let sm = k4_scale_min(bw, g);
    return Hdr(bw + 12u + 8u * (g / 2u), bw + 4u, 4u * (g % 2u), g,
               f16_half(w0, 0u) * sm.x, f16_half(w0, 1u) * sm.y, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let hb = (bytes4(W[h.y + i]) >> vec4<u32>(h.z)) & vec4<u32>(1u);
    return h.a * vec4<f32>(nib4(W[h.w + i], h.x) | (hb << vec4<u32>(4u))) - h.b;
}
//#endif

//#if W_Q6_K
// main block (52 words): ql[128] | qh[64] | scales i8[16]; d moved out. group g = 4h + t:
// element 32g + l: low 4 bits from ql[64h + 32(t&1) + l] (shift 4(t>>1)), high 2 bits from
// qh[32h + l] >> 2t; w = d·scales[2g + l/16]·(q − 32).
fn hdr(r: u32, gg: u32) -> Hdr {
    let b = r * P.bpr + gg / 8u;
    let bw = b * 52u;
    let g = gg % 8u;
    let h = g / 4u;
    let t = g % 4u;
    let d = split_d(b);
    return Hdr(bw + 16u * h + 8u * (t & 1u), bw + 32u + 8u * h, 4u * (t >> 1u), 2u * t,
               d * f32(sext8(blk_byte(bw, 192u + 2u * g))), 0.0,
               d * f32(sext8(blk_byte(bw, 193u + 2u * g))), 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    let lo = (bytes4(W[h.w + i]) >> vec4<u32>(h.x)) & vec4<u32>(15u);
    let hi = (bytes4(W[h.y + i]) >> vec4<u32>(h.z)) & vec4<u32>(3u);
    return select(h.a, h.c, i >= 4u) * (vec4<f32>(lo | (hi << vec4<u32>(4u))) - 32.0);
}
//#endif

//#if W_IQ4_XS
// block (34 words): d f16 | scales_h u16 | scales_l[4] | qs[128]; sub-block g uses
// qs[16g..16g+15] in nibble order A; w = d·(ls − 32)·kvalues[q].
fn hdr(r: u32, gg: u32) -> Hdr {
    let bw = (r * P.bpr + gg / 8u) * 34u;
    let g = gg % 8u;
    let w0 = W[bw];
    let sh = w0 >> 16u;
    let ls = ((blk_byte(bw, 4u + g / 2u) >> (4u * (g % 2u))) & 15u) | (((sh >> (2u * g)) & 3u) << 4u);
    return Hdr(bw + 2u + 4u * g, 0u, 0u, 0u, f16_half(w0, 0u) * f32(i32(ls) - 32), 0.0, 0.0, 0.0);
}
fn dqv(h: Hdr, i: u32) -> vec4<f32> {
    return h.a * kv4(nib4(W[h.w + (i & 3u)], 4u * (i >> 2u)));
}
//#endif
