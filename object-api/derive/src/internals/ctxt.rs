//! The error collector: every attribute mistake is recorded with its span, so that one build
//! reports all of them instead of stopping at the first.

use std::cell::RefCell;
use std::fmt::Display;

use quote::ToTokens;

/// Collects errors while the input is parsed; [`Ctxt::check`] turns them into one result.
///
/// Unlike serde's `Ctxt`, forgetting to check is not a panic (the macro must never panic); the
/// type is `#[must_use]` instead, and the one caller checks it.
#[must_use = "call `check` to report the collected errors"]
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records an error whose span covers the tokens of `obj`.
    pub(crate) fn error_spanned_by<A: ToTokens, T: Display>(&self, obj: A, msg: T) {
        // Through a token stream, to keep one monomorphization of `new_spanned`.
        self.errors
            .borrow_mut()
            .push(syn::Error::new_spanned(obj.into_token_stream(), msg));
    }

    /// Records an error that syn produced while parsing.
    pub(crate) fn syn_error(&self, err: syn::Error) {
        self.errors.borrow_mut().push(err);
    }

    /// All recorded errors as one `syn::Error`, or `Ok` if there were none.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self.errors.into_inner().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}
