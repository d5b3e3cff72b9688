#[pagelock_macros::paged]
const fn answer() -> u32 {
    42
}

fn main() {}
