#[pagelock_macros::paged(DISPATCH_LEVEL)]
fn dispatch() {}

#[pagelock_macros::init(PAGE)]
fn load() {}

fn main() {}
