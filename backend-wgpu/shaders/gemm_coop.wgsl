// gemm_coop.wgsl — y = x·Wᵀ for many x rows on cooperative matrices (tensor cores), for one
// row chunk of a prepared weight (any weight dtype through dequant.wgsl). Same inputs, outputs
// and k split as gemm.wgsl (Params, Part, gemm_sum are shared): x f32 [m, k]; W chunk rows
// r0..r0+n_c of [n, k]; y f32 [m, n_out].
//
// Needs `enable wgpu_cooperative_matrix;` (prepended for the COOP define), f16, subgroups of
// exactly 32 invocations (so 8 subgroups per workgroup) and a 16×16×16 f16·f16→f32 config.
//
// Thread mapping: one workgroup of 256 invocations owns a TM × 128 output tile (TM = 32, 64 or
// 128 x rows; 128 weight rows) and one k range (split: workgroup z = x-row tile · splits +
// split). Per 32-element k group: invocation li dequantizes half a group of weight row li/2
// (one `hdr`, 4 `dqv`) and loads TM/32 vec4s of x, converts both to f16 (x clamped to
// ±65504) and stores them into workgroup memory row-major with a 40-half pitch (80 bytes:
// the 8 rows a 16-byte-per-row matrix load touches hit 8 different bank quads); with
// STAGE_V4 (default) the tiles are vec4<f16> arrays, written with one 8-byte store per 4
// values, else f16 arrays written per value (`KILN_WGPU_COOP_STAGE=f16`, comparison). Then each
// subgroup multiplies 16×16×16 cooperative matrices: subgroup sg (of SGM × SGN) owns x rows
// 32·(sg / SGN) + 0..31 (two A matrices) and weight rows 16·NB·(sg % SGN) + 0..16·NB-1 (NB
// B matrices), 2·NB f32 accumulators, two k steps of 16 per group. The next group's weights
// and x are loaded into registers before the current group's multiplies.
// Epilogue: each accumulator goes through a per-subgroup 16×16 f32 staging tile and the
// subgroup's 32 lanes write its rows that exist (bounds on m and n_c) to y or to Part.
//
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

// x[row, 32g + 4i .. +3]
fn xv(row: u32, g: u32, i: u32) -> vec4<f32> {
//#if X_VEC4
    return X[(P.x_off + row * P.k + g * 32u) / 4u + i];
//#else
    let o = P.x_off + row * P.k + g * 32u + 4u * i;
    return vec4<f32>(X[o], X[o + 1u], X[o + 2u], X[o + 3u]);
//#endif
}

const TM: u32 = {{TM}}u;
// subgroups along n (SGM = 8 / SGN along m), B matrices per subgroup
const SGN: u32 = {{SGN}}u;
const NB: u32 = 8u / SGN;
// x vec4s per invocation per group, invocations per x row
const XV: u32 = TM / 32u;
const XT: u32 = 8u / XV;
// row pitch (halves) of the staged tiles
const PITCH: u32 = 40u;

var<workgroup> Cs: array<f32, 2048>;      // [8 subgroups][16][16]
//#if STAGE_V4
// STAGE_V4: the tiles are vec4<f16> arrays (one 8-byte store per 4 halves; cooperative loads
// take a pointer to a vec4 and a stride in vec4s, PITCH / 4)
const Q: u32 = 4u;
var<workgroup> Xs: array<vec4<f16>, {{XS4}}>; // [TM][PITCH / 4]
var<workgroup> Ws: array<vec4<f16>, 1280>;    // [128][PITCH / 4]

fn stage_w(base: u32, v: vec4<f32>) {
    Ws[base / 4u] = vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}

fn stage_x(base: u32, v: vec4<f32>) {
    Xs[base / 4u] = vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
}
//#else
const Q: u32 = 1u;
var<workgroup> Xs: array<f16, {{XS}}>;    // [TM][PITCH]
var<workgroup> Ws: array<f16, 5120>;      // [128][PITCH]

fn stage_w(base: u32, v: vec4<f32>) {
    let h = vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
    Ws[base] = h.x;
    Ws[base + 1u] = h.y;
    Ws[base + 2u] = h.z;
    Ws[base + 3u] = h.w;
}

