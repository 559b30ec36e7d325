use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    #[checkpoint = "skip"]
    balance: i64,
}

fn main() {}
