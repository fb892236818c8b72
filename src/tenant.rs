//! Tenants: whose models, datasets and jobs a request sees. A plain domain value shared by
//! `auth` (who is calling), `db` (every query filters by it) and `api`.

/// Whose resources a request sees. `Default` is the tenant of open mode and of the admin key;
/// it is stored as a NULL `tenant_id` (rows from before keys existed belong to it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Tenant {
    Default,
    Named(String),
}

impl Tenant {
    /// The `tenant_id` column value.
    pub fn id(&self) -> Option<&str> {
        match self {
            Tenant::Default => None,
            Tenant::Named(s) => Some(s),
        }
    }
    pub fn from_column(v: Option<String>) -> Tenant {
        match v {
            None => Tenant::Default,
            Some(s) => Tenant::Named(s),
        }
    }
}
