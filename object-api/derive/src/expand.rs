//! Code generation.
//!
//! For a type `T` the derive emits, inside `const _: () = { ... };`:
//!
//! - a hidden *mirror* type with `T`'s shape minus its skipped fields, deriving serde's
//!   `Serialize` and `Deserialize` (with the user's `#[serde(...)]` field and variant attributes
//!   forwarded). A generic mirror carries a `PhantomData<fn() -> T>` marker, so that it may
//!   keep all of `T`'s parameters and where-clauses whether or not its fields use them;
//! - `impl Checkpointable for T`, whose `capture` clones the saved fields into a mirror and
//!   whose `restore` decodes a mirror (or migrates an older version) and rebuilds `T`.
//!
//! Every path is absolute, through the `cohort_object_api` crate (or `#[checkpoint(crate)]`),
//! so users need no `serde` or `async-trait` dependency of their own.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;

use crate::bound::{Params, replace_self};
use crate::internals::Ctxt;
use crate::internals::ast::{
    Container, Data, Field, PHANTOM_FIELD, PHANTOM_VARIANT, Style, Variant,
};

/// Parses `input` and generates the impl, or returns every error found in it.
pub(crate) fn derive(input: &syn::DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let container = Container::from_ast(&cx, input);
    cx.check()?;
    let Some(container) = container else {
        // `from_ast` only returns `None` after recording an error, which `check` returned.
        return Err(syn::Error::new_spanned(
            &input.ident,
            "#[derive(Checkpointable)] cannot derive this type",
        ));
    };
    Ok(Expander::new(&container).expand())
}

struct Expander<'a> {
    cont: &'a Container<'a>,
    krate: &'a syn::Path,
    /// The deriving type with its parameters: `Name<T, 'a, N>`.
    self_ty: TokenStream,
    params: Params,
    mirror: syn::Ident,
    phantom: bool,
}

