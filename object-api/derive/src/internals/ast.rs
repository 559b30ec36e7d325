//! The derive input as the expander sees it: fields and variants with their parsed attributes.

use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;

use super::{Ctxt, attr};

/// The name of the hidden marker field of a generic struct's mirror.
pub(crate) const PHANTOM_FIELD: &str = "__cohort_phantom";

/// The name of the hidden marker variant of a generic enum's mirror.
pub(crate) const PHANTOM_VARIANT: &str = "__CohortPhantom";

/// A struct or enum that derives `Checkpointable`.
pub(crate) struct Container<'a> {
    pub(crate) ident: &'a syn::Ident,
    pub(crate) attrs: attr::Container,
    pub(crate) data: Data<'a>,
    pub(crate) generics: &'a syn::Generics,
}

pub(crate) enum Data<'a> {
    Enum(Vec<Variant<'a>>),
    Struct(Style, Vec<Field<'a>>),
}

pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a syn::Ident,
    pub(crate) serde_attrs: Vec<&'a syn::Attribute>,
    pub(crate) style: Style,
    pub(crate) fields: Vec<Field<'a>>,
}

pub(crate) struct Field<'a> {
    /// `self.<member>`: a name, or a position in a tuple.
    pub(crate) member: syn::Member,
    pub(crate) attrs: attr::Field,
    pub(crate) ty: &'a syn::Type,
    pub(crate) serde_attrs: Vec<&'a syn::Attribute>,
}

#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) enum Style {
    /// Named fields.
    Struct,
    /// Positional fields.
    Tuple,
    /// No fields.
    Unit,
}

impl<'a> Container<'a> {
    /// The parsed input, or `None` if it cannot be derived at all (a union). Attribute errors
    /// are recorded in `cx`; the caller must check it before using the result.
    pub(crate) fn from_ast(cx: &Ctxt, item: &'a syn::DeriveInput) -> Option<Self> {
        let attrs = attr::Container::from_ast(cx, item);
        let data = match &item.data {
            syn::Data::Struct(data) => {
                let (style, fields) = fields_from_ast(cx, &data.fields);
                check_generation(cx, &fields);
                Data::Struct(style, fields)
            }
            syn::Data::Enum(data) => Data::Enum(enum_from_ast(cx, &data.variants)),
            syn::Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "#[derive(Checkpointable)] does not support unions: use a struct or an enum, whose active field is known",
                );
                return None;
            }
        };
        let container = Self {
            ident: &item.ident,
            attrs,
            data,
            generics: &item.generics,
        };
        container.check_phantom_name(cx);
        Some(container)
    }

    /// Whether the mirror needs a marker to use every type and lifetime parameter.
    pub(crate) fn needs_phantom(&self) -> bool {
        self.generics.type_params().next().is_some() || self.generics.lifetimes().next().is_some()
    }

    fn check_phantom_name(&self, cx: &Ctxt) {
        if !self.needs_phantom() {
            return;
        }
        let fields = match &self.data {
            Data::Struct(Style::Struct, fields) => fields,
            Data::Struct(..) => return,
            Data::Enum(variants) => {
                for variant in variants {
                    if variant.ident == PHANTOM_VARIANT {
                        cx.error_spanned_by(
                            variant.ident,
                            format!("the variant name `{PHANTOM_VARIANT}` is reserved by #[derive(Checkpointable)] on generic enums: rename the variant"),
                        );
                    }
                }
                return;
            }
        };
        for field in fields {
            if let syn::Member::Named(ident) = &field.member
                && ident == PHANTOM_FIELD
            {
                cx.error_spanned_by(
                    ident,
                    format!("the field name `{PHANTOM_FIELD}` is reserved by #[derive(Checkpointable)] on generic structs: rename the field"),
                );
            }
        }
    }
}

fn enum_from_ast<'a>(
    cx: &Ctxt,
    variants: &'a Punctuated<syn::Variant, syn::Token![,]>,
) -> Vec<Variant<'a>> {
    variants
        .iter()
        .map(|variant| {
            attr::reject_on_variant(cx, variant);
            let (style, fields) = fields_from_ast(cx, &variant.fields);
            for field in &fields {
                if let Some(tokens) = &field.attrs.generation {
                    cx.error_spanned_by(
                        tokens,
                        "`generation` is only supported on a struct field: the variants of an enum do not share one counter",
                    );
                }
            }
            Variant {
                ident: &variant.ident,
                serde_attrs: attr::serde_attrs(&variant.attrs),
                style,
                fields,
            }
        })
        .collect()
}

fn fields_from_ast<'a>(cx: &Ctxt, fields: &'a syn::Fields) -> (Style, Vec<Field<'a>>) {
    let style = match fields {
        syn::Fields::Named(_) => Style::Struct,
        syn::Fields::Unnamed(_) => Style::Tuple,
        syn::Fields::Unit => Style::Unit,
    };
    let fields = fields
        .iter()
        .enumerate()
        .map(|(i, field)| Field {
            member: match &field.ident {
                Some(ident) => syn::Member::Named(ident.clone()),
                None => syn::Member::Unnamed(syn::Index {
                    // A struct cannot have 2^32 fields: the compiler would refuse it first.
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    span: field.ty.span(),
                }),
            },
            attrs: attr::Field::from_ast(cx, field),
            ty: &field.ty,
            serde_attrs: attr::serde_attrs(&field.attrs),
        })
        .collect();
    (style, fields)
}

fn check_generation(cx: &Ctxt, fields: &[Field<'_>]) {
    let mut marked = fields.iter().filter_map(|f| f.attrs.generation.as_ref());
    if marked.next().is_some() {
        for tokens in marked {
            cx.error_spanned_by(
                tokens,
                "only one field can be the `generation`: remove this one or the other",
            );
        }
    }
}
