use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(typename = "Account")]
struct Account {
    balance: i64,
}

fn main() {}
