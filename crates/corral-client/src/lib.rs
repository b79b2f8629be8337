//! A typed Rust client for corral's HTTP/JSON API.
//!
//! [`Client`] talks to one daemon, on its Unix socket or over TCP with the
//! daemon's token, and has a method per route ([`Client::spawn`],
//! [`Client::list`], [`Client::stop_many`], [`Client::events`], ...) taking and
//! returning `corral-proto`'s wire types — the types the daemon itself serves,
//! so a field cannot differ between the two ends. Streamed answers are values
//! one pulls from: [`EventStream`] (typed [`corral_proto::Event`]s) and
//! [`LogStream`] (bytes or lines), each also a `Stream`.
//!
//! No server framework is in here: the crate is hyper's HTTP/1.1 client over
//! tokio, with the transport's guarantees (deadlines, size limits, a socket
//! that must be this user's) described in its module.
#![warn(missing_docs)]

mod routes;
mod streams;
mod transport;

pub use corral_proto as proto;
pub use streams::{EventStream, LogStream};
pub use transport::{
    ANSWER_LIMIT, Bytes, Client, ClientError, DEFAULT_TIMEOUT, EVENT_LIMIT, EVENT_STALL, Method,
    StatusCode, TIMEOUT_ENV, UNSTATED_STOP_ALLOWANCE,
};
