//! Fuzzes the FTP control-line parser in both directions.
#![no_main]

use conntrack::helpers::ftp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The parser takes one line without CR/LF, but must survive any bytes.
    for from_client in [true, false] {
        if let Ok(Some(cmd)) = ftp::parse_line(data, from_client) {
            assert_ne!(cmd.port, 0);
            assert_eq!(cmd.addr.is_none(), cmd.kind == ftp::FtpKind::Epsv229);
        }
    }
});
