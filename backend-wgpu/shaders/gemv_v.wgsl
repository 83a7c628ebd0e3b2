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
// Prefetch: the weight loads of chunk c + 1 are issued before chunk c is decoded (two sets of
// weight registers), so a team keeps loads in flight while it computes.
override PREFETCH: bool = true;

struct Params {
    n_c: u32,    // weight rows in this chunk
    k: u32,
    r0: u32,     // first weight row of this chunk (column of y)
    bpr: u32,    // blocks per row
    d_base: u32, // Q8_0: word index of the moved-out f16 d array in W
    x4: u32,     // vec4 offset of x
    o_off: u32,  // element offset of y
    chunks: u32, // ceil(k / 1024)
    pn: vec4<u32>,  // MANY (gemv_many.wgsl): rows, first workgroup, d_base, y offset per part
    pwg: vec4<u32>,
    pd: vec4<u32>,
    po: vec4<u32>,
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

// Weight words one invocation loads for one row and chunk (unused fields stay zero). `ld`
// only issues loads; `dp` decodes and multiplies, so the loads of all NR rows are in flight
// before the first one is consumed.
struct WL {
    a: vec4<u32>,
    b: vec4<u32>,
    c: vec4<u32>,
    d: vec4<u32>,
    e: u32,
    f: u32,
}

//#if W_BF16
// Lane l, chunk c: weight vec4s j = 128c + 32t + l (t < 4), 8 bf16 each; x vec4s 2j, 2j+1.
fn load_x(c: u32, l: u32, full: bool) {
    let q = P.k / 8u;
    let j = c * 128u + l;
    let xb = P.x4 + 2u * j;
    v0 = full || j < q;
    v1 = full || j + 32u < q;
    v2 = full || j + 64u < q;
    v3 = full || j + 96u < q;
    if !full {
        x0 = vec4<f32>(0.0); x1 = x0; x2 = x0; x3 = x0; x4 = x0; x5 = x0; x6 = x0; x7 = x0;
    }
    if v0 { x0 = X[xb]; x1 = X[xb + 1u]; }
    if v1 { x2 = X[xb + 64u]; x3 = X[xb + 65u]; }
    if v2 { x4 = X[xb + 128u]; x5 = X[xb + 129u]; }
    if v3 { x6 = X[xb + 192u]; x7 = X[xb + 193u]; }
}
fn x_sums() {}
fn ld(r: u32, c: u32, l: u32) -> WL {
    let base = r * (P.k / 8u) + c * 128u + l;
    var w: WL;
    if v0 { w.a = ldw4(base); }
    if v1 { w.b = ldw4(base + 32u); }
    if v2 { w.c = ldw4(base + 64u); }
    if v3 { w.d = ldw4(base + 96u); }
    return w;
}
fn bf4(a: u32, b: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, b << 16u, b & 0xffff0000u));
}
fn dp(w: WL, c: u32, l: u32) -> f32 {
    return dot(bf4(w.a.x, w.a.y), x0) + dot(bf4(w.a.z, w.a.w), x1)
         + dot(bf4(w.b.x, w.b.y), x2) + dot(bf4(w.b.z, w.b.w), x3)
         + dot(bf4(w.c.x, w.c.y), x4) + dot(bf4(w.c.z, w.c.w), x5)
         + dot(bf4(w.d.x, w.d.y), x6) + dot(bf4(w.d.z, w.d.w), x7);
}
//#endif

