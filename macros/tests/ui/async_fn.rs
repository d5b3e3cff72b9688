#[pagelock_macros::paged]
async fn later() {}

fn main() {}
