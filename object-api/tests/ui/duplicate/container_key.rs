use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(version = 2)]
#[checkpoint(version = 3)]
struct Account {
    balance: i64,
}

fn main() {}
