use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    balance: i64,
    #[checkpoint(generation)]
    generation: u32,
}

fn main() {}
