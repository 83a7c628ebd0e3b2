// gemv_q4f.wgsl — y = x·Wᵀ for ONE x row (m = 1), Q4_K, with x rounded to int8 per 16
// elements in workgroup memory and integer dot products (gemv_x8.wgsl's arithmetic, its
// Q4K_PACK decode), but the weight STREAMED FLAT: a team's NR consecutive rows are one
// contiguous span of 144-byte blocks (src/weight.rs keeps Q4_K as GGUF has it: 9 vec4 per
// block, vec4 0 = d|dmin + 12 scale bytes, vec4 1 + q = qs[16q..16q+16]), and lane l of the
// team loads span vec4s l, l + 32, l + 64, ... — every load instruction of the team is 512
// contiguous bytes, and each lane keeps D of them in flight (D·16 bytes per lane; gemv_x8
// keeps one 16-byte qs vec4 per row and chunk, plus the 16-byte header re-read by 8 lanes).
// x: f32 [k] (bound as vec4, offset a multiple of 4, k a multiple of 256); W chunk: rows
// r0..r0+n_c of [n, k]; y: f32 [n].
//
// A LAB VARIANT, off by default (`set_vgemv_q4f`, `KILN_WGPU_Q4F=DEPTH,HEADER`): on an H200
// (BENCHMARKS.md, "(vq4k)") it was slower than gemv_x8 at every shape, depth and header mode
// measured, with and without its decode (more bytes per lane in flight did not help: depth 8
// was slower than depth 2, as fewer workgroups fit at once), so the Q4_K GEMV stays gemv_x8.
//
// Thread mapping: a workgroup is RW teams of 32 invocations (subgroups where SG32); team t owns
// rows row0 = (wg·RW + t)·NR .. row0 + NR (fewer at the end of the chunk), i.e. span vec4s
// [row0·9·bpr, (row0 + NR)·9·bpr). Step s of lane l takes span vec4 v = 32s + l: block
// b = v / 9, field i = v % 9. i = 0 is a header (no work), i = q + 1 is qs vec4 q of block b,
// whose low nibbles are x group 16·(b % bpr) + 4(q/2) + q%2 and high nibbles that group + 2;
// the decode needs block b's header: HDR (the built-in) = loaded again at decode time (its
// 32-byte sector was just fetched by the neighbour lane's load: an L1 hit), HDR_LOAD = loaded
// beside the qs vec4 (D more vec4 registers), HDR_SHFL = taken from the lane that loaded it by
// subgroupShuffle (it is ≤ 8 vec4s back: this step's or the previous step's register). The
// products go to the lane's accumulator of row b / bpr; at the end one subgroupAdd (or a
// workgroup tree) per row. First the loads of steps 0..D−1 go out, then the workgroup rounds
// x (invocation i: groups i, i + WGS, ... of 16) into workgroup memory behind one barrier; in
// the loop, each ring slot is refilled with the step D ahead right after it is taken.
//
// Bytes moved: the weight once (n·k·144/256) in 512-byte team loads, plus the header re-reads
// from L1 (HDR); x once per workgroup from L2 (k·4 per n/(RW·NR) workgroups) and 1.5 bytes per
// element per team from workgroup memory; y n·4. FLOPs: 2·n·k (int8 MACs, 8 dot4I8Packed per
// 32 weights) + the rounding of x (≈ 6 per element per workgroup). Accuracy: gemv_x8.wgsl's
// (the same rounding of x, the same exact integer sums).

override RW: u32 = 8u;
override NR: u32 = 2u;
override WGS: u32 = 256u; // = 32·RW
// Steps (vec4 loads per lane) in flight: 1, 2, 4 or 8.
override D: u32 = 8u;

