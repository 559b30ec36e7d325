//! Behaviour of `#[derive(Checkpointable)]`: what is captured comes back unchanged, skipped
//! fields come back as their defaults, tags are checked, older versions migrate, schemas evolve,
//! mixed types work behind `dyn Checkpointable`, and generations are reported.
//!
//! Property tests run from a fixed seed, so a run is reproducible; a failure prints the seed
//! and shrunk input.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use cohort_object_api::{Checkpointable, EncodedState, ObjectError, Snapshot, StateTag};
use proptest::collection::{btree_map, hash_map, vec};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde::{Deserialize, Serialize};

// --- helpers ---------------------------------------------------------------------------------

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        rng_seed: RngSeed::Fixed(0x00c0_4012),
        ..ProptestConfig::default()
    }
}

/// Runs a future that never waits on IO: capture and restore of derived types are synchronous.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime needs no IO driver and cannot fail to build")
        .block_on(future)
}

fn capture(object: &dyn Checkpointable) -> EncodedState {
    block_on(async { object.capture().await?.encode() }).expect("capture and encode")
}

fn restore(object: &mut dyn Checkpointable, state: &EncodedState) -> Result<(), ObjectError> {
    block_on(object.restore(state))
}

/// Captures `original`, encodes it, restores it into `target` and checks they are now equal.
fn assert_round_trip<T: Checkpointable + PartialEq + Debug>(original: &T, mut target: T) {
    let state = capture(original);
    assert_eq!(state.tag().type_name, original.type_name());
    assert_eq!(state.tag().version, original.schema_version());
    restore(&mut target, &state).expect("restore");
    assert_eq!(&target, original);
}

// --- types with every shape ------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Empty,
    Circle(u32),
    Segment(Point, Point),
    Rect { w: u32, h: u32 },
    Polygon(Vec<Point>),
}

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
struct Everything {
    id: u64,
    name: String,
    flag: bool,
    tags: Vec<String>,
    scores: BTreeMap<String, i64>,
    index: HashMap<u32, Vec<u8>>,
    nested: Vec<BTreeMap<u8, Option<Point>>>,
    boxed: Option<Box<Point>>,
    shapes: Vec<Shape>,
    shared: Arc<Vec<u64>>,
    pair: (u8, String),
}

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
struct Tuple(u64, String, Vec<Option<i16>>);

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
struct Unit;

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
enum Machine {
    #[default]
    Idle,
    Running(u32, String),
    Paused {
        since: u64,
        queue: Vec<Shape>,
        #[checkpoint(skip)]
        scratch: Vec<u8>,
    },
    Draining(#[checkpoint(skip)] u32, BTreeMap<String, Point>),
}

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
struct Keyed<K: Ord, V> {
    entries: BTreeMap<K, V>,
    order: Vec<K>,
}

#[derive(Checkpointable, Clone, Debug, PartialEq)]
enum Either<L, R> {
    Left(L),
    Right { value: R },
    Neither,
}

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
struct Wrapper<T>(T);

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
#[checkpoint(type_name = "Wrapper")]
struct PlainWrapper(u64);

fn point() -> impl Strategy<Value = Point> {
    (any::<i32>(), any::<i32>()).prop_map(|(x, y)| Point { x, y })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Empty),
        any::<u32>().prop_map(Shape::Circle),
        (point(), point()).prop_map(|(a, b)| Shape::Segment(a, b)),
        (any::<u32>(), any::<u32>()).prop_map(|(w, h)| Shape::Rect { w, h }),
        vec(point(), 0..4).prop_map(Shape::Polygon),
    ]
}

prop_compose! {
    fn everything()(
        id in any::<u64>(),
        name in ".{0,12}",
        flag in any::<bool>(),
        tags in vec(".{0,6}", 0..5),
        scores in btree_map(".{0,6}", any::<i64>(), 0..5),
        index in hash_map(any::<u32>(), vec(any::<u8>(), 0..6), 0..5),
        nested in vec(btree_map(any::<u8>(), proptest::option::of(point()), 0..4), 0..4),
        boxed in proptest::option::of(point().prop_map(Box::new)),
        shapes in vec(shape(), 0..5),
        shared in vec(any::<u64>(), 0..8),
        pair in (any::<u8>(), ".{0,6}"),
    ) -> Everything {
        Everything { id, name, flag, tags, scores, index, nested, boxed, shapes, shared: Arc::new(shared), pair }
    }
}

