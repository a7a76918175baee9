//! Generates the ABI definitions from `include/uapi/linux/muserload.h`, the single source of
//! truth that the module and the selftests use too.

use std::{env, path::PathBuf};

fn main() {
    // Read at run time, not with env!(): cargo reuses a compiled build script for another
    // checkout of the same crate that shares the target directory.
    let manifest_dir = env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let header = PathBuf::from(manifest_dir).join("../../include/uapi/linux/muserload.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_item("_?(muserload|MUSERLOAD)_.*")
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .expect("bindgen on the uapi header")
        .write_to_file(out.join("uapi.rs"))
        .expect("writing the generated bindings");
}
