//! Parsing: the input as a typed tree ([`ast`]) whose `#[checkpoint(...)]` attributes are
//! checked ([`attr`]), with every error collected in a [`Ctxt`].

pub(crate) mod ast;
pub(crate) mod attr;
mod ctxt;
mod symbol;

pub(crate) use ctxt::Ctxt;