impl<'a> Expander<'a> {
    fn new(cont: &'a Container<'a>) -> Self {
        let ident = cont.ident;
        let (_, ty_generics, _) = cont.generics.split_for_impl();
        Self {
            cont,
            krate: &cont.attrs.crate_path,
            self_ty: quote!(#ident #ty_generics),
            params: Params::new(cont.generics),
            mirror: format_ident!("__CohortMirror"),
            phantom: cont.needs_phantom(),
        }
    }

    fn expand(&self) -> TokenStream {
        let krate = self.krate;
        let ident = self.cont.ident;
        let (impl_generics, ty_generics, _) = self.cont.generics.split_for_impl();
        let where_clause = self.impl_where_clause();
        let type_name = &self.cont.attrs.type_name;
        let version = self.cont.attrs.version;
        let mirror_decl = self.mirror_decl();
        let generation = self.generation_fn();
        let capture = self.capture_body();
        let restore = self.restore_body();

        quote! {
            #[doc(hidden)]
            const _: () = {
                const __TYPE_NAME: &str = #type_name;
                const __VERSION: u32 = #version;

                #mirror_decl

                #[#krate::__private::async_trait]
                #[automatically_derived]
                impl #impl_generics #krate::Checkpointable for #ident #ty_generics #where_clause {
                    fn type_name(&self) -> &'static str {
                        __TYPE_NAME
                    }

                    fn schema_version(&self) -> u32 {
                        __VERSION
                    }

                    #generation

                    async fn capture(
                        &self,
                    ) -> ::core::result::Result<#krate::Snapshot, #krate::ObjectError> {
                        #capture
                    }

                    async fn restore(
                        &mut self,
                        __state: &#krate::EncodedState,
                    ) -> ::core::result::Result<(), #krate::ObjectError> {
                        #restore
                    }
                }
            };
        }
    }

    fn serde(&self) -> TokenStream {
        let krate = self.krate;
        quote!(#krate::__private::serde)
    }

    /// The saved fields of the whole type, for bounds.
    fn all_fields(&self) -> Vec<&Field<'a>> {
        match &self.cont.data {
            Data::Struct(_, fields) => fields.iter().collect(),
            Data::Enum(variants) => variants.iter().flat_map(|v| &v.fields).collect(),
        }
    }

    /// A field type as the mirror and the bounds spell it: with `Self` written out.
    fn ty(&self, field: &Field<'_>) -> TokenStream {
        replace_self(field.ty.to_token_stream(), &self.self_ty)
    }

    // --- bounds -----------------------------------------------------------------------------

    /// The impl's where-clause: the type's own predicates, `Self: Send + Sync + 'static`, and
    /// either the inferred field bounds or the user's `bound`.
    fn impl_where_clause(&self) -> TokenStream {
        let serde = self.serde();
        let mut predicates: Vec<TokenStream> = self
            .cont
            .generics
            .where_clause
            .iter()
            .flat_map(|w| w.predicates.iter().map(ToTokens::to_token_stream))
            .collect();
        if !self.cont.generics.params.is_empty() {
            let self_ty = &self.self_ty;
            predicates.push(quote! {
                #self_ty: ::core::marker::Send + ::core::marker::Sync + 'static
            });
        }
        match &self.cont.attrs.bound {
            Some(user) => predicates.extend(user.iter().map(ToTokens::to_token_stream)),
            None => {
                for field in self.all_fields() {
                    let ty = self.ty(field);
                    if !self.params.mentioned_in(&ty) {
                        continue;
                    }
                    let span = field.ty.span();
                    if field.attrs.skip.is_none() {
                        predicates.push(quote_spanned! {span=>
                            #ty: ::core::clone::Clone
                                + #serde::Serialize
                                + #serde::de::DeserializeOwned
                                + ::core::marker::Send
                                + ::core::marker::Sync
                                + 'static
                        });
                    } else if field.attrs.default.is_none() {
                        predicates.push(quote_spanned! {span=>
                            #ty: ::core::default::Default
                        });
                    }
                }
            }
        }
        dedup(&mut predicates);
        if predicates.is_empty() {
            TokenStream::new()
        } else {
            quote!(where #(#predicates,)*)
        }
    }

    /// `#[serde(bound ...)]` for the mirror, so that serde does not infer `T: Serialize` for
    /// parameters that only appear inside other types (`Vec<T>`, the marker).
    fn mirror_serde_bound(&self) -> TokenStream {
        if self.cont.generics.params.is_empty() {
            return TokenStream::new();
        }
        if let Some(user) = &self.cont.attrs.bound {
            let predicates = replace_self(quote!(#(#user),*), &self.self_ty).to_string();
            return quote!(#[serde(bound = #predicates)]);
        }
        let serde = self.serde();
        let mut types: Vec<TokenStream> = self
            .all_fields()
            .into_iter()
            .filter(|f| f.attrs.skip.is_none())
            .map(|f| self.ty(f))
            .filter(|ty| self.params.mentioned_in(ty))
            .collect();
        dedup(&mut types);
        let ser = quote!(#(#types: #serde::Serialize),*).to_string();
        let de = quote!(#(#types: #serde::de::DeserializeOwned),*).to_string();
        quote!(#[serde(bound(serialize = #ser, deserialize = #de))])
    }

    // --- the mirror -------------------------------------------------------------------------

    fn mirror_decl(&self) -> TokenStream {
        let serde = self.serde();
        let serde_path = serde.to_string();
        let mirror = &self.mirror;
        let generics = self.cont.generics;
        let params = replace_self(quote!(#generics), &self.self_ty);
        let where_clause = replace_self(generics.where_clause.to_token_stream(), &self.self_ty);
        let bound = self.mirror_serde_bound();
        let self_ty = &self.self_ty;
        let phantom_ty = quote!(::core::marker::PhantomData<fn() -> #self_ty>);

        let (transparent, body) = match &self.cont.data {
            Data::Struct(style, fields) => {
                let saved: Vec<_> = saved(fields).collect();
                let style = self.mirror_style(*style);
                // A generic newtype keeps the encoding of a plain newtype despite its marker.
                let transparent = if self.phantom && style == Style::Tuple && saved.len() == 1 {
                    quote!(#[serde(transparent)])
                } else {
                    TokenStream::new()
                };
                let phantom_field = self.phantom.then(|| match style {
                    Style::Struct => {
                        let name = format_ident!("{}", PHANTOM_FIELD);
                        quote!(#[serde(skip)] #name: #phantom_ty,)
                    }
                    Style::Tuple | Style::Unit => quote!(#[serde(skip)] #phantom_ty,),
                });
                let fields = self.mirror_fields(style, &saved, phantom_field);
                let body = match style {
                    Style::Struct => quote!(#where_clause #fields),
                    Style::Tuple => quote!(#fields #where_clause;),
                    Style::Unit => quote!(#where_clause;),
                };
                (transparent, quote!(struct #mirror #params #body))
            }
            Data::Enum(variants) => {
                let variants = variants.iter().map(|variant| {
                    let ident = variant.ident;
                    let attrs = &variant.serde_attrs;
                    let saved: Vec<_> = saved(&variant.fields).collect();
                    let fields = self.mirror_fields(variant.style, &saved, None);
                    quote!(#(#attrs)* #ident #fields)
                });
                let phantom_variant = self.phantom.then(|| {
                    let name = format_ident!("{}", PHANTOM_VARIANT);
                    quote! {
                        #[serde(skip)]
                        #name(#phantom_ty, ::core::convert::Infallible),
                    }
                });
                (
                    TokenStream::new(),
                    quote!(enum #mirror #params #where_clause { #(#variants,)* #phantom_variant }),
                )
            }
        };

        quote! {
            #[derive(#serde::Serialize, #serde::Deserialize)]
            #[serde(crate = #serde_path)]
            #bound
            #transparent
            #[allow(dead_code, clippy::all, clippy::pedantic)]
            #body
        }
    }

    /// The fields of a mirror struct or variant: `{ a: A, }`, `(A,)` or nothing.
    fn mirror_fields(
        &self,
        style: Style,
        saved: &[&Field<'_>],
        extra: Option<TokenStream>,
    ) -> TokenStream {
        let fields = saved.iter().map(|field| {
            let attrs = &field.serde_attrs;
            let ty = self.ty(field);
            match &field.member {
                syn::Member::Named(name) => quote!(#(#attrs)* #name: #ty),
                syn::Member::Unnamed(_) => quote!(#(#attrs)* #ty),
            }
        });
        match style {
            Style::Struct => quote!({ #(#fields,)* #extra }),
            Style::Tuple => quote!(( #(#fields,)* #extra )),
            Style::Unit => TokenStream::new(),
        }
    }

    /// A unit struct with a marker becomes a braced struct (the input is then invalid anyway:
    /// a unit struct cannot use a type parameter).
    fn mirror_style(&self, style: Style) -> Style {
        match style {
            Style::Unit if self.phantom => Style::Struct,
            other => other,
        }
    }

    // --- generation -------------------------------------------------------------------------

    fn generation_fn(&self) -> TokenStream {
        let Data::Struct(_, fields) = &self.cont.data else {
            return TokenStream::new();
        };
        let Some(field) = fields.iter().find(|f| f.attrs.generation.is_some()) else {
            return TokenStream::new();
        };
        let krate = self.krate;
        let member = &field.member;
        let ty = field.ty;
        // Through `GenerationField`, at the field's type, so that another type is reported
        // there with a message that names the attribute.
        let value = quote_spanned! {ty.span()=>
            <#ty as #krate::__private::GenerationField>::generation(&self.#member)
        };
        quote! {
            fn generation(&self) -> ::core::option::Option<u64> {
                ::core::option::Option::Some(#value)
            }
        }
    }

    // --- capture ----------------------------------------------------------------------------

    fn capture_body(&self) -> TokenStream {
        let krate = self.krate;
        let mirror = &self.mirror;
        let construct = match &self.cont.data {
            Data::Struct(style, fields) => {
                let mirror_path = quote!(#mirror);
                let values = self.mirror_values(fields, |field| {
                    let member = &field.member;
                    quote!(&self.#member)
                });
                let phantom = self.phantom_init(self.mirror_style(*style));
                quote!(#mirror_path { #(#values,)* #phantom })
            }
            Data::Enum(variants) if variants.is_empty() => {
                // No value of an empty enum exists.
                return quote!(match *self {});
            }
            Data::Enum(variants) => {
                let arms = variants.iter().map(|variant| self.capture_arm(variant));
                quote!(match self { #(#arms)* })
            }
        };
        let ty_generics = self.cont.generics.split_for_impl().1;
        quote! {
            let __mirror: #mirror #ty_generics = #construct;
            ::core::result::Result::Ok(#krate::Snapshot::new(__TYPE_NAME, __VERSION, __mirror))
        }
    }

    fn capture_arm(&self, variant: &Variant<'_>) -> TokenStream {
        let mirror = &self.mirror;
        let ident = variant.ident;
        let bindings = saved(&variant.fields).map(|field| {
            let member = &field.member;
            let binding = binding(field);
            quote!(#member: #binding)
        });
        let values = self.mirror_values(&variant.fields, |field| binding(field).to_token_stream());
        quote! {
            Self::#ident { #(#bindings,)* .. } => #mirror::#ident { #(#values,)* },
        }
    }

    /// `member: Clone::clone(source)` for every saved field, numbered as in the mirror.
    fn mirror_values(
        &self,
        fields: &[Field<'_>],
        source: impl Fn(&Field<'_>) -> TokenStream,
    ) -> Vec<TokenStream> {
        saved(fields)
            .enumerate()
            .map(|(i, field)| {
                let member = mirror_member(field, i);
                let source = source(field);
                let ty = field.ty;
                // Qualified with the field's type, so that a type without `Clone` is reported
                // at the field.
                let clone =
                    quote_spanned!(ty.span()=> <#ty as ::core::clone::Clone>::clone(#source));
                quote!(#member: #clone)
            })
            .collect()
    }

    fn phantom_init(&self, style: Style) -> TokenStream {
        if !self.phantom {
            return TokenStream::new();
        }
        let member = match style {
            Style::Struct => format_ident!("{}", PHANTOM_FIELD).into_token_stream(),
            // The marker comes after the saved fields.
            Style::Tuple | Style::Unit => match &self.cont.data {
                Data::Struct(_, fields) => syn::Index {
                    // A struct cannot have 2^32 fields: the compiler would refuse it first.
                    index: u32::try_from(saved(fields).count()).unwrap_or(u32::MAX),
                    span: Span::call_site(),
                }
                .into_token_stream(),
                Data::Enum(_) => return TokenStream::new(),
            },
        };
        quote!(#member: ::core::marker::PhantomData,)
    }

    // --- restore ----------------------------------------------------------------------------

    fn restore_body(&self) -> TokenStream {
        let krate = self.krate;
        let mirror = &self.mirror;
        let ty_generics = self.cont.generics.split_for_impl().1;
        let rebuild = self.rebuild();
        let older = match &self.cont.attrs.migrate {
            Some(path) => {
                let span = path.span();
                let migrate = quote_spanned! {span=>
                    let __migrate: fn(u32, &#krate::EncodedState)
                        -> ::core::result::Result<Self, #krate::ObjectError> = #path;
                };
                quote! {
                    #migrate
                    *self = __migrate(__found, __state)?;
                    ::core::result::Result::Ok(())
                }
            }
            None => quote! {
                ::core::result::Result::Err(#krate::ObjectError::NoMigration {
                    type_name: ::std::string::String::from(__TYPE_NAME),
                    found: __found,
                    current: __VERSION,
                })
            },
        };
        quote! {
            match __state.check(__TYPE_NAME, __VERSION)? {
                #krate::VersionCheck::Current => {
                    let __mirror: #mirror #ty_generics = __state.decode()?;
                    #rebuild
                }
                #krate::VersionCheck::Older(__found) => {
                    #older
                }
            }
        }
    }

    /// Statements that turn `__mirror` into `*self` and return `Ok(())`.
    fn rebuild(&self) -> TokenStream {
        let mirror = &self.mirror;
        match &self.cont.data {
            Data::Struct(_, fields) => {
                let bindings = self.mirror_bindings(fields);
                let values = self.original_values(fields);
                quote! {
                    let #mirror { #(#bindings,)* .. } = __mirror;
                    *self = Self { #(#values,)* };
                    ::core::result::Result::Ok(())
                }
            }
            Data::Enum(variants) if variants.is_empty() => quote!(match __mirror {}),
            Data::Enum(variants) => {
                let arms = variants.iter().map(|variant| {
                    let ident = variant.ident;
                    let bindings = self.mirror_bindings(&variant.fields);
                    let values = self.original_values(&variant.fields);
                    quote! {
                        #mirror::#ident { #(#bindings,)* .. } => Self::#ident { #(#values,)* },
                    }
                });
                let phantom = self.phantom.then(|| {
                    let name = format_ident!("{}", PHANTOM_VARIANT);
                    quote!(#mirror::#name(_, __never) => match __never {},)
                });
                quote! {
                    *self = match __mirror { #(#arms)* #phantom };
                    ::core::result::Result::Ok(())
                }
            }
        }
    }

    /// `mirror_member: binding` for every saved field.
    fn mirror_bindings(&self, fields: &[Field<'_>]) -> Vec<TokenStream> {
        saved(fields)
            .enumerate()
            .map(|(i, field)| {
                let member = mirror_member(field, i);
                let binding = binding(field);
                quote!(#member: #binding)
            })
            .collect()
    }

    /// `member: value` for every field of the original: the decoded binding, or the default
    /// of a skipped field.
    fn original_values(&self, fields: &[Field<'_>]) -> Vec<TokenStream> {
        let krate = self.krate;
        fields
            .iter()
            .map(|field| {
                let member = &field.member;
                let value = if field.attrs.skip.is_none() {
                    binding(field).to_token_stream()
                } else if let Some(path) = &field.attrs.default {
                    // At the path, so that a wrong signature is reported at the attribute.
                    quote_spanned!(path.span()=> #path())
                } else {
                    // At the field's type, so that a type without `Default` is reported there,
                    // with the message of `SkippedDefault`.
                    let ty = field.ty;
                    quote_spanned!(ty.span()=> <#ty as #krate::__private::SkippedDefault>::skipped_default())
                };
                quote!(#member: #value)
            })
            .collect()
    }
}

/// The fields that are saved, in order.
fn saved<'f, 'a>(fields: &'f [Field<'a>]) -> impl Iterator<Item = &'f Field<'a>> {
    fields.iter().filter(|f| f.attrs.skip.is_none())
}

/// The member of a saved field in the mirror: its name, or its position among saved fields.
fn mirror_member(field: &Field<'_>, saved_index: usize) -> syn::Member {
    match &field.member {
        syn::Member::Named(name) => syn::Member::Named(name.clone()),
        syn::Member::Unnamed(index) => syn::Member::Unnamed(syn::Index {
            index: u32::try_from(saved_index).unwrap_or(index.index),
            span: index.span,
        }),
    }
}

/// A local variable for a field, unlikely to collide with a constant in the user's scope.
fn binding(field: &Field<'_>) -> syn::Ident {
    match &field.member {
        syn::Member::Named(name) => {
            use syn::ext::IdentExt as _;
            format_ident!("__field_{}", name.unraw(), span = Span::call_site())
        }
        syn::Member::Unnamed(index) => {
            format_ident!("__field{}", index.index, span = Span::call_site())
        }
    }
}

fn dedup(items: &mut Vec<TokenStream>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|item| seen.insert(item.to_string()));
}
