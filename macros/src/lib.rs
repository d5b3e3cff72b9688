//! Attributes that place a function of a Windows kernel driver in one of its pageable sections,
//! forbid inlining it, and check on entry, in debug builds, that it may run.
//!
//! | attribute              | section  | entry check (debug builds)                           |
//! |------------------------|----------|------------------------------------------------------|
//! | `#[init]`              | `INITX`  | none: it runs once, from `DriverEntry`               |
//! | `#[paged]`             | `PAGE`   | `crate::placement::assert_pageable_irql()`           |
//! | `#[locked(SECTION)]`   | `PAGELK` | `crate::placement::assert_locked(&SECTION)`          |
//! | `#[resident]`          | `.text`  | `crate::placement::assert_resident_irql()`           |
//!
//! Each goes on an ordinary function: free or a method (in an inherent or a trait impl, `Drop`
//! included), generic or not, with a where clause, `unsafe`, `extern "C"`. It emits the item
//! unchanged but for three things: `#[unsafe(link_section = ...)]`, `#[inline(never)]` (inlined
//! code would run from its caller's section, and an inlined callee would take the callee's
//! code into this one), and the entry check as the body's first statement, under
//! `cfg!(debug_assertions)`, so that a release build carries no trace of it.
//!
//! `#[resident]` marks code that must stay in the resident `.text`, because it can run when no
//! lock covers any pageable section (a DPC routine, a cancel-safe queue's callbacks, what runs
//! after the `IoCompleteRequest` that may release the last lock): no `link_section`, never
//! inlined (inlined into a pageable caller it would be paged with it), and an entry check that
//! it runs at an IRQL resident driver code may run at (at most `DISPATCH_LEVEL`: the driver has
//! no interrupt service routine).
//!
//! # What the driver provides
//! The checks are the driver's, since only it knows how to read the IRQL and how it counts
//! the locks on a section. The expansion calls them at a fixed path, a module `placement` at
//! the root of the crate that uses the attributes:
//! - `fn assert_pageable_irql()`, which panics above `APC_LEVEL`;
//! - `fn assert_locked(section: &S)`, for whatever `S` the driver names in `#[locked(...)]`,
//!   which panics unless the section is locked at that moment;
//! - `fn assert_resident_irql()`, which panics above `DISPATCH_LEVEL`.
//!
//! `#[init]` places code in `INITX`, not `INIT`: the driver declares `INIT` discardable once,
//! in module-level assembly (an attribute on a method cannot emit that), and links with
//! `/MERGE:INITX=INIT`. Code placed in `INIT` directly would make the object's `INIT` an
//! ordinary code section wherever it came before that declaration.
//!
//! # Relation to windows-drivers-rs
//! wdk-sys's `paged_code!()` (re-exported by wdk) is the C `PAGED_CODE()`: a debug assertion
//! that IRQL <= `APC_LEVEL`, placing nothing. windows-drivers-rs issue 507 asks for an
//! attribute that does both, the `link_section` and the assertion; `#[paged]` is that, and
//! `#[locked]` and `#[init]` do the same for the lockable and the discardable section.
//!
//! # Example
//! ```
//! use pagelock_macros::{init, locked, paged, resident};
//!
//! /// A lockable section and its lock count.
//! pub struct Section(core::sync::atomic::AtomicU32);
//!
//! static LOCKED_CODE: Section = Section(core::sync::atomic::AtomicU32::new(1));
//!
//! mod placement {
//!     pub fn assert_pageable_irql() {}
//!     pub fn assert_resident_irql() {}
//!     pub fn assert_locked(section: &super::Section) {
//!         assert!(section.0.load(core::sync::atomic::Ordering::SeqCst) > 0);
//!     }
//! }
//!
//! #[init]
//! fn load() -> u32 {
//!     dispatch() + work()
//! }
//!
//! #[paged]
//! fn dispatch() -> u32 {
//!     1
//! }
//!
//! #[locked(LOCKED_CODE)]
//! fn work() -> u32 {
//!     2 + tick()
//! }
//!
//! #[resident]
//! fn tick() -> u32 {
//!     0
//! }
//!
//! fn main() {
//!     assert_eq!(load(), 3);
//! }
//! ```

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{Attribute, Error, Item, ItemFn, Meta, Path, Result, parse::Parser};

/// Places a function in `INITX`, which the linker merges into the discardable `INIT`.
///
/// For code that runs only while the driver loads: the kernel frees it once `DriverEntry`
/// returns. Never inlined. Takes no arguments.
#[proc_macro_attribute]
pub fn init(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_or_error(no_arguments(Placement::Init, args.into()), item.into()).into()
}

/// Places a function in `PAGE`, pageable code for IRQL <= `APC_LEVEL`.
///
/// Never inlined; in debug builds it calls `crate::placement::assert_pageable_irql()` on
/// entry. Takes no arguments.
#[proc_macro_attribute]
pub fn paged(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_or_error(no_arguments(Placement::Paged, args.into()), item.into()).into()
}

