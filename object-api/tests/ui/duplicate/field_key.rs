use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    #[checkpoint(skip, skip)]
    cache: Vec<u8>,
}

fn main() {}
