// gemm.wgsl — y = x·Wᵀ for many x rows (compute-bound), for one row chunk of a prepared
// weight (any weight dtype through dequant.wgsl). x: f32 [m, k]; W chunk: rows r0..r0+n_c of
// [n, k]; y: f32 [m, n_out] (columns r0..r0+n_c written).
//
// Thread mapping: one workgroup of 128 invocations owns a TM × 128 output tile (TM x rows:
// 64, or 32 with TM32 for m ≤ 32; 128 weight rows) and one k range (a "split": workgroup
// z = x-row tile · splits + split). Invocation li computes an 8×8 register tile (4×8 with
// TM32): x rows m0 + 4·(li/16) + 0..3 (and + 32), weight rows n0 + 4·(li%16) + 0..3 and + 64.
// K is walked one 32-element group per stage: invocation li dequantizes weight row li's
// whole group (one `hdr`, 8 `dqv`) and loads TM/16 vec4s of x row li%TM, stores them k-major
// into workgroup memory (a warp's stores hit 32 different banks), then all 128 multiply the
// 32-deep tiles (4 vec4 loads per 64 FMAs; 3 per 32 with TM32). The next group's weights and
// x are loaded into registers before the current group's multiply, so global latency hides
// behind the FMAs.
// With splits > 1 the partial tile goes to Part [splits][m][n_c] and `gemm_sum` adds the
// splits into y (fills the GPU when m·n gives few tiles; no float atomics in WGSL).
//
// Bytes: weight bytes · ceil(m/TM) + x bytes · ceil(n_c/128) + y (+ 2·splits·m·n_c·4 with a
// split); FLOPs = 2·m·n·k (f32 FMAs).

