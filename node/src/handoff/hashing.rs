//! `Hash` for the two driver types the machine keeps in its state (the model checker
//! hashes every state). `node::driver` derives `PartialEq, Eq` but not `Hash` for them;
//! if it ever derives `Hash`, delete this file.

use crate::driver::{MigrationStatus, MigrationTarget};
use std::hash::{Hash, Hasher};

impl Hash for MigrationTarget {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Hash for MigrationStatus {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
    }
}
