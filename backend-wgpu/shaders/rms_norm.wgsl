// rms_norm.wgsl — out = x / sqrt(mean(x²) + eps) · w, per row (f32).
// Thread mapping: one workgroup of 256 invocations per row (rows folded into 2-D); each
// invocation strides over the row, then one workgroup sum (reduce.wgsl).
// Moves 12 bytes per element (x read twice from cache, w, out) and 4 FLOPs per element.

struct Params {
    rows: u32,
    dim: u32,
    x_off: u32,
    w_off: u32,
    o_off: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>; // [rows, dim]
@group(0) @binding(2) var<storage, read_write> Wt: array<f32>; // [dim]
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [rows, dim]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
//#if SUBGROUPS
        @builtin(subgroup_id) sgid: u32, @builtin(num_subgroups) nsg: u32,
        @builtin(subgroup_invocation_id) sgi: u32,
//#endif
) {
//#if SUBGROUPS
    red_setup(li, sgid, nsg, sgi);
//#else
    red_setup(li, 0u, 0u, 0u);
//#endif
    let row = wid.x + wid.y * nwg.x;
    // Uniform per workgroup: the whole workgroup leaves together.
    if row >= P.rows {
        return;
    }
    let base = P.x_off + row * P.dim;
    var ss = 0.0;
    for (var i = li; i < P.dim; i += 256u) {
        let v = X[base + i];
        ss += v * v;
    }
    let tot = wg_sum(ss, 256u);
    let inv = 1.0 / sqrt(tot / f32(P.dim) + P.eps);
    let ob = P.o_off + row * P.dim;
    for (var i = li; i < P.dim; i += 256u) {
        O[ob + i] = X[base + i] * inv * Wt[P.w_off + i];
    }
}