struct Params {
    n_c: u32,    // weight rows in this chunk
    k: u32,
    r0: u32,     // first weight row of this chunk (column of y)
    bpr: u32,    // blocks per row
    d_base: u32, // unused (Q8_0's d array in gemv_x8)
    x4: u32,     // vec4 offset of x
    o_off: u32,  // element offset of y
    chunks: u32, // unused
    pn: vec4<u32>,  // MANY (gemv_many.wgsl): rows, first workgroup, d_base, y offset per part
    pwg: vec4<u32>,
    pd: vec4<u32>,
    po: vec4<u32>,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W4: array<vec4<u32>>;      // the chunk's rows
@group(0) @binding(2) var<storage, read_write> X: array<vec4<f32>>; // [k/4]
@group(0) @binding(3) var<storage, read_write> O: array<f32>;       // [n]

// x rounded to int8 per group of 16 (round_x8.wgsl): quants and (d, d·Σq). XG = k/16 rounded up.
var<workgroup> xq: array<vec4<u32>, {{XG}}>;
var<workgroup> xd: array<vec2<f32>, {{XG}}>;

fn quant_x(li: u32) {
    let ng = P.k / 16u;
    for (var g = li; g < ng; g += WGS) {
        let b = P.x4 + 4u * g;
        let r = round_x16(X[b], X[b + 1u], X[b + 2u], X[b + 3u]);
        xq[g] = r.q;
        xd[g] = r.dq;
    }
}

// The team's span: first vec4 and length; the lane; the row of the lane's current block
// (rl) and that row's first block (rb).
var<private> base: u32;
var<private> span: u32;
var<private> lane: u32;
var<private> rl: u32;
var<private> rb: u32;
// HDR_SHFL: the previous step's vec4 (the header of this step's block may sit there).
var<private> prev: vec4<u32>;

// Row sums (glu_out of gemv_many.wgsl reads a0..a7).
var<private> a0: f32;
var<private> a1: f32;
var<private> a2: f32;
var<private> a3: f32;
var<private> a4: f32;
var<private> a5: f32;
var<private> a6: f32;
var<private> a7: f32;

// The ring: the vec4 (and HDR_LOAD: the header) of D steps.
var<private> s0: vec4<u32>;
var<private> s1: vec4<u32>;
var<private> s2: vec4<u32>;
var<private> s3: vec4<u32>;
var<private> s4: vec4<u32>;
var<private> s5: vec4<u32>;
var<private> s6: vec4<u32>;
var<private> s7: vec4<u32>;
var<private> h0: vec4<u32>;
var<private> h1: vec4<u32>;
var<private> h2: vec4<u32>;
var<private> h3: vec4<u32>;
var<private> h4: vec4<u32>;
var<private> h5: vec4<u32>;
var<private> h6: vec4<u32>;
var<private> h7: vec4<u32>;

// Span vec4 of step s (zero past the span).
fn ldv(s: u32) -> vec4<u32> {
    let v = 32u * s + lane;
    if v < span {
        return ldw4(base + v);
    }
    return vec4<u32>(0u);
}

// HDR_LOAD: the header of step s's block (zero past the span).
fn ldh(s: u32) -> vec4<u32> {
//#if HDR_LOAD
    let v = 32u * s + lane;
    if v < span {
        return ldw4(base + 9u * (v / 9u));
    }
//#endif
    return vec4<u32>(0u);
}

fn i2f(i: i32) -> f32 {
    return bitcast<f32>(i + 0x4b400000) - 12582912.0;
}

const MAGIC: u32 = 0x4b000000u;

// qs vec4 q of a block with header h against x groups g (low nibbles) and g + 2 (high):
// gemv_x8.wgsl's Q4K_PACK decode with q per step instead of per lane.
fn dpq(w: vec4<u32>, h: vec4<u32>, q: u32, g: u32) -> f32 {
//#if DIAG_LOADS
    // Diagnostic (KILN_WGPU_Q4K_DIAG=loads, wrong results): the loads, no decode.
    return bitcast<f32>((w.x ^ w.y ^ w.z ^ w.w ^ h.x ^ h.y ^ h.z ^ h.w) & 0x007fffffu);
//#endif
    let xa = xq[g];
    let xb = xq[g + 2u];
    let da = xd[g];
    let db = xd[g + 2u];
    let s = 16u * ((q / 2u) % 2u);
    let hi = q >= 4u;
    let s2 = select(0u, 2u, hi);
    let ma = select(0x3f3fu, 0x3030u, hi);
    let mb = select(0u, 0x0f0fu, hi);
    let y = h.y >> s;
    let z = h.z >> s;
    let v = h.w >> s;
    let scp = ((y >> s2) & ma) | (v & mb);
    let mnp = ((z >> s2) & ma) | ((v >> 4u) & mb);
    let m4 = 0x0f0f0f0fu;
    let il = dot4I8Packed(w.x & m4, xa.x) + dot4I8Packed(w.y & m4, xa.y)
           + dot4I8Packed(w.z & m4, xa.z) + dot4I8Packed(w.w & m4, xa.w);
    let ih = dot4I8Packed((w.x >> 4u) & m4, xb.x) + dot4I8Packed((w.y >> 4u) & m4, xb.y)
           + dot4I8Packed((w.z >> 4u) & m4, xb.z) + dot4I8Packed((w.w >> 4u) & m4, xb.w);
    let fl = i2f(il * i32(scp & 0xffu));
    let fh = i2f(ih * i32(scp >> 8u));
    let mn = bitcast<vec2<f32>>(vec2<u32>(mnp & 0xffu, mnp >> 8u) | vec2<u32>(MAGIC)) - vec2<f32>(8388608.0);
    let dm = unpack2x16float(h.x);
    return dm.x * (da.x * fl + db.x * fh) - dm.y * (mn.x * da.y + mn.y * db.y);
}

// Decode step s of the lane: its vec4 w (and HDR_LOAD: its header hl).
fn step(w: vec4<u32>, hl: vec4<u32>, s: u32) {
    let v = 32u * s + lane;
    let b = v / 9u;
    let i = v - 9u * b;
//#if HDR_SHFL
    // the header is span vec4 9b = v − i: lane (l − i) mod 32 of this step, or of the
    // previous one where l < i (every lane shuffles: uniform control flow)
    let src = (lane + 32u - i) % 32u;
    let hs = subgroupShuffle(w, src);
    let hp = subgroupShuffle(prev, src);
    prev = w;
    let h = select(hs, hp, lane < i);
//#endif
    while b >= rb + P.bpr {
        rb += P.bpr;
        rl += 1u;
    }
    if v < span && i != 0u {
//#if HDR_LOAD
        let h = hl;
//#endif
//#if !HDR_LOAD
//#if !HDR_SHFL
        let h = ldw4(base + 9u * b);
//#endif
//#endif
        let q = i - 1u;
        let p = dpq(w, h, q, 16u * (b - rb) + (q / 2u) * 4u + q % 2u);
        a0 += select(0.0, p, rl == 0u);
        if NR > 1u {
            a1 += select(0.0, p, rl == 1u);
        }
        if NR > 2u {
            a2 += select(0.0, p, rl == 2u);
            a3 += select(0.0, p, rl == 3u);
        }
        if NR > 4u {
            a4 += select(0.0, p, rl == 4u);
            a5 += select(0.0, p, rl == 5u);
            a6 += select(0.0, p, rl == 6u);
            a7 += select(0.0, p, rl == 7u);
        }
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
fn gemv_q4f(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    lane = l;
    let rows = min(NR, n_c_ - min(row0, n_c_));
    base = row0 * 9u * P.bpr;
    span = rows * 9u * P.bpr;
    rl = 0u;
    rb = 0u;
    prev = vec4<u32>(0u);
    a0 = 0.0; a1 = 0.0; a2 = 0.0; a3 = 0.0; a4 = 0.0; a5 = 0.0; a6 = 0.0; a7 = 0.0;
    let steps = (span + 31u) / 32u;
    // the first D steps' loads go out before x is rounded
    s0 = ldv(0u);
    h0 = ldh(0u);
    if D > 1u {
        s1 = ldv(1u);
        h1 = ldh(1u);
    }
    if D > 2u {
        s2 = ldv(2u);
        h2 = ldh(2u);
        s3 = ldv(3u);
        h3 = ldh(3u);
    }
    if D > 4u {
        s4 = ldv(4u);
        h4 = ldh(4u);
        s5 = ldv(5u);
        h5 = ldh(5u);
        s6 = ldv(6u);
        h6 = ldh(6u);
        s7 = ldv(7u);
        h7 = ldh(7u);
    }
//#if DIAG_NOX
    // diagnostic (KILN_WGPU_Q4K_DIAG=...,nox): no rounding of x, no barrier (x stays bound)
    if P.chunks == 0xffffffffu {
        quant_x(li);
    }
//#else
    quant_x(li);
    workgroupBarrier();
//#endif
    for (var s = 0u; s < steps; s += D) {
        // each slot: take step s + j, refill with step s + j + D, decode step s + j
        var w = s0;
        var h = h0;
        s0 = ldv(s + D);
        h0 = ldh(s + D);
        step(w, h, s);
        if D > 1u {
            w = s1; h = h1;
            s1 = ldv(s + D + 1u);
            h1 = ldh(s + D + 1u);
            step(w, h, s + 1u);
        }
        if D > 2u {
            w = s2; h = h2;
            s2 = ldv(s + D + 2u);
            h2 = ldh(s + D + 2u);
            step(w, h, s + 2u);
            w = s3; h = h3;
            s3 = ldv(s + D + 3u);
            h3 = ldh(s + D + 3u);
            step(w, h, s + 3u);
        }
        if D > 4u {
            w = s4; h = h4;
            s4 = ldv(s + D + 4u);
            h4 = ldh(s + D + 4u);
            step(w, h, s + 4u);
            w = s5; h = h5;
            s5 = ldv(s + D + 5u);
            h5 = ldh(s + D + 5u);
            step(w, h, s + 5u);
            w = s6; h = h6;
            s6 = ldv(s + D + 6u);
            h6 = ldh(s + D + 6u);
            step(w, h, s + 6u);
            w = s7; h = h7;
            s7 = ldv(s + D + 7u);
            h7 = ldh(s + D + 7u);
            step(w, h, s + 7u);
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