fn stage_x(base: u32, v: vec4<f32>) {
    let h = vec4<f16>(clamp(v, vec4<f32>(-65504.0), vec4<f32>(65504.0)));
    Xs[base] = h.x;
    Xs[base + 1u] = h.y;
    Xs[base + 2u] = h.z;
    Xs[base + 3u] = h.w;
}
//#endif

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

@compute @workgroup_size(256)
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
    // loaders: weight row li/2, elements 16·(li%2) .. +15 of the group; x row li/XT, vec4s
    // XV·(li%XT) .. +XV-1. Rows past the chunk / past m load the last row (never written).
    let wl = li / 2u;
    let wh = li % 2u;
    let wr = min(n0 + wl, P.n_c - 1u);
    let xl = li / XT;
    let xq = li % XT;
    let xr = min(m0 + xl, P.m - 1u);
    let wbase = wl * PITCH + 16u * wh;
    let xbase = xl * PITCH + 4u * XV * xq;
    // this subgroup's x rows and weight rows within the tile
    let am = 32u * (sg / SGN);
    let bn = 16u * NB * (sg % SGN);

    // zero accumulators: loaded from a zeroed staging tile
    for (var i = li; i < 2048u; i += 256u) {
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

    var w0 = vec4<f32>(0.0);
    var w1 = vec4<f32>(0.0);
    var w2 = vec4<f32>(0.0);
    var w3 = vec4<f32>(0.0);
    var x0 = vec4<f32>(0.0);
//#if !TM32
    var x1 = vec4<f32>(0.0);
//#endif
//#if TM128
    var x2 = vec4<f32>(0.0);
    var x3 = vec4<f32>(0.0);
//#endif
    if g0 < g1 {
        let h = hdr(wr, g0);
        w0 = dqv(h, 4u * wh);
        w1 = dqv(h, 4u * wh + 1u);
        w2 = dqv(h, 4u * wh + 2u);
        w3 = dqv(h, 4u * wh + 3u);
        x0 = xv(xr, g0, XV * xq);
//#if !TM32
        x1 = xv(xr, g0, XV * xq + 1u);
//#endif
//#if TM128
        x2 = xv(xr, g0, XV * xq + 2u);
        x3 = xv(xr, g0, XV * xq + 3u);
//#endif
    }
    for (var g = g0; g < g1; g++) {
        workgroupBarrier();
        stage_w(wbase, w0);
        stage_w(wbase + 4u, w1);
        stage_w(wbase + 8u, w2);
        stage_w(wbase + 12u, w3);
        stage_x(xbase, x0);
//#if !TM32
        stage_x(xbase + 4u, x1);
//#endif
//#if TM128
        stage_x(xbase + 8u, x2);
        stage_x(xbase + 12u, x3);
//#endif
        workgroupBarrier();
        if g + 1u < g1 {
            let h = hdr(wr, g + 1u);
            w0 = dqv(h, 4u * wh);
            w1 = dqv(h, 4u * wh + 1u);
            w2 = dqv(h, 4u * wh + 2u);
            w3 = dqv(h, 4u * wh + 3u);
            x0 = xv(xr, g + 1u, XV * xq);
//#if !TM32
            x1 = xv(xr, g + 1u, XV * xq + 1u);
//#endif
//#if TM128
            x2 = xv(xr, g + 1u, XV * xq + 2u);
            x3 = xv(xr, g + 1u, XV * xq + 3u);
//#endif
        }
        for (var kk = 0u; kk < 32u; kk += 16u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&Xs[(am * PITCH + kk) / Q], PITCH / Q);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&Xs[((am + 16u) * PITCH + kk) / Q], PITCH / Q);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&Ws[(bn * PITCH + kk) / Q], PITCH / Q);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c10 = coopMultiplyAdd(a1, b0, c10);
//#if !NB1
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&Ws[((bn + 16u) * PITCH + kk) / Q], PITCH / Q);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c11 = coopMultiplyAdd(a1, b1, c11);
//#endif
//#if NB4
            let b2 = coopLoad<coop_mat16x16<f16, B>>(&Ws[((bn + 32u) * PITCH + kk) / Q], PITCH / Q);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c12 = coopMultiplyAdd(a1, b2, c12);
            let b3 = coopLoad<coop_mat16x16<f16, B>>(&Ws[((bn + 48u) * PITCH + kk) / Q], PITCH / Q);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c13 = coopMultiplyAdd(a1, b3, c13);
//#endif
        }
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
