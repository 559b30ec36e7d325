use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(skip)]
struct Account {
    balance: i64,
}

fn main() {}
