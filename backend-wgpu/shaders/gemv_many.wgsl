// gemv_many.wgsl — what gemv_v.wgsl and gemv_x8.wgsl need to run several weights in ONE
// dispatch (matmul_many at m = 1: a layer's q, k, v, or its gate and up), included before
// either. Without MANY it is the single weight of P (n_c, d_base, o_off).
//
// With MANY: up to 3 parts of one dtype and k, each its own weight (W4, W4b, W4c; Q8_0's d
// arrays W, Wb, Wc) and its own output (O, Ob, Oc). The grid is the parts' grids one after the
// other: part p owns workgroups [P.pwg[p], P.pwg[p + 1]) (P.pwg.z = 0xffffffff with 2 parts),
// has P.pn[p] rows, its d array at P.pd[p] and its output at P.po[p]. A part is uniform per
// workgroup, so each load's branch is too. Why: a pass costs a dispatch and a barrier (~5 + 7
// µs on an H200's Vulkan), and the k and v GEMVs of a decode step are too small to hide it.

var<private> part: u32;
var<private> n_c_: u32;
var<private> d_base_: u32;
var<private> o_off_: u32;

//#if MANY
@group(0) @binding(7) var<storage, read> W4b: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> W4c: array<vec4<u32>>;
@group(0) @binding(11) var<storage, read_write> Ob: array<f32>;
@group(0) @binding(12) var<storage, read_write> Oc: array<f32>;
//#if W_Q8_0
@group(0) @binding(9) var<storage, read> Wb: array<u32>;
@group(0) @binding(10) var<storage, read> Wc: array<u32>;
//#endif
//#endif

fn ldw4(i: u32) -> vec4<u32> {
//#if MANY
    if part == 1u {
        return W4b[i];
    }
    if part == 2u {
        return W4c[i];
    }
//#endif
    return W4[i];
}

//#if W_Q8_0
fn ldw(i: u32) -> u32 {
//#if MANY
    if part == 1u {
        return Wb[i];
    }
    if part == 2u {
        return Wc[i];
    }
//#endif
    return W[i];
}
//#endif

fn sto(i: u32, v: f32) {
//#if MANY
    if part == 1u {
        Ob[i] = v;
        return;
    }
    if part == 2u {
        Oc[i] = v;
        return;
    }
//#endif
    O[i] = v;
}

// The part of linear workgroup `wg` (sets part, n_c_, d_base_, o_off_); returns the
// workgroup's index inside its part.
fn part_setup(wg: u32) -> u32 {
    part = 0u;
    n_c_ = P.n_c;
    d_base_ = P.d_base;
    o_off_ = P.o_off;
//#if MANY
    var w = wg;
    if wg >= P.pwg.z {
        part = 2u;
        w = wg - P.pwg.z;
    } else if wg >= P.pwg.y {
        part = 1u;
        w = wg - P.pwg.y;
    }
    n_c_ = P.pn[part];
    d_base_ = P.pd[part];
    o_off_ = P.po[part];
    return w;
//#else
    return wg;
//#endif
}
