use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    #[checkpoint(version = 2)]
    balance: i64,
}

fn main() {}
