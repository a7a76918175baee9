//! Opens `/dev/muserload`, handshakes and prints what the module speaks.

use std::process::ExitCode;

fn main() -> ExitCode {
    match muserload::Object::open(0) {
        Ok(object) => {
            println!(
                "muserload: ABI version {}, features {:#x}",
                muserload::API_VERSION,
                object.features()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("muserload: {err}");
            ExitCode::FAILURE
        }
    }
}
