//! `#[checkpoint(...)]` attributes, parsed into typed settings.
//!
//! The entry points are [`Container::from_ast`], [`Field::from_ast`] and [`reject_on_variant`].
//! None of them returns a `Result`: an unknown, misplaced, malformed or duplicated key is
//! recorded in the [`Ctxt`] with the span of the offending tokens, and parsing goes on, so the
//! user sees every mistake of a type in one build.

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::{Token, token};

use super::Ctxt;
use super::symbol::{
    BOUND, CHECKPOINT, CONTAINER_KEYS, CRATE, DEFAULT, FIELD_KEYS, GENERATION, MIGRATE, SKIP,
    Symbol, TYPE_NAME, VERSION, list,
};

/// The segment format stores a type name behind a 2-byte length.
const MAX_TYPE_NAME_LEN: usize = u16::MAX as usize;

/// One key that may be given at most once.
struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: Symbol,
    tokens: TokenStream,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    fn none(cx: &'c Ctxt, name: Symbol) -> Self {
        Self {
            cx,
            name,
            tokens: TokenStream::new(),
            value: None,
        }
    }

    /// Sets the value; a second occurrence is an error at `obj`, and the first value stays.
    fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        let tokens = obj.into_token_stream();
        if self.value.is_some() {
            self.cx.error_spanned_by(
                tokens,
                format!(
                    "duplicate checkpoint attribute `{}`: give it only once",
                    self.name
                ),
            );
        } else {
            self.tokens = tokens;
            self.value = Some(value);
        }
    }

    fn get(self) -> Option<T> {
        self.value
    }

    fn get_with_tokens(self) -> Option<(TokenStream, T)> {
        let tokens = self.tokens;
        self.value.map(|v| (tokens, v))
    }
}

/// The container attributes: `#[checkpoint(...)]` on the struct or enum.
pub(crate) struct Container {
    /// The stable type name, recorded with every state.
    pub(crate) type_name: String,
    /// The schema version, at least 1.
    pub(crate) version: u32,
    /// The migration function for older versions.
    pub(crate) migrate: Option<syn::ExprPath>,
    /// Where-predicates that replace the inferred bounds.
    pub(crate) bound: Option<Vec<syn::WherePredicate>>,
    /// The path of the `cohort_object_api` crate, for users who reach it through a re-export.
    pub(crate) crate_path: syn::Path,
}

impl Container {
    pub(crate) fn from_ast(cx: &Ctxt, item: &syn::DeriveInput) -> Self {
        let mut type_name = Attr::none(cx, TYPE_NAME);
        let mut version = Attr::none(cx, VERSION);
        let mut migrate = Attr::none(cx, MIGRATE);
        let mut bound = Attr::none(cx, BOUND);
        let mut crate_path = Attr::none(cx, CRATE);

        for attr in checkpoint_attrs(&item.attrs) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path == TYPE_NAME {
                    if let Some(lit) = get_lit_str(cx, TYPE_NAME, &meta)?
                        && let Some(name) = check_type_name(cx, &lit)
                    {
                        type_name.set(&meta.path, name);
                    }
                } else if meta.path == VERSION {
                    if let Some(v) = get_version(cx, &meta)? {
                        version.set(&meta.path, v);
                    }
                } else if meta.path == MIGRATE {
                    if let Some(path) = parse_lit_into_expr_path(cx, MIGRATE, &meta)? {
                        migrate.set(&meta.path, path);
                    }
                } else if meta.path == BOUND {
                    if let Some(predicates) = parse_lit_into_where(cx, &meta)? {
                        bound.set(&meta.path, predicates);
                    }
                } else if meta.path == CRATE {
                    if let Some(lit) = get_lit_str(cx, CRATE, &meta)? {
                        match lit.parse::<syn::Path>() {
                            Ok(path) => crate_path.set(&meta.path, path),
                            Err(err) => cx.error_spanned_by(
                                &lit,
                                format!("cannot parse {:?} as a path: {err}", lit.value()),
                            ),
                        }
                    }
                } else if FIELD_KEYS.iter().any(|k| meta.path == *k) {
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "`{}` is a field attribute: put #[checkpoint({})] on a field, not on the type",
                            path_to_string(&meta.path),
                            path_to_string(&meta.path),
                        ),
                    );
                    skip_value(&meta)?;
                } else {
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "unknown checkpoint attribute `{}` on a type: expected one of {}",
                            path_to_string(&meta.path),
                            list(CONTAINER_KEYS),
                        ),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(err) = parsed {
                cx.syn_error(err);
            }
        }

        Self {
            type_name: type_name
                .get()
                .unwrap_or_else(|| unraw(&item.ident).to_string()),
            version: version.get().unwrap_or(1),
            migrate: migrate.get(),
            bound: bound.get(),
            crate_path: crate_path.get().unwrap_or_else(default_crate_path),
        }
    }
}