fn machine() -> impl Strategy<Value = Machine> {
    prop_oneof![
        Just(Machine::Idle),
        (any::<u32>(), ".{0,8}").prop_map(|(n, s)| Machine::Running(n, s)),
        (any::<u64>(), vec(shape(), 0..4)).prop_map(|(since, queue)| Machine::Paused {
            since,
            queue,
            scratch: Vec::new(),
        }),
        btree_map(".{0,4}", point(), 0..4).prop_map(|m| Machine::Draining(0, m)),
    ]
}

fn keyed() -> impl Strategy<Value = Keyed<String, Vec<Option<u16>>>> {
    (
        btree_map(
            ".{0,6}",
            vec(proptest::option::of(any::<u16>()), 0..4),
            0..6,
        ),
        vec(".{0,6}", 0..4),
    )
        .prop_map(|(entries, order)| Keyed { entries, order })
}

fn either() -> impl Strategy<Value = Either<Point, Vec<Shape>>> {
    prop_oneof![
        point().prop_map(Either::Left),
        vec(shape(), 0..3).prop_map(|value| Either::Right { value }),
        Just(Either::Neither),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn struct_with_nested_collections_round_trips(original in everything(), target in everything()) {
        assert_round_trip(&original, target);
    }

    #[test]
    fn tuple_struct_round_trips(a in any::<u64>(), b in ".{0,10}", c in vec(proptest::option::of(any::<i16>()), 0..6)) {
        assert_round_trip(&Tuple(a, b, c), Tuple(1, "other".into(), vec![None]));
    }

    #[test]
    fn enum_round_trips_every_variant(original in machine(), target in machine()) {
        assert_round_trip(&original, target);
    }

    #[test]
    fn generic_struct_round_trips(original in keyed(), target in keyed()) {
        assert_round_trip(&original, target);
    }

    #[test]
    fn generic_enum_round_trips(original in either(), target in either()) {
        assert_round_trip(&original, target);
    }

    #[test]
    fn generic_newtype_encodes_like_a_plain_newtype(n in any::<u64>()) {
        let generic = capture(&Wrapper(n));
        let plain = capture(&PlainWrapper(n));
        prop_assert_eq!(generic.payload(), plain.payload());
        let mut back = Wrapper(0u64);
        restore(&mut back, &plain).expect("restore");
        prop_assert_eq!(back, Wrapper(n));
    }
}

#[test]
fn unit_struct_round_trips() {
    assert_round_trip(&Unit, Unit);
}

#[test]
fn skipped_enum_fields_come_back_as_default() {
    let state = capture(&Machine::Paused {
        since: 9,
        queue: vec![Shape::Empty],
        scratch: vec![1, 2, 3],
    });
    let mut back = Machine::Idle;
    restore(&mut back, &state).expect("restore");
    assert_eq!(
        back,
        Machine::Paused {
            since: 9,
            queue: vec![Shape::Empty],
            scratch: Vec::new(),
        }
    );

    let state = capture(&Machine::Draining(7, BTreeMap::new()));
    restore(&mut back, &state).expect("restore");
    assert_eq!(back, Machine::Draining(0, BTreeMap::new()));
}

#[test]
fn capture_is_owned_and_does_not_see_later_changes() {
    let mut object = Everything {
        name: "before".into(),
        shared: Arc::new(vec![1, 2, 3]),
        ..Everything::default()
    };
    let snapshot = block_on(object.capture()).expect("capture");
    object.name = "after".into();
    Arc::make_mut(&mut object.shared).push(4);
    let mut back = Everything::default();
    restore(&mut back, &snapshot.encode().expect("encode")).expect("restore");
    assert_eq!(back.name, "before");
    assert_eq!(*back.shared, vec![1, 2, 3]);
}

// --- skipped fields ----------------------------------------------------------------------------

/// Neither `Clone` nor `Serialize`: a skipped field needs only a way to be rebuilt.
#[derive(Debug, Default, PartialEq)]
struct Connection {
    open: bool,
}

fn warm_cache() -> Vec<u32> {
    vec![7, 7, 7]
}

#[derive(Checkpointable, Debug, PartialEq)]
struct WithSkips {
    kept: u32,
    #[checkpoint(skip)]
    hits: u64,
    #[checkpoint(skip, default = "warm_cache")]
    cache: Vec<u32>,
    #[checkpoint(skip)]
    connection: Connection,
    label: String,
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn skipped_fields_come_back_as_default_or_from_their_function(
        kept in any::<u32>(),
        hits in any::<u64>(),
        cache in vec(any::<u32>(), 0..5),
        label in ".{0,8}",
    ) {
        let original = WithSkips { kept, hits, cache, connection: Connection { open: true }, label: label.clone() };
        let state = capture(&original);
        let mut back = WithSkips { kept: 0, hits: 1, cache: vec![], connection: Connection { open: true }, label: String::new() };
        restore(&mut back, &state).expect("restore");
        prop_assert_eq!(back, WithSkips { kept, hits: 0, cache: warm_cache(), connection: Connection::default(), label });
    }
}

// --- tags: type names and versions -------------------------------------------------------------

#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(type_name = "Counter", version = 2)]
struct CounterV2 {
    count: u64,
}

#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(type_name = "Counter", version = 3)]
struct CounterV3 {
    count: u64,
}

#[test]
fn type_name_and_version_come_from_the_attributes_or_the_identifier() {
    assert_eq!(Everything::default().type_name(), "Everything");
    assert_eq!(Everything::default().schema_version(), 1);
    assert_eq!(CounterV3 { count: 0 }.type_name(), "Counter");
    assert_eq!(CounterV3 { count: 0 }.schema_version(), 3);
    assert_eq!(Wrapper(1u8).type_name(), "Wrapper");
    assert_eq!(Everything::default().generation(), None);
}

#[test]
fn another_type_is_a_type_mismatch_and_leaves_the_object_alone() {
    let state = capture(&Tuple(1, "a".into(), vec![]));
    let mut target = CounterV2 { count: 5 };
    let err = restore(&mut target, &state).expect_err("must refuse another type");
    assert!(
        matches!(&err, ObjectError::TypeMismatch { expected, found } if expected == "Counter" && found == "Tuple"),
        "{err:?}"
    );
    assert_eq!(target, CounterV2 { count: 5 });
}

#[test]
fn a_future_version_is_refused() {
    let state = capture(&CounterV3 { count: 1 });
    let mut target = CounterV2 { count: 5 };
    let err = restore(&mut target, &state).expect_err("must refuse a newer version");
    assert!(
        matches!(err, ObjectError::FutureVersion { ref type_name, found: 3, supported: 2 } if type_name == "Counter"),
        "{err:?}"
    );
    assert_eq!(target, CounterV2 { count: 5 });
}

#[test]
fn an_older_version_without_migrate_is_no_migration() {
    let state = capture(&CounterV2 { count: 1 });
    let mut target = CounterV3 { count: 5 };
    let err = restore(&mut target, &state).expect_err("must ask for a migration");
    assert!(
        matches!(err, ObjectError::NoMigration { ref type_name, found: 2, current: 3 } if type_name == "Counter"),
        "{err:?}"
    );
    assert_eq!(target, CounterV3 { count: 5 });
}

#[test]
fn a_payload_of_another_shape_is_a_decode_error() {
    let state = EncodedState::new(
        StateTag::new("Counter", 2),
        rmp_serde::to_vec_named(&BTreeMap::from([("count", "not a number")]))
            .expect("encode")
            .into(),
    );
    let mut target = CounterV2 { count: 5 };
    let err = restore(&mut target, &state).expect_err("must refuse the payload");
    assert!(matches!(err, ObjectError::Decode { .. }), "{err:?}");
    assert_eq!(target, CounterV2 { count: 5 });
}

// --- migration ---------------------------------------------------------------------------------

#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(type_name = "Account")]
struct AccountV1 {
    balance: i64,
    owner: String,
}

#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(type_name = "Account", version = 2, migrate = "AccountV2::migrate")]
struct AccountV2 {
    balance_cents: i64,
    owner: String,
    #[checkpoint(skip)]
    migrated_from: Option<u32>,
}

impl AccountV2 {
    fn migrate(version: u32, state: &EncodedState) -> Result<Self, ObjectError> {
        // The shape version 1 wrote, as a plain serde type.
        #[derive(Deserialize)]
        struct V1 {
            balance: i64,
            owner: String,
        }
        match version {
            1 => {
                let v1: V1 = state.decode()?;
                Ok(Self {
                    balance_cents: v1.balance.saturating_mul(100),
                    owner: v1.owner,
                    migrated_from: Some(1),
                })
            }
            found => Err(ObjectError::NoMigration {
                type_name: "Account".into(),
                found,
                current: 2,
            }),
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_older_version_goes_through_migrate(balance in any::<i64>(), owner in ".{0,10}") {
        let state = capture(&AccountV1 { balance, owner: owner.clone() });
        prop_assert_eq!(state.tag().version, 1);
        let mut target = AccountV2 { balance_cents: 0, owner: String::new(), migrated_from: None };
        restore(&mut target, &state).expect("migrate");
        prop_assert_eq!(target, AccountV2 { balance_cents: balance.saturating_mul(100), owner, migrated_from: Some(1) });
    }

    #[test]
    fn the_current_version_does_not_go_through_migrate(cents in any::<i64>(), owner in ".{0,10}") {
        let original = AccountV2 { balance_cents: cents, owner, migrated_from: None };
        let state = capture(&original);
        let mut target = AccountV2 { balance_cents: 0, owner: String::new(), migrated_from: Some(9) };
        restore(&mut target, &state).expect("restore");
        prop_assert_eq!(target, original);
    }
}

// --- schema evolution within one version -------------------------------------------------------

#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(type_name = "Profile")]
struct ProfileOld {
    name: String,
    age: u32,
    nickname: String,
}

fn unknown() -> String {
    "unknown".into()
}

/// `ProfileOld` with its fields reordered, one renamed in Rust but not on disk, and two added.
#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(type_name = "Profile")]
struct ProfileNew {
    age: u32,
    #[serde(default)]
    email: Option<String>,
    #[serde(rename = "nickname")]
    handle: String,
    #[serde(default = "unknown")]
    city: String,
    name: String,
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn added_defaulted_and_reordered_fields_still_read_old_states(name in ".{0,10}", age in any::<u32>(), nickname in ".{0,6}") {
        let state = capture(&ProfileOld { name: name.clone(), age, nickname: nickname.clone() });
        let mut target = ProfileNew { age: 0, email: Some("x@y".into()), handle: String::new(), city: String::new(), name: String::new() };
        restore(&mut target, &state).expect("restore");
        prop_assert_eq!(target, ProfileNew { age, email: None, handle: nickname, city: unknown(), name });
    }

    #[test]
    fn old_code_ignores_fields_it_does_not_know(name in ".{0,10}", age in any::<u32>(), email in proptest::option::of(".{0,6}")) {
        let state = capture(&ProfileNew { age, email, handle: "h".into(), city: "c".into(), name: name.clone() });
        let mut target = ProfileOld { name: String::new(), age: 0, nickname: String::new() };
        restore(&mut target, &state).expect("restore");
        prop_assert_eq!(target, ProfileOld { name, age, nickname: "h".into() });
    }
}

// --- trait objects -----------------------------------------------------------------------------

#[test]
fn mixed_types_behind_dyn_checkpointable_capture_and_restore() {
    let everything = Everything {
        id: 3,
        index: HashMap::from([(1, vec![1]), (2, vec![2, 2])]),
        shapes: vec![Shape::Rect { w: 1, h: 2 }],
        ..Everything::default()
    };
    let machine = Machine::Running(4, "job".into());
    let keyed = Keyed {
        entries: BTreeMap::from([("a".to_string(), vec![Some(1u16)])]),
        order: vec!["a".into()],
    };
    let tracked = Tracked {
        generation: 11,
        value: "v".into(),
    };
    let originals: Vec<Box<dyn Checkpointable>> = vec![
        Box::new(everything.clone()),
        Box::new(machine.clone()),
        Box::new(keyed.clone()),
        Box::new(tracked.clone()),
    ];
    let states: Vec<EncodedState> = originals.iter().map(|o| capture(o.as_ref())).collect();

    let mut blanks: Vec<Box<dyn Checkpointable>> = vec![
        Box::new(Everything::default()),
        Box::new(Machine::Idle),
        Box::new(Keyed::<String, Vec<Option<u16>>>::default()),
        Box::new(Tracked::default()),
    ];
    // A state restored into another type is refused.
    assert!(matches!(
        restore(blanks[1].as_mut(), &states[0]),
        Err(ObjectError::TypeMismatch { .. })
    ));
    for (blank, state) in blanks.iter_mut().zip(&states) {
        restore(blank.as_mut(), state).expect("restore");
    }
    assert_eq!(blanks[3].generation(), Some(11));

    // Read each back through its concrete type to compare.
    let mut e = Everything::default();
    restore(&mut e, &capture(blanks[0].as_ref())).expect("restore");
    assert_eq!(e, everything);
    let mut m = Machine::Idle;
    restore(&mut m, &capture(blanks[1].as_ref())).expect("restore");
    assert_eq!(m, machine);
    let mut k = Keyed::default();
    restore(&mut k, &capture(blanks[2].as_ref())).expect("restore");
    assert_eq!(k, keyed);
    let mut t = Tracked::default();
    restore(&mut t, &capture(blanks[3].as_ref())).expect("restore");
    assert_eq!(t, tracked);
}

// --- generations -------------------------------------------------------------------------------

#[derive(Checkpointable, Clone, Debug, PartialEq, Default)]
struct Tracked {
    value: String,
    #[checkpoint(generation)]
    generation: u64,
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generation_reports_the_field_and_is_saved(generation in any::<u64>(), value in ".{0,8}") {
        let original = Tracked { value, generation };
        prop_assert_eq!(original.generation(), Some(generation));
        let state = capture(&original);
        let mut back = Tracked::default();
        prop_assert_eq!(back.generation(), Some(0));
        restore(&mut back, &state).expect("restore");
        prop_assert_eq!(back.generation(), Some(generation));
        prop_assert_eq!(back, original);
    }
}

// --- a hand-written impl shares the format --------------------------------------------------------

#[derive(Serialize)]
struct ManualState<'a> {
    count: &'a u64,
}

/// Objects may implement the trait by hand; the derive must read what they write.
struct Manual {
    count: u64,
}

#[cohort_object_api::__private::async_trait]
impl Checkpointable for Manual {
    fn type_name(&self) -> &'static str {
        "Counter"
    }

    fn schema_version(&self) -> u32 {
        2
    }

    async fn capture(&self) -> Result<Snapshot, ObjectError> {
        let state =
            rmp_serde::to_vec_named(&ManualState { count: &self.count }).map_err(|source| {
                ObjectError::Encode {
                    type_name: "Counter".into(),
                    source,
                }
            })?;
        Ok(Snapshot::from_encoded(EncodedState::new(
            StateTag::new("Counter", 2),
            state.into(),
        )))
    }

    async fn restore(&mut self, _state: &EncodedState) -> Result<(), ObjectError> {
        Ok(())
    }
}

#[test]
fn a_derived_type_reads_a_hand_written_state() {
    let state = capture(&Manual { count: 42 });
    let mut target = CounterV2 { count: 0 };
    restore(&mut target, &state).expect("restore");
    assert_eq!(target, CounterV2 { count: 42 });
}
