use cohort_object_api::Checkpointable;

#[derive(Checkpointable)]
struct Wrapper<T> {
    value: T,
    __cohort_phantom: u8,
}

#[derive(Checkpointable)]
enum Choice<T> {
    Some(T),
    __CohortPhantom,
}

// Not generic: no marker, so the names are free.
#[derive(Checkpointable)]
struct Plain {
    __cohort_phantom: u8,
}

fn main() {}
