use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(version = 2, migrate = "migrate_account")]
struct Account {
    balance: i64,
}

fn main() {}
