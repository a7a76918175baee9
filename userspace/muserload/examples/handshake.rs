//! Creates a one-page object on `/dev/muserload` and prints what the module speaks.

use std::process::ExitCode;

use muserload::{Object, API_VERSION, PAGE_SIZE};

fn main() -> ExitCode {
    match Object::create(PAGE_SIZE as u64, 0, 0) {
        Ok(object) => {
            println!(
                "muserload: ABI version {API_VERSION}, features {:#x}",
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
