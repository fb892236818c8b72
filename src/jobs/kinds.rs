//! The registry of job kinds: the only place that lists them. Each kind lives in its own
//! module and implements [`super::kind::Kind`] (its typed parameters, what it needs, its checks against the
//! stored inputs, its `run`); one line of [`job_kinds!`] below adds it to [`JobKind`],
//! [`JobParams`], the dispatch, and the OpenAPI contract (`kind` enum, `params` schema).
//!
//! Parsing and checks run on the runtime at submission; `run` runs on a worker thread.

use serde::Serialize;
use serde_json::Value;

use super::common::{check_needs, Needs, Stored};
use super::kind::Kind;
use super::{JobContext, JobError, JobOutput};
use crate::error::DomainError;

/// Declares the kinds: `Variant = "wire_name" => params type, public;` (`public: false` keeps
/// a kind out of the contract and needs `--enable-test-jobs`).
macro_rules! job_kinds {
    ($( $variant:ident = $name:literal => $ty:ty, public: $public:literal; )*) => {
        /// A job kind (`kind` of `POST /v1/jobs`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum JobKind { $( $variant ),* }

        impl JobKind {
            pub const ALL: &'static [JobKind] = &[$( JobKind::$variant ),*];

            pub fn as_str(self) -> &'static str {
                match self { $( JobKind::$variant => $name ),* }
            }

            /// Part of the public contract (test-only kinds are not).
            pub fn is_public(self) -> bool {
                match self { $( JobKind::$variant => $public ),* }
            }
        }

        /// Parameters of a job, by kind.
        #[derive(Debug, Clone, Serialize)]
        #[serde(untagged)]
        pub enum JobParams { $( $variant($ty) ),* }

        impl JobParams {
            pub fn kind(&self) -> JobKind {
                match self { $( JobParams::$variant(_) => JobKind::$variant ),* }
            }

            fn parse_kind(kind: JobKind, params: &Value) -> Result<JobParams, DomainError> {
                match kind { $( JobKind::$variant => Ok(JobParams::$variant(<$ty as Kind>::parse(params)?)) ),* }
            }

            pub fn needs(&self) -> Needs {
                match self { $( JobParams::$variant(p) => p.needs() ),* }
            }

            fn check_kind(&self, stored: &Stored) -> Result<(), DomainError> {
                match self { $( JobParams::$variant(p) => p.check(stored) ),* }
            }

            /// Runs the job on the calling (worker) thread.
            pub fn run(&self, ctx: &JobContext) -> Result<JobOutput, JobError> {
                match self { $( JobParams::$variant(p) => p.run(ctx) ),* }
            }
        }

        /// `(kind, params schema name, params schema)` of every public kind, for the contract.
        pub fn params_schemas() -> Vec<(&'static str, String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
            Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>)> {
            let mut out = Vec::new();
            $( if $public {
                let mut deps = Vec::new();
                <$ty as utoipa::ToSchema>::schemas(&mut deps);
                out.push(($name, <$ty as utoipa::ToSchema>::name().to_string(),
                    <$ty as utoipa::PartialSchema>::schema(), deps));
            } )*
            out
        }
    };
}

job_kinds! {
    Quantize = "quantize" => super::quantize::QuantizeParams, public: true;
    Evaluate = "evaluate" => super::evaluate::EvaluateParams, public: true;
    Train = "train" => super::train::TrainParams, public: true;
    Prune = "prune" => super::prune::PruneParams, public: true;
    Distill = "distill" => super::distill::DistillParams, public: true;
    Sensitivity = "sensitivity" => super::sensitivity::SensitivityParams, public: true;
    DebugSleep = "debug_sleep" => super::debug_sleep::SleepParams, public: false;
}

/// Switches that shape parsing.
#[derive(Debug, Clone, Default)]
pub struct ParamRules {
    /// Accept test-only kinds (`debug_sleep`).
    pub enable_test_jobs: bool,
}

impl JobKind {
    /// The kind named `name`, if this server accepts it.
    pub fn parse(name: &str, rules: &ParamRules) -> Result<JobKind, DomainError> {
        JobKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == name && (k.is_public() || rules.enable_test_jobs))
            .ok_or_else(|| {
                let public: Vec<&str> = JobKind::ALL.iter().filter(|k| k.is_public()).map(|k| k.as_str()).collect();
                DomainError::validation("kind", format!("unknown job kind '{name}'; supported: {}", public.join(", ")))
            })
    }
}

/// The contract lists the public kinds only.
impl utoipa::PartialSchema for JobKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let names: Vec<&str> = JobKind::ALL.iter().filter(|k| k.is_public()).map(|k| k.as_str()).collect();
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("Job kind."))
            .enum_values(Some(names))
            .into()
    }
}

impl utoipa::ToSchema for JobKind {}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobParams {
    /// Parses and checks `params` for `kind` (null → `{}`).
    pub fn parse(kind: JobKind, params: &Value) -> Result<JobParams, DomainError> {
        if !(params.is_object() || params.is_null()) {
            return Err(DomainError::validation("params", "must be a JSON object"));
        }
        let params = if params.is_null() { Value::Object(Default::default()) } else { params.clone() };
        JobParams::parse_kind(kind, &params)
    }

    /// Every check against the stored inputs: the generic ones of [`Needs`], then the kind's.
    pub fn check(&self, stored: &Stored) -> Result<(), DomainError> {
        check_needs(&self.needs(), stored)?;
        self.check_kind(stored)
    }

    /// Datasets the job reads (ids).
    pub fn dataset_ids(&self) -> Vec<String> {
        self.needs().dataset_ids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_test_kinds_are_gated() {
        let open = ParamRules { enable_test_jobs: false };
        for k in JobKind::ALL {
            if k.is_public() {
                assert_eq!(JobKind::parse(k.as_str(), &open).unwrap(), *k);
            }
        }
        let e = JobKind::parse("debug_sleep", &open).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("kind"));
        let supported = e.detail.split("supported:").nth(1).unwrap();
        assert!(!supported.contains("debug_sleep"), "test kinds are not advertised: {}", e.detail);
        assert!(JobKind::parse("debug_sleep", &ParamRules { enable_test_jobs: true }).is_ok());
    }
}
