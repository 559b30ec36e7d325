use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    balance: i64,
    #[checkpoint(skip, generation)]
    generation: u64,
}

fn main() {}
