//! Why a body could not be turned into files: shared by the streaming decoder (`decode`) and
//! the tar unpacker (`unpack`), which both produce it, so neither imports the other for it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body download broke off: {0}")]
    Network(String),
    #[error("corrupt body: {0}")]
    Corrupt(String),
    #[error("length mismatch: {0}")]
    Length(String),
    #[error("more than download.max_size ({limit} bytes) after decompression; refused")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("writing {}: {source}", path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interrupted by shutdown")]
    Cancelled,
}
