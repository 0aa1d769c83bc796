//! A forwarded URI's path as the proxy routed it. Proxies match their own
//! locations on the decoded path with dot segments resolved and slashes
//! merged, but forward the raw URI: matched raw, `/%61dmin` or
//! `/public/../admin` would reach the proxy's `/admin` while missing
//! authgate's `/admin` route.

use std::borrow::Cow;

use crate::domain::FieldError;

fn bad(problem: &str) -> FieldError {
    FieldError::new("uri", problem)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_decoded(raw: &str) -> Result<String, FieldError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1)
                .and_then(|&h| hex(h))
                .zip(bytes.get(i + 2).and_then(|&l| hex(l)))
                .map(|(h, l)| h << 4 | l)
                .ok_or_else(|| bad("has a % not followed by two hex digits"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| bad("does not decode to UTF-8"))?;
    if decoded.chars().any(char::is_control) {
        return Err(bad("decodes to control characters"));
    }
    Ok(decoded)
}

/// The path of `uri` (an origin-form request target, query allowed),
/// decoded, with `.` and `..` resolved and repeated slashes merged. A path
/// that climbs above the root is refused, as nginx refuses it.
pub fn normalized(uri: &str) -> Result<Cow<'_, str>, FieldError> {
    let raw = uri.split(['?', '#']).next().unwrap_or("");
    if !raw.starts_with('/') {
        return Err(bad("must be a path starting with /"));
    }
    // Most paths are already as the proxy routes them: nothing to decode,
    // no dot segment, no empty one (the root's aside).
    let rest = &raw[1..];
    let last = rest.split('/').count() - 1;
    let plain = !raw.contains('%')
        && rest
            .split('/')
            .enumerate()
            .all(|(i, seg)| !matches!(seg, "." | "..") && (!seg.is_empty() || i == last))
        && !raw.ends_with("//")
        && !raw.chars().any(char::is_control);
    if plain {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = percent_decoded(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut last = "";
    for segment in decoded.split('/') {
        last = segment;
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or_else(|| bad("climbs above the root"))?;
            }
            s => segments.push(s),
        }
    }
    let mut path = format!("/{}", segments.join("/"));
    if !segments.is_empty() && matches!(last, "" | "." | "..") {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_already_routed_as_written_are_not_copied() {
        for raw in ["/", "/login", "/a/b/", "/login?next=/x"] {
            assert!(matches!(normalized(raw), Ok(Cow::Borrowed(_))), "{raw}");
        }
        for raw in ["//login", "/a//b", "/a/./b", "/a/b/..", "/%61", "/a/b//"] {
            assert!(!matches!(normalized(raw), Ok(Cow::Borrowed(_))), "{raw}");
        }
    }

    #[test]
    fn paths_read_as_the_proxy_routes_them() {
        for (raw, want) in [
            ("/", "/"),
            ("/login?next=/admin", "/login"),
            ("/%61dmin/users", "/admin/users"),
            ("//admin", "/admin"),
            ("/public/../admin/", "/admin/"),
            ("/./admin/.", "/admin/"),
            ("/a%2Fb", "/a/b"),
            ("/caf%C3%A9", "/café"),
        ] {
            assert_eq!(normalized(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn paths_that_cannot_be_routed_are_refused() {
        for raw in [
            "",
            "admin",
            "http://h/admin",
            "/..",
            "/a/../../b",
            "/%2",
            "/%zz",
            "/%0d%0aSet-Cookie:x",
            "/%ff",
        ] {
            assert!(normalized(raw).is_err(), "{raw:?}");
        }
    }
}
