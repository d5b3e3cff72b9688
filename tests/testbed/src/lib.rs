//! The test bed (see the crate description).