/// Where the object API lives for the crate being compiled: `cohort_object_api` if the user
/// depends on it directly, else the `cohort` facade that re-exports it, so that users of either
/// need no `#[checkpoint(crate = "...")]`.
fn default_crate_path() -> syn::Path {
    use proc_macro_crate::{FoundCrate, crate_name};
    match crate_name("cohort-object-api") {
        // `Itself` only happens in the API crate's own tests and doc tests, which are separate
        // crates that name it by its library name.
        Ok(FoundCrate::Itself) => syn::parse_quote!(::cohort_object_api),
        Ok(FoundCrate::Name(name)) => path_of(&name),
        Err(_) => match crate_name("cohort") {
            Ok(FoundCrate::Itself) => syn::parse_quote!(::cohort),
            Ok(FoundCrate::Name(name)) => path_of(&name),
            Err(_) => syn::parse_quote!(::cohort_object_api),
        },
    }
}

fn path_of(crate_name: &str) -> syn::Path {
    let ident = syn::Ident::new(crate_name, proc_macro2::Span::call_site());
    syn::parse_quote!(::#ident)
}

/// The field attributes: `#[checkpoint(...)]` on a field.
pub(crate) struct Field {
    /// `skip`, with its key's tokens for spans.
    pub(crate) skip: Option<TokenStream>,
    /// `default = "path"`: builds a skipped field on restore.
    pub(crate) default: Option<syn::ExprPath>,
    /// `generation`, with its key's tokens for spans.
    pub(crate) generation: Option<TokenStream>,
}

impl Field {
    pub(crate) fn from_ast(cx: &Ctxt, field: &syn::Field) -> Self {
        let mut skip = Attr::none(cx, SKIP);
        let mut default = Attr::none(cx, DEFAULT);
        let mut generation = Attr::none(cx, GENERATION);

        for attr in checkpoint_attrs(&field.attrs) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path == SKIP {
                    if flag_has_no_value(cx, SKIP, &meta)? {
                        skip.set(&meta.path, ());
                    }
                } else if meta.path == GENERATION {
                    if flag_has_no_value(cx, GENERATION, &meta)? {
                        generation.set(&meta.path, ());
                    }
                } else if meta.path == DEFAULT {
                    if let Some(path) = parse_lit_into_expr_path(cx, DEFAULT, &meta)? {
                        default.set(&meta.path, path);
                    }
                } else if CONTAINER_KEYS.iter().any(|k| meta.path == *k) {
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "`{}` is a container attribute: put #[checkpoint({} = ...)] on the struct or enum, not on a field",
                            path_to_string(&meta.path),
                            path_to_string(&meta.path),
                        ),
                    );
                    skip_value(&meta)?;
                } else {
                    cx.error_spanned_by(
                        &meta.path,
                        format!(
                            "unknown checkpoint attribute `{}` on a field: expected one of {}",
                            path_to_string(&meta.path),
                            list(FIELD_KEYS),
                        ),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(err) = parsed {
                cx.syn_error(err);
            }
        }

        let skip = skip.get_with_tokens().map(|(tokens, ())| tokens);
        let default = default.get_with_tokens();
        let generation = generation.get_with_tokens().map(|(tokens, ())| tokens);

        if let (Some((tokens, _)), None) = (&default, &skip) {
            cx.error_spanned_by(
                tokens,
                "`default` only applies to a skipped field: write #[checkpoint(skip, default = \"path\")]",
            );
        }
        if let (Some(tokens), Some(_)) = (&generation, &skip) {
            cx.error_spanned_by(
                tokens,
                "a `generation` field cannot be skipped: the generation is saved with the state",
            );
        }

        Self {
            skip,
            default: default.map(|(_, path)| path),
            generation,
        }
    }
}

/// Reports every `#[checkpoint(...)]` on an enum variant: there are no variant attributes.
pub(crate) fn reject_on_variant(cx: &Ctxt, variant: &syn::Variant) {
    for attr in checkpoint_attrs(&variant.attrs) {
        cx.error_spanned_by(
            attr,
            "#[checkpoint] is not allowed on an enum variant: put field attributes on the variant's fields, and container attributes on the enum",
        );
    }
}

/// The serde attributes to forward to the mirror, verbatim.
pub(crate) fn serde_attrs(attrs: &[syn::Attribute]) -> Vec<&syn::Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path() == super::symbol::SERDE)
        .collect()
}

fn checkpoint_attrs(attrs: &[syn::Attribute]) -> impl Iterator<Item = &syn::Attribute> {
    attrs.iter().filter(|attr| attr.path() == CHECKPOINT)
}

