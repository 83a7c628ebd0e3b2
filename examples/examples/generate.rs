//! Text generation with kiln as a library, in about ten lines:
//! `cargo run --release -p kiln-examples --example generate -- [MODEL] [PROMPT]`
//! (MODEL: a GGUF file, an HF directory or a catalog name; default gemma3-270m).
use std::io::Write;

use kiln_core::{BackendProvider, ReferenceProvider};
use kiln_models::{
    BackendChoice, GenerateOptions, Generator, LoadOptions, Model, RuntimeOptions, open_backend,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (name, prompt) = (
        args.next().unwrap_or("gemma3-270m".into()),
        args.next().unwrap_or("The capital of France is".into()),
    );
    let providers: [&dyn BackendProvider; 3] = [
        &kiln_cuda::CudaProvider,
        &kiln_wgpu::WgpuProvider,
        &ReferenceProvider::default(),
    ];
    let model = Model::load(
        &name,
        open_backend(&providers, BackendChoice::Auto)?,
        &LoadOptions::default(),
    )?;
    let mut generator = Generator::new(&model, RuntimeOptions::default())?;
    let out = generator.generate(&prompt, &GenerateOptions::default(), &mut |t| {
        print!("{}", t.text);
        let _ = std::io::stdout().flush();
    })?;
    println!(
        "\n[{} tokens, {:.1} tok/s]",
        out.generated_ids.len(),
        out.decode_tok_s()
    );
    Ok(())
}