/// Places a function in `PAGELK`, the lockable code section: any IRQL, while it is locked.
///
/// Never inlined; in debug builds it calls `crate::placement::assert_locked(&SECTION)` on
/// entry. Takes the section as a path to a value in scope: `#[locked(LOCKED_CODE)]`.
#[proc_macro_attribute]
pub fn locked(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_or_error(locked_arguments(args.into()), item.into()).into()
}

/// Keeps a function in the resident `.text`: never inlined, and in debug builds it calls
/// `crate::placement::assert_resident_irql()` on entry. Takes no arguments.
///
/// For code that may run while no lock covers any pageable section: a DPC routine, the
/// callbacks of a cancel-safe queue, the code that completes an IRP and returns.
#[proc_macro_attribute]
pub fn resident(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_or_error(no_arguments(Placement::Resident, args.into()), item.into()).into()
}

/// Where a function goes, and what it checks on entry.
enum Placement {
    /// `INITX`, merged into `INIT`.
    Init,
    /// `PAGE`.
    Paged,
    /// `PAGELK`, with the value that counts its locks.
    Locked(Path),
    /// The resident `.text`: no section of its own.
    Resident,
}

impl Placement {
    /// The attribute, as error messages spell it.
    const fn attribute(&self) -> &'static str {
        match self {
            Self::Init => "#[init]",
            Self::Paged => "#[paged]",
            Self::Locked(_) => "#[locked]",
            Self::Resident => "#[resident]",
        }
    }

    /// The name of the section; `None` for the resident `.text`.
    const fn section(&self) -> Option<&'static str> {
        match self {
            Self::Init => Some("INITX"),
            Self::Paged => Some("PAGE"),
            Self::Locked(_) => Some("PAGELK"),
            Self::Resident => None,
        }
    }

    /// The debug-build check to run first in the body, if any.
    fn entry_check(&self) -> Option<syn::Stmt> {
        let call: TokenStream2 = match self {
            Self::Init => return None,
            Self::Paged => quote! { crate::placement::assert_pageable_irql() },
            Self::Locked(section) => quote! { crate::placement::assert_locked(&#section) },
            Self::Resident => quote! { crate::placement::assert_resident_irql() },
        };
        Some(syn::parse_quote! {
            if ::core::cfg!(debug_assertions) {
                #call;
            }
        })
    }
}

/// The placement, if the attribute was given no arguments.
fn no_arguments(placement: Placement, args: TokenStream2) -> Result<Placement> {
    if args.is_empty() {
        Ok(placement)
    } else {
        Err(Error::new_spanned(args, format!("`{}` takes no arguments", placement.attribute())))
    }
}

/// `#[locked(SECTION)]`: exactly one path.
fn locked_arguments(args: TokenStream2) -> Result<Placement> {
    if args.is_empty() {
        return Err(Error::new(
            Span::call_site(),
            "`#[locked]` names the lockable section to check, as in `#[locked(LOCKED_CODE)]`",
        ));
    }
    let section = |input: syn::parse::ParseStream<'_>| {
        let path: Path = input.parse()?;
        if !input.is_empty() {
            return Err(input.error("`#[locked]` takes one argument, the lockable section"));
        }
        Ok(path)
    };
    section.parse2(args).map(Placement::Locked)
}

