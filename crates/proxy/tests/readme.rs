//! The README documents every setting the proxy reads.

#[test]
fn every_setting_is_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    for key in blockops_proxy::config::KEYS {
        assert!(
            readme.contains(&format!("`{}`", key.env)),
            "README.md does not document {}",
            key.env
        );
        assert!(
            readme.contains(&format!("`--{}`", key.name.replace('_', "-"))),
            "README.md lacks --{}",
            key.name
        );
    }
}
