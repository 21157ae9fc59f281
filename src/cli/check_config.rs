//! `check-config`: validates the configuration and prints it, secrets redacted.

use std::path::PathBuf;

use super::{Failure, load};
use crate::config::Settings;

/// `jma-poller check-config`.
pub(super) fn check_config(config: &Option<PathBuf>) -> Result<(), Failure> {
    let settings = load(config)?;
    settings.api_key().map_err(|e| Failure::from((2, e)))?;
    crate::api::tls::ca_file_roots(&settings).map_err(|e| Failure::from((2, e)))?;
    crate::api::tls::check_ssl_cert_file().map_err(|e| Failure::from((2, e)))?;
    print!("{}", settings.to_toml());
    if settings.jmafile.enabled {
        print_stream_plan(&settings);
    }
    eprintln!("configuration is valid");
    Ok(())
}

/// What `jmafile.types` plans (on stderr, so stdout stays the effective TOML).
fn print_stream_plan(settings: &Settings) {
    let plan = crate::poll::streams::plan(&settings.jmafile.types, crate::catalog::get());
    eprintln!("jmafile: {} PuLL stream(s)", plan.streams.len());
    for s in &plan.streams {
        let types = s.types();
        eprintln!(
            "  {}: type={}",
            s.name,
            if types.is_empty() {
                "(none: everything)".to_owned()
            } else {
                types.join(",")
            }
        );
    }
    for entry in &plan.unknown {
        eprintln!(
            "  warning: {entry:?} matches no data identifier in the built-in catalog (a typo, or a product newer than the catalog?); followed as a prefix"
        );
    }
    for (entry, by) in &plan.covered {
        eprintln!("  note: {entry:?} is covered by the prefix {by:?}");
    }
}
