use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
enum State {
    Idle,
    #[checkpoint(skip)]
    Busy(u32),
}

fn main() {}
