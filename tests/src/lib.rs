//! Helpers shared by the end-to-end tests.

pub mod guest;
pub mod journald;
pub mod machine;
pub mod mariadb;

pub use journald::{
    ensure_journald, field_text, journal_entries, wait_for_journal_entries, Journald,
};
