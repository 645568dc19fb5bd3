//! `dsmwrap`'s one check: that it runs inside a job.
//!
//! `dsmwrap` is only ever started by a launcher, which puts the rank's identity in its
//! environment. Catching a missing variable here gives one clear line instead of a
//! confusing failure deep in the runtime's initialization.

use std::ffi::OsString;

use dsmpi_runtime::bootstrap::{
    ENV_HOSTNAME, ENV_LOCAL_RANK, ENV_LOCAL_SIZE, ENV_PMI_ADDR, ENV_RANK, ENV_SIZE, ENV_TOKEN,
};

/// The variables every rank must have (`DSMPI_BIND_ADDR` is optional).
pub const REQUIRED_VARS: [&str; 7] = [
    ENV_RANK,
    ENV_SIZE,
    ENV_LOCAL_RANK,
    ENV_LOCAL_SIZE,
    ENV_PMI_ADDR,
    ENV_TOKEN,
    ENV_HOSTNAME,
];

/// The required variables that `lookup` does not find (or finds empty), in order.
pub fn missing_vars(lookup: impl Fn(&str) -> Option<OsString>) -> Vec<&'static str> {
    REQUIRED_VARS
        .into_iter()
        .filter(|name| !matches!(lookup(name), Some(v) if !v.is_empty()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_and_empty_variables() {
        assert!(missing_vars(|_| Some("1".into())).is_empty());
        assert_eq!(missing_vars(|_| None), REQUIRED_VARS);
        let missing = missing_vars(|name| match name {
            "DSMPI_RANK" => Some("".into()),
            "DSMPI_JOB_TOKEN" => None,
            _ => Some("x".into()),
        });
        assert_eq!(missing, ["DSMPI_RANK", "DSMPI_JOB_TOKEN"]);
    }
}
