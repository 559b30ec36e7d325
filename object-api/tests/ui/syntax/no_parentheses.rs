use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint]
struct Account {
    balance: i64,
}

fn main() {}
