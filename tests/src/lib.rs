//! Helpers shared by the end-to-end tests.

pub mod encrypted_dirs;
pub mod guest;
pub mod journald;
pub mod machine;
pub mod mariadb;

pub use journald::{
    ensure_journald, field_text, journal_entries, wait_for_journal_entries, Journald,
};

/// Polls `check` every 50 ms until it holds or `timeout` passes; whether it held.
pub fn wait_until(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check()
}
