//! Configuration: precedence flag > env > file > default, and every rejected value.

use blockops_proxy::config::{self, KEYS, Sources};
use std::process::Command;

fn sources(
    file: Option<&str>,
    env: &[(&str, &str)],
    flags: &[(&str, &str)],
) -> (tempfile::TempDir, Sources) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
    }
    let s = Sources {
        config_path: Some(path),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        flags: flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    (dir, s)
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = "port = 9001\nmax_concurrent = 5\nmodel_name = \"from-file\"\nbackend_url = \"http://file:1\"\n";
    let (_d, s) = sources(
        Some(file),
        &[("port", "9002"), ("max_concurrent", "6")],
        &[("port", "9003")],
    );
    let c = config::load(&s).unwrap();
    assert_eq!(c.port, 9003, "flag wins");
    assert_eq!(c.max_concurrent, 6, "env beats file");
    assert_eq!(c.model_name, "from-file", "file beats default");
    assert_eq!(c.backend_url, "http://file:1");
    assert_eq!(c.token_hard_threshold, 100_000, "default");
}

#[test]
fn every_bad_value_names_the_key_the_value_and_the_expectation() {
    let cases: &[(&str, &str)] = &[
        ("port", "0"),
        ("port", "70000"),
        ("port", "eighty"),
        ("backend_url", "localhost:8082"),
        ("backend_url", "ftp://x"),
        ("max_concurrent", "0"),
        ("max_queue", "-1"),
        ("queue_timeout_secs", "soon"),
        ("heartbeat_interval_secs", "0"),
        ("token_warn_threshold", "0"),
        ("memory_warn_percent", "150"),
        ("memory_critical_action", "panic"),
        ("notices", "loud"),
        ("cache_purge", "everything"),
        ("reasoning_field", "thoughts"),
        ("host", "not-an-ip"),
        ("log_max_mb", "0"),
        ("max_body_bytes", "1"),
        ("cors_origins", "*"),
        ("cors_origins", "http://a.example,*"),
    ];
    for (key, value) in cases {
        let env_name = KEYS.iter().find(|k| k.name == *key).unwrap().env;
        let (_d, s) = sources(None, &[(key, value)], &[]);
        let e = config::load(&s).unwrap_err().to_string();
        assert!(e.starts_with(env_name), "{key}={value}: {e}");
        assert!(
            e.contains(value) && e.contains("expected"),
            "{key}={value}: {e}"
        );
        assert_eq!(e.lines().count(), 1);
        let (_d, s) = sources(None, &[], &[(key, value)]);
        let e = config::load(&s).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--{}", key.replace('_', "-"))),
            "{e}"
        );
    }
}

#[test]
fn cross_key_rules_and_file_problems_are_reported() {
    let (_d, s) = sources(None, &[("token_warn_threshold", "200000")], &[]);
    assert!(
        config::load(&s)
            .unwrap_err()
            .to_string()
            .contains("token_hard_threshold")
    );
    let (_d, s) = sources(None, &[("host", "0.0.0.0")], &[]);
    assert!(
        config::load(&s)
            .unwrap_err()
            .to_string()
            .contains("BLOCKOPS_API_KEY")
    );
    let (_d, s) = sources(None, &[("host", "0.0.0.0"), ("api_key", "k")], &[]);
    assert!(config::load(&s).is_ok());
    let (_d, s) = sources(Some("prot = 1\n"), &[], &[]);
    let e = config::load(&s).unwrap_err().to_string();
    assert!(e.contains("\"prot\"") && e.contains("port"), "{e}");
    let (_d, s) = sources(Some("port = 1\nmax_concurrent = [\n"), &[], &[]);
    let e = config::load(&s).unwrap_err().to_string();
    assert!(e.contains("line 2") || e.contains("line 3"), "{e}");
}

#[test]
fn the_binary_exits_2_with_one_line_for_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blockops-proxy"))
        .env("HOME", dir.path())
        .env("PORT", "70000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("PORT") && lines[0].contains("70000") && lines[0].contains("65535"),
        "{stderr}"
    );
}
