use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    #[checkpoint(skipp)]
    cache: Vec<u8>,
}

fn main() {}