/// For a flag such as `skip`: `true` if it stands alone, else records an error and consumes
/// the value so that the following keys are still parsed.
fn flag_has_no_value(cx: &Ctxt, key: Symbol, meta: &ParseNestedMeta<'_>) -> syn::Result<bool> {
    if meta.input.peek(Token![=]) || meta.input.peek(token::Paren) {
        let value = skip_value(meta)?;
        cx.error_spanned_by(
            quote!(#value),
            format!("`{key}` takes no value: write #[checkpoint({key})]"),
        );
        return Ok(false);
    }
    Ok(true)
}

/// Consumes whatever follows a key (`= expr` or `(...)`), returning it for error spans.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<TokenStream> {
    if meta.input.peek(Token![=]) {
        let eq: Token![=] = meta.input.parse()?;
        let expr: syn::Expr = meta.input.parse()?;
        Ok(quote!(#eq #expr))
    } else if meta.input.peek(token::Paren) {
        let group: TokenTree = meta.input.parse()?;
        Ok(group.into_token_stream())
    } else {
        Ok(TokenStream::new())
    }
}

/// The value of `key = "..."`, or `None` (with an error recorded) if it is not a plain string.
fn get_lit_str(
    cx: &Ctxt,
    key: Symbol,
    meta: &ParseNestedMeta<'_>,
) -> syn::Result<Option<syn::LitStr>> {
    if !meta.input.peek(Token![=]) {
        skip_value(meta)?;
        cx.error_spanned_by(
            &meta.path,
            format!("`{key}` needs a value: write #[checkpoint({key} = \"...\")]"),
        );
        return Ok(None);
    }
    let expr: syn::Expr = meta.value()?.parse()?;
    match ungroup(&expr) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) => {
            if !lit.suffix().is_empty() {
                cx.error_spanned_by(
                    lit,
                    format!("unexpected suffix `{}` on a string literal", lit.suffix()),
                );
                return Ok(None);
            }
            Ok(Some(lit.clone()))
        }
        _ => {
            cx.error_spanned_by(
                &expr,
                format!("expected a string literal: #[checkpoint({key} = \"...\")]"),
            );
            Ok(None)
        }
    }
}

/// `version = N` with `1 <= N <= u32::MAX`.
fn get_version(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<u32>> {
    if !meta.input.peek(Token![=]) {
        skip_value(meta)?;
        cx.error_spanned_by(
            &meta.path,
            "`version` needs a value: write #[checkpoint(version = 2)]",
        );
        return Ok(None);
    }
    let expr: syn::Expr = meta.value()?.parse()?;
    let syn::Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Int(lit),
        ..
    }) = ungroup(&expr)
    else {
        cx.error_spanned_by(
            &expr,
            "expected an integer literal: #[checkpoint(version = 2)]",
        );
        return Ok(None);
    };
    match lit.base10_parse::<u32>() {
        Ok(0) => {
            cx.error_spanned_by(
                lit,
                "schema versions start at 1: `version = 0` is not allowed",
            );
            Ok(None)
        }
        Ok(v) => Ok(Some(v)),
        Err(_) => {
            cx.error_spanned_by(
                lit,
                format!(
                    "version must be an integer from 1 to {}, without a suffix other than u32",
                    u32::MAX
                ),
            );
            Ok(None)
        }
    }
}

fn parse_lit_into_expr_path(
    cx: &Ctxt,
    key: Symbol,
    meta: &ParseNestedMeta<'_>,
) -> syn::Result<Option<syn::ExprPath>> {
    let Some(lit) = get_lit_str(cx, key, meta)? else {
        return Ok(None);
    };
    // `LitStr::parse` gives the parsed tokens the literal's span, so later type errors
    // (a wrong signature, a missing function) point at the string.
    match lit.parse::<syn::ExprPath>() {
        Ok(path) => Ok(Some(path)),
        Err(err) => {
            cx.error_spanned_by(
                &lit,
                format!(
                    "cannot parse {:?} as a path to a function: {err}; write #[checkpoint({key} = \"path::to::function\")]",
                    lit.value()
                ),
            );
            Ok(None)
        }
    }
}

fn parse_lit_into_where(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
) -> syn::Result<Option<Vec<syn::WherePredicate>>> {
    let Some(lit) = get_lit_str(cx, BOUND, meta)? else {
        return Ok(None);
    };
    match lit.parse_with(Punctuated::<syn::WherePredicate, Token![,]>::parse_terminated) {
        Ok(predicates) => Ok(Some(predicates.into_iter().collect())),
        Err(err) => {
            cx.error_spanned_by(
                &lit,
                format!(
                    "cannot parse {:?} as where-clause predicates: {err}; write e.g. #[checkpoint(bound = \"T: Clone + Send\")]",
                    lit.value()
                ),
            );
            Ok(None)
        }
    }
}

fn check_type_name(cx: &Ctxt, lit: &syn::LitStr) -> Option<String> {
    let name = lit.value();
    if name.is_empty() {
        cx.error_spanned_by(lit, "`type_name` must not be empty");
        None
    } else if name.chars().any(char::is_control) {
        cx.error_spanned_by(lit, "`type_name` must not contain control characters");
        None
    } else if name.len() > MAX_TYPE_NAME_LEN {
        cx.error_spanned_by(
            lit,
            format!(
                "`type_name` is longer than the {MAX_TYPE_NAME_LEN} bytes a checkpoint can store"
            ),
        );
        None
    } else {
        Some(name)
    }
}

/// Looks through the invisible groups that `macro_rules!` puts around `$e:expr`.
fn ungroup(mut expr: &syn::Expr) -> &syn::Expr {
    while let syn::Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}

fn unraw(ident: &syn::Ident) -> syn::Ident {
    use syn::ext::IdentExt as _;
    ident.unraw()
}

fn path_to_string(path: &syn::Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}
