use cohort_object_api::Checkpointable;

#[derive(Clone)]
struct Opaque;

#[derive(Checkpointable)]
struct Wrapper<T> {
    value: T,
}

fn needs_checkpointable<T: Checkpointable>(_: T) {}

fn main() {
    needs_checkpointable(Wrapper { value: Opaque });
}
