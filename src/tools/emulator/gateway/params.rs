//! Decoding a request's parameters from the query string and the form body.

use std::collections::HashMap;

use super::render::{Rendering, XML_RENDERING};
use super::wire::RawRequest;

/// Merges query and form body; the query wins when a name is in both
/// (precedence at the real gateway is UNCONFIRMED). Bytes that are not UTF-8
/// after percent-decoding fail the request (code 47).
pub(super) fn merge_params(request: &RawRequest) -> Result<HashMap<String, String>, Rendering> {
    let mut params = HashMap::new();
    let is_form = request.content_type.as_deref().is_none_or(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if is_form {
        decode_form(&request.body, &mut params).map_err(|_| XML_RENDERING)?;
    }
    if let Some(query) = &request.query {
        let mut from_query = HashMap::new();
        decode_form(query.as_bytes(), &mut from_query).map_err(|_| XML_RENDERING)?;
        params.extend(from_query);
    }
    Ok(params)
}

pub(super) fn decode_form(input: &[u8], out: &mut HashMap<String, String>) -> Result<(), ()> {
    for pair in input.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        out.insert(decode_component(name)?, decode_component(value)?);
    }
    Ok(())
}

pub(super) fn decode_component(raw: &[u8]) -> Result<String, ()> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_encoding::percent_decode(&plus_as_space).collect();
    String::from_utf8(bytes).map_err(|_| ())
}
