//! The attribute keys, in one place.

use std::fmt;

#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) struct Symbol(&'static str);

pub(crate) const CHECKPOINT: Symbol = Symbol("checkpoint");
pub(crate) const SERDE: Symbol = Symbol("serde");

// Container keys.
pub(crate) const TYPE_NAME: Symbol = Symbol("type_name");
pub(crate) const VERSION: Symbol = Symbol("version");
pub(crate) const MIGRATE: Symbol = Symbol("migrate");
pub(crate) const BOUND: Symbol = Symbol("bound");
pub(crate) const CRATE: Symbol = Symbol("crate");

// Field keys.
pub(crate) const SKIP: Symbol = Symbol("skip");
pub(crate) const DEFAULT: Symbol = Symbol("default");
pub(crate) const GENERATION: Symbol = Symbol("generation");

pub(crate) const CONTAINER_KEYS: &[Symbol] = &[TYPE_NAME, VERSION, MIGRATE, BOUND, CRATE];
pub(crate) const FIELD_KEYS: &[Symbol] = &[SKIP, DEFAULT, GENERATION];

impl PartialEq<Symbol> for syn::Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &syn::Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// `a, b, c` for an error message.
pub(crate) fn list(keys: &[Symbol]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
