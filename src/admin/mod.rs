//! `retaind retained export|import|delete`: the operator's tools for retained messages in bulk
//! (issue 16). Each talks either to a running service over its HTTP API, with the credentials
//! any user has (a bearer token or AWS keys signing with SigV4), or straight to a database
//! URL, opening the store as the server does; `import --from-endpoint` reads from another
//! service (AWS IoT Core, or a retaind) over the AWS API.
//!
//! The file format is [`ndjson`]'s; where messages come from and go to is [`source`] (over
//! [`service`] or [`database`]); [`export`], [`import`] (with [`migrate`] for
//! `--from-endpoint`) and [`delete`] are the commands. This module owns no state of the server
//! and must not reach into `api` or `app`: over HTTP it is a client like any other.

mod args;
mod credentials;
mod database;
mod delete;
mod error;
mod export;
mod fetched;
mod import;
mod migrate;
mod ndjson;
mod progress;
mod resume;
mod service;
mod source;

pub use args::{RetainedAction, RetainedCommand};
pub use error::Error;
pub use ndjson::Line;

/// Runs one `retaind retained ...` command; what it did is reported on standard error.
pub async fn run(command: RetainedCommand) -> Result<(), Error> {
    match command.action {
        RetainedAction::Export(args) => export::run(args).await,
        RetainedAction::Import(args) => import::run(args).await,
        RetainedAction::Delete(args) => delete::run(args).await,
    }
}
