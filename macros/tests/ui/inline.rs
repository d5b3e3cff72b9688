#[pagelock_macros::paged]
#[inline]
fn hot() {}

#[pagelock_macros::init]
#[unsafe(link_section = ".text")]
fn elsewhere() {}

fn main() {}
