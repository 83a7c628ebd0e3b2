// gemv_many.wgsl — what gemv_v.wgsl and gemv_x8.wgsl need to run several weights in ONE
// dispatch (matmul_many at m = 1: a layer's q, k, v, or its gate and up), included before
// either. Without MANY it is the single weight of P (n_c, d_base, o_off).
//
// With MANY: up to 3 parts of one dtype and k, each its own weight (W4, W4b, W4c; Q8_0's d
// arrays W, Wb, Wc) and its own output (O, Ob, Oc). The grid is the parts' grids one after the
// other: part p owns workgroups [P.pwg[p], P.pwg[p + 1]) (P.pwg.z = 0xffffffff with 2 parts),
// has P.pn[p] rows, its d array at P.pd[p] and its output at P.po[p]. A part is uniform per
// workgroup, so each load's branch is too. With GLU (matmul_glu; MANY too, act.wgsl
// included): parts 0 = gate and 1 = up share each workgroup: teams [0, RW/2) take gate rows,
// teams [RW/2, RW) the same rows of up; after the team sums the up teams leave theirs in
// glu_u and the gate teams write act(g)·u to part 0's output (`glu_out`). KS = 1 only. Why: every dispatch costs
// its launch and a barrier (~5 + 7 µs on an H200's Vulkan when each op was its own compute
// pass, before stop 20's one-pass recording; less now, still not free), and the k and v GEMVs
// of a decode step are too small to hide it.

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

//#if GLU
// The up teams' row sums for the gate teams: [team − RW/2][row], RW/2 · NR ≤ 128.
var<workgroup> glu_u: array<f32, 128>;

// The row group of team `team` in workgroup `wg` (sets part, n_c_, d_base_, o_off_).
fn glu_row_group(wg: u32, team: u32) -> u32 {
    let h = RW / 2u;
    part = team / h;
    n_c_ = P.pn[0];
    d_base_ = P.pd[part];
    o_off_ = P.po[0];
    return wg * h + team % h;
}

fn acc_at(i: u32) -> f32 {
    return select(select(select(a0, a1, i == 1u), select(a2, a3, i == 3u), i >= 2u),
                  select(select(a4, a5, i == 5u), select(a6, a7, i == 7u), i >= 6u), i >= 4u);
}

// Every invocation of the workgroup calls this once (it has a barrier).
fn glu_out(team: u32, l: u32, row0: u32) {
    let h = RW / 2u;
    if team >= h && l == 0u {
        for (var i = 0u; i < NR; i++) {
            glu_u[(team - h) * NR + i] = acc_at(i);
        }
    }
    workgroupBarrier();
    if team < h && l == 0u {
        for (var i = 0u; i < NR; i++) {
            put(row0 + i, act(acc_at(i)) * glu_u[team * NR + i]);
        }
    }
}
//#endif
