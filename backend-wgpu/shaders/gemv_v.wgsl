// gemv_v.wgsl — y = x·Wᵀ for ONE x row (m = 1), vec4<u32> weight loads, for the weight types
// whose prepared rows are 16-byte aligned (BF16, Q8_0, Q4_K; see src/weight.rs). x: f32 [k]
// (bound as vec4, offset a multiple of 4); W chunk: rows r0..r0+n_c of [n, k]; y: f32 [n].
//
// Thread mapping: a workgroup is RW teams of 32 invocations; team t owns the NR consecutive
// weight rows row0..row0+NR-1 (row0 = (workgroup·RW + t)·NR). The team walks k in chunks of
// 1024 elements: per chunk each invocation loads its 32 x values once into registers (x0..x7,
// 8 vec4) and then, for each of its NR rows, the weight vec4s that hold those same 32
// elements (BF16: 4 vec4 = 32 × 2 B; Q8_0: 2 vec4 of int8 + 2 f16 d; Q4_K: 1 vec4 of nibbles
// + the block's 16-byte header), so one x load serves NR rows and every weight load is 16
// bytes, lanes reading consecutive vec4s. Quants become floats without integer→float
// conversion instructions (OR into the mantissa of 2^23, subtract 2^23). The 32 partial sums
// of a row are added with subgroupAdd where subgroups are exactly the 32-lane teams (SG32),
// else with a tree in workgroup memory.
//
// Bytes moved: the weight once (n·k·bytes_per_weight), x once per team (n/NR·k·4 from cache),
// y n·4. FLOPs: 2·n·k.

override RW: u32 = 4u;
override NR: u32 = 4u;
override WGS: u32 = 128u; // = 32·RW

