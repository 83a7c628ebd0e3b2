// rms_norm.wgsl — out = x / sqrt(mean(x²) + eps) · w, per row (f32). With ADD (add_rms_norm:
// the residual add fused with the next norm) x = a + b is computed here, written to S (bit for
// bit the f32 sum `add` writes) and normed: one pass instead of two.
//
// Thread mapping: one workgroup of 256 invocations per row (rows folded into 2-D). A unit
// {{T}} is vec4<f32> (define V4: the row length and the three offsets are multiples of 4) or
// f32. Invocation t walks units t, t + 256, ... four per trip, the trip's four loads issued
// before any is used; one workgroup sum (reduce.wgsl); then the same walk writes out (x read
// again, from L1/L2, and w: eight loads in flight per trip).
// Why four per trip: at m = 1 (decode) the row is ONE workgroup, 8 warps on one SM, so the
// pass is a chain of memory latencies, one per trip. One f32 per trip took 14.0 µs at dim 4096
// and 31.0 µs at 14336 on an H200 through Vulkan (BENCHMARKS "vgemv"); vec4 × 4 per trip makes
// dim 4096 one trip per pass.
// Bytes: 12 per element (x twice, the second time from cache; w; out); 4 FLOPs per element.
// ADD: 20 (a and b twice, the second time from cache; w; sum; out); 5 FLOPs.

struct Params {
    rows: u32,
    units: u32, // row length in units
    x_off: u32, // offsets in units
    w_off: u32,
    o_off: u32,
    eps: f32,
    dim: u32,   // row length in elements (the mean's divisor)
    b_off: u32, // ADD: b's and sum's offsets in units (x_off is a's)
    s_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> X: array<{{T}}>; // [rows, units]
@group(0) @binding(2) var<storage, read_write> Wt: array<{{T}}>; // [units]
@group(0) @binding(3) var<storage, read_write> O: array<{{T}}>; // [rows, units]
//#if ADD
@group(0) @binding(4) var<storage, read_write> B: array<{{T}}>; // [rows, units]
@group(0) @binding(5) var<storage, read_write> S: array<{{T}}>; // [rows, units]
//#endif

const WG: u32 = 256u;

fn sq(v: {{T}}) -> f32 {
//#if V4
    return dot(v, v);
//#else
    return v * v;
//#endif
}

// Unit i of the row starting at unit r (ADD: a + b), or zero past the row's end.
fn ld_x(r: u32, i: u32) -> {{T}} {
    if i < P.units {
//#if ADD
        return X[P.x_off + r + i] + B[P.b_off + r + i];
//#else
        return X[P.x_off + r + i];
//#endif
    }
    return {{T}}();
}

fn ld_w(i: u32) -> {{T}} {
    if i < P.units {
        return Wt[P.w_off + i];
    }
    return {{T}}();
}

fn st_o(r: u32, i: u32, v: {{T}}) {
    if i < P.units {
        O[P.o_off + r + i] = v;
    }
}

//#if ADD
fn st_sum(r: u32, i: u32, v: {{T}}) {
    if i < P.units {
        S[P.s_off + r + i] = v;
    }
}
//#endif

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
    let base = row * P.units; // the row's first unit (offsets added per binding)
    var ss = 0.0;
    for (var i = li; i < P.units; i += 4u * WG) {
        let a = ld_x(base, i);
        let b = ld_x(base, i + WG);
        let c = ld_x(base, i + 2u * WG);
        let d = ld_x(base, i + 3u * WG);
        ss += (sq(a) + sq(b)) + (sq(c) + sq(d));
//#if ADD
        st_sum(base, i, a);
        st_sum(base, i + WG, b);
        st_sum(base, i + 2u * WG, c);
        st_sum(base, i + 3u * WG, d);
//#endif
    }
    let tot = wg_sum(ss, WG);
    let inv = 1.0 / sqrt(tot / f32(P.dim) + P.eps);
    for (var i = li; i < P.units; i += 4u * WG) {
        let x0 = ld_x(base, i);
        let x1 = ld_x(base, i + WG);
        let x2 = ld_x(base, i + 2u * WG);
        let x3 = ld_x(base, i + 3u * WG);
        let w0 = ld_w(i);
        let w1 = ld_w(i + WG);
        let w2 = ld_w(i + 2u * WG);
        let w3 = ld_w(i + 3u * WG);
        st_o(base, i, x0 * inv * w0);
        st_o(base, i + WG, x1 * inv * w1);
        st_o(base, i + 2u * WG, x2 * inv * w2);
        st_o(base, i + 3u * WG, x3 * inv * w3);
    }
}
