// reduce.wgsl — workgroup reductions shared by row-wise shaders (rms_norm, attention).
// With SUBGROUPS: subgroupAdd/Max inside each subgroup, one partial per subgroup in workgroup
// memory, every thread sums the partials. Without: a tree over workgroup memory.
// Callers must reach these in uniform control flow, every invocation of the workgroup.

var<workgroup> red_buf: array<f32, 256>;
var<private> r_li: u32;
var<private> r_sgid: u32;
var<private> r_nsg: u32;
var<private> r_sgi: u32;

fn red_setup(li: u32, sgid: u32, nsg: u32, sgi: u32) {
    r_li = li;
    r_sgid = sgid;
    r_nsg = nsg;
    r_sgi = sgi;
}

// Sum of v over a workgroup of n invocations (n a power of two, ≤ 256).
fn wg_sum(v: f32, n: u32) -> f32 {
//#if SUBGROUPS
    let s = subgroupAdd(v);
    if r_sgi == 0u {
        red_buf[r_sgid] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < r_nsg; i++) {
        t += red_buf[i];
    }
    workgroupBarrier();
    return t;
//#else
    red_buf[r_li] = v;
    workgroupBarrier();
    for (var st = n / 2u; st > 0u; st = st / 2u) {
        if r_li < st {
            red_buf[r_li] += red_buf[r_li + st];
        }
        workgroupBarrier();
    }
    let t = red_buf[0];
    workgroupBarrier();
    return t;
//#endif
}

// Max of v over the workgroup (same contract as wg_sum).
fn wg_max(v: f32, n: u32) -> f32 {
//#if SUBGROUPS
    let s = subgroupMax(v);
    if r_sgi == 0u {
        red_buf[r_sgid] = s;
    }
    workgroupBarrier();
    var t = red_buf[0];
    for (var i = 1u; i < r_nsg; i++) {
        t = max(t, red_buf[i]);
    }
    workgroupBarrier();
    return t;
//#else
    red_buf[r_li] = v;
    workgroupBarrier();
    for (var st = n / 2u; st > 0u; st = st / 2u) {
        if r_li < st {
            red_buf[r_li] = max(red_buf[r_li], red_buf[r_li + st]);
        }
        workgroupBarrier();
    }
    let t = red_buf[0];
    workgroupBarrier();
    return t;
//#endif
}