//#if W_Q8_0
// Block = 32 int8 (2 vec4) in W4, its f16 d in the d array. Lane l, chunk c: weight vec4s
// j = 64c + 32t + l (t < 2), 16 int8 each, block j/2; x vec4s 4j..4j+3.
fn load_x(c: u32, l: u32, full: bool) {
    let q = P.k / 16u;
    let j = c * 64u + l;
    let xb = P.x4 + 4u * j;
    v0 = full || j < q;
    v1 = full || j + 32u < q;
    if !full {
        x0 = vec4<f32>(0.0); x1 = x0; x2 = x0; x3 = x0; x4 = x0; x5 = x0; x6 = x0; x7 = x0;
    }
    if v0 { x0 = X[xb]; x1 = X[xb + 1u]; x2 = X[xb + 2u]; x3 = X[xb + 3u]; }
    if v1 { x4 = X[xb + 128u]; x5 = X[xb + 129u]; x6 = X[xb + 130u]; x7 = X[xb + 131u]; }
}
fn x_sums() {}
fn ld(r: u32, c: u32, l: u32) -> WL {
    let j = c * 64u + l;
    let base = r * (P.k / 16u) + j;
    let b = r * P.bpr + j / 2u;
    var w: WL;
    if v0 { w.a = ldw4(base); w.e = ldw(d_base_ + (b >> 1u)); }
    if v1 { w.b = ldw4(base + 32u); w.f = ldw(d_base_ + ((b + 16u) >> 1u)); }
    return w;
}
// The 4 signed bytes of w: (b ^ 0x80) = q + 128 in the mantissa of 2^23.
fn s8(w: u32) -> vec4<f32> {
    let b = (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    return bitcast<vec4<f32>>((b ^ vec4<u32>(0x80u)) | vec4<u32>(MAGIC)) - vec4<f32>(8388736.0);
}
fn dp(w: WL, c: u32, l: u32) -> f32 {
    // the block of vec4 j is j/2: its d is half (b & 1) of the word loaded; b + 16 has the
    // same parity
    let hf = ((c * 64u + l) / 2u) & 1u;
    let d0 = unpack2x16float(w.e)[hf];
    let d1 = unpack2x16float(w.f)[hf];
    return d0 * (dot(s8(w.a.x), x0) + dot(s8(w.a.y), x1) + dot(s8(w.a.z), x2) + dot(s8(w.a.w), x3))
         + d1 * (dot(s8(w.b.x), x4) + dot(s8(w.b.y), x5) + dot(s8(w.b.z), x6) + dot(s8(w.b.w), x7));
}
//#endif

//#if W_Q4_K
// Block (144 B = 9 vec4): vec4 0 = d|dmin, scales[0..12]; vec4 1 + q (q < 8) = qs[16q..16q+16]
// = elements 16(q%2)..+16 of group 2(q/2) (low nibbles) and of group 2(q/2)+1 (high nibbles).
// Lane l, chunk c: block 4c + l/8, q = l%8; x: 16 values of each of the two groups.
fn load_x(c: u32, l: u32, full: bool) {
    let blk = c * 4u + l / 8u;
    let q = l % 8u;
    let xa = P.x4 + blk * 64u + (q / 2u) * 16u + (q % 2u) * 4u;
    v0 = full || blk < P.bpr;
    if !full {
        x0 = vec4<f32>(0.0); x1 = x0; x2 = x0; x3 = x0; x4 = x0; x5 = x0; x6 = x0; x7 = x0;
    }
    if v0 {
        x0 = X[xa]; x1 = X[xa + 1u]; x2 = X[xa + 2u]; x3 = X[xa + 3u];
        x4 = X[xa + 8u]; x5 = X[xa + 9u]; x6 = X[xa + 10u]; x7 = X[xa + 11u];
    }
}
fn x_sums() {
    let one = vec4<f32>(1.0);
    sa = dot(x0 + x1 + x2 + x3, one);
    sb = dot(x4 + x5 + x6 + x7, one);
}
fn ld(r: u32, c: u32, l: u32) -> WL {
    let bw = (r * P.bpr + c * 4u + l / 8u) * 9u;
    var w: WL;
    if v0 { w.a = ldw4(bw); w.b = ldw4(bw + 1u + l % 8u); }
    return w;
}
// Nibbles at bit s of the 4 bytes of w, as floats.
fn q4(w: u32, s: u32) -> vec4<f32> {
    let n = (vec4<u32>(w) >> vec4<u32>(s, s + 8u, s + 16u, s + 24u)) & vec4<u32>(15u);
    return bitcast<vec4<f32>>(n | vec4<u32>(MAGIC)) - vec4<f32>(8388608.0);
}
fn dp(wl: WL, c: u32, l: u32) -> f32 {
    let q = l % 8u;
    let h = wl.a;
    let w = wl.b;
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
    // d | dmin: the hardware f16 conversion (subnormal scales are checked by the gguf-py
    // vectors in tests/matmul.rs, on lavapipe and on the GPU)
    let dm = unpack2x16float(h.x);
    return dm.x * (scf.x * a + scf.y * b) - dm.y * (mnf.x * sa + mnf.y * sb);
}
//#endif

// The prefetched weights of the next chunk, one set per row.
var<private> n0: WL;
var<private> n1: WL;
var<private> n2: WL;
var<private> n3: WL;
var<private> n4: WL;
var<private> n5: WL;
var<private> n6: WL;
var<private> n7: WL;

fn ld_all(c: u32, l: u32, rows: array<u32, 8>) {
    n0 = ld(rows[0], c, l);
    if NR > 1u {
        n1 = ld(rows[1], c, l);
    }
    if NR > 2u {
        n2 = ld(rows[2], c, l);
        n3 = ld(rows[3], c, l);
    }
    if NR > 4u {
        n4 = ld(rows[4], c, l);
        n5 = ld(rows[5], c, l);
        n6 = ld(rows[6], c, l);
        n7 = ld(rows[7], c, l);
    }
}

var<private> a0: f32;
var<private> a1: f32;
var<private> a2: f32;
var<private> a3: f32;
var<private> a4: f32;
var<private> a5: f32;
var<private> a6: f32;
var<private> a7: f32;

// One chunk for the team's rows r[0..NR) (`full`: the chunk lies inside k, no masks).
fn step(c: u32, l: u32, full: bool, rows: array<u32, 8>) {
    load_x(c, l, full);
    let w0 = ld(rows[0], c, l);
    var w1 = w0;
    var w2 = w0;
    var w3 = w0;
    var w4 = w0;
    var w5 = w0;
    var w6 = w0;
    var w7 = w0;
    if NR > 1u {
        w1 = ld(rows[1], c, l);
    }
    if NR > 2u {
        w2 = ld(rows[2], c, l);
        w3 = ld(rows[3], c, l);
    }
    if NR > 4u {
        w4 = ld(rows[4], c, l);
        w5 = ld(rows[5], c, l);
        w6 = ld(rows[6], c, l);
        w7 = ld(rows[7], c, l);
    }
    x_sums();
    a0 += dp(w0, c, l);
    if NR > 1u {
        a1 += dp(w1, c, l);
    }
    if NR > 2u {
        a2 += dp(w2, c, l);
        a3 += dp(w3, c, l);
    }
    if NR > 4u {
        a4 += dp(w4, c, l);
        a5 += dp(w5, c, l);
        a6 += dp(w6, c, l);
        a7 += dp(w7, c, l);
    }
}

var<workgroup> red: array<f32, 512>; // one per invocation, WGS ≤ 512

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
    if row < n_c_ {
        sto(o_off_ + P.r0 + row, v);
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
//#if GLU
    let row0 = glu_row_group(wid.x + wid.y * nwg.x, team) * NR;
//#else
    let row0 = (part_setup(wid.x + wid.y * nwg.x) * RW + team) * NR;
//#endif
    let last = n_c_ - 1u;
    // Rows past the chunk read the last row (computed, never written).
    let rows = array<u32, 8>(min(row0, last), min(row0 + 1u, last), min(row0 + 2u, last),
                             min(row0 + 3u, last), min(row0 + 4u, last), min(row0 + 5u, last),
                             min(row0 + 6u, last), min(row0 + 7u, last));
    a0 = 0.0; a1 = 0.0; a2 = 0.0; a3 = 0.0; a4 = 0.0; a5 = 0.0; a6 = 0.0; a7 = 0.0;
    let nfull = P.k / 1024u;
    if PREFETCH {
        // full chunks: no masks
        v0 = true;
        v1 = true;
        v2 = true;
        v3 = true;
        if nfull > 0u {
            ld_all(0u, l, rows);
        }
        for (var c = 0u; c < nfull; c++) {
            let w0 = n0;
            let w1 = n1;
            let w2 = n2;
            let w3 = n3;
            let w4 = n4;
            let w5 = n5;
            let w6 = n6;
            let w7 = n7;
            load_x(c, l, true);
            if c + 1u < nfull {
                ld_all(c + 1u, l, rows);
            }
            x_sums();
            a0 += dp(w0, c, l);
            if NR > 1u {
                a1 += dp(w1, c, l);
            }
            if NR > 2u {
                a2 += dp(w2, c, l);
                a3 += dp(w3, c, l);
            }
            if NR > 4u {
                a4 += dp(w4, c, l);
                a5 += dp(w5, c, l);
                a6 += dp(w6, c, l);
                a7 += dp(w7, c, l);
            }
        }
    } else {
        for (var c = 0u; c < nfull; c++) {
            step(c, l, true, rows);
        }
    }
    if nfull < P.chunks {
        step(nfull, l, false, rows);
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
//#if GLU
    glu_out(team, l, row0);
//#else
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
//#endif
}
