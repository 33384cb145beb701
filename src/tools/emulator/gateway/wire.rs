//! The gateway's edges: a request as the transport received it, and the
//! reply the transport sends (or the connection it drops).

/// A request as it arrived, before any decoding.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// What the transport should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Close the connection without answering.
    Drop,
    Http {
        status: u16,
        content_type: &'static str,
        retry_after: Option<u64>,
        body: String,
    },
}
