//! Request → `Action` + `Asset`: what a request does and which data it names.
//!
//! Classification is pure: it sees the method, the raw request target and, where the catalog
//! says so, a bounded body. It never performs I/O and never decides; `policy` does that.
//! A path that cannot be normalised unambiguously is an error, never "no rule matched".

pub mod asset_path;
pub mod body;
pub mod databricks;
pub mod normalize;
pub mod s3;
pub mod s3_body;
pub(crate) mod text;

use std::fmt;

pub use asset_path::{AssetError, AssetPathError};
pub use normalize::{normalize_path, NormalizedPath, PathError};

/// What kind of thing a request does. The policy decides by category first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Returns data bytes, or a link or result that carries them.
    Download,
    /// Vends cloud credentials or secret values.
    Credentials,
    /// Runs code or queries whose output comes back to the caller.
    Execute,
    /// Changes serving-endpoint configuration (throttling, canary, traffic splits).
    Config,
    /// Writes data into the platform.
    Upload,
    /// Reads names, listings, statuses: no data bytes.
    Metadata,
    /// Login and discovery endpoints that clients need before they hold a token.
    Auth,
    /// Anything else the catalog names (UI pages, static assets, known management APIs).
    Other,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Download => "download",
            Category::Credentials => "credentials",
            Category::Execute => "execute",
            Category::Config => "config",
            Category::Upload => "upload",
            Category::Metadata => "metadata",
            Category::Auth => "auth",
            Category::Other => "other",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified request: a stable dotted name (`dbfs.read`) and its category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Action {
    pub name: &'static str,
    pub category: Category,
    /// False for `/api/…` paths the catalog cannot name (`api.unknown`); `[policy] unknown_api`
    /// decides those.
    pub known: bool,
}

impl Action {
    pub const fn new(name: &'static str, category: Category) -> Action {
        Action {
            name,
            category,
            known: true,
        }
    }

    /// An `/api/…` path the catalog does not name.
    pub const UNKNOWN_API: Action = Action {
        name: "api.unknown",
        category: Category::Other,
        known: false,
    };
}

/// Which kind of data asset a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssetKind {
    /// `dbfs:/…`
    Dbfs,
    /// `/Volumes/catalog/schema/volume/…`
    Volume,
    /// A workspace object path (`/Users/…/notebook`).
    Workspace,
    /// A SQL statement id.
    Statement,
    /// A SQL warehouse id.
    Warehouse,
    /// A model serving endpoint name.
    Endpoint,
    /// A cluster id.
    Cluster,
    /// A job run id.
    Run,
    /// A secret `scope/key` or UC secret name.
    Secret,
    /// A Unity Catalog table / path / volume a credential is vended for.
    Table,
    /// An MLflow artifact path or run/model id.
    Artifact,
    /// A FileStore path (`/files/…`).
    FileStore,
    /// An S3 bucket / object (`s3://bucket/key`).
    S3,
}

impl AssetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AssetKind::Dbfs => "dbfs",
            AssetKind::Volume => "volume",
            AssetKind::Workspace => "workspace",
            AssetKind::Statement => "statement",
            AssetKind::Warehouse => "warehouse",
            AssetKind::Endpoint => "endpoint",
            AssetKind::Cluster => "cluster",
            AssetKind::Run => "run",
            AssetKind::Secret => "secret",
            AssetKind::Table => "table",
            AssetKind::Artifact => "artifact",
            AssetKind::FileStore => "filestore",
            AssetKind::S3 => "s3",
        }
    }
}

/// The data a request names, e.g. `dbfs:/tmp/x` or `/Volumes/main/raw/v/file.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Asset {
    pub kind: AssetKind,
    pub path: String,
}

impl Asset {
    pub fn new(kind: AssetKind, path: impl Into<String>) -> Asset {
        Asset {
            kind,
            path: path.into(),
        }
    }
}

/// Whether the classifier needs the request body before the decision is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCheck {
    /// The decision does not depend on the body; stream it.
    None,
    /// `POST …/sql/statements`: deny `disposition: EXTERNAL_LINKS`.
    SqlStatement,
    /// `POST /api/1.2/commands/execute`: deny `%fs` / `dbutils.fs` in `command`.
    Command,
}

/// The classifier's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub action: Action,
    pub asset: Option<Asset>,
    pub body_check: BodyCheck,
}

impl Classification {
    pub fn new(action: Action) -> Classification {
        Classification {
            action,
            asset: None,
            body_check: BodyCheck::None,
        }
    }

    pub fn with_asset(mut self, asset: Asset) -> Classification {
        self.asset = Some(asset);
        self
    }

    pub fn with_body_check(mut self, check: BodyCheck) -> Classification {
        self.body_check = check;
        self
    }
}
