//! Generates the NRI message types and the async ttrpc client/server code from
//! `nri.proto` with the pure-Rust parser (no `protoc` needed).

use std::path::Path;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    println!("cargo:rerun-if-changed=nri.proto");
    Codegen::new()
        .out_dir(&out_dir)
        .input("nri.proto")
        .include(".")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("generating Rust code from nri.proto");
    for name in ["nri", "nri_ttrpc"] {
        strip_inner_attributes(Path::new(&out_dir), name);
    }
}

/// `include!` cannot take a file with inner attributes or inner doc comments,
/// which the generators emit; lib.rs sets the equivalent attributes on the
/// wrapping module instead.
fn strip_inner_attributes(out_dir: &Path, name: &str) {
    let generated = out_dir.join(format!("{name}.rs"));
    let text = std::fs::read_to_string(&generated).expect("reading generated code");
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("#![") && !line.starts_with("//!"))
        .collect();
    std::fs::write(out_dir.join(format!("{name}.include.rs")), kept.join("\n"))
        .expect("writing generated code");
}
