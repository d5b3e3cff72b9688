#[pagelock_macros::locked(LOCKED_CODE)]
static TABLE: [u32; 4] = [0; 4];

fn main() {}
