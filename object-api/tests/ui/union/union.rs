use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
