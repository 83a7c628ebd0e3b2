// gemm_coop.wgsl — y = x·Wᵀ for many x rows on cooperative matrices (tensor cores), for one
// row chunk of a prepared weight (any weight dtype through dequant.wgsl). Same inputs, outputs
// and k split as gemm.wgsl (Params, Part, gemm_sum are shared): x f32 [m, k]; W chunk rows
// r0..r0+n_c of [n, k]; y f32 [m, n_out].
//
// Needs `enable wgpu_cooperative_matrix;` (prepended for the COOP define), f16, subgroups of
// exactly 32 invocations and a 16×16×16 f16·f16→f32 configuration.
//
// Thread mapping: one workgroup of NT invocations (256 = 8 subgroups; 512 = 16 subgroups with
// `KILN_WGPU_COOP_WG=512`, comparison) owns a TM × 128 output tile (TM = 32, 64 or 128 x rows;
// 128 weight rows) and one k range (split: workgroup z = x-row tile · splits + split). The
// range is walked in stages of G 32-element groups (KS = 32·G k elements; default G = 1,
// `KILN_WGPU_COOP_G` for comparisons). Per stage every invocation loads its weight units
// (S vec4s of one row and group each, default S = 2: a quarter group, 4G/S·256/NT units per
// invocation; `hdr` + S `dqv` per unit) and its XV·G x vec4s (XV = 8·TM/NT), converting both to
// f16 at load time (x clamped to ±65504; see "Loads per stage" below for the unit layout).
// Per stage: barrier; store the held stage into the workgroup tiles (vec4<f16> arrays,
// row-major, row pitch KS + 8 halves: the 8 rows a 16-byte-per-row matrix load touches hit 8
// different bank quads); barrier; issue the NEXT stage's loads (LATE, the default: no branch,
// in the same block as the multiplies, so their latency and the dequant waiting on them can
// overlap the multiplies); each subgroup multiplies 16×16×16 cooperative matrices over the
// stage's KS columns: subgroup sg (of SGM × SGN) owns x rows 32·(sg / SGN) + 0..31 (two A
// matrices) and weight rows 16·NB·(sg % SGN) + 0..16·NB-1 (NB B matrices), 2·NB f32
// accumulators. Groups past the split's range (a partial or the after-last stage) load
// clamped and stage zero weights.
// Epilogue: each accumulator goes through a per-subgroup 16×16 f32 staging tile and the
// subgroup's 32 lanes write its rows that exist (bounds on m and n_c) to y or to Part.
// Diagnostic switches (`KILN_WGPU_COOP_DIAG`, benchmarks only; results are wrong): NO_MMA
// skips the multiplies, NO_DQ stages constant weights (no weight reads, no dequant), NO_X
// skips the x loads and stores.
//
// What bounds it at 16 ≤ m ≤ 128 (H200, BENCHMARKS.md "(vcoop)"): neither bytes nor tensor
// math. Q4_K 4096×14336 at m = 64 takes ~145–155 µs for 33 MB of weights (~0.2 TB/s); Q8_0
// and BF16 move 1.9× and 3.5× the bytes in less time, and m = 16 costs what m = 32 does.
// Leaving out the weight reads + dequant saves about half of it, the multiplies a quarter, the
// x staging < 10 %; what is left (~35 µs) is the barriers, tile stores, the epilogue and the
// split's `gemm_sum` (+ the gap before it, ~7 µs). Each 32-deep group costs ~2.5 µs per
// workgroup: a latency chain (weight load → dequant → store → barrier → matrix loads →
// multiply → barrier) with ~2 workgroups (16 warps) per SM. Deeper stages (G = 2, 3: more
// loads in flight per invocation, fewer barriers) and 512-invocation workgroups were SLOWER.
//
// Workgroup memory: 4·256·NT/32 (Cs) + 2·(128 + TM)·(KS + 8) bytes (TM = 64, G = 1: 23.5 KiB).
// Bytes: weight bytes · ceil(m/TM) + x bytes · ceil(n_c/128) + y (+ 2·splits·m·n_c·4 with a
// split); FLOPs = 2·m·n·k (f16 products, f32 accumulation).

