// matmul.wgsl — y = x·Wᵀ for one row chunk of a prepared weight (any weight dtype through
// dequant.wgsl). x: f32 [m, k]; W chunk: rows r0..r0+n_c of [n, k]; y: f32 [m, n].
//
// `gemv` (few x rows; memory-bound): a workgroup of WG invocations owns RW weight rows, TPR =
// WG/RW invocations per row. Invocation `lane` of a row walks the row's 32-element groups
// g = lane/SUBL, +TPR/SUBL, ...: `hdr` reads the group's scales, then 8/SUBL × (`dqv` 4
// weights, dot with 4 x values) for up to MT = 4 x rows at once (the lanes of one vec4
// accumulator).
// No private arrays: the accumulator and the dequantized values live in registers.
// The TPR partial sums of a row are added with subgroupAdd (SG_RED: the device's subgroups
// are ≤ TPR wide) or a tree in workgroup memory. Weight bytes are read once per MT x rows:
// bytes = n·k·bytes_per_weight·ceil(m/MT) + x, FLOPs = 2·m·n·k.
// MOE: the x row and the expert come from Ids (one (token, slot) pair per workgroup z, MT = 1).
//
// `gemm` (kept for comparison only, `set_gemm_legacy`: the GEMM path runs gemm.wgsl):
// 64×64 output tile per workgroup of 256 invocations,
// each 4×4 outputs; K is walked one 32-element group at a time: invocations 0..63
// dequantize one weight row's group into workgroup memory (type {{WT}}: f16 where the device
// has SHADER_F16, else f32), all 256 load the 64×32 x tile. Weight bytes are read
// ceil(m/64) times; FLOPs = 2·m·n·k.

override WG: u32 = 128u;
override RW: u32 = 4u;
override MT: u32 = 1u;
// Lanes that share one 32-element group (1, 2, 4 or 8): lane sub = lane % SUBL takes the
// vec4s i = sub, sub + SUBL, ... of it, so 8/SUBL neighbouring lanes read neighbouring words
// (coalesced loads) at the price of reading the group header SUBL times. Tuned per dtype.
override SUBL: u32 = 1u;
// Weight rows per lane (1, 2 or 4; MOE: 1): one x load serves NR rows. Rows per workgroup:
// RW·NR.
override NR: u32 = 1u;

