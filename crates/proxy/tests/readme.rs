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

#[test]
fn the_readme_format_table_lists_exactly_the_engine_s_formats() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("<!-- formats:"))
        .skip(3)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    let mut known = toolcalls::known_formats();
    let mut listed = table.clone();
    known.sort_unstable();
    listed.sort_unstable();
    assert_eq!(
        listed, known,
        "README's format table vs the engine's formats"
    );
}
