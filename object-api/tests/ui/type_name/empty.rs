use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(type_name = "")]
struct Account {
    balance: i64,
}

fn main() {}