/// The placed function, or the error with the input unchanged, so that the error is the only
/// one reported: after an item, or (for an expression, a closure) in a block that ends in it.
fn expand_or_error(placement: Result<Placement>, item: TokenStream2) -> TokenStream2 {
    match placement.and_then(|placement| expand(&placement, item.clone())) {
        Ok(placed) => placed,
        Err(error) => {
            let closure = syn::parse2::<syn::ExprClosure>(item.clone()).is_ok();
            let mut tokens = error.into_compile_error();
            tokens.extend(item);
            if closure {
                quote! { { #tokens } }
            } else {
                tokens
            }
        }
    }
}

/// Places the function `item` as `placement` says.
fn expand(placement: &Placement, item: TokenStream2) -> Result<TokenStream2> {
    let attribute = placement.attribute();
    if let Ok(closure) = syn::parse2::<syn::ExprClosure>(item.clone()) {
        return Err(Error::new_spanned(
            closure.inputs_begin,
            format!(
                "`{attribute}` cannot place a closure: its body is compiled as a function of its \
                 own, which an attribute on the expression does not reach; make it a `fn`"
            ),
        ));
    }
    let mut function = match syn::parse2::<Item>(item)? {
        Item::Fn(function) => function,
        other => {
            return Err(Error::new_spanned(
                other,
                format!("`{attribute}` places functions: put it on a `fn` with a body"),
            ));
        }
    };
    refuse(&function, attribute)?;
    if let Some(check) = placement.entry_check() {
        function.block.stmts.insert(0, check);
    }
    let Some(section) = placement.section() else {
        // Resident: the compiler's own `.text`, which the loader never pages.
        return Ok(quote! {
            #[inline(never)]
            #function
        });
    };
    // SAFETY (of the `unsafe(link_section)` this emits): the section is one of the three code
    // sections the driver declares for its own code, none with a meaning of its own to the
    // linker or loader beyond being pageable (`PAGE`, `PAGELK`) or discarded after load
    // (`INITX`, merged into `INIT`); what makes running code there sound is that it runs only
    // while resident, which the driver's rule for each section ensures (`PAGE` at IRQL <=
    // `APC_LEVEL`, where a page fault is served; `PAGELK` while locked; `INIT` only during
    // `DriverEntry`), the entry check asserts in debug builds, and `#[inline(never)]` keeps the
    // code from running anywhere else.
    Ok(quote! {
        #[unsafe(link_section = #section)]
        #[inline(never)]
        #function
    })
}

/// Refuses what cannot be placed or would contradict the placement.
fn refuse(function: &ItemFn, attribute: &str) -> Result<()> {
    let signature = &function.sig;
    if let Some(constness) = signature.constness {
        return Err(Error::new_spanned(
            constness,
            format!(
                "`{attribute}` cannot place a `const fn`: calls in constant evaluation run no \
                 code from any section, and the entry check is not `const`"
            ),
        ));
    }
    if let Some(asyncness) = signature.asyncness {
        return Err(Error::new_spanned(
            asyncness,
            format!(
                "`{attribute}` cannot place an `async fn`: its body runs in the future's `poll`, \
                 which the attribute does not place"
            ),
        ));
    }
    for attr in &function.attrs {
        if let Some(name) = placement_attribute(attr) {
            return Err(Error::new_spanned(
                attr,
                format!("`{attribute}` sets `{name}` itself: remove this attribute"),
            ));
        }
    }
    Ok(())
}

/// `inline` or `link_section` when `attr` is one of them (also as `unsafe(link_section = ..)`).
fn placement_attribute(attr: &Attribute) -> Option<&'static str> {
    let path = if attr.path().is_ident("unsafe") {
        match attr.parse_args::<Meta>() {
            Ok(inner) => inner.path().clone(),
            Err(_) => return None,
        }
    } else {
        attr.path().clone()
    };
    ["inline", "link_section"].into_iter().find(|name| path.is_ident(name))
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::{Placement, expand, expand_or_error, locked_arguments};

    fn placed(placement: &Placement, item: proc_macro2::TokenStream) -> String {
        expand(placement, item).expect("placeable").to_string()
    }

    #[test]
    fn paged_places_the_function_and_checks_the_irql_first() {
        let out = placed(&Placement::Paged, quote! { pub fn f(x: u32) -> u32 { x + 1 } });
        let expected = quote! {
            #[unsafe(link_section = "PAGE")]
            #[inline(never)]
            pub fn f(x: u32) -> u32 {
                if ::core::cfg!(debug_assertions) {
                    crate::placement::assert_pageable_irql();
                }
                x + 1
            }
        };
        assert_eq!(out, expected.to_string());
    }

    #[test]
    fn locked_checks_the_named_section() {
        let placement = locked_arguments(quote! { crate::sections::LOCKED_CODE }).expect("path");
        let out = placed(&placement, quote! { fn f() {} });
        assert!(out.contains("\"PAGELK\""), "{out}");
        assert!(
            out.contains(
                "crate :: placement :: assert_locked (& crate :: sections :: LOCKED_CODE)"
            ),
            "{out}"
        );
    }

    #[test]
    fn init_goes_to_initx_without_a_check() {
        let out = placed(&Placement::Init, quote! { fn f() {} });
        assert_eq!(
            out,
            quote! { #[unsafe(link_section = "INITX")] #[inline(never)] fn f() {} }.to_string()
        );
    }

    #[test]
    fn generics_where_clauses_receivers_and_abis_are_kept() {
        let out = placed(
            &Placement::Paged,
            quote! {
                /// Docs.
                pub(crate) unsafe extern "C" fn f<'a, T: Copy>(&'a self, t: T) -> T
                where
                    T: Send,
                { t }
            },
        );
        for kept in
            ["# [doc", "pub (crate) unsafe extern \"C\" fn f < 'a , T : Copy >", "& 'a self"]
        {
            assert!(out.contains(kept), "{kept} in {out}");
        }
        assert!(out.contains("where T : Send"), "{out}");
    }

    #[test]
    fn an_error_keeps_the_item_so_it_is_the_only_one() {
        let out = expand_or_error(locked_arguments(quote! {}), quote! { fn f() {} }).to_string();
        assert!(out.starts_with(":: core :: compile_error !"), "{out}");
        assert!(out.ends_with("fn f () { }"), "{out}");
    }
}
