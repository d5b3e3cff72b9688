#[pagelock_macros::locked]
fn unnamed() {}

#[pagelock_macros::locked(LOCKED_CODE, PAGED_DATA)]
fn two() {}

fn main() {}
