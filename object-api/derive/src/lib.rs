//! `#[derive(Checkpointable)]`. Placeholder while the derive is written.
use proc_macro::TokenStream;

/// Derives `Checkpointable`.
#[proc_macro_derive(Checkpointable, attributes(checkpoint))]
pub fn derive_checkpointable(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
