use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(version = 4294967296)]
struct Account {
    balance: i64,
}

fn main() {}
