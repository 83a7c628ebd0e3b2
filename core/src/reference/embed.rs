//! `embed`: out[i] = scale · table[ids[i]].
//!
//! ids i32 `[n]`, table `[vocab, dim]` of any weight dtype (rows are dequantized with
//! `quant::dequantize`, whole blocks), out f32 `[n, dim]`. Every id is checked against the
//! vocabulary first: an id out of range is an error naming the position, the id and vocab.
//! Parallel over output rows. Moves n rows of the table and n · dim floats.
//!
//! `gather`: out[i] = x[ids[i]] for x `[rows, d]` of any scalar dtype (bytes copied as they
//! are), ids i32 `[n]`, out `[n, d]` of x's dtype; ids are checked like `embed`'s.

use rayon::prelude::*;

use super::{HostWeight, ReferenceBackend};
use crate::backend::{OpKind, check};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::quant;
use crate::tensor::{View, ViewMut, Weight};

/// Gather and scale rows over slices: `table` `[vocab, dim]` × `dtype`, out `[ids, dim]`.
pub(super) fn embed_rows(
    ids: &[i32],
    table: &[u8],
    dtype: DType,
    (vocab, dim): (usize, usize),
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    check::eq(
        OpKind::Embed,
        "out elements vs ids · dim",
        out.len(),
        ids.len() * dim,
    )?;
    let row_bytes = dtype.bytes_for(dim)?;
    check::eq(
        OpKind::Embed,
        "table bytes vs vocab · row bytes",
        table.len(),
        vocab * row_bytes,
    )?;
    for (i, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            return Err(Error::shape(
                OpKind::Embed,
                format!("ids[{i}] = {id} is outside the vocabulary of {vocab} rows"),
            ));
        }
    }
    if dim == 0 {
        return Ok(());
    }
    out.par_chunks_mut(dim)
        .zip(ids.par_iter())
        .try_for_each(|(row, &id)| {
            let start = id as usize * row_bytes;
            quant::dequantize(dtype, &table[start..start + row_bytes], row)?;
            for v in row.iter_mut() {
                *v *= scale;
            }
            Ok(())
        })
}

/// The `embed` op.
pub(super) fn embed(
    b: &ReferenceBackend,
    ids: View<'_>,
    table: &Weight,
    scale: f32,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Embed;
    for d in [ids.device(), table.device(), out.device()] {
        b.check_dev(op, d)?;
    }
    check::dtype(op, "ids", ids.dtype(), &[DType::I32])?;
    check::dtype(op, "out", out.dtype(), &[DType::F32])?;
    let ts = table.shape();
    if ts.rank() != 2 {
        return Err(Error::shape(
            op,
            format!("table {ts} {} must be 2-D [vocab, dim]", table.dtype()),
        ));
    }
    let (vocab, dim) = (ts.dim(0), ts.dim(1));
    let n = ids.numel();
    check::eq(op, "out elements vs ids · dim", out.numel(), n * dim)?;
    if n > 0 {
        check::eq(op, "out last dim vs table dim", out.shape().last(), dim)?;
    }
    let hw = HostWeight::of(table)?;
    let a = b.access();
    let idv = a.i32s(&ids)?;
    let o = a.f32s_mut(&out)?;
    embed_rows(idv, &hw.data, table.dtype(), (vocab, dim), scale, o)
}

/// The `gather` op.
pub(super) fn gather(
    b: &ReferenceBackend,
    x: View<'_>,
    ids: View<'_>,
    out: ViewMut<'_>,
) -> Result<()> {
    let op = OpKind::Gather;
    for d in [x.device(), ids.device(), out.device()] {
        b.check_dev(op, d)?;
    }
    if x.dtype().is_quantized() {
        return Err(Error::shape(
            op,
            format!("x has block dtype {}, expected a scalar dtype", x.dtype()),
        ));
    }
    check::dtype(op, "out", out.dtype(), &[x.dtype()])?;
    check::dtype(op, "ids", ids.dtype(), &[DType::I32])?;
    let (rows, d) = (x.shape().rows(), x.shape().last());
    let n = ids.numel();
    check::eq(op, "out elements vs ids · row length", out.numel(), n * d)?;
    if n > 0 {
        check::eq(op, "out last dim vs x last dim", out.shape().last(), d)?;
    }
    let row_bytes = x.dtype().bytes_for(d)?;
    let a = b.access();
    let idv = a.i32s(&ids)?;
    for (i, &id) in idv.iter().enumerate() {
        if id < 0 || id as usize >= rows {
            return Err(Error::shape(
                op,
                format!("ids[{i}] = {id} is outside x's {rows} rows"),
            ));
        }
    }
    if row_bytes == 0 {
        return Ok(());
    }
    let xs = a.input(&x)?;
    a.output(&out)?
        .par_chunks_mut(row_bytes)
        .zip(idv.par_iter())
        .for_each(|(row, &id)| {
            let start = id as usize * row_bytes;
            row.copy_from_slice(&xs[start..start + row_bytes]);
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::from_f32;

    #[test]
    fn gathers_scales_and_rejects_bad_ids() {
        // vocab 3, dim 2, bf16
        let table = from_f32(DType::BF16, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let mut out = [f32::NAN; 6];
        embed_rows(&[2, 0, 2], &table, DType::BF16, (3, 2), 0.5, &mut out).unwrap();
        assert_eq!(out, [2.5, 3.0, 0.5, 1.0, 2.5, 3.0]);
        let e = embed_rows(&[1, 3], &table, DType::BF16, (3, 2), 1.0, &mut out[..4]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ids[1] = 3") && msg.contains("3 rows"),
            "{msg}"
        );
        assert!(embed_rows(&[-1], &table, DType::BF16, (3, 2), 1.0, &mut out[..2]).is_err());
        // no ids: nothing to do, not an error
        embed_rows(&[], &table, DType::BF16, (3, 2), 1.0, &mut []).unwrap();
    }
}
