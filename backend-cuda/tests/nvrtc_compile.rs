//! CI compile check: every kernel file compiles with NVRTC for sm_80, sm_86, sm_89 and sm_90,
//! with no GPU and no driver (NVRTC alone). A warning counts as an error. Without libnvrtc the
//! test prints "skipped: NVRTC not found", unless KILN_REQUIRE_NVRTC=1 (CI), where that fails.

use kiln_cuda::module_cache::{self, ALL};

const ARCHS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];

#[test]
fn every_kernel_compiles_for_every_arch() {
    if !module_cache::nvrtc_available() {
        let required = std::env::var("KILN_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "KILN_REQUIRE_NVRTC=1 but libnvrtc was not found on the loader path (LD_LIBRARY_PATH)"
        );
        println!("skipped: NVRTC not found");
        return;
    }
    println!("NVRTC {}", module_cache::nvrtc_version().unwrap());
    // Every .cu file in kernels/ must be in the embedded list (a new file cannot be forgotten).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".cu") {
            assert!(
                ALL.iter().any(|k| k.name == name),
                "kernels/{name} is not listed in module_cache::ALL"
            );
        }
    }
    let mut failures = Vec::new();
    for k in ALL {
        for arch in ARCHS {
            let t = std::time::Instant::now();
            match module_cache::compile(&k, arch, &[]) {
                Ok(c) => {
                    if c.log.to_lowercase().contains("warning") {
                        failures.push(format!("{} {arch}: warnings:\n{}", k.name, c.log));
                    }
                    println!(
                        "{:<14} {arch}: {:>8} bytes of CUBIN in {:.2} s",
                        k.name,
                        c.cubin.len(),
                        t.elapsed().as_secs_f64()
                    );
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn compile_errors_name_the_kernel_and_carry_the_log() {
    if !module_cache::nvrtc_available() {
        println!("skipped: NVRTC not found");
        return;
    }
    let bad = module_cache::KernelFile {
        name: "broken.cu",
        source: "extern \"C\" __global__ void f(float* x) { x[0] = undefined_name; }",
    };
    let err = module_cache::compile(&bad, "sm_90", &[])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("broken.cu"), "{err}");
    assert!(err.contains("undefined_name"), "{err}");
}

/// Fill the disk cache (`KILN_CACHE_DIR`) with sm_90 CUBINs ahead of a GPU run:
/// `cargo test --release -p kiln-cuda --test nvrtc_compile -- --ignored precompile`.
#[test]
#[ignore]
fn precompile_sm90_into_cache() {
    assert!(module_cache::nvrtc_available(), "NVRTC not found");
    for k in ALL {
        let c = module_cache::cached_cubin(&k, "sm_90").unwrap();
        println!("{}: {} bytes", k.name, c.len());
    }
}

#[test]
fn cache_keys_change_with_arch_and_source() {
    let a = module_cache::cache_key(&module_cache::NORM, "sm_90", &[], "13.0").unwrap();
    let b = module_cache::cache_key(&module_cache::NORM, "sm_80", &[], "13.0").unwrap();
    let c = module_cache::cache_key(&module_cache::ROPE, "sm_90", &[], "13.0").unwrap();
    let d = module_cache::cache_key(&module_cache::NORM, "sm_90", &[("X", "1")], "13.0").unwrap();
    let e = module_cache::cache_key(&module_cache::NORM, "sm_90", &[], "13.1").unwrap();
    assert_eq!(
        a,
        module_cache::cache_key(&module_cache::NORM, "sm_90", &[], "13.0").unwrap()
    );
    for other in [&b, &c, &d, &e] {
        assert_ne!(&a, other);
    }
    assert!(a.starts_with("norm-sm_90-"), "{a}");
}
