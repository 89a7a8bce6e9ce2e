//! Start at Login, per OS, with no plugin: one small file the OS reads at login.
//!
//! - macOS: a LaunchAgent, `~/Library/LaunchAgents/dev.blockops.tray.plist`.
//! - Linux and the BSDs: an XDG autostart entry, `$XDG_CONFIG_HOME/autostart/blockops.desktop`
//!   (`~/.config/autostart/…` when the variable is unset).
//! - Windows: not offered (the menu item is disabled).
//!
//! The paths and file bodies are pure functions; [`enable`], [`disable`] and [`is_enabled`] only
//! write, remove or look at that one file.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The LaunchAgent label; the bundle identifier in `tauri.conf.json`.
pub const LABEL: &str = "dev.blockops.tray";

/// Which autostart mechanism to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    LaunchAgent,
    XdgAutostart,
}

impl Flavor {
    /// The mechanism of the OS this binary was built for, if it has one we support.
    pub fn current() -> Option<Flavor> {
        if cfg!(target_os = "macos") {
            Some(Flavor::LaunchAgent)
        } else if cfg!(unix) {
            Some(Flavor::XdgAutostart)
        } else {
            None
        }
    }
}

/// Where the entry lives, from the home folder and `$XDG_CONFIG_HOME` (ignored unless absolute,
/// as the XDG spec says).
pub fn entry_path(flavor: Flavor, home: &Path, xdg_config_home: Option<&Path>) -> PathBuf {
    match flavor {
        Flavor::LaunchAgent => home
            .join("Library/LaunchAgents")
            .join(format!("{LABEL}.plist")),
        Flavor::XdgAutostart => xdg_config_home
            .filter(|p| p.is_absolute())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| home.join(".config"))
            .join("autostart/blockops.desktop"),
    }
}

/// The entry for this machine's user, if the OS is supported and a home folder is known.
pub fn current_entry_path() -> Option<PathBuf> {
    let flavor = Flavor::current()?;
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    Some(entry_path(flavor, &home, xdg.as_deref()))
}

/// The file's text, launching `exe`.
pub fn entry_contents(flavor: Flavor, exe: &Path) -> String {
    match flavor {
        Flavor::LaunchAgent => format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key>
  <string>{LABEL}</string>
  <key>ProgramArguments</key>
  <array>
    <string>{}</string>
  </array>
  <key>RunAtLoad</key>
  <true/>
  <key>ProcessType</key>
  <string>Interactive</string>
</dict>
</plist>
"#,
            xml_escape(&exe.to_string_lossy())
        ),
        Flavor::XdgAutostart => format!(
            "[Desktop Entry]\n\
             Type=Application\n\
             Name=blockops\n\
             Comment=Tool-call proxy for local LLM servers, in the tray\n\
             Exec={}\n\
             Icon=blockops-tray\n\
             Terminal=false\n\
             X-GNOME-Autostart-enabled=true\n",
            desktop_exec_quote(&exe.to_string_lossy())
        ),
    }
}

/// Writes the entry (creating its folder). Replaces an older entry, e.g. after the app moved.
pub fn enable(path: &Path, contents: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents)
}

/// Removes the entry; an entry that is already gone is not an error.
pub fn disable(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn is_enabled(path: &Path) -> bool {
    path.is_file()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Quotes an `Exec=` argument per the Desktop Entry spec when it needs quoting.
fn desktop_exec_quote(s: &str) -> String {
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
    if plain {
        return s.to_owned();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '`' | '$' | '\\') {
            out.push('\\');
        }
        if c == '%' {
            out.push('%');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_each_os_convention() {
        let home = Path::new("/home/ada");
        assert_eq!(
            entry_path(Flavor::XdgAutostart, home, None),
            Path::new("/home/ada/.config/autostart/blockops.desktop")
        );
        assert_eq!(
            entry_path(Flavor::XdgAutostart, home, Some(Path::new("/xdg"))),
            Path::new("/xdg/autostart/blockops.desktop")
        );
        // A relative XDG_CONFIG_HOME is invalid and ignored.
        assert_eq!(
            entry_path(Flavor::XdgAutostart, home, Some(Path::new("rel"))),
            Path::new("/home/ada/.config/autostart/blockops.desktop")
        );
        assert_eq!(
            entry_path(Flavor::LaunchAgent, Path::new("/Users/ada"), None),
            Path::new("/Users/ada/Library/LaunchAgents/dev.blockops.tray.plist")
        );
    }

    #[test]
    fn desktop_entry_launches_the_binary() {
        let text = entry_contents(Flavor::XdgAutostart, Path::new("/usr/bin/blockops-tray"));
        assert!(text.starts_with("[Desktop Entry]\n"));
        assert!(text.contains("\nExec=/usr/bin/blockops-tray\n"));
        assert!(text.contains("\nType=Application\n"));
        let text = entry_contents(Flavor::XdgAutostart, Path::new("/opt/my apps/100%/tray"));
        assert!(
            text.contains("\nExec=\"/opt/my apps/100%%/tray\"\n"),
            "{text}"
        );
    }

    #[test]
    fn launch_agent_runs_at_load_and_escapes_the_path() {
        let text = entry_contents(
            Flavor::LaunchAgent,
            Path::new("/Applications/blockops & co.app/Contents/MacOS/blockops-tray"),
        );
        assert!(text.contains("<key>RunAtLoad</key>\n  <true/>"));
        assert!(text.contains("<string>dev.blockops.tray</string>"));
        assert!(text.contains(
            "<string>/Applications/blockops &amp; co.app/Contents/MacOS/blockops-tray</string>"
        ));
    }

    #[test]
    fn enable_then_disable_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = entry_path(Flavor::XdgAutostart, dir.path(), None);
        assert!(!is_enabled(&path));
        enable(&path, "x").unwrap();
        assert!(is_enabled(&path));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x");
        enable(&path, "y").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y");
        disable(&path).unwrap();
        assert!(!is_enabled(&path));
        disable(&path).unwrap();
    }
}
