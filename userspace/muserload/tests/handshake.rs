//! Handshake with the module. Runs in the guest, where `/dev/muserload` exists.

use muserload::{Error, Object};

#[test]
fn open_and_handshake() {
    let object = Object::open(0).expect("open and handshake");
    assert_eq!(object.features(), 0, "no feature is defined yet");
}

#[test]
fn unknown_feature_is_refused() {
    match Object::open(1 << 63) {
        Err(Error::Features { missing, supported }) => {
            assert_eq!(missing, 1 << 63);
            assert_eq!(supported, 0);
        }
        other => panic!("expected Error::Features, got {other:?}"),
    }
}

#[test]
fn missing_device_names_the_path() {
    let err = Object::open_path("/nonexistent/muserload", 0).expect_err("no such device");
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/muserload"), "{err}");
}
