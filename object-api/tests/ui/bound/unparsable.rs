use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
#[checkpoint(bound = "T Clone")]
struct Wrapper<T> {
    value: T,
}

fn main() {}