struct Params {
    n_c: u32,    // weight rows in this chunk
    k: u32,
    r0: u32,     // first weight row of this chunk (column of y)
    bpr: u32,    // blocks per row
    d_base: u32, // Q8_0: word index of the moved-out f16 d array in W
    x4: u32,     // vec4 offset of x
    o_off: u32,  // element offset of y
    chunks: u32, // ceil(k / 1024)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W4: array<vec4<u32>>;      // the chunk's rows
@group(0) @binding(2) var<storage, read_write> X: array<vec4<f32>>; // [k/4]
@group(0) @binding(3) var<storage, read_write> O: array<f32>;       // [n]
//#if W_Q8_0
@group(0) @binding(4) var<storage, read> W: array<u32>;             // same buffer, for d
//#endif

// The invocation's 32 x values of the current chunk (zero where past k).
var<private> x0: vec4<f32>;
var<private> x1: vec4<f32>;
var<private> x2: vec4<f32>;
var<private> x3: vec4<f32>;
var<private> x4: vec4<f32>;
var<private> x5: vec4<f32>;
var<private> x6: vec4<f32>;
var<private> x7: vec4<f32>;
// Which of the invocation's weight vec4s lie inside the row.
var<private> v0: bool;
var<private> v1: bool;
var<private> v2: bool;
var<private> v3: bool;
// Q4_K: the sums of x0..x3 and of x4..x7 (for the min term).
var<private> sa: f32;
var<private> sb: f32;

const MAGIC: u32 = 0x4b000000u; // 2^23 as f32 bits: OR a small integer into the mantissa

//#if W_BF16
// Lane l, chunk c: weight vec4s j = 128c + 32t + l (t < 4), 8 bf16 each; x vec4s 2j, 2j+1.
fn load_x(c: u32, l: u32) {
    let q = P.k / 8u;
    let j = c * 128u + l;
    let xb = P.x4 + 2u * j;
    v0 = j < q;
    v1 = j + 32u < q;
    v2 = j + 64u < q;
    v3 = j + 96u < q;
    x0 = vec4<f32>(0.0); x1 = x0; x2 = x0; x3 = x0; x4 = x0; x5 = x0; x6 = x0; x7 = x0;
    if v0 { x0 = X[xb]; x1 = X[xb + 1u]; }
    if v1 { x2 = X[xb + 64u]; x3 = X[xb + 65u]; }
    if v2 { x4 = X[xb + 128u]; x5 = X[xb + 129u]; }
    if v3 { x6 = X[xb + 192u]; x7 = X[xb + 193u]; }
}
fn bf4(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}
fn part(r: u32, c: u32, l: u32) -> f32 {
    let base = r * (P.k / 8u) + c * 128u + l;
    var s = 0.0;
    if v0 { let w = W4[base]; s += dot(bf4(w.x, w.y), x0) + dot(bf4(w.z, w.w), x1); }
    if v1 { let w = W4[base + 32u]; s += dot(bf4(w.x, w.y), x2) + dot(bf4(w.z, w.w), x3); }
    if v2 { let w = W4[base + 64u]; s += dot(bf4(w.x, w.y), x4) + dot(bf4(w.z, w.w), x5); }
    if v3 { let w = W4[base + 96u]; s += dot(bf4(w.x, w.y), x6) + dot(bf4(w.z, w.w), x7); }
    return s;
}
//#endif

//#if W_Q8_0
// Block = 32 int8 (2 vec4) in W4, its f16 d in the d array. Lane l, chunk c: weight vec4s
// j = 64c + 32t + l (t < 2), 16 int8 each, block j/2; x vec4s 4j..4j+3.
fn load_x(c: u32, l: u32) {
    let q = P.k / 16u;
    let j = c * 64u + l;
    let xb = P.x4 + 4u * j;
    v0 = j < q;
    v1 = j + 32u < q;
    x0 = vec4<f32>(0.0); x1 = x0; x2 = x0; x3 = x0; x4 = x0; x5 = x0; x6 = x0; x7 = x0;
    if v0 { x0 = X[xb]; x1 = X[xb + 1u]; x2 = X[xb + 2u]; x3 = X[xb + 3u]; }
    if v1 { x4 = X[xb + 128u]; x5 = X[xb + 129u]; x6 = X[xb + 130u]; x7 = X[xb + 131u]; }
}
// The 4 signed bytes of w: (b ^ 0x80) = q + 128 in the mantissa of 2^23.
fn s8(w: u32) -> vec4<f32> {
    let b = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    return bitcast<vec4<f32>>((b ^ vec4<u32>(0x80u)) | vec4<u32>(MAGIC)) - vec4<f32>(8388736.0);
}
fn d8(b: u32) -> f32 {
    return f16_half(W[P.d_base + (b >> 1u)], b & 1u);
}
fn part(r: u32, c: u32, l: u32) -> f32 {
    let j = c * 64u + l;
    let base = r * (P.k / 16u) + j;
    let b = r * P.bpr + j / 2u;
    var s = 0.0;
    if v0 {
        let w = W4[base];
        s += d8(b) * (dot(s8(w.x), x0) + dot(s8(w.y), x1) + dot(s8(w.z), x2) + dot(s8(w.w), x3));
    }
    if v1 {
        let w = W4[base + 32u];
        s += d8(b + 16u) * (dot(s8(w.x), x4) + dot(s8(w.y), x5) + dot(s8(w.z), x6) + dot(s8(w.w), x7));
    }
    return s;
}
//#endif

//#if W_Q4_K
// Block (144 B = 9 vec4): vec4 0 = d|dmin, scales[0..12]; vec4 1 + q (q < 8) = qs[16q..16q+16]
// = elements 16(q%2)..+16 of group 2(q/2) (low nibbles) and of group 2(q/2)+1 (high nibbles).
// Lane l, chunk c: block 4c + l/8, q = l%8; x: 16 values of each of the two groups.
fn load_x(c: u32, l: u32) {
    let blk = c * 4u + l / 8u;
    let q = l % 8u;
    let xa = P.x4 + blk * 64u + (q / 2u) * 16u + (q % 2u) * 4u;
    v0 = blk < P.bpr;
    x0 = vec4<f32>(0.0); x1 = x0; x2 = x0; x3 = x0; x4 = x0; x5 = x0; x6 = x0; x7 = x0;
    if v0 {
        x0 = X[xa]; x1 = X[xa + 1u]; x2 = X[xa + 2u]; x3 = X[xa + 3u];
        x4 = X[xa + 8u]; x5 = X[xa + 9u]; x6 = X[xa + 10u]; x7 = X[xa + 11u];
    }
    let one = vec4<f32>(1.0);
    sa = dot(x0 + x1 + x2 + x3, one);
    sb = dot(x4 + x5 + x6 + x7, one);
}
// Nibbles at bit s of the 4 bytes of w, as floats.
fn q4(w: u32, s: u32) -> vec4<f32> {
    let n = (vec4<u32>(w) >> vec4<u32>(s, s + 8u, s + 16u, s + 24u)) & vec4<u32>(15u);
    return bitcast<vec4<f32>>(n | vec4<u32>(MAGIC)) - vec4<f32>(8388608.0);
}
fn part(r: u32, c: u32, l: u32) -> f32 {
    let blk = c * 4u + l / 8u;
    let q = l % 8u;
    if !v0 {
        return 0.0;
    }
    let bw = (r * P.bpr + blk) * 9u;
    let h = W4[bw];
    let w = W4[bw + 1u + q];
    // 6-bit (scale, min) of groups j = 2(q/2) and j + 1 (get_scale_min_k4): bytes jj, jj + 1
    // of scales[0..4] (h.y), [4..8] (h.z), [8..12] (h.w) with jj = j % 4.
    let jj = (2u * (q / 2u)) % 4u;
    let sh = vec2<u32>(8u * jj, 8u * jj + 8u);
    let by = (vec2<u32>(h.y) >> sh) & vec2<u32>(255u);
    let bz = (vec2<u32>(h.z) >> sh) & vec2<u32>(255u);
    let bv = (vec2<u32>(h.w) >> sh) & vec2<u32>(255u);
    let hi = q >= 4u;
    let sc = select(by & vec2<u32>(63u), (bv & vec2<u32>(15u)) | ((by >> vec2<u32>(6u)) << vec2<u32>(4u)), hi);
    let mn = select(bz & vec2<u32>(63u), (bv >> vec2<u32>(4u)) | ((bz >> vec2<u32>(6u)) << vec2<u32>(4u)), hi);
    let scf = bitcast<vec2<f32>>(sc | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let mnf = bitcast<vec2<f32>>(mn | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let a = dot(q4(w.x, 0u), x0) + dot(q4(w.y, 0u), x1) + dot(q4(w.z, 0u), x2) + dot(q4(w.w, 0u), x3);
    let b = dot(q4(w.x, 4u), x4) + dot(q4(w.y, 4u), x5) + dot(q4(w.z, 4u), x6) + dot(q4(w.w, 4u), x7);
    return f16_half(h.x, 0u) * (scf.x * a + scf.y * b) - f16_half(h.x, 1u) * (mnf.x * sa + mnf.y * sb);
}
//#endif

var<workgroup> red: array<f32, 256>;

// The sum of v over the 32 invocations of team `team` (lane l), valid in lane 0.
fn team_sum(v: f32, li: u32, team: u32, l: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var st = 16u; st > 0u; st = st / 2u) {
        if l < st {
            red[li] += red[li + st];
        }
        workgroupBarrier();
    }
    let t = red[team * 32u];
    workgroupBarrier();
    return t;
}

fn put(row: u32, v: f32) {
    if row < P.n_c {
        O[P.o_off + P.r0 + row] = v;
    }
}

@compute @workgroup_size(WGS)
fn gemv_v(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32,
//#if SG32
          @builtin(subgroup_id) sgid: u32, @builtin(subgroup_invocation_id) sgi: u32,
//#endif
) {
//#if SG32
    let team = sgid;
    let l = sgi;
//#else
    let team = li / 32u;
    let l = li % 32u;
//#endif
    let row0 = ((wid.x + wid.y * nwg.x) * RW + team) * NR;
    let last = P.n_c - 1u;
    // Rows past the chunk read the last row (computed, never written).
    let ra = min(row0, last);
    let rb = min(row0 + 1u, last);
    let rc = min(row0 + 2u, last);
    let rd = min(row0 + 3u, last);
    let re = min(row0 + 4u, last);
    let rf = min(row0 + 5u, last);
    let rg = min(row0 + 6u, last);
    let rh = min(row0 + 7u, last);
    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    for (var c = 0u; c < P.chunks; c++) {
        load_x(c, l);
        a0 += part(ra, c, l);
        if NR > 1u {
            a1 += part(rb, c, l);
        }
        if NR > 2u {
            a2 += part(rc, c, l);
            a3 += part(rd, c, l);
        }
        if NR > 4u {
            a4 += part(re, c, l);
            a5 += part(rf, c, l);
            a6 += part(rg, c, l);
            a7 += part(rh, c, l);
        }
    }
//#if SG32
    a0 = subgroupAdd(a0);
    a1 = subgroupAdd(a1);
    a2 = subgroupAdd(a2);
    a3 = subgroupAdd(a3);
    a4 = subgroupAdd(a4);
    a5 = subgroupAdd(a5);
    a6 = subgroupAdd(a6);
    a7 = subgroupAdd(a7);
//#else
    a0 = team_sum(a0, li, team, l);
    if NR > 1u {
        a1 = team_sum(a1, li, team, l);
    }
    if NR > 2u {
        a2 = team_sum(a2, li, team, l);
        a3 = team_sum(a3, li, team, l);
    }
    if NR > 4u {
        a4 = team_sum(a4, li, team, l);
        a5 = team_sum(a5, li, team, l);
        a6 = team_sum(a6, li, team, l);
        a7 = team_sum(a7, li, team, l);
    }
//#endif
    if l == 0u {
        put(row0, a0);
        if NR > 1u {
            put(row0 + 1u, a1);
        }
        if NR > 2u {
            put(row0 + 2u, a2);
            put(row0 + 3u, a3);
        }
        if NR > 4u {
            put(row0 + 4u, a4);
            put(row0 + 5u, a5);
            put(row0 + 6u, a6);
            put(row0 + 7u, a7);
        }
    }
}
