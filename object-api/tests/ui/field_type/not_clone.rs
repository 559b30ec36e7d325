use cohort_object_api::Checkpointable;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ledger {
    entries: Vec<i64>,
}

#[derive(Checkpointable)]
struct Account {
    balance: i64,
    ledger: Ledger,
}

fn main() {}
