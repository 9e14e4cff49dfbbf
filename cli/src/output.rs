//! Standard output and standard error that never panic.
//!
//! `println!` panics when stdout is a closed pipe (`lensopt list | head -1`).
//! `outln!` and `out!` print through [`print()`] instead: when the reader
//! has gone (`BrokenPipe`) the process exits quietly with status 0, as a
//! command killed by SIGPIPE would; any other write error (a full disk, say)
//! is reported on one line and exits with status 2. `errln!` writes to
//! stderr and ignores errors: there is nowhere left to report them.

use std::io::{self, Write};

/// Prints a line on stdout (see the module's documentation).
macro_rules! outln {
    () => {
        $crate::output::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints on stdout (see the module's documentation).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}

/// Prints a line on stderr, ignoring errors.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::eprint(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to stdout; exits 0 if the reader has gone, 2 on other errors.
pub fn print(args: std::fmt::Arguments<'_>) {
    let result = io::stdout().lock().write_fmt(args);
    if let Err(e) = result {
        failed(&e);
    }
}

/// Flushes stdout, as [`print()`] handles errors.
pub fn flush() {
    let result = io::stdout().lock().flush();
    if let Err(e) = result {
        failed(&e);
    }
}

/// Writes to stderr, ignoring errors.
pub fn eprint(args: std::fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

fn failed(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprint(format_args!(
        "lensopt: error: cannot write to standard output: {e}\n"
    ));
    std::process::exit(2);
}
