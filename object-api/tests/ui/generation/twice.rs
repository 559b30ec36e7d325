use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    #[checkpoint(generation)]
    changes: u64,
    #[checkpoint(generation)]
    writes: u64,
}

fn main() {}
