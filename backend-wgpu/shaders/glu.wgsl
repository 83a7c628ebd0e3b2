// glu.wgsl — out = act(gate) ⊙ up (f32); ACT 0 = SiLU x·σ(x), 1 = GELU-tanh.
// Thread mapping: one invocation per element, 256 per workgroup, 2-D folded grid.
// Moves 12 bytes and ~10 FLOPs (plus one exp or tanh) per element.

struct Params {
    n: u32,
    g_off: u32,
    u_off: u32,
    o_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> G: array<f32>; // [rows·n]
@group(0) @binding(2) var<storage, read_write> U: array<f32>; // [rows·n]
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [rows·n]

// act: act.wgsl (shared with the GEMV's fused GLU, gemv_many.wgsl).

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if i >= P.n {
        return;
    }
    O[P.o_off + i] = act(G[P.g_off + i]) * U[P.u_off + i];
}
