use cohort_object_api::Checkpointable;

// Every mistake of a type is reported in one build, not just the first.
#[derive(Checkpointable)]
#[checkpoint(version = 0, typename = "A", skip)]
#[checkpoint(type_name = "A", type_name = "B")]
struct Account {
    #[checkpoint(generation, skip)]
    generation: u64,
    #[checkpoint(default = "Vec::new", migrate = "m")]
    cache: Vec<u8>,
    #[checkpoint(skip, unknown, skip)]
    other: u8,
}

fn main() {}
