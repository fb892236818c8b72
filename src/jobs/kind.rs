//! The [`Kind`] trait: what one job kind implements. Kept apart from the registry
//! ([`super::kinds`]), which imports every kind module, so kind modules import only this.

use serde::Serialize;
use serde_json::Value;

use super::common::{Needs, Stored};
use super::{JobContext, JobError, JobOutput};
use crate::error::DomainError;

/// One job kind: what a new kind implements (see docs/architecture.md, "Adding a job kind").
pub trait Kind: Sized + Serialize {
    /// Parses and checks `params` (an object; `{}` when absent). Every refusal is a 422
    /// naming the field.
    fn parse(params: &Value) -> Result<Self, DomainError>;

    /// What the job reads; the API looks these up (as the caller's) before [`Kind::check`].
    fn needs(&self) -> Needs;

    /// Checks against the stored inputs, beyond the generic ones of [`Needs`] (split exists,
    /// samples fit the spec): shapes from the stored header, spec compatibility, …
    fn check(&self, _stored: &Stored) -> Result<(), DomainError> {
        Ok(())
    }

    /// Runs the job on the calling worker thread.
    fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError>;
}
