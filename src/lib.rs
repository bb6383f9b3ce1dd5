//! spindle: a persistent-agent execution engine for Ansible.
//!
//! One connection per target, a Python agent bootstrapped in RAM over it, one round trip per
//! call. `ls src/` is the architecture: [`proto`] (wire format), [`reactor`] (event loop
//! backends), [`router`] (sans-IO stream and call state), [`transport`] (starting agents),
//! [`api`] (the daemon's Unix-socket API and server loop), [`client`] (a blocking API client),
//! [`inventory`] (host lists for the CLI), [`metrics`], [`cache`] (the content-addressed blob
//! cache of module code), [`fanout`] (one call over many targets, for the CLI), [`transfer`]
//! (file streaming: chunking and zero-copy on the controller), [`capacity`] (the capacity model
//! over bench results); `agent/` holds the Python agent the router bootstraps.

pub mod api;
pub mod cache;
pub mod capacity;
pub mod client;
pub mod fanout;
pub mod fileio;
pub mod inventory;
pub mod metrics;
pub mod proto;
pub mod reactor;
pub mod router;
pub mod transfer;
pub mod transport;