struct Params {
    m: u32,        // x rows (MOE: pairs)
    n_c: u32,      // weight rows in this chunk
    k: u32,
    n_out: u32,    // row stride of y (total weight rows, or per-expert rows for MOE)
    r0: u32,       // first weight row of this chunk (column of y)
    bpr: u32,      // blocks per weight row
    d_base: u32,   // word index of the moved-out d array
    x_off: u32,    // element offset of x (a multiple of 4 with X_VEC4)
    o_off: u32,
    i_off: u32,    // MOE: element offset of Ids
    top_k: u32,    // MOE: pairs per token (x row = pair / top_k when X_PER_TOKEN)
    pair0: u32,    // MOE: first pair of this dispatch
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
//#if X_VEC4
@group(0) @binding(2) var<storage, read_write> X: array<vec4<f32>>; // [m, k/4]
//#else
@group(0) @binding(2) var<storage, read_write> X: array<f32>; // [m, k]
//#endif
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [m, n_out]
//#if MOE
@group(0) @binding(4) var<storage, read_write> Ids: array<u32>; // [pairs]
override X_PER_TOKEN: bool = true;
//#endif

var<workgroup> part: array<vec4<f32>, 256>;

// x[row, 32g + 4i .. +3]
fn xv(row: u32, g: u32, i: u32) -> vec4<f32> {
//#if X_VEC4
    return X[(P.x_off + row * P.k + g * 32u) / 4u + i];
//#else
    let o = P.x_off + row * P.k + g * 32u + 4u * i;
    return vec4<f32>(X[o], X[o + 1u], X[o + 2u], X[o + 3u]);
//#endif
}

// Rows of one lane: rr, rr + RW, ... (NR of them); rows past the chunk read the last row
// (computed, never written).
fn lane_row(base: u32, b: u32) -> u32 {
    return min(base + b * RW, P.n_c - 1u);
}

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
//#if SUBGROUPS
        @builtin(subgroup_id) sgid: u32, @builtin(subgroup_size) sgsz: u32,
        @builtin(subgroup_invocation_id) sgi: u32,
//#endif
) {
    let tpr = WG / RW;
    let rr = li / tpr;
    let lane = li % tpr;
    let groups = P.k / 32u;
    let sub = lane % SUBL;
    let gstep = tpr / SUBL;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let base = (wid.x + wid.y * nwg.x) * RW * NR + rr;
//#if MOE
    let pair = P.pair0 + wid.z;
    let e = Ids[P.i_off + pair];
    let xrow = select(pair, pair / P.top_k, X_PER_TOKEN);
    let j = (wid.x + wid.y * nwg.x) * RW + rr;
    let fr = e * P.n_out + j;
    let valid = j < P.n_out && fr >= P.r0 && fr < P.r0 + P.n_c;
    if valid {
        let r = fr - P.r0;
        for (var g = lane / SUBL; g < groups; g += gstep) {
            let h = hdr(r, g);
            for (var i = sub; i < 8u; i += SUBL) {
                acc0.x += dot(dqv(h, i), xv(xrow, g, i));
            }
        }
    }
//#else
    let m0 = wid.z * MT;
    // x rows past m repeat the last one (computed, never written)
    let m1 = min(m0 + 1u, P.m - 1u);
    let m2 = min(m0 + 2u, P.m - 1u);
    let m3 = min(m0 + 3u, P.m - 1u);
    let valid = base < P.n_c;
    if valid {
        let r0 = lane_row(base, 0u);
        let r1 = lane_row(base, 1u);
        let r2 = lane_row(base, 2u);
        let r3 = lane_row(base, 3u);
        for (var g = lane / SUBL; g < groups; g += gstep) {
            let h0 = hdr(r0, g);
            var h1 = h0;
            var h2 = h0;
            var h3 = h0;
            if NR > 1u {
                h1 = hdr(r1, g);
            }
            if NR > 2u {
                h2 = hdr(r2, g);
                h3 = hdr(r3, g);
            }
            for (var i = sub; i < 8u; i += SUBL) {
                let xa = xv(m0, g, i);
                var xb = xa;
                var xc = xa;
                var xd = xa;
                if MT > 1u {
                    xb = xv(m1, g, i);
                }
                if MT > 2u {
                    xc = xv(m2, g, i);
                }
                if MT > 3u {
                    xd = xv(m3, g, i);
                }
                // one weight row per accumulator; the x rows in its lanes
                let w0 = dqv(h0, i);
                acc0 += vec4<f32>(dot(w0, xa), dot(w0, xb), dot(w0, xc), dot(w0, xd));
                if NR > 1u {
                    let w1 = dqv(h1, i);
                    acc1 += vec4<f32>(dot(w1, xa), dot(w1, xb), dot(w1, xc), dot(w1, xd));
                }
                if NR > 2u {
                    let w2 = dqv(h2, i);
                    acc2 += vec4<f32>(dot(w2, xa), dot(w2, xb), dot(w2, xc), dot(w2, xd));
                    let w3 = dqv(h3, i);
                    acc3 += vec4<f32>(dot(w3, xa), dot(w3, xb), dot(w3, xc), dot(w3, xd));
                }
            }
        }
    }
//#endif
    // Sum the tpr lanes of each row, for each of the NR accumulators.
    for (var b = 0u; b < NR; b++) {
        var acc = acc0;
        if b == 1u {
            acc = acc1;
        } else if b == 2u {
            acc = acc2;
        } else if b == 3u {
            acc = acc3;
        }
//#if SG_RED
        let s = subgroupAdd(acc);
        if sgi == 0u {
            part[sgid] = s;
        }
        workgroupBarrier();
        var tot = vec4<f32>(0.0);
        let per = tpr / sgsz;
        for (var q = 0u; q < per; q++) {
            tot += part[rr * per + q];
        }
        workgroupBarrier();
//#else
        part[li] = acc;
        workgroupBarrier();
        for (var st = tpr / 2u; st > 0u; st = st / 2u) {
            if lane < st {
                part[li] += part[li + st];
            }
            workgroupBarrier();
        }
        let tot = part[rr * tpr];
        workgroupBarrier();
//#endif
//#if MOE
        if lane == 0u && valid {
            O[P.o_off + pair * P.n_out + j] = tot.x;
        }
//#else
        let r = base + b * RW;
        if lane == 0u && r < P.n_c {
            let o = P.o_off + P.r0 + r;
            O[o + m0 * P.n_out] = tot.x;
            if MT > 1u && m0 + 1u < P.m {
                O[o + (m0 + 1u) * P.n_out] = tot.y;
            }
            if MT > 2u && m0 + 2u < P.m {
                O[o + (m0 + 2u) * P.n_out] = tot.z;
            }
            if MT > 3u && m0 + 3u < P.m {
                O[o + (m0 + 3u) * P.n_out] = tot.w;
            }
        }
//#endif
    }
}

//#if !MOE
var<workgroup> Ws: array<vec4<{{WT}}>, 512>; // [32 k][16] × 4 weight rows
var<workgroup> Xs: array<vec4<f32>, 512>;    // [32 k][16] × 4 x rows

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n0 = (wid.x + wid.y * nwg.x) * 64u;
    let m0 = wid.z * 64u;
    let tx = li % 16u;
    let ty = li / 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let groups = P.k / 32u;
    for (var g = 0u; g < groups; g++) {
        if li < 64u {
            let r = n0 + li;
            if r < P.n_c {
                let h = hdr(r, g);
                for (var i = 0u; i < 8u; i++) {
                    let w = dqv(h, i);
                    for (var c = 0u; c < 4u; c++) {
                        Ws[(4u * i + c) * 16u + li / 4u][li % 4u] = {{WT}}(w[c]);
                    }
                }
            } else {
                for (var kk = 0u; kk < 32u; kk++) {
                    Ws[kk * 16u + li / 4u][li % 4u] = {{WT}}(0.0);
                }
            }
        }
        // x tile: 64 rows × 8 vec4, two per invocation, stored k-major
        for (var q = 0u; q < 2u; q++) {
            let idx = q * 256u + li;
            let mr = idx / 8u;
            let i = idx % 8u;
            var v = vec4<f32>(0.0);
            if m0 + mr < P.m {
                v = xv(m0 + mr, g, i);
            }
            for (var c = 0u; c < 4u; c++) {
                Xs[(4u * i + c) * 16u + mr / 4u][mr % 4u] = v[c];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            let a = Xs[kk * 16u + ty];
            let b = vec4<f32>(Ws[kk * 16u + tx]);
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let mr = m0 + 4u * ty + i;
        if mr < P.m {
            for (var c = 0u; c < 4u; c++) {
                let r = n0 + 4u * tx + c;
                if r < P.n_c {
                    O[P.o_off + mr * P.n_out + P.r0 + r] = accs[i][c];
                }
            }
        }
    }
}
//#endif
