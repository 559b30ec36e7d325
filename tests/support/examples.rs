//! Finding the example binaries that `cargo test` builds next to this crate's binaries.

use std::path::PathBuf;

/// The binary of example `name`; `None` (skip) outside CI when only one test target was built.
pub(crate) fn example(name: &str) -> Option<PathBuf> {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_cohort"))
        .parent()?
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if exe.is_file() {
        return Some(exe);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing: `cargo test` builds it unless a single test target is selected",
        exe.display()
    );
    eprintln!("skipping: the {name} example is not built (run `cargo test -p cohort`)");
    None
}
