//! Network helpers that know nothing of Pingora: DNS and address classification.

pub mod dns;
pub mod ip;
