//! Token-level helpers for generic types: which field types mention a generic parameter (and
//! so need a bound), and `Self` rewritten for use inside the mirror type.

use std::collections::HashSet;

use proc_macro2::{Group, Spacing, Span, TokenStream, TokenTree};

/// The names of a type's generic parameters.
pub(crate) struct Params {
    /// Type and const parameters.
    idents: HashSet<String>,
    /// Lifetime parameters, without the quote.
    lifetimes: HashSet<String>,
}

impl Params {
    pub(crate) fn new(generics: &syn::Generics) -> Self {
        let mut idents = HashSet::new();
        let mut lifetimes = HashSet::new();
        for param in &generics.params {
            match param {
                syn::GenericParam::Type(p) => {
                    idents.insert(p.ident.to_string());
                }
                syn::GenericParam::Const(p) => {
                    idents.insert(p.ident.to_string());
                }
                syn::GenericParam::Lifetime(p) => {
                    lifetimes.insert(p.lifetime.ident.to_string());
                }
            }
        }
        Self { idents, lifetimes }
    }

    /// Whether `tokens` (a type, after [`replace_self`]) mention any parameter.
    ///
    /// This looks at tokens, not at the parsed type, so that types built by macros are covered
    /// too. It may over-approximate (a path segment that shares a parameter's name), which only
    /// adds a bound that holds anyway.
    pub(crate) fn mentioned_in(&self, tokens: &TokenStream) -> bool {
        let mut after_quote = false;
        for tt in tokens.clone() {
            match tt {
                TokenTree::Ident(ident) => {
                    let name = ident.to_string();
                    let hit = if after_quote {
                        self.lifetimes.contains(&name)
                    } else {
                        self.idents.contains(&name)
                    };
                    if hit {
                        return true;
                    }
                    after_quote = false;
                }
                TokenTree::Punct(punct) => {
                    after_quote = punct.as_char() == '\'' && punct.spacing() == Spacing::Joint;
                }
                TokenTree::Group(group) => {
                    if self.mentioned_in(&group.stream()) {
                        return true;
                    }
                    after_quote = false;
                }
                TokenTree::Literal(_) => after_quote = false,
            }
        }
        false
    }
}

/// `tokens` with every `Self` replaced by `self_ty` (the deriving type with its parameters).
///
/// Field types are copied into the mirror type, where `Self` would mean the mirror.
pub(crate) fn replace_self(tokens: TokenStream, self_ty: &TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .flat_map(|tt| -> Vec<TokenTree> {
            match tt {
                TokenTree::Ident(ident) if ident == "Self" => respan(self_ty, ident.span()),
                TokenTree::Group(group) => {
                    let mut new =
                        Group::new(group.delimiter(), replace_self(group.stream(), self_ty));
                    new.set_span(group.span());
                    vec![TokenTree::Group(new)]
                }
                other => vec![other],
            }
        })
        .collect()
}

/// The tokens of `tokens` with their outermost spans set to `span`, so that errors about the
/// replacement point at the `Self` it replaced.
fn respan(tokens: &TokenStream, span: Span) -> Vec<TokenTree> {
    tokens
        .clone()
        .into_iter()
        .map(|mut tt| {
            tt.set_span(span);
            tt
        })
        .collect()
}
