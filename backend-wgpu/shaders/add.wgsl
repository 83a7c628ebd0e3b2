// add.wgsl — `main`: out[i] = a[i] + b[i]; `add_bias`: out[r, j] = a[r, j] + b[j] (f32).
// Thread mapping: one invocation per output element, 256 per workgroup, workgroups folded
// into 2-D (linear id = wid.x + wid.y·nwg.x). Moves 12 bytes (bias: ~8) and 1 FLOP per element.

struct Params {
    n: u32,
    a_off: u32,
    b_off: u32,
    o_off: u32,
    b_len: u32, // add_bias: bias length (row length of a)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> A: array<f32>; // [n]
@group(0) @binding(2) var<storage, read_write> B: array<f32>; // [n] or [b_len]
@group(0) @binding(3) var<storage, read_write> O: array<f32>; // [n]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if i >= P.n {
        return;
    }
    O[P.o_off + i] = A[P.a_off + i] + B[P.b_off + i];
}

@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + li;
    if i >= P.n {
        return;
    }
    O[P.o_off + i] = A[P.a_off + i] + B[P.b_off + i % P.b_len];
}
