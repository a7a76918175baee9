//! Links the test guest with its own linker script (load address and entry point).

fn main() {
    // Relative to the package (rustc and the linker run in it): a cached build script
    // output must stay right for another checkout sharing the target directory.
    println!("cargo:rustc-link-arg=-Tlink.ld");
    println!("cargo:rerun-if-changed=link.ld");
}
