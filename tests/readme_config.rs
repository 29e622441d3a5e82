//! The README's configuration reference is checked against the code: it must
//! parse, equal the built-in defaults, and document every key.

use std::collections::BTreeSet;

use myelin_engine::Config;

fn readme_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Configuration reference").nth(1).expect("no configuration section");
    let block = section.split("```toml\n").nth(1).expect("no toml block");
    block.split("```").next().unwrap().to_owned()
}

fn leaf_paths(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(&p, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn readme_configuration_block_equals_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, readme_block()).unwrap();
    let loaded = Config::load_from(Some(&file), Vec::new()).unwrap();
    assert_eq!(loaded.config, Config::default(), "README defaults differ from the code");
}

#[test]
fn readme_configuration_block_documents_every_key() {
    let mut documented = BTreeSet::new();
    let mut section = String::new();
    for line in readme_block().lines() {
        let line = line.split('#').next().unwrap().trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            documented.insert(section.clone());
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            documented.insert(if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") });
        }
    }
    let mut expected = BTreeSet::new();
    leaf_paths("", &serde_json::to_value(Config::default()).unwrap(), &mut expected);
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(missing.is_empty(), "keys missing from the README: {missing:?}");
}