struct Params {
    m: u32,        // x rows
    n_c: u32,      // weight rows in this chunk
    k: u32,
    n_out: u32,    // row stride of y (total weight rows)
    r0: u32,       // first weight row of this chunk (column of y)
    bpr: u32,      // blocks per weight row
    d_base: u32,   // word index of the moved-out d array
    x_off: u32,    // element offset of x (a multiple of 4 with X_VEC4)
    o_off: u32,    // element offset of y
    splits: u32,   // k splits (workgroups per x-row tile in z)
    gps: u32,      // 32-element groups per split
    pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
//#if !SUM
@group(0) @binding(1) var<storage, read> W: array<u32>;
//#if X_VEC4
@group(0) @binding(2) var<storage, read_write> X: array<vec4<f32>>; // [m, k/4]
//#else
@group(0) @binding(2) var<storage, read_write> X: array<f32>; // [m, k]
//#endif
//#endif
//#if !SPLIT
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [m, n_out]
//#endif
//#if SPLIT
@group(0) @binding(4) var<storage, read_write> Part: array<f32>; // [splits][m][n_c]
//#endif

//#if !SUM
// x[row, 32g + 4i .. +3]
fn xv(row: u32, g: u32, i: u32) -> vec4<f32> {
//#if X_VEC4
    return X[(P.x_off + row * P.k + g * 32u) / 4u + i];
//#else
    let o = P.x_off + row * P.k + g * 32u + 4u * i;
    return vec4<f32>(X[o], X[o + 1u], X[o + 2u], X[o + 3u]);
//#endif
}

var<workgroup> Ws: array<vec4<f32>, 1024>; // [32 k][32]: weight rows n0 + 4j..4j+3 at k
var<workgroup> Xs: array<vec4<f32>, 512>;  // [32 k][TM/4]: x rows m0 + 4j..4j+3 at k

// x rows per tile: 64, or 32 (TM32, for m ≤ 32: no FMAs on absent rows); vec4s of x per
// invocation per stage.
const TM: u32 = {{TM}}u;
const XV: u32 = TM / 16u;

@compute @workgroup_size(128)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n0 = (wid.x + wid.y * nwg.x) * 128u;
    let s = wid.z % P.splits;
    let m0 = (wid.z / P.splits) * TM;
    let groups = P.k / 32u;
    let g0 = min(s * P.gps, groups);
    let g1 = min(g0 + P.gps, groups);
    // loaders: weight row li of the tile (its whole group); x row xl, vec4s XV·xq .. +XV-1.
    // Rows past the chunk / past m load the last row (computed, never written).
    let wr = min(n0 + li, P.n_c - 1u);
    let xl = li % TM;
    let xq = li / TM;
    let xr = min(m0 + xl, P.m - 1u);
    // compute: x rows 4·ty + 0..3 (p/q 0..3) and 32 + 4·ty + 0..3 (p/q 4..7, not with
    // TM32); weight rows
    // 4·tx + 0..3 (p) and 64 + 4·tx + 0..3 (q)
    let tx = li % 16u;
    let ty = li / 16u;
    var p0 = vec4<f32>(0.0);
    var p1 = vec4<f32>(0.0);
    var p2 = vec4<f32>(0.0);
    var p3 = vec4<f32>(0.0);
    var p4 = vec4<f32>(0.0);
    var p5 = vec4<f32>(0.0);
    var p6 = vec4<f32>(0.0);
    var p7 = vec4<f32>(0.0);
    var q0 = vec4<f32>(0.0);
    var q1 = vec4<f32>(0.0);
    var q2 = vec4<f32>(0.0);
    var q3 = vec4<f32>(0.0);
    var q4 = vec4<f32>(0.0);
    var q5 = vec4<f32>(0.0);
    var q6 = vec4<f32>(0.0);
    var q7 = vec4<f32>(0.0);
    // the next group, in registers: weights k 0..31 of row wr, x k 4·XV·xq .. +4·XV-1
    var w0 = vec4<f32>(0.0);
    var w1 = vec4<f32>(0.0);
    var w2 = vec4<f32>(0.0);
    var w3 = vec4<f32>(0.0);
    var w4 = vec4<f32>(0.0);
    var w5 = vec4<f32>(0.0);
    var w6 = vec4<f32>(0.0);
    var w7 = vec4<f32>(0.0);
    var x0 = vec4<f32>(0.0);
    var x1 = vec4<f32>(0.0);
    var x2 = vec4<f32>(0.0);
    var x3 = vec4<f32>(0.0);
    if g0 < g1 {
        let h = hdr(wr, g0);
        w0 = dqv(h, 0u);
        w1 = dqv(h, 1u);
        w2 = dqv(h, 2u);
        w3 = dqv(h, 3u);
        w4 = dqv(h, 4u);
        w5 = dqv(h, 5u);
        w6 = dqv(h, 6u);
        w7 = dqv(h, 7u);
        x0 = xv(xr, g0, XV * xq);
        x1 = xv(xr, g0, XV * xq + 1u);
//#if !TM32
        x2 = xv(xr, g0, XV * xq + 2u);
        x3 = xv(xr, g0, XV * xq + 3u);
//#endif
    }
    let wb = li / 4u;
    let wc = li % 4u;
    let xb = 4u * XV * xq * (TM / 4u) + xl / 4u;
    let xc = xl % 4u;
    for (var g = g0; g < g1; g++) {
        workgroupBarrier();
        // k-major stores: a warp writes 32 consecutive words (no bank conflicts)
        for (var e = 0u; e < 4u; e++) {
            Ws[(e) * 32u + wb][wc] = w0[e];
            Ws[(4u + e) * 32u + wb][wc] = w1[e];
            Ws[(8u + e) * 32u + wb][wc] = w2[e];
            Ws[(12u + e) * 32u + wb][wc] = w3[e];
            Ws[(16u + e) * 32u + wb][wc] = w4[e];
            Ws[(20u + e) * 32u + wb][wc] = w5[e];
            Ws[(24u + e) * 32u + wb][wc] = w6[e];
            Ws[(28u + e) * 32u + wb][wc] = w7[e];
            Xs[xb + e * (TM / 4u)][xc] = x0[e];
            Xs[xb + (4u + e) * (TM / 4u)][xc] = x1[e];
//#if !TM32
            Xs[xb + (8u + e) * (TM / 4u)][xc] = x2[e];
            Xs[xb + (12u + e) * (TM / 4u)][xc] = x3[e];
//#endif
        }
        workgroupBarrier();
        if g + 1u < g1 {
            let h = hdr(wr, g + 1u);
            w0 = dqv(h, 0u);
            w1 = dqv(h, 1u);
            w2 = dqv(h, 2u);
            w3 = dqv(h, 3u);
            w4 = dqv(h, 4u);
            w5 = dqv(h, 5u);
            w6 = dqv(h, 6u);
            w7 = dqv(h, 7u);
            x0 = xv(xr, g + 1u, XV * xq);
            x1 = xv(xr, g + 1u, XV * xq + 1u);
//#if !TM32
            x2 = xv(xr, g + 1u, XV * xq + 2u);
            x3 = xv(xr, g + 1u, XV * xq + 3u);
//#endif
        }
        // KK_PF: the next k's four vec4s are read from workgroup memory before this k's
        // 64 FMAs (register double buffering; the last k re-reads itself)
        var a = Xs[ty];
        var b = Xs[(8u + ty) % (TM / 4u)];
        var u = Ws[tx];
        var v = Ws[16u + tx];
        for (var kk = 0u; kk < 32u; kk++) {
//#if KK_PF
            let kn = min(kk + 1u, 31u);
            let na = Xs[kn * (TM / 4u) + ty];
//#if !TM32
            let nb = Xs[kn * 16u + 8u + ty];
//#endif
            let nu = Ws[kn * 32u + tx];
            let nv = Ws[kn * 32u + 16u + tx];
//#else
            a = Xs[kk * (TM / 4u) + ty];
//#if !TM32
            b = Xs[kk * 16u + 8u + ty];
//#endif
            u = Ws[kk * 32u + tx];
            v = Ws[kk * 32u + 16u + tx];
//#endif
            p0 += a.x * u;
            q0 += a.x * v;
            p1 += a.y * u;
            q1 += a.y * v;
            p2 += a.z * u;
            q2 += a.z * v;
            p3 += a.w * u;
            q3 += a.w * v;
//#if !TM32
            p4 += b.x * u;
            q4 += b.x * v;
            p5 += b.y * u;
            q5 += b.y * v;
            p6 += b.z * u;
            q6 += b.z * v;
            p7 += b.w * u;
            q7 += b.w * v;
//#endif
//#if KK_PF
            a = na;
//#if !TM32
            b = nb;
//#endif
            u = nu;
            v = nv;
//#endif
        }
    }
    put(s, m0 + 4u * ty, n0 + 4u * tx, p0);
    put(s, m0 + 4u * ty + 1u, n0 + 4u * tx, p1);
    put(s, m0 + 4u * ty + 2u, n0 + 4u * tx, p2);
    put(s, m0 + 4u * ty + 3u, n0 + 4u * tx, p3);
//#if !TM32
    put(s, m0 + 32u + 4u * ty, n0 + 4u * tx, p4);
    put(s, m0 + 33u + 4u * ty, n0 + 4u * tx, p5);
    put(s, m0 + 34u + 4u * ty, n0 + 4u * tx, p6);
    put(s, m0 + 35u + 4u * ty, n0 + 4u * tx, p7);
//#endif
    put(s, m0 + 4u * ty, n0 + 64u + 4u * tx, q0);
    put(s, m0 + 4u * ty + 1u, n0 + 64u + 4u * tx, q1);
    put(s, m0 + 4u * ty + 2u, n0 + 64u + 4u * tx, q2);
    put(s, m0 + 4u * ty + 3u, n0 + 64u + 4u * tx, q3);
//#if !TM32
    put(s, m0 + 32u + 4u * ty, n0 + 64u + 4u * tx, q4);
    put(s, m0 + 33u + 4u * ty, n0 + 64u + 4u * tx, q5);
    put(s, m0 + 34u + 4u * ty, n0 + 64u + 4u * tx, q6);
    put(s, m0 + 35u + 4u * ty, n0 + 64u + 4u * tx, q7);
//#endif
}

// Write outputs (x row mr, weight rows r .. r + 3 of the chunk) that exist.
fn put(s: u32, mr: u32, r: u32, v: vec4<f32>) {
    if mr >= P.m {
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        if r + c < P.n_c {
//#if SPLIT
            Part[(s * P.m + mr) * P.n_c + r + c] = v[c];
//#else
            O[P.o_off + mr * P.n_out + P.r0 + r + c] = v[c];
//#endif
        }
    }
}
//#endif

//#if SUM
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [m, n_out]

// y[row, r0 + r] = Σ_s Part[s][row][r]: one invocation per output of the chunk.
@compute @workgroup_size(256)
fn gemm_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let idx = (wid.x + wid.y * nwg.x) * 256u + li;
    let total = P.m * P.n_c;
    if idx >= total {
        return;
    }
    var acc = 0.0;
    for (var s = 0u; s < P.splits; s++) {
        acc += Part[s * total + idx];
    }
    let row = idx / P.n_c;
    let r = idx % P.n_c;
    O[P.o_off + row * P.n_out + P.r0 + r] = acc;
}
//#endif
