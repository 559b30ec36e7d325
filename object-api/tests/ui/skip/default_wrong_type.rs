use cohort_object_api::Checkpointable;

fn zero() -> u32 {
    0
}

#[derive(Checkpointable)]
struct Account {
    #[checkpoint(skip, default = "zero")]
    cache: Vec<u8>,
}

fn main() {}
