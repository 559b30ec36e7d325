//! `#[derive(Checkpointable)]` for [cohort](https://docs.rs/cohort) objects.
//!
//! Use it through `cohort_object_api` (or `cohort`), which re-exports it next to the trait; the
//! trait's documentation lists the attributes. The layout follows `serde_derive`: this file is
//! the entry point, `internals` parses the input and its `#[checkpoint(...)]` attributes while
//! collecting every error with its span, and `expand` generates the code.

mod bound;
mod expand;
mod internals;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `cohort_object_api::Checkpointable`; see that trait for the attributes.
///
/// `serde` is declared as a helper attribute too, so that `#[serde(...)]` on fields and
/// variants (which the derive forwards to the saved state) works without `#[derive(Serialize)]`.
#[proc_macro_derive(Checkpointable, attributes(checkpoint, serde))]
pub fn derive_checkpointable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
