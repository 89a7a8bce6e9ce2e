//! Where the tray app's settings come from: exactly the headless proxy's sources (environment,
//! then `BLOCKOPS_CONFIG` or `~/.blockops/config.toml`, then defaults), minus flags.
//!
//! The dashboard's settings form PATCHes the proxy, which applies the change live and writes it
//! to that same file, so the next launch starts with it. The tray app adds one switch of its own:
//! `BLOCKOPS_DEMO=1` runs the built-in demo backend and points the proxy at it.

use blockops_proxy::config::{self, ConfigError, Settings};

/// The environment variable that turns the demo backend on.
pub const DEMO_ENV: &str = "BLOCKOPS_DEMO";

/// What to start: the settings, and whether to run the demo backend.
#[derive(Debug, Clone)]
pub struct Launch {
    pub settings: Settings,
    pub demo: bool,
}

impl Launch {
    /// Reads the process environment and the config file.
    pub fn from_environment() -> Result<Launch, ConfigError> {
        Ok(Launch {
            settings: config::load_for_embedding()?,
            demo: is_truthy(std::env::var(DEMO_ENV).ok().as_deref()),
        })
    }
}

/// `1`, `true`, `yes` and `on` (any case) are true; anything else, or nothing, is false.
pub fn is_truthy(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use blockops_proxy::config::{KEYS, LiveSettings, Sources};
    use std::path::PathBuf;

    #[test]
    fn demo_switch_accepts_the_usual_spellings() {
        for v in ["1", "true", "TRUE", "yes", " on "] {
            assert!(is_truthy(Some(v)), "{v}");
        }
        for v in ["0", "false", "", "no", "demo"] {
            assert!(!is_truthy(Some(v)), "{v}");
        }
        assert!(!is_truthy(None));
    }

    fn file_only(path: PathBuf) -> Sources {
        Sources {
            config_path: Some(path),
            env: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// A change made in the dashboard (a PATCH through the proxy's settings store) is what the
    /// next launch reads.
    #[tokio::test]
    async fn a_dashboard_change_is_read_at_the_next_launch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "model_name = \"qwen\"\n").unwrap();

        let first = config::load(&file_only(path.clone())).unwrap();
        assert_eq!(first.model_name, "qwen");
        assert_eq!(first.config_path.as_deref(), Some(path.as_path()));

        let live = LiveSettings::new(first);
        live.patch(&serde_json::json!({
            "max_concurrent": 5,
            "backend_url": "http://127.0.0.1:9001",
            "memory_warn_percent": 70.5,
        }))
        .await
        .unwrap();

        let next = config::load(&file_only(path.clone())).unwrap();
        assert_eq!(next.max_concurrent, 5);
        assert_eq!(next.backend_url, "http://127.0.0.1:9001");
        assert_eq!(next.memory_warn_percent, 70.5);
        assert_eq!(next.model_name, "qwen", "keys not patched are kept");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["max_concurrent"].as_integer(), Some(5));
    }

    /// The real entry point, `load_for_embedding`, reads `BLOCKOPS_CONFIG`. The environment is
    /// process-wide, so this runs the test binary again as a child with the variable set.
    #[test]
    fn load_for_embedding_reads_the_file_named_by_blockops_config() {
        if std::env::var_os("BLOCKOPS_TRAY_TEST_CHILD").is_some() {
            return; // the child runs `child_reads_blockops_config` only
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "max_concurrent = 7\nport = 18099\n").unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args(["--exact", "settings::tests::child_reads_blockops_config"])
            .env("BLOCKOPS_TRAY_TEST_CHILD", "1")
            .env("BLOCKOPS_CONFIG", &path)
            .env("BLOCKOPS_DEMO", "1");
        for key in KEYS {
            child.env_remove(key.env);
        }
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(
            stdout.contains("1 passed"),
            "the child test did not run: {stdout}"
        );
    }

    #[test]
    fn child_reads_blockops_config() {
        if std::env::var_os("BLOCKOPS_TRAY_TEST_CHILD").is_none() {
            return;
        }
        let launch = Launch::from_environment().unwrap();
        assert_eq!(launch.settings.max_concurrent, 7);
        assert_eq!(launch.settings.port, 18099);
        assert!(launch.demo);
    }
}
