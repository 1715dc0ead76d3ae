//! TLS interception for `CONNECT` (HTTPS_PROXY): the local certificate authority whose leaf
//! certificates let pag0 terminate an agent's TLS, see the 402 inside and pay it.

pub mod ca;
pub mod leaf;

pub use ca::{CaError, LocalCa, MintedLeaf};
pub use leaf::{HostTls, Interceptor, SniCheck, SniRefusal};
