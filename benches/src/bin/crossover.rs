//! The matmul crossover table of a CUDA device: for every weight type and the three model
//! shapes, the tuner's timings of the fused, mma (block types) and dense paths per m and the
//! chosen max fused rows and max mma rows (measured now and persisted, as `kiln tune` will do).
//! `crossover --backend cuda [--quick] [--types ...] [--json FILE]`

use kiln_benches::{Args, random_weight, run_main};
use kiln_core::{DType, Error, HostTensor, Shape};

fn main() {
    run_main(|| {
        let args = Args::parse()?;
        #[cfg(feature = "cuda")]
        {
            kiln_benches::open(&args)?;
            let be = kiln_benches::opened_cuda()
                .ok_or_else(|| Error::Invalid("crossover needs --backend cuda".into()))?;
            let shapes: &[(usize, usize)] = if args.quick {
                &[(4096, 4096)]
            } else {
                &[(4096, 4096), (14336, 4096), (4096, 14336)]
            };
            println!("device key: {}", be.device_key());
            println!(
                "{:<8} {:<12} {:>6} {:>6}  per m: fused µs / mma µs / dense µs",
                "type", "n x k", "fused", "mma"
            );
            let mut lines = Vec::new();
            for dt in args.types_or(&DType::WEIGHT_TYPES) {
                for &(n, k) in shapes {
                    let host = random_weight(dt, n, k, 1);
                    let w = kiln_core::Backend::prepare_weight(
                        &*be,
                        &HostTensor::new(dt, Shape::d2(n, k), &host)?,
                    )?;
                    let r = be.tune_matmul(&w)?;
                    let cells: Vec<String> = (0..r.m.len())
                        .map(|i| {
                            let q = r
                                .mma_us
                                .get(i)
                                .map_or("-".to_string(), |q| format!("{q:.0}"));
                            format!("{}:{:.0}/{q}/{:.0}", r.m[i], r.fused_us[i], r.dense_us[i])
                        })
                        .collect();
                    println!(
                        "{:<8} {:<12} {:>6} {:>6}  {}",
                        dt.name(),
                        format!("{n}x{k}"),
                        r.max_fused_rows,
                        r.max_mma_rows,
                        cells.join(" ")
                    );
                    lines.push(serde_json::json!({
                        "bench": "crossover", "type": dt.name(), "n": n, "k": k,
                        "max_fused_rows": r.max_fused_rows, "max_mma_rows": r.max_mma_rows, "m": r.m,
                        "fused_us": r.fused_us, "mma_us": r.mma_us, "dense_us": r.dense_us,
                        "device": kiln_core::Backend::info(&*be).name.clone(),
                    }));
                }
            }
            if let Some(p) = &args.json {
                let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
                let old = std::fs::read_to_string(p).unwrap_or_default();
                std::fs::write(p, old + &text).map_err(|e| Error::Io {
                    path: p.display().to_string(),
                    source: e,
                })?;
            }
            Ok(())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (args, random_weight, HostTensor::new, Shape::d1, DType::F32);
            Err(Error::Invalid("built without the cuda feature".into()))
        }
    })
}
