//! Every shape of type derives, and round-trips.
#![deny(warnings)]

use std::marker::PhantomData;

use cohort_object_api::Checkpointable;

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct Named {
    a: u32,
    b: String,
}

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct Tuple(u32, #[checkpoint(skip)] u8, String);

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct AllSkipped(#[checkpoint(skip)] u8);

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct Unit;

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct Empty {}

#[derive(Checkpointable, Debug, PartialEq)]
enum Never {}

#[derive(Checkpointable, Default, Debug, PartialEq)]
enum Kinds {
    #[default]
    Unit,
    Tuple(u8, #[checkpoint(skip)] Vec<u8>),
    Struct {
        x: i64,
        #[checkpoint(skip)]
        y: i64,
    },
    Empty {},
    EmptyTuple(),
}

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct Generic<T, const N: usize> {
    items: Vec<[T; N]>,
}

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct ConstUnit<const N: usize>;

/// A lifetime parameter used only by a skipped field.
#[derive(Checkpointable, Default, Debug, PartialEq)]
struct WithLifetime<'a, T> {
    value: T,
    #[checkpoint(skip)]
    marker: PhantomData<&'a ()>,
}

/// `Self` in a field type means the deriving type, not the hidden mirror.
#[derive(
    Checkpointable, Clone, Default, Debug, PartialEq, serde::Serialize, serde::Deserialize,
)]
struct Tree<T> {
    value: T,
    children: Vec<Self>,
}

#[derive(Checkpointable, Default, Debug, PartialEq)]
struct Bounded<T>
where
    T: Ord + Clone,
{
    sorted: std::collections::BTreeSet<T>,
    #[checkpoint(skip)]
    scratch: Vec<T>,
}

#[derive(Checkpointable, Debug, PartialEq)]
enum GenericEnum<A, B> {
    Left(A),
    Right { b: B },
}

/// Raw identifiers: the stored names are unraw, as serde's.
#[derive(Checkpointable, Default, Debug, PartialEq)]
#[allow(non_camel_case_types)]
struct r#Match {
    r#type: u8,
}

macro_rules! declare {
    ($name:ident, $ty:ty) => {
        #[derive(Checkpointable, Default, Debug, PartialEq)]
        #[checkpoint(type_name = "declared", version = 2)]
        struct $name {
            value: $ty,
        }
    };
}
declare!(Declared, Vec<u8>);

async fn round_trip<T: Checkpointable + PartialEq + std::fmt::Debug>(original: &T, mut target: T) {
    let state = original.capture().await.unwrap().encode().unwrap();
    target.restore(&state).await.unwrap();
    assert_eq!(&target, original);
}

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        round_trip(
            &Named {
                a: 1,
                b: "b".into(),
            },
            Named::default(),
        )
        .await;
        round_trip(&Tuple(1, 0, "x".into()), Tuple::default()).await;
        round_trip(&AllSkipped(0), AllSkipped(9)).await;
        round_trip(&Unit, Unit).await;
        round_trip(&Empty {}, Empty {}).await;
        round_trip(&Kinds::Struct { x: 4, y: 0 }, Kinds::Unit).await;
        round_trip(&Kinds::Tuple(3, vec![]), Kinds::Unit).await;
        round_trip(&Kinds::Empty {}, Kinds::Unit).await;
        round_trip(&Kinds::EmptyTuple(), Kinds::Unit).await;
        round_trip(
            &Generic::<u8, 2> {
                items: vec![[1, 2]],
            },
            Generic::default(),
        )
        .await;
        round_trip(&ConstUnit::<3>, ConstUnit).await;
        let with_lifetime: WithLifetime<'static, u8> = WithLifetime {
            value: 5,
            marker: PhantomData,
        };
        round_trip(&with_lifetime, WithLifetime::default()).await;
        let tree = Tree {
            value: 1,
            children: vec![Tree {
                value: 2,
                children: vec![],
            }],
        };
        round_trip(&tree, Tree::default()).await;
        round_trip(
            &Bounded {
                sorted: [3, 1].into(),
                scratch: vec![],
            },
            Bounded::default(),
        )
        .await;
        round_trip(
            &GenericEnum::<u8, String>::Right { b: "b".into() },
            GenericEnum::Left(0),
        )
        .await;
        round_trip(&r#Match { r#type: 3 }, r#Match::default()).await;
        round_trip(&Declared { value: vec![1] }, Declared::default()).await;
        assert_eq!(Declared::default().type_name(), "declared");
        assert_eq!(r#Match::default().type_name(), "Match");

        // No value of an empty enum exists, so it can only refuse to restore.
        let state = Named::default().capture().await.unwrap().encode().unwrap();
        let _: fn(&mut Never) = |never| match *never {};
        assert_eq!(state.tag().type_name, "Named");
    });
}
