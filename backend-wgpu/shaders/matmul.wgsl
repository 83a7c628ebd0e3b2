// matmul.wgsl — y = x·Wᵀ for one row chunk of a prepared weight (any weight dtype through
// dequant.wgsl). x: f32 [m, k]; W chunk: rows r0..r0+n_c of [n, k]; y: f32 [m, n].
//
// `gemv` (few x rows; memory-bound): a workgroup of WG invocations owns R weight rows and MT
// x rows. Invocation li walks the 32-element groups g = li, li+WG, ... of its rows, dequantizes
// each group once per row (dq_group) and dots it with the MT x rows. Partial sums are reduced
// with subgroupAdd (SUBGROUPS) or through workgroup memory. It reads every weight byte once
// per MT x rows: bytes = n·k·bytes_per_weight·ceil(m/MT) + x, FLOPs = 2·m·n·k.
// MOE: the x row and the expert come from Ids (one (token, slot) pair per workgroup z).
//
// `gemm` (many x rows; compute-bound): 64×64 output tile per workgroup of 256 invocations,
// each 4×4 outputs; K is walked one 32-element group at a time: invocations 0..63
// dequantize one weight row's group into workgroup memory (type {{WT}}: f16 where the device
// has SHADER_F16, else f32), all 256 load the 64×32 x tile. Weight bytes are read
// ceil(m/64) times; FLOPs = 2·m·n·k.

override WG: u32 = 64u;
override R: u32 = 2u;
override MT: u32 = 1u;

struct Params {
    m: u32,        // x rows (MOE: pairs)
    n_c: u32,      // weight rows in this chunk
    k: u32,
    n_out: u32,    // row stride of y (total weight rows, or per-expert rows for MOE)
    r0: u32,       // first weight row of this chunk (column of y)
    bpr: u32,      // blocks per weight row
    d_base: u32,   // word index of the moved-out d array
    x_off: u32,
    o_off: u32,
    i_off: u32,    // MOE: element offset of Ids
    top_k: u32,    // MOE: pairs per token (x row = pair / top_k when X_PER_TOKEN)
    pair0: u32,    // MOE: first pair of this dispatch
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read_write> X: array<f32>; // [m, k]
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [m, n_out]
//#if MOE
@group(0) @binding(4) var<storage, read_write> Ids: array<u32>; // [pairs]
//#endif

var<workgroup> part: array<f32, 1024>; // [R·MT][partials]
//#if MOE
override X_PER_TOKEN: bool = true;
//#endif

fn dot_group(xb: u32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < 8u; i++) {
        let o = xb + 4u * i;
        s += dot(dq[i], vec4<f32>(X[o], X[o + 1u], X[o + 2u], X[o + 3u]));
    }
    return s;
}

@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
//#if SUBGROUPS
        @builtin(subgroup_id) sgid: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) sgi: u32,
//#endif
) {
    let row0 = (wid.x + wid.y * nwg.x) * R;
    let groups = P.k / 32u;
    var acc: array<f32, 16>; // [R·MT] ≤ 16
    for (var j = 0u; j < R * MT; j++) {
        acc[j] = 0.0;
    }
//#if MOE
    let pair = P.pair0 + wid.z;
    let e = Ids[P.i_off + pair];
    // rows of expert e inside this chunk: flat row = e·n_out + j
    let xrow = select(pair, pair / P.top_k, X_PER_TOKEN);
    let flat0 = e * P.n_out;
//#else
    let m0 = wid.z * MT;
//#endif
    for (var g = li; g < groups; g += WG) {
        for (var rr = 0u; rr < R; rr++) {
//#if MOE
            let j = row0 + rr;
            let fr = flat0 + j;
            if j < P.n_out && fr >= P.r0 && fr < P.r0 + P.n_c {
                dq_group(fr - P.r0, g);
                acc[rr] += dot_group(P.x_off + xrow * P.k + g * 32u);
            }
//#else
            let r = row0 + rr;
            if r < P.n_c {
                dq_group(r, g);
                for (var t = 0u; t < MT; t++) {
                    if m0 + t < P.m {
                        acc[rr * MT + t] += dot_group(P.x_off + (m0 + t) * P.k + g * 32u);
                    }
                }
            }
//#endif
        }
    }
    // Reduce acc over the workgroup: part[j·WG/ssz + s] partials, then one invocation per output.
//#if SUBGROUPS
    let nparts = nsg;
    for (var j = 0u; j < R * MT; j++) {
        let s = subgroupAdd(acc[j]);
        if sgi == 0u {
            part[j * nparts + sgid] = s;
        }
    }
//#else
    let nparts = WG;
    for (var j = 0u; j < R * MT; j++) {
        part[j * WG + li] = acc[j];
    }
//#endif
    workgroupBarrier();
    if li < R * MT {
        var s = 0.0;
        for (var i = 0u; i < nparts; i++) {
            s += part[li * nparts + i];
        }
//#if MOE
        let j = row0 + li;
        let fr = flat0 + j;
        if j < P.n_out && fr >= P.r0 && fr < P.r0 + P.n_c {
            O[P.o_off + pair * P.n_out + j] = s;
        }
//#else
        let rr = li / MT;
        let t = li % MT;
        let r = row0 + rr;
        if r < P.n_c && m0 + t < P.m {
            O[P.o_off + (m0 + t) * P.n_out + P.r0 + r] = s;
        }
//#endif
    }
}

//#if !MOE
var<workgroup> Ws: array<{{WT}}, 2048>; // [32 k][64 n]
var<workgroup> Xs: array<f32, 2048>;    // [32 k][64 m]

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let n0 = (wid.x + wid.y * nwg.x) * 64u;
    let m0 = wid.z * 64u;
    let tx = li % 16u;
    let ty = li / 16u;
    var acc: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        acc[i] = vec4<f32>(0.0);
    }
    let groups = P.k / 32u;
    for (var g = 0u; g < groups; g++) {
        if li < 64u {
            let r = n0 + li;
            if r < P.n_c {
                dq_group(r, g);
            } else {
                for (var i = 0u; i < 8u; i++) {
                    dq[i] = vec4<f32>(0.0);
                }
            }
            for (var i = 0u; i < 8u; i++) {
                for (var c = 0u; c < 4u; c++) {
                    Ws[(4u * i + c) * 64u + li] = {{WT}}(dq[i][c]);
                }
            }
        }
        // x tile: 64 rows × 32 k, 8 values per invocation
        for (var q = 0u; q < 8u; q++) {
            let idx = q * 256u + li;
            let mr = idx / 32u;
            let kk = idx % 32u;
            var v = 0.0;
            if m0 + mr < P.m {
                v = X[P.x_off + (m0 + mr) * P.k + g * 32u + kk];
            }
            Xs[kk * 64u + mr] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            let a = vec4<f32>(Xs[kk * 64u + 4u * ty], Xs[kk * 64u + 4u * ty + 1u],
                              Xs[kk * 64u + 4u * ty + 2u], Xs[kk * 64u + 4u * ty + 3u]);
            let b = vec4<f32>(f32(Ws[kk * 64u + 4u * tx]), f32(Ws[kk * 64u + 4u * tx + 1u]),
                              f32(Ws[kk * 64u + 4u * tx + 2u]), f32(Ws[kk * 64u + 4u * tx + 3u]));
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let mr = m0 + 4u * ty + i;
        if mr < P.m {
            for (var c = 0u; c < 4u; c++) {
                let r = n0 + 4u * tx + c;
                if r < P.n_c {
                    O[P.o_off + mr * P.n_out + P.r0 + r] = acc[i][c];
                }
            }
        }
    }
}
//#endif
