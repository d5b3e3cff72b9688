fn main() {
    let f = #[pagelock_macros::paged] || 1;
    let _ = f();
}
