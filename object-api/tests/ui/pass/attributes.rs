//! Every attribute, and forwarded serde attributes, together.
#![deny(warnings)]

use cohort_object_api::{Checkpointable, EncodedState, ObjectError};

fn seven() -> u32 {
    7
}

mod as_text {
    pub fn serialize<S: serde::Serializer>(value: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Default, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Extra {
    note: String,
}

#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(
    type_name = "example.Account",
    version = 3,
    migrate = "Account::migrate"
)]
struct Account {
    #[serde(rename = "bal")]
    balance: i64,
    #[serde(with = "as_text")]
    code: u32,
    #[serde(flatten)]
    extra: Extra,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nickname: Option<String>,
    #[checkpoint(skip, default = "seven")]
    seven: u32,
    #[checkpoint(generation)]
    generation: u64,
}

impl Account {
    fn migrate(_version: u32, _state: &EncodedState) -> Result<Self, ObjectError> {
        Ok(Account {
            balance: 0,
            code: 0,
            extra: Extra::default(),
            nickname: None,
            seven: seven(),
            generation: 0,
        })
    }
}

/// Bounds given by hand replace the inferred ones.
pub trait Storable:
    Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
}
impl Storable for u64 {}

#[derive(Checkpointable, Debug, PartialEq)]
#[checkpoint(bound = "T: Storable")]
struct Manual<T> {
    values: Vec<T>,
}

/// The crate reached through another name, as through a facade.
mod facade {
    pub use cohort_object_api as api;
}

#[derive(facade::api::Checkpointable, Default, Debug, PartialEq)]
#[checkpoint(crate = "facade::api")]
struct ThroughFacade {
    value: u8,
}

/// A public type whose field types are private: the inferred bounds name them, without a
/// `private_bounds` warning.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Private<T>(T);

#[derive(Checkpointable)]
pub struct Public<T: Send + Sync + 'static> {
    #[checkpoint(skip)]
    inner: Option<Private<T>>,
    saved: Vec<Private<T>>,
    value: Vec<T>,
}

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let account = Account {
            balance: 5,
            code: 42,
            extra: Extra { note: "n".into() },
            nickname: None,
            seven: 0,
            generation: 9,
        };
        assert_eq!(account.generation(), Some(9));
        assert_eq!(account.schema_version(), 3);
        let state = account.capture().await.unwrap().encode().unwrap();
        let mut back = Account::migrate(1, &state).unwrap();
        back.restore(&state).await.unwrap();
        assert_eq!(
            back,
            Account {
                seven: 7,
                ..account
            }
        );

        let manual = Manual {
            values: vec![1u64, 2],
        };
        let state = manual.capture().await.unwrap().encode().unwrap();
        let mut back = Manual { values: vec![] };
        back.restore(&state).await.unwrap();
        assert_eq!(back, manual);

        let state = ThroughFacade { value: 3 }
            .capture()
            .await
            .unwrap()
            .encode()
            .unwrap();
        let mut back = ThroughFacade::default();
        back.restore(&state).await.unwrap();
        assert_eq!(back.value, 3);

        let public = Public {
            inner: Some(Private(1u8)),
            saved: vec![Private(3)],
            value: vec![2u8],
        };
        let state = public.capture().await.unwrap().encode().unwrap();
        let mut back: Public<u8> = Public {
            inner: None,
            saved: vec![],
            value: vec![],
        };
        back.restore(&state).await.unwrap();
        assert_eq!(back.value, vec![2]);
        assert!(back.inner.is_none());
        assert_eq!(back.saved.iter().map(|p| p.0).collect::<Vec<_>>(), vec![3]);
        let _ = public.inner.map(|p| p.0);
    });
}
