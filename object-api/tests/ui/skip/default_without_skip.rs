use cohort_object_api::Checkpointable;

fn empty() -> Vec<u8> {
    Vec::new()
}

#[derive(Checkpointable)]
struct Account {
    #[checkpoint(default = "empty")]
    cache: Vec<u8>,
}

fn main() {}
