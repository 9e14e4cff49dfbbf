//! Snapshots of the checked IR of every catalog optimizer, so that any
//! change to the front end or to a catalog rule shows up as a reviewed diff.

use lensopt::{catalog, Optimizer};

#[test]
fn checked_ir_of_the_catalog() {
    for name in catalog::names() {
        let rule = catalog::get(name).unwrap().rule();
        insta::assert_snapshot!(format!("ir_{name}"), rule.to_string());
    }
}
