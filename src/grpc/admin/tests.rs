use super::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::{IpPrefix, Key};
use crate::store::StateId;

#[test]
fn page_tokens_round_trip_and_reject_forgeries() {
    let id = StateId {
        context: "login".into(),
        rule: "user_ip".into(),
        key: Key::UserIp(
            UserId::parse("u", "al ice").unwrap(),
            IpPrefix::parse("i", "::1").unwrap(),
        ),
    };
    assert_eq!(parse_page_token(&page_token(&id)).unwrap(), id);
    assert_eq!(parse_page_token("!!").unwrap_err().field, "page_token");
    assert!(parse_page_token(&URL_SAFE_NO_PAD.encode("a\u{1f}b")).is_err());
}
