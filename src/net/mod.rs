//! Network helpers that know nothing of Pingora: DNS, address classification and connection
//! caps.

pub mod conns;
pub mod dns;
pub mod ip;
