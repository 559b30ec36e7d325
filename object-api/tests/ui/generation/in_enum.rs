use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
enum State {
    Idle,
    Busy {
        #[checkpoint(generation)]
        generation: u64,
    },
}

fn main() {}
