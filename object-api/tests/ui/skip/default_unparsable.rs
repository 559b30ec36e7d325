use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Account {
    #[checkpoint(skip, default = "Vec::new()")]
    cache: Vec<u8>,
}

fn main() {}
