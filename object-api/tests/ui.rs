//! Compile tests of `#[derive(Checkpointable)]`: `ui/pass/` must compile (without warnings) and
//! run; every other folder of `ui/` holds inputs that must fail with the message in the `.stderr`
//! next to them. Regenerate those with `TRYBUILD=overwrite cargo test -p cohort-object-api --test ui`
//! and read every diff: the messages are part of the derive's interface.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    let mut categories: Vec<_> = std::fs::read_dir("tests/ui")
        .expect("tests run from the package root, which holds tests/ui")
        .map(|entry| entry.expect("read tests/ui").path())
        .filter(|path| path.is_dir() && !path.ends_with("pass"))
        .collect();
    categories.sort();
    assert!(!categories.is_empty(), "no compile-fail categories found");
    for category in categories {
        t.compile_fail(category.join("*.rs"));
    }
}
