//! What the protocol's unit tests share: frames as they go on the wire, and errors as the
//! loader prints them.

use muserload::PAGE_SIZE;

use super::{send_control, send_pages, Control, LinkError};

/// What the loader says when a connection closed mid-frame.
pub const CLOSED: &str = "the peer closed the connection mid-stream";

/// The error's line, as the loader prints it.
pub fn err<T>(result: Result<T, LinkError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// `control`'s frame.
pub fn frame_of(control: &Control) -> Vec<u8> {
    let mut wire = Vec::new();
    send_control(&mut wire, control).expect("sent");
    wire
}

/// `(index, byte)`: page `index` filled with `byte`. Returns the frame and the pages' data.
pub fn pages_frame(pages: &[(u64, u8)]) -> (Vec<u8>, Vec<u8>) {
    let data: Vec<Vec<u8>> = pages.iter().map(|&(_, b)| vec![b; PAGE_SIZE]).collect();
    let pairs: Vec<(u64, &[u8])> = pages
        .iter()
        .zip(&data)
        .map(|(&(i, _), d)| (i, &d[..]))
        .collect();
    let mut wire = Vec::new();
    let bytes = send_pages(&mut wire, &pairs).expect("sent");
    assert_eq!(bytes, wire.len() as u64);
    (wire, data.concat())
}
