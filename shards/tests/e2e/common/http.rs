//! The broker's HTTP endpoint as the tests see it: a free port to put it
//! on, `GET` over a plain socket, and sums of Prometheus series over the
//! shards.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use super::WAIT;

/// A port nobody listens on right now on 127.0.0.1 (for a TLS listener, the
/// HTTP endpoint or a broker started by hand).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Sends `request` to 127.0.0.1:`port` and reads the response until the
/// server closes the connection.
fn exchange(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP endpoint");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.write_all(request.as_bytes()).expect("send the request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the response");
    text
}

/// The body of an HTTP response (empty without one).
fn body(text: &str) -> String {
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// `GET path` over plain HTTP/1.1; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let text = exchange(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    );
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, body(&text))
}

/// `GET /metrics` of the broker's HTTP endpoint: the body (fails unless the
/// answer is 200).
pub fn scrape(http: u16) -> String {
    let text = exchange(
        http,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
    body(&text)
}

/// The sum of the values of the series of `body` that `wanted` picks (by
/// the series: name and labels), and how many there were.
pub fn series_sum(body: &str, wanted: impl Fn(&str) -> bool) -> (u64, usize) {
    let values: Vec<u64> = body
        .lines()
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            wanted(series).then(|| v.parse().ok())?
        })
        .collect();
    (values.iter().sum(), values.len())
}

/// Sum of a metric over its `shard` labels, and how many shards reported it.
pub fn metric(body: &str, name: &str) -> (u64, usize) {
    let prefix = format!("{name}{{shard=\"");
    series_sum(body, |s| s.starts_with(&prefix))
}

/// The sum over shards of `name{shard=..,label="value"}`, and how many
/// shards reported it.
pub fn labelled(body: &str, name: &str, label: &str, value: &str) -> (u64, usize) {
    let prefix = format!("{name}{{shard=\"");
    let tail = format!(",{label}=\"{value}\"}}");
    series_sum(body, |s| s.starts_with(&prefix) && s.ends_with(&tail))
}
