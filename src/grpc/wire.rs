//! What tonic answers before a handler runs, restated in gRPC's terms. A
//! request over the size limit is the caller's to shrink: RESOURCE_EXHAUSTED
//! (tonic says OUT_OF_RANGE). A body that does not decode is the caller's
//! fault too: INVALID_ARGUMENT naming the field (tonic says INTERNAL, which
//! would page an operator for a client's bug). authgate's own handlers
//! never answer OUT_OF_RANGE, nor INTERNAL with a decoding message, so
//! nothing of theirs is rewritten.

use http::Response;
use tonic::{Code, Status};
use tower::util::MapResponseLayer;

use super::Refusal;
use crate::domain::FieldError;

/// How prost's decoding errors begin.
const DECODE_ERROR: &str = "failed to decode Protobuf message: ";

/// The layer that restates them, for the server's stack.
pub fn wire_errors<B: Default>() -> MapResponseLayer<fn(Response<B>) -> Response<B>> {
    MapResponseLayer::new(restate_response)
}

/// Errors raised before a handler runs are trailers-only: the status is in
/// the headers.
fn restate_response<B: Default>(response: Response<B>) -> Response<B> {
    match Status::from_header_map(response.headers()).and_then(restate) {
        Some(status) => status.into_http(),
        None => response,
    }
}

/// The status tonic should have given, for the two it gets wrong.
fn restate(status: Status) -> Option<Status> {
    match status.code() {
        Code::OutOfRange => Some(
            Refusal::ResourceExhausted {
                message: format!("the request is too large: {}", status.message()),
                retry: false,
            }
            .into(),
        ),
        Code::Internal => status
            .message()
            .strip_prefix(DECODE_ERROR)
            .map(|detail| undecodable(detail).into()),
        _ => None,
    }
}

/// prost's detail lists `Message.field: ` pairs innermost first, then what
/// was wrong; the request's field path is those fields, outermost first.
fn undecodable(detail: &str) -> FieldError {
    let mut path = Vec::new();
    let mut rest = detail;
    while let Some((part, tail)) = rest.split_once(": ") {
        let Some((message, field)) = part.split_once('.') else {
            break;
        };
        let names = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_');
        if !(names(message) && names(field)) {
            break;
        }
        path.push(field);
        rest = tail;
    }
    path.reverse();
    let field = if path.is_empty() {
        "request".to_owned()
    } else {
        path.join(".")
    };
    FieldError::new(field, format!("cannot be decoded: {rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoding_error_names_the_request_field() {
        let e = undecodable(
            "Subject.user_id: CheckAccessRequest.subject: invalid string value: data is not \
             UTF-8 encoded",
        );
        assert_eq!(e.field, "subject.user_id");
        assert_eq!(
            e.problem,
            "cannot be decoded: invalid string value: data is not UTF-8 encoded"
        );
        let e = undecodable("invalid wire type value: 7");
        assert_eq!(e.field, "request");
    }

    #[test]
    fn only_tonics_own_errors_are_restated() {
        assert_eq!(
            restate(Status::out_of_range("too big")).map(|s| s.code()),
            Some(Code::ResourceExhausted)
        );
        assert!(restate(Status::internal("internal error")).is_none());
        assert!(restate(Status::invalid_argument("context: x")).is_none());
    }
}
