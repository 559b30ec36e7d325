use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(version = 0)]
struct Account {
    balance: i64,
}

fn main() {}