struct Params {
    m: u32,
    n_c: u32,
    k: u32,
    n_out: u32,
    r0: u32,
    bpr: u32,
    d_base: u32,
    x_off: u32,
    o_off: u32,
    splits: u32,
    gps: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
//#if X_VEC4
@group(0) @binding(2) var<storage, read_write> X: array<vec4<f32>>; // [m, k/4]
//#else
@group(0) @binding(2) var<storage, read_write> X: array<f32>; // [m, k]
//#endif
//#if !SPLIT
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [m, n_out]
//#endif
//#if SPLIT
@group(0) @binding(4) var<storage, read_write> Part: array<f32>; // [splits][m][n_c]
//#endif

// invocations per workgroup (256, or 512 with S = 2 and TM ≥ 64), subgroups of 32
const NT: u32 = {{NT}}u;
const NSG: u32 = NT / 32u;
const TM: u32 = {{TM}}u;
// subgroups along n (SGM = NSG / SGN along m), B matrices per subgroup
const SGN: u32 = {{SGN}}u;
const NB: u32 = 8u / SGN; // = 128 / (16·SGN)
// 32-element k groups per stage, k elements per stage
const G: u32 = {{G}}u;
const KS: u32 = 32u * G;
// x vec4s per invocation per group
const XV: u32 = TM * 8u / NT;
// row pitch of the staged tiles, in halves and in vec4<f16>
const PITCH: u32 = KS + 8u;
const P4: u32 = PITCH / 4u;

var<workgroup> Cs: array<f32, {{CS}}>;        // [NSG subgroups][16][16]
var<workgroup> Xs: array<vec4<f16>, {{XS4}}>; // [TM][P4]
var<workgroup> Ws: array<vec4<f16>, {{WS4}}>; // [128][P4]

const HMAX = vec4<f32>(65504.0);

fn h4(v: vec4<f32>) -> vec4<f16> {
    return vec4<f16>(clamp(v, -HMAX, HMAX));
}

// Loads per stage. The weight tile of a stage is 128 rows × G groups × 8 vec4s, cut into units
// of S vec4s (S = 4: half a group, S = 2: a quarter): unit u = (row·G + j)·(8/S) + h (group j
// of the stage, part h), so consecutive invocations take consecutive parts of one row and one
// warp load instruction touches 32·S / (8·G) rows (S = 4, G = 1: 16 rows; S = 2: 8).
// Invocation li takes units li + NT·v, v < 1024·G / (S·NT), held as G slots of 4 vec4<f16>
// (WQ; 2 at NT = 512). The x tile (TM rows × G groups × 8 vec4s) is cut into single vec4s the
// same way (unit u = (row·G + j)·8 + c, `xu`); li takes li + NT·v, v < XV·G, held as G slots
// of XV vec4<f16> (XQ). Groups ≥ g1 are past the split's range: zero weights, loads
// clamped to gl = g1 − 1 so they stay in bounds. No branch: every load of a stage sits in one
// basic block, so all are issued before the first one is waited on.
const S: u32 = {{S}}u;
const UPG: u32 = 8u / S;

struct WQ {
    a: vec4<f16>,
    b: vec4<f16>,
    c: vec4<f16>,
    d: vec4<f16>,
}

struct XQ {
    a: vec4<f16>,
//#if XV2
    b: vec4<f16>,
//#endif
//#if XV4
    c: vec4<f16>,
    d: vec4<f16>,
//#endif
}

// The tile origin and the stage's groups: first gb, last loadable gl, end of the split g1.
struct Span {
    n0: u32,
    m0: u32,
    gb: u32,
    gl: u32,
    g1: u32,
}

fn hdr_of(sp: Span, u: u32) -> Hdr {
    let j = (u / UPG) % G;
    let r = min(sp.n0 + u / (UPG * G), P.n_c - 1u);
    return hdr(r, min(sp.gb + j, sp.gl));
}

// vec4 h·S + i of weight unit u (hd: its group's header), zero past the split's range.
fn dq1(sp: Span, u: u32, hd: Hdr, i: u32) -> vec4<f16> {
    let z = vec4<f16>(0.0);
    let live = sp.gb + (u / UPG) % G < sp.g1;
//#if NO_DQ
    // W is bound but never read (P.pad is 0): the layout keeps binding 1
    var c = vec4<f16>(f16(u % 7u) * 0.01);
    if P.pad == 1u {
        c = vec4<f16>(f16(W[u]));
    }
    return select(z, c, live);
//#else
    return select(z, h4(dqv(hd, (u % UPG) * S + i)), live);
//#endif
}

// Weight slot q: units li + NT·(WU·q + e), e < WU (WU = 2: S = 2 at NT = 256, define U2).
fn ldw(sp: Span, q: u32, li: u32) -> WQ {
//#if U2
    let u0 = li + 2u * NT * q;
    let u1 = u0 + NT;
//#if NO_DQ
    let h0 = Hdr(0u, 0u, 0u, 0u, 0.0, 0.0, 0.0, 0.0);
    let h1 = h0;
//#else
    let h0 = hdr_of(sp, u0);
    let h1 = hdr_of(sp, u1);
//#endif
    return WQ(dq1(sp, u0, h0, 0u), dq1(sp, u0, h0, 1u), dq1(sp, u1, h1, 0u), dq1(sp, u1, h1, 1u));
//#else
    let u = li + NT * q;
//#if NO_DQ
    let h = Hdr(0u, 0u, 0u, 0u, 0.0, 0.0, 0.0, 0.0);
//#else
    let h = hdr_of(sp, u);
//#endif
//#if S2
    let z = vec4<f16>(0.0);
    return WQ(dq1(sp, u, h, 0u), dq1(sp, u, h, 1u), z, z);
//#else
    return WQ(dq1(sp, u, h, 0u), dq1(sp, u, h, 1u), dq1(sp, u, h, 2u), dq1(sp, u, h, 3u));
//#endif
//#endif
}

// x[row, 32g + 4c .. +3]
fn xv(row: u32, g: u32, c: u32) -> vec4<f16> {
//#if X_VEC4
    return h4(X[(P.x_off + row * P.k + g * 32u) / 4u + c]);
//#else
    let o = P.x_off + row * P.k + g * 32u + 4u * c;
    return h4(vec4<f32>(X[o], X[o + 1u], X[o + 2u], X[o + 3u]));
//#endif
}

// x unit u (groups past the split's range are clamped: their weights are zero).
fn ldx1(sp: Span, u: u32) -> vec4<f16> {
    let row = min(sp.m0 + u / (8u * G), P.m - 1u);
    let g = min(sp.gb + (u / 8u) % G, sp.gl);
//#if NO_X
    // X is bound but never read (P.pad is 0): the layout keeps binding 2
    var c = vec4<f16>(0.0);
    if P.pad == 1u {
        c = xv(row, g, u % 8u);
    }
    return c;
//#else
    return xv(row, g, u % 8u);
//#endif
}

// x unit e of slot q: li + NT·(XV·q + e) (single vec4s, consecutive invocations along a row);
// with XROWS, group q, row li / (8/XV), vec4 XV·(li % (8/XV)) + e (each invocation XV
// adjacent vec4s: the older mapping, kept for comparison, `KILN_WGPU_COOP_XMAP=rows`).
fn xu(q: u32, li: u32, e: u32) -> u32 {
//#if XROWS
    let xt = 8u / XV;
    return ((li / xt) * G + q) * 8u + XV * (li % xt) + e;
//#else
    return li + NT * (XV * q + e);
//#endif
}

// x slot q.
fn ldx(sp: Span, q: u32, li: u32) -> XQ {
    return XQ(ldx1(sp, xu(q, li, 0u))
//#if XV2
        , ldx1(sp, xu(q, li, 1u))
//#endif
//#if XV4
        , ldx1(sp, xu(q, li, 2u)), ldx1(sp, xu(q, li, 3u))
//#endif
    );
}

// Weight unit u's S vec4s (a, b[, c, d]) → Ws.
fn stw1(u: u32, a: vec4<f16>, b: vec4<f16>, c: vec4<f16>, d: vec4<f16>) {
    let o = (u / (UPG * G)) * P4 + ((u / UPG) % G) * 8u + (u % UPG) * S;
    Ws[o] = a;
    Ws[o + 1u] = b;
//#if !S2
    Ws[o + 2u] = c;
    Ws[o + 3u] = d;
//#endif
}

fn stx1(u: u32, v: vec4<f16>) {
//#if !NO_X
    Xs[(u / (8u * G)) * P4 + ((u / 8u) % G) * 8u + u % 8u] = v;
//#endif
}

// Store slot q of the weights and of x.
fn stage(q: u32, li: u32, w: WQ, x: XQ) {
//#if U2
    stw1(li + 2u * NT * q, w.a, w.b, w.a, w.b);
    stw1(li + 2u * NT * q + NT, w.c, w.d, w.c, w.d);
//#else
    stw1(li + NT * q, w.a, w.b, w.c, w.d);
//#endif
    stx1(xu(q, li, 0u), x.a);
//#if XV2
    stx1(xu(q, li, 1u), x.b);
//#endif
//#if XV4
    stx1(xu(q, li, 2u), x.c);
    stx1(xu(q, li, 3u), x.d);
//#endif
}

// Write accumulator tile `c` (x rows mr.., weight rows r.. of the chunk) through this
// subgroup's staging tile; lanes write the elements that exist.
fn put(c: coop_mat16x16<f32, C>, sg: u32, lane: u32, s: u32, mr: u32, r: u32) {
    workgroupBarrier();
    coopStoreT(c, &Cs[sg * 256u], 16u);
    workgroupBarrier();
    for (var t = 0u; t < 8u; t++) {
        let e = lane + 32u * t;
        let row = mr + e / 16u;
        let col = r + e % 16u;
        if row < P.m && col < P.n_c {
            let v = Cs[sg * 256u + e];
//#if SPLIT
            Part[(s * P.m + row) * P.n_c + col] = v;
//#else
            O[P.o_off + row * P.n_out + P.r0 + col] = v;
//#endif
        }
    }
}

@compute @workgroup_size({{NT}})
fn gemm_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32,
             @builtin(subgroup_id) sg: u32,
             @builtin(subgroup_invocation_id) lane: u32) {
    let n0 = (wid.x + wid.y * nwg.x) * 128u;
    let s = wid.z % P.splits;
    let m0 = (wid.z / P.splits) * TM;
    let groups = P.k / 32u;
    let g0 = min(s * P.gps, groups);
    let g1 = min(g0 + P.gps, groups);
    let stages = (g1 - g0 + G - 1u) / G;
    // this subgroup's x rows and weight rows within the tile
    let am = 32u * (sg / SGN);
    let bn = 16u * NB * (sg % SGN);

    // zero accumulators: loaded from a zeroed staging tile
    for (var i = li; i < NSG * 256u; i += NT) {
        Cs[i] = 0.0;
    }
    workgroupBarrier();
    var c00 = coopLoadT<coop_mat16x16<f32, C>>(&Cs[0], 16u);
    var c10 = c00;
//#if !NB1
    var c01 = c00;
    var c11 = c00;
//#endif
//#if NB4
    var c02 = c00;
    var c12 = c00;
    var c03 = c00;
    var c13 = c00;
//#endif

    // the first stage's loads
    var sp = Span(n0, m0, g0, max(g1, 1u) - 1u, g1);
    var w0 = ldw(sp, 0u, li);
    var x0 = ldx(sp, 0u, li);
//#if G2
    var w1 = ldw(sp, 1u, li);
    var x1 = ldx(sp, 1u, li);
//#endif
//#if G3
    var w2 = ldw(sp, 2u, li);
    var x2 = ldx(sp, 2u, li);
//#endif
//#if G4
    var w3 = ldw(sp, 3u, li);
    var x3 = ldx(sp, 3u, li);
//#endif
    for (var t = 0u; t < stages; t++) {
        workgroupBarrier();
        stage(0u, li, w0, x0);
//#if G2
        stage(1u, li, w1, x1);
//#endif
//#if G3
        stage(2u, li, w2, x2);
//#endif
//#if G4
        stage(3u, li, w3, x3);
//#endif
        // The next stage's loads. LATE (default): after the barrier, unconditionally (after the
        // last stage every slot is dead and its loads clamped), in the block of the
        // multiplies, so the compiler may overlap their latency and the dequant that waits on
        // them with the multiplies. Without LATE (comparison): before the barrier, inside a
        // branch, where the dequant waited on the loads before the barrier.
//#if LATE
        workgroupBarrier();
//#else
        if t + 1u < stages {
//#endif
        sp.gb = g0 + (t + 1u) * G;
        w0 = ldw(sp, 0u, li);
        x0 = ldx(sp, 0u, li);
//#if G2
        w1 = ldw(sp, 1u, li);
        x1 = ldx(sp, 1u, li);
//#endif
//#if G3
        w2 = ldw(sp, 2u, li);
        x2 = ldx(sp, 2u, li);
//#endif
//#if G4
        w3 = ldw(sp, 3u, li);
        x3 = ldx(sp, 3u, li);
//#endif
//#if !LATE
        }
        workgroupBarrier();
//#endif
//#if !NO_MMA
        for (var kk = 0u; kk < KS; kk += 16u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&Xs[am * P4 + kk / 4u], P4);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&Xs[(am + 16u) * P4 + kk / 4u], P4);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&Ws[bn * P4 + kk / 4u], P4);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c10 = coopMultiplyAdd(a1, b0, c10);
//#if !NB1
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&Ws[(bn + 16u) * P4 + kk / 4u], P4);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c11 = coopMultiplyAdd(a1, b1, c11);
//#endif
//#if NB4
            let b2 = coopLoad<coop_mat16x16<f16, B>>(&Ws[(bn + 32u) * P4 + kk / 4u], P4);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c12 = coopMultiplyAdd(a1, b2, c12);
            let b3 = coopLoad<coop_mat16x16<f16, B>>(&Ws[(bn + 48u) * P4 + kk / 4u], P4);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c13 = coopMultiplyAdd(a1, b3, c13);
//#endif
        }
//#endif
    }
    let mr = m0 + am;
    let r = n0 + bn;
    put(c00, sg, lane, s, mr, r);
    put(c10, sg, lane, s, mr + 16u, r);
//#if !NB1
    put(c01, sg, lane, s, mr, r + 16u);
    put(c11, sg, lane, s, mr + 16u, r + 16u);
//#endif
//#if NB4
    put(c02, sg, lane, s, mr, r + 32u);
    put(c12, sg, lane, s, mr + 16u, r + 32u);
    put(c03, sg, lane, s, mr, r + 48u);
    put(c13, sg, lane, s, mr + 16u, r + 48u);
//#endif
}
