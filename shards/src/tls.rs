//! TLS for the MQTT listeners: loading the server configuration from PEM
//! files ([`server_config`], in `tls/config.rs`), and [`TlsStream`], a rustls
//! server connection over a glommio [`TcpStream`](glommio::net::TcpStream)
//! (in `tls/stream.rs`).
//!
//! [`TlsStream`] is hand-rolled over rustls's sans-IO API (`read_tls`,
//! `process_new_packets`, `reader()`, `writer()`, `write_tls`) rather than
//! wrapped by an async TLS crate, so that a connection can be taken apart
//! ([`TlsStream::into_parts`]), its
//! [`ServerConnection`](rustls::ServerConnection) sent to another shard
//! with the socket's descriptor, and rebuilt there
//! ([`TlsStream::from_parts`]) with nothing lost: plaintext already decrypted,
//! a partial record and TLS output not yet written all live inside the
//! `ServerConnection`.
//!
//! Lives on: the [`ServerConfig`](rustls::ServerConfig) is `Send + Sync` and
//! meant to be built once and shared by every shard (one TLS session cache
//! for the node); a [`TlsStream`] is shard-local like the `TcpStream` inside
//! it.

mod config;
mod stream;
#[cfg(test)]
mod tests;

pub use config::server_config;
pub use stream::TlsStream;
