use cohort_object_api::{Checkpointable, EncodedState};

#[derive(Checkpointable)]
#[checkpoint(version = 2, migrate = "Account::migrate")]
struct Account {
    balance: i64,
}

impl Account {
    fn migrate(_version: u32, _state: &EncodedState) -> Option<Self> {
        None
    }
}

fn main() {}
