//! The guest's devices: a 16550 serial console at COM1 (`vm-superio`) and the test
//! guest's report ports. Both are port I/O devices; their state migrates with the vCPUs.

use std::{
    io::{self, Write},
    sync::{Condvar, Mutex},
    time::Duration,
};

use muserload_test_guest_abi::{PORTS, PORT_FILLED, PORT_MISMATCH, PORT_ROUND, PORT_SWEEP};
use serde::{Deserialize, Serialize};
use vm_superio::{serial::SerialState, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::lock::{lock, unpoisoned};

/// COM1's ports.
const COM1: std::ops::RangeInclusive<u16> = 0x3f8..=0x3ff;
/// COM1's interrupt line.
pub const COM1_IRQ: u32 = 4;

/// A failure of the devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The serial port's state from the source is not one it can be in.
    #[error("restoring the serial port: {0}")]
    Serial(#[source] vm_superio::serial::Error<io::Error>),
    /// Raising the serial interrupt failed.
    #[error("raising the serial interrupt: {0}")]
    Interrupt(#[source] io::Error),
}

/// Raises the serial interrupt through an eventfd that KVM turns into the IRQ (irqfd).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// What the test guest has reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    /// Whether it has filled its memory.
    pub filled: bool,
    /// Rounds completed.
    pub rounds: u64,
    /// Complete sweeps (checks of every data page).
    pub sweeps: u64,
    /// Pages found wrong.
    pub mismatches: u64,
    /// The first page found wrong.
    pub first_mismatch: Option<u64>,
}

impl TestReport {
    /// Whether the guest reports at all: only the project's guests do, and they fill their
    /// memory first; for any other guest the counts mean nothing.
    pub fn reports(&self) -> bool {
        self.filled
    }
}

/// The serial port's registers, as `vm_superio::serial::SerialState` (which has no serde).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SerialSnapshot {
    /// The registers, in `SerialState`'s order.
    registers: [u8; 9],
    /// Input not read yet.
    in_buffer: Vec<u8>,
}

/// Everything the devices hold, for migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceState {
    /// The serial port.
    serial: SerialSnapshot,
    /// The test guest's report.
    test: TestReport,
}

impl DeviceState {
    /// What the test guest had reported.
    pub fn test_report(&self) -> &TestReport {
        &self.test
    }
}

/// The devices of one VM.
pub struct Devices {
    /// COM1.
    serial: Mutex<Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>>,
    /// The test guest's report.
    report: Mutex<TestReport>,
    /// Notified when the report changes, or the VM stopped.
    changed: Condvar,
}

impl Devices {
    /// New devices; the console writes to `console`, the interrupt goes to `irq`.
    pub fn new(irq: EventFd, console: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Mutex::new(Serial::new(IrqTrigger(irq), console)),
            report: Mutex::new(TestReport::default()),
            changed: Condvar::new(),
        }
    }

    /// Devices in the state `state` (from [`Devices::state`] on the source).
    pub fn restore(
        irq: EventFd,
        console: Box<dyn Write + Send>,
        state: DeviceState,
    ) -> Result<Self, DeviceError> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            state.serial.registers;
        let serial_state = SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: state.serial.in_buffer,
        };
        let serial = Serial::from_state(
            &serial_state,
            IrqTrigger(irq),
            vm_superio::serial::NoEvents,
            console,
        )
        .map_err(DeviceError::Serial)?;
        Ok(Self {
            serial: Mutex::new(serial),
            report: Mutex::new(state.test),
            changed: Condvar::new(),
        })
    }

    /// Raises the serial interrupt again if the restored registers say one is pending.
    /// Call on the destination after restoring the interrupt controllers: an interrupt the
    /// source raised through its irqfd just before pausing may never have reached its
    /// controllers, and a guest whose console driver waits for "transmitter empty" would
    /// then wait forever. A spurious one is harmless: the driver reads IIR first.
    pub fn resume_interrupts(&self) -> Result<(), DeviceError> {
        let serial = lock(&self.serial);
        // IIR bit 0 clear: an interrupt is pending.
        if serial.state().interrupt_identification & 1 == 0 {
            serial
                .interrupt_evt()
                .trigger()
                .map_err(DeviceError::Interrupt)?;
        }
        Ok(())
    }

    /// The devices' state. Call with the vCPUs stopped.
    pub fn state(&self) -> DeviceState {
        let s = lock(&self.serial).state();
        DeviceState {
            serial: SerialSnapshot {
                registers: [
                    s.baud_divisor_low,
                    s.baud_divisor_high,
                    s.interrupt_enable,
                    s.interrupt_identification,
                    s.line_control,
                    s.line_status,
                    s.modem_control,
                    s.modem_status,
                    s.scratch,
                ],
                in_buffer: s.in_buffer,
            },
            test: self.report(),
        }
    }

    /// A vCPU's `in` from `port`; returns whether a device took it.
    pub fn io_in(&self, port: u16, data: &mut [u8]) -> bool {
        if COM1.contains(&port) && data.len() == 1 {
            data[0] = lock(&self.serial).read((port - COM1.start()) as u8);
            return true;
        }
        data.fill(0xff);
        false
    }

    /// A vCPU's `out` to `port`; returns whether a device took it.
    pub fn io_out(&self, port: u16, data: &[u8]) -> bool {
        if COM1.contains(&port) && data.len() == 1 {
            // Output the guest writes while the console is gone is lost, as on hardware.
            let _ = lock(&self.serial).write((port - COM1.start()) as u8, data[0]);
            return true;
        }
        if PORTS.contains(&port) && data.len() == 4 {
            let value = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
            let mut report = lock(&self.report);
            match port {
                PORT_FILLED => report.filled = true,
                PORT_ROUND => report.rounds = value,
                PORT_SWEEP => report.sweeps = value,
                PORT_MISMATCH => {
                    report.mismatches += 1;
                    report.first_mismatch.get_or_insert(value);
                }
                _ => return false,
            }
            self.changed.notify_all();
            return true;
        }
        false
    }

    /// What the test guest has reported so far.
    pub fn report(&self) -> TestReport {
        lock(&self.report).clone()
    }

    /// Waits until `done` holds for the test guest's report, or `timeout` passes; returns
    /// the report then.
    pub fn wait_report(&self, timeout: Duration, done: impl Fn(&TestReport) -> bool) -> TestReport {
        let report = lock(&self.report);
        let (report, _) = unpoisoned(
            self.changed
                .wait_timeout_while(report, timeout, |r| !done(r)),
        );
        report.clone()
    }

    /// Wakes [`Devices::wait_report`] callers to look again (the VM stopped).
    pub fn wake_waiters(&self) {
        let _guard = lock(&self.report);
        self.changed.notify_all();
    }
}
