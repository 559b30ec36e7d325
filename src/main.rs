//! The `cohort` command-line tool.

fn main() {
    println!("cohort {}", env!("CARGO_PKG_VERSION"));
}
