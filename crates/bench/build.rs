//! Compiles the bench's XDP programs in bpf/ (the generators, the steering
//! and the bare forwarder) and generates their libbpf-rs skeletons.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bpf");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    // libbpf-sys publishes the headers it built (bpf/bpf_helpers.h).
    let libbpf_include = std::env::var("DEP_BPF_INCLUDE").expect("libbpf-sys include dir");
    // <linux/bpf.h> wants <asm/types.h>, which Debian keeps per architecture.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    for name in ["gen", "steer", "fwd"] {
        let src = root.join(format!("{name}.bpf.c"));
        libbpf_cargo::SkeletonBuilder::new()
            .source(&src)
            .clang_args([
                format!("-I{libbpf_include}"),
                format!("-I{}", root.display()),
                format!("-I{multiarch}"),
            ])
            .build_and_generate(out_dir.join(format!("{name}.skel.rs")))
            .expect("building an XDP program");
        println!("cargo:rerun-if-changed={}", src.display());
    }
}
