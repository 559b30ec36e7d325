use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(version)]
struct Account {
    balance: i64,
}

fn main() {}
