//! A Databricks workspace request (method, normalised path, query) → the catalog's `Action`
//! and the `Asset` it names.
//!
//! Every route in the download catalog (`reference/databricks.md`) has a name here. Blocked
//! routes match by prefix and for every method the catalog does not list, so an extra segment
//! or an unexpected verb stays blocked; routes that are allowed or recorded match exactly, so a
//! path this module cannot name falls to `api.unknown` and never borrows an allowed name.
//! Route words match case-insensitively and the API version segment is ignored (any `N.N` is
//! an alias), because the upstream's own leniency must never open a way around a rule.
//!
//! Query parameters name the asset, with one exception each for the three routes whose
//! meaning a parameter can change (`include_value`, `disposition`, `command`): there every
//! occurrence is checked. An asset parameter is read the one way every reader agrees on
//! (`asset_path`): paths are resolved, and a parameter that could name two assets refuses the
//! request, because a download exception is matched against it. The module never reads bodies
//! (`body` does) and never decides.

use std::cell::Cell;

use http::Method;

use super::asset_path::{self, AssetError, AssetPathError};
use super::body::{command_uses_fs, is_inline_disposition, COMMAND_FS, SQL_EXTERNAL_LINKS};
use super::text::{eq_folded, fold_char, form_pairs};
use super::{Action, Asset, AssetKind, BodyCheck, Category, Classification, NormalizedPath};

use Category::{Auth, Config, Credentials, Download, Execute, Metadata, Other, Upload};

// Blocked: data bytes, presigned links, results.
pub const DBFS_READ: Action = Action::new("dbfs.read", Download);
pub const FILES_DOWNLOAD: Action = Action::new("files.download", Download);
pub const FILES_CREATE_DOWNLOAD_URL: Action = Action::new("files.create_download_url", Download);
pub const FILES_ENDPOINTS: Action = Action::new("files.endpoints", Download);
pub const FILES_V3: Action = Action::new("files.v3", Download);
pub const WORKSPACE_EXPORT: Action = Action::new("workspace.export", Download);
pub const FILESTORE_DOWNLOAD: Action = Action::new("filestore.download", Download);
pub const JOBS_RUNS_GET_OUTPUT: Action = Action::new("jobs.runs.get_output", Download);
pub const JOBS_RUNS_EXPORT: Action = Action::new("jobs.runs.export", Download);
pub const SQL_STATEMENTS_RESULT_CHUNK: Action =
    Action::new("sql.statements.result_chunk", Download);
pub const SQL_THRIFT: Action = Action::new("sql.thrift", Download);
pub const GENIE_DOWNLOAD: Action = Action::new("genie.download", Download);
pub const DRIVER_PROXY: Action = Action::new("driver_proxy", Download);
pub const MLFLOW_ARTIFACTS_CREDENTIALS: Action =
    Action::new("mlflow.artifacts.credentials", Download);
pub const MLFLOW_ARTIFACTS_PRESIGNED_DOWNLOAD_URL: Action =
    Action::new("mlflow.artifacts.presigned_download_url", Download);
pub const MLFLOW_ARTIFACTS_DOWNLOAD: Action = Action::new("mlflow.artifacts.download", Download);
pub const SANDBOX_FILES_CONTENT: Action = Action::new("sandbox.files.content", Download);
pub const SANDBOX_EXEC: Action = Action::new("sandbox.exec", Download);
/// Re-enabling a download switch re-opens every download path at once, so it is blocked like
/// a download rather than treated as configuration.
pub const SETTINGS_DOWNLOAD_SWITCH: Action = Action::new("settings.download_switch", Download);

// Blocked: credentials and secret values.
pub const SECRETS_GET: Action = Action::new("secrets.get", Credentials);
pub const UC_TEMPORARY_CREDENTIALS: Action = Action::new("uc.temporary_credentials", Credentials);
pub const MLFLOW_UC_TEMPORARY_CREDENTIALS: Action =
    Action::new("mlflow.uc.temporary_credentials", Credentials);
pub const SHARING_ACTIVATION: Action = Action::new("sharing.activation", Credentials);
pub const SHARING_CREATE: Action = Action::new("sharing.create", Credentials);
/// Recipient objects carry their bearer tokens and activation links.
pub const SHARING_RECIPIENTS_READ: Action = Action::new("sharing.recipients.read", Credentials);

// Inspected or policy-gated: code and queries whose output returns to the caller.
pub const SQL_STATEMENTS_EXECUTE: Action = Action::new("sql.statements.execute", Execute);
pub const COMMANDS_EXECUTE: Action = Action::new("commands.execute", Execute);
pub const COMMANDS_STATUS: Action = Action::new("commands.status", Execute);
pub const COMMANDS_CONTEXTS_CREATE: Action = Action::new("commands.contexts_create", Execute);
pub const SERVING_INVOCATIONS: Action = Action::new("serving.invocations", Execute);

// Configuration-only (serving-endpoint throttling, canary, traffic splits).
pub const SERVING_CONFIG_UPDATE: Action = Action::new("serving.config.update", Config);
pub const SERVING_RATE_LIMITS_UPDATE: Action = Action::new("serving.rate_limits.update", Config);
pub const SERVING_AI_GATEWAY_UPDATE: Action = Action::new("serving.ai_gateway.update", Config);
pub const SERVING_TAGS_UPDATE: Action = Action::new("serving.tags.update", Config);

// Uploads and changes.
pub const DBFS_WRITE: Action = Action::new("dbfs.write", Upload);
pub const FILES_UPLOAD: Action = Action::new("files.upload", Upload);
pub const FILES_CREATE_UPLOAD_URL: Action = Action::new("files.create_upload_url", Upload);
pub const FILES_DELETE: Action = Action::new("files.delete", Upload);
pub const FILES_CREATE_DIRECTORY: Action = Action::new("files.create_directory", Upload);
pub const FILES_DELETE_DIRECTORY: Action = Action::new("files.delete_directory", Upload);
pub const WORKSPACE_IMPORT: Action = Action::new("workspace.import", Upload);
pub const WORKSPACE_MKDIRS: Action = Action::new("workspace.mkdirs", Upload);
pub const WORKSPACE_DELETE: Action = Action::new("workspace.delete", Upload);
pub const MLFLOW_ARTIFACTS_UPLOAD_CREDENTIALS: Action =
    Action::new("mlflow.artifacts.upload_credentials", Upload);

// Recorded metadata: names, listings, statuses.
pub const DBFS_GET_STATUS: Action = Action::new("dbfs.get_status", Metadata);
pub const DBFS_LIST: Action = Action::new("dbfs.list", Metadata);
pub const FILES_GET_METADATA: Action = Action::new("files.get_metadata", Metadata);
pub const FILES_LIST_DIRECTORY: Action = Action::new("files.list_directory", Metadata);
pub const WORKSPACE_LIST: Action = Action::new("workspace.list", Metadata);
pub const WORKSPACE_GET_STATUS: Action = Action::new("workspace.get_status", Metadata);
pub const JOBS_LIST: Action = Action::new("jobs.list", Metadata);
pub const JOBS_GET: Action = Action::new("jobs.get", Metadata);
pub const JOBS_RUNS_LIST: Action = Action::new("jobs.runs.list", Metadata);
pub const JOBS_RUNS_GET: Action = Action::new("jobs.runs.get", Metadata);
pub const SQL_STATEMENTS_GET: Action = Action::new("sql.statements.get", Metadata);
pub const SQL_WAREHOUSES_LIST: Action = Action::new("sql.warehouses.list", Metadata);
pub const SQL_WAREHOUSES_GET: Action = Action::new("sql.warehouses.get", Metadata);
pub const MLFLOW_DOWNLOAD_URI: Action = Action::new("mlflow.download_uri", Metadata);
pub const MLFLOW_ARTIFACTS_LIST: Action = Action::new("mlflow.artifacts.list", Metadata);
pub const SERVING_CONFIG_READ: Action = Action::new("serving.config.read", Metadata);
pub const SECRETS_LIST: Action = Action::new("secrets.list", Metadata);
pub const UC_SECRETS_LIST: Action = Action::new("uc.secrets.list", Metadata);
pub const UC_SECRETS_GET: Action = Action::new("uc.secrets.get", Metadata);
pub const UC_CATALOGS_LIST: Action = Action::new("uc.catalogs.list", Metadata);
pub const UC_CATALOGS_GET: Action = Action::new("uc.catalogs.get", Metadata);
pub const UC_SCHEMAS_LIST: Action = Action::new("uc.schemas.list", Metadata);
pub const UC_SCHEMAS_GET: Action = Action::new("uc.schemas.get", Metadata);
pub const UC_TABLES_LIST: Action = Action::new("uc.tables.list", Metadata);
pub const UC_TABLES_GET: Action = Action::new("uc.tables.get", Metadata);
pub const UC_VOLUMES_LIST: Action = Action::new("uc.volumes.list", Metadata);
pub const UC_VOLUMES_GET: Action = Action::new("uc.volumes.get", Metadata);
pub const SHARING_SHARES_READ: Action = Action::new("sharing.shares.read", Metadata);
pub const SETTINGS_READ: Action = Action::new("settings.read", Metadata);
pub const CLUSTERS_LIST: Action = Action::new("clusters.list", Metadata);
pub const CLUSTERS_GET: Action = Action::new("clusters.get", Metadata);
pub const CLUSTERS_EVENTS: Action = Action::new("clusters.events", Metadata);
pub const SCIM_ME: Action = Action::new("scim.me", Metadata);
pub const SCIM_READ: Action = Action::new("scim.read", Metadata);

// Named management calls: no data bytes either way.
pub const JOBS_RUN_NOW: Action = Action::new("jobs.run_now", Other);
pub const JOBS_MANAGE: Action = Action::new("jobs.manage", Other);
pub const JOBS_RUNS_SUBMIT: Action = Action::new("jobs.runs.submit", Other);
pub const JOBS_RUNS_MANAGE: Action = Action::new("jobs.runs.manage", Other);
pub const SQL_STATEMENTS_CANCEL: Action = Action::new("sql.statements.cancel", Other);
pub const SQL_WAREHOUSES_MANAGE: Action = Action::new("sql.warehouses.manage", Other);
pub const COMMANDS_CANCEL: Action = Action::new("commands.cancel", Other);
pub const COMMANDS_CONTEXTS_STATUS: Action = Action::new("commands.contexts_status", Other);
pub const COMMANDS_CONTEXTS_DESTROY: Action = Action::new("commands.contexts_destroy", Other);
pub const MLFLOW_TRACKING: Action = Action::new("mlflow.tracking", Other);
pub const SERVING_CREATE: Action = Action::new("serving.create", Other);
pub const SERVING_DELETE: Action = Action::new("serving.delete", Other);
pub const SECRETS_MANAGE: Action = Action::new("secrets.manage", Other);
pub const SETTINGS_UPDATE: Action = Action::new("settings.update", Other);
pub const CLUSTERS_MANAGE: Action = Action::new("clusters.manage", Other);
pub const UI_PAGE: Action = Action::new("ui.page", Other);

// Reached before a token exists.
pub const AUTH_OIDC: Action = Action::new("auth.oidc", Auth);
pub const AUTH_WELL_KNOWN: Action = Action::new("auth.well_known", Auth);

/// Every action this module can return (besides `api.unknown`), including those `body` returns
/// after inspection, for configuration checks and documentation.
pub const CATALOG: &[Action] = &[
    DBFS_READ,
    FILES_DOWNLOAD,
    FILES_CREATE_DOWNLOAD_URL,
    FILES_ENDPOINTS,
    FILES_V3,
    WORKSPACE_EXPORT,
    FILESTORE_DOWNLOAD,
    JOBS_RUNS_GET_OUTPUT,
    JOBS_RUNS_EXPORT,
    SQL_STATEMENTS_RESULT_CHUNK,
    SQL_THRIFT,
    GENIE_DOWNLOAD,
    DRIVER_PROXY,
    MLFLOW_ARTIFACTS_CREDENTIALS,
    MLFLOW_ARTIFACTS_PRESIGNED_DOWNLOAD_URL,
    MLFLOW_ARTIFACTS_DOWNLOAD,
    SANDBOX_FILES_CONTENT,
    SANDBOX_EXEC,
    SETTINGS_DOWNLOAD_SWITCH,
    SQL_EXTERNAL_LINKS,
    COMMAND_FS,
    SECRETS_GET,
    UC_TEMPORARY_CREDENTIALS,
    MLFLOW_UC_TEMPORARY_CREDENTIALS,
    SHARING_ACTIVATION,
    SHARING_CREATE,
    SHARING_RECIPIENTS_READ,
    SQL_STATEMENTS_EXECUTE,
    COMMANDS_EXECUTE,
    COMMANDS_STATUS,
    COMMANDS_CONTEXTS_CREATE,
    SERVING_INVOCATIONS,
    SERVING_CONFIG_UPDATE,
    SERVING_RATE_LIMITS_UPDATE,
    SERVING_AI_GATEWAY_UPDATE,
    SERVING_TAGS_UPDATE,
    DBFS_WRITE,
    FILES_UPLOAD,
    FILES_CREATE_UPLOAD_URL,
    FILES_DELETE,
    FILES_CREATE_DIRECTORY,
    FILES_DELETE_DIRECTORY,
    WORKSPACE_IMPORT,
    WORKSPACE_MKDIRS,
    WORKSPACE_DELETE,
    MLFLOW_ARTIFACTS_UPLOAD_CREDENTIALS,
    DBFS_GET_STATUS,
    DBFS_LIST,
    FILES_GET_METADATA,
    FILES_LIST_DIRECTORY,
    WORKSPACE_LIST,
    WORKSPACE_GET_STATUS,
    JOBS_LIST,
    JOBS_GET,
    JOBS_RUNS_LIST,
    JOBS_RUNS_GET,
    SQL_STATEMENTS_GET,
    SQL_WAREHOUSES_LIST,
    SQL_WAREHOUSES_GET,
    MLFLOW_DOWNLOAD_URI,
    MLFLOW_ARTIFACTS_LIST,
    SERVING_CONFIG_READ,
    SECRETS_LIST,
    UC_SECRETS_LIST,
    UC_SECRETS_GET,
    UC_CATALOGS_LIST,
    UC_CATALOGS_GET,
    UC_SCHEMAS_LIST,
    UC_SCHEMAS_GET,
    UC_TABLES_LIST,
    UC_TABLES_GET,
    UC_VOLUMES_LIST,
    UC_VOLUMES_GET,
    SHARING_SHARES_READ,
    SETTINGS_READ,
    CLUSTERS_LIST,
    CLUSTERS_GET,
    CLUSTERS_EVENTS,
    SCIM_ME,
    SCIM_READ,
    JOBS_RUN_NOW,
    JOBS_MANAGE,
    JOBS_RUNS_SUBMIT,
    JOBS_RUNS_MANAGE,
    SQL_STATEMENTS_CANCEL,
    SQL_WAREHOUSES_MANAGE,
    COMMANDS_CANCEL,
    COMMANDS_CONTEXTS_STATUS,
    COMMANDS_CONTEXTS_DESTROY,
    MLFLOW_TRACKING,
    SERVING_CREATE,
    SERVING_DELETE,
    SECRETS_MANAGE,
    SETTINGS_UPDATE,
    CLUSTERS_MANAGE,
    UI_PAGE,
    AUTH_OIDC,
    AUTH_WELL_KNOWN,
];

/// Segments beyond this many are not folded; no exact route is that deep, prefix rules
/// still see the first ones, and the Genie scan reads the segments themselves.
const MAX_WORDS: usize = 12;
/// Longer segments are never route words: the longest matched exactly is 31 bytes, and the
/// margin lets the credential scans see longer spellings of the same words.
const WORD_CAP: usize = 48;
/// Stands for a segment that cannot be a route word; decoded segments never contain NUL.
const OPAQUE: &str = "\0";

/// The workspace download switches (`settings/types/{name}/…`).
const DOWNLOAD_SWITCHES: &[&str] = &[
    "enable-results-downloading",
    "enable-export-notebook",
    "sql_results_download",
    "enable-notebook-table-clipboard",
];

/// `POST …/fs/files/{path}?action=…` values that belong to a multipart upload.
const UPLOAD_ACTIONS: &[&str] = &["initiate-upload", "complete-upload", "abort-upload"];

/// Classifies one workspace request. `query` is the raw query string (no `?`).
/// Paths with more segments than this are classified from a heap copy of the segment list.
const MAX_SEGMENTS: usize = 32;

///
/// Refuses the request when a parameter naming its asset is ambiguous (see `asset_path`).
pub fn classify(
    method: &Method,
    path: &NormalizedPath,
    query: Option<&str>,
) -> Result<Classification, AssetError> {
    // Segments as a slice, on the stack for any path a client really sends.
    let mut on_stack: [&str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
    let spilled: Vec<&str>;
    let segs: &[&str] = if path.len() <= MAX_SEGMENTS {
        for (slot, seg) in on_stack.iter_mut().zip(path.segments()) {
            *slot = seg;
        }
        &on_stack[..path.len()]
    } else {
        spilled = path.segments().collect();
        &spilled
    };
    let mut bufs = [[0u8; WORD_CAP]; MAX_WORDS];
    let (words, count) = fold_words(segs, &mut bufs);
    let refused = Cell::new(None);
    let req = Request {
        method,
        query,
        words: &words[..count],
        segs,
        refused: &refused,
    };
    let classification = route(&req);
    match refused.get() {
        Some(e) => Err(e),
        None => Ok(classification),
    }
}

/// The top level of [`classify`]: which part of the workspace the path is in.
fn route(req: &Request<'_>) -> Classification {
    let segs = req.segs;
    match req.words {
        ["api" | "ajax-api", version, ..] if is_version(version) => api(&req.skip(2), version),
        ["api" | "ajax-api", ..] => unknown(req),
        ["files", ..] => {
            let file =
                tail(segs, 1).map(|t| Asset::new(AssetKind::FileStore, format!("/files{t}")));
            classified(FILESTORE_DOWNLOAD, file)
        }
        ["driver-proxy-api" | "driver-proxy", ..] => {
            let cluster = match req.words {
                [_, "o", _, ..] => segs.get(3).map(|c| Asset::new(AssetKind::Cluster, *c)),
                _ => None,
            };
            classified(DRIVER_PROXY, cluster)
        }
        ["serving-endpoints", .., "invocations"] if segs.len() >= 3 => {
            classified(SERVING_INVOCATIONS, req.seg_asset(1, AssetKind::Endpoint))
        }
        // The OpenAI-compatible routes (`/serving-endpoints/chat/completions`) name the
        // endpoint in the body.
        ["serving-endpoints", ..] => Classification::new(SERVING_INVOCATIONS),
        ["sql", version, kind, ..] if is_version(version) && is_warehouse_word(kind) => {
            classified(SQL_THRIFT, req.seg_asset(3, AssetKind::Warehouse))
        }
        ["sql", version, ..] if is_version(version) => Classification::new(SQL_THRIFT),
        ["sql", "protocolv1", ..] => classified(SQL_THRIFT, req.seg_asset(4, AssetKind::Cluster)),
        ["oidc", ..] => Classification::new(AUTH_OIDC),
        [".well-known", "databricks-config"] => Classification::new(AUTH_WELL_KNOWN),
        ["get-artifact" | "get-trace-artifact", ..] | ["model-versions", "get-artifact", ..] => {
            classified(
                MLFLOW_ARTIFACTS_DOWNLOAD,
                req.query_asset("path", AssetKind::Artifact),
            )
        }
        _ => Classification::new(UI_PAGE),
    }
}

/// One request being matched: `words` are the folded route words, aligned with `segs` (the
/// original decoded segments, which may be longer when the path is deeper than `MAX_WORDS`).
#[derive(Clone, Copy)]
struct Request<'a> {
    method: &'a Method,
    query: Option<&'a str>,
    words: &'a [&'a str],
    segs: &'a [&'a str],
    /// The first asset parameter found ambiguous: the whole request is refused for it, so
    /// the routes below stay plain matches that read a parameter where they name it.
    refused: &'a Cell<Option<AssetError>>,
}

impl<'a> Request<'a> {
    fn skip(&self, n: usize) -> Request<'a> {
        Request {
            method: self.method,
            query: self.query,
            words: self.words.get(n..).unwrap_or(&[]),
            segs: self.segs.get(n..).unwrap_or(&[]),
            refused: self.refused,
        }
    }

    fn is(&self, method: Method) -> bool {
        *self.method == method
    }

    fn seg_asset(&self, at: usize, kind: AssetKind) -> Option<Asset> {
        self.segs.get(at).map(|s| Asset::new(kind, *s))
    }

    fn tail_asset(&self, from: usize, kind: AssetKind) -> Option<Asset> {
        tail(self.segs, from).map(|t| Asset::new(kind, t))
    }

    fn query_asset(&self, name: &'static str, kind: AssetKind) -> Option<Asset> {
        self.param(name).map(|v| Asset::new(kind, v))
    }

    /// Parameter `name`, the one value all its occurrences agree on; a `path` is resolved
    /// too. An ambiguous one refuses the request (and reads as absent meanwhile).
    fn param(&self, name: &'static str) -> Option<String> {
        let value = asset_path::param(self.query, name).and_then(|value| match value {
            Some(path) if name == "path" => asset_path::normalize_asset_path(&path).map(Some),
            other => Ok(other),
        });
        value.unwrap_or_else(|why| {
            self.refuse(name, why);
            None
        })
    }

    fn refuse(&self, param: &'static str, why: AssetPathError) {
        if self.refused.get().is_none() {
            self.refused.set(Some(AssetError { param, why }));
        }
    }

    /// Whether any occurrence of parameter `name` satisfies `test`. Used where a parameter
    /// changes the action, so a duplicate can never hide the value that blocks.
    fn query_any(&self, name: &str, test: impl Fn(&str) -> bool) -> bool {
        let Some(query) = self.query else {
            return false;
        };
        form_pairs(query.as_bytes()).any(|(key, value)| eq_folded(&key, name) && test(&value))
    }
}

/// `/api/{version}/…` (and `/ajax-api/…`), with `req` positioned after the version.
fn api(req: &Request<'_>, version: &str) -> Classification {
    // `preview/scim/v2/Me` is the usual spelling, and other services answer under
    // `/preview` too; matching as if it were absent keeps the prefix from hiding a route.
    let req = match req.words {
        ["preview", ..] => req.skip(1),
        _ => *req,
    };
    match req.words {
        ["dbfs", ..] => dbfs(&req.skip(1)),
        ["fs", ..] => files(&req.skip(1), version),
        ["workspace", ..] => workspace(&req.skip(1)),
        ["jobs", ..] => jobs(&req.skip(1)),
        ["sql", ..] => sql(&req.skip(1)),
        ["contexts" | "commands", ..] => commands(&req),
        ["mlflow", ..] => mlflow(&req.skip(1)),
        ["mlflow-artifacts", ..] => mlflow_artifacts(&req),
        ["unity-catalog", ..] => unity_catalog(&req.skip(1)),
        ["data-sharing", "recipients", ..] => sharing_recipients(&req),
        ["secrets", ..] => secrets(&req.skip(1)),
        ["serving-endpoints", ..] => serving(&req.skip(1)),
        ["sandbox-files", ..] => Classification::new(SANDBOX_FILES_CONTENT),
        ["sandbox-exec", ..] => Classification::new(SANDBOX_EXEC),
        ["settings", ..] => settings(&req.skip(1)),
        ["workspace-conf", ..] => workspace_conf(&req),
        ["clusters", ..] => clusters(&req.skip(1)),
        ["scim", "v2", ..] => scim(&req.skip(2)),
        _ => unknown(&req),
    }
}

fn dbfs(req: &Request<'_>) -> Classification {
    let action = match req.words {
        ["read", ..] => DBFS_READ,
        ["get-status"] => DBFS_GET_STATUS,
        ["list"] => DBFS_LIST,
        ["create" | "add-block" | "close" | "put" | "mkdirs" | "move" | "delete"] => DBFS_WRITE,
        _ => return unknown(req),
    };
    let asset = asset_path::param(req.query, "path")
        .and_then(|path| path.as_deref().map(dbfs_asset).transpose());
    classified(
        action,
        asset.unwrap_or_else(|why| {
            req.refuse("path", why);
            None
        }),
    )
}

/// `/api/{version}/fs/…`: the Files API.
fn files(req: &Request<'_>, version: &str) -> Classification {
    if major_version(version).is_none_or(|major| major >= 3) {
        return classified(FILES_V3, files_asset(req));
    }
    match req.words {
        ["files", ..] => {
            let action = if req.is(Method::GET) {
                FILES_DOWNLOAD
            } else if req.is(Method::HEAD) {
                FILES_GET_METADATA
            } else if req.is(Method::PUT) {
                FILES_UPLOAD
            } else if req.is(Method::DELETE) {
                FILES_DELETE
            } else if req.is(Method::POST) && is_upload_action(req) {
                FILES_UPLOAD
            } else {
                FILES_DOWNLOAD
            };
            classified(action, files_asset(req))
        }
        ["directories", ..] => {
            let action = if req.is(Method::GET) || req.is(Method::HEAD) {
                FILES_LIST_DIRECTORY
            } else if req.is(Method::PUT) {
                FILES_CREATE_DIRECTORY
            } else if req.is(Method::DELETE) {
                FILES_DELETE_DIRECTORY
            } else {
                return unknown(req);
            };
            classified(action, files_asset(req))
        }
        ["create-download-url", ..] => Classification::new(FILES_CREATE_DOWNLOAD_URL),
        ["endpoints", ..] => Classification::new(FILES_ENDPOINTS),
        ["create-upload-url" | "create-upload-part-urls"] => {
            Classification::new(FILES_CREATE_UPLOAD_URL)
        }
        _ => unknown(req),
    }
}

/// A multipart-upload `POST`: every `action` parameter must be an upload step, so a
/// duplicate cannot turn a download into a recorded upload.
fn is_upload_action(req: &Request<'_>) -> bool {
    let is_upload = |value: &str| UPLOAD_ACTIONS.iter().any(|a| eq_folded(value, a));
    req.query_any("action", |_| true) && !req.query_any("action", |value| !is_upload(value))
}

fn workspace(req: &Request<'_>) -> Classification {
    let action = match req.words {
        ["export", ..] => WORKSPACE_EXPORT,
        ["list"] => WORKSPACE_LIST,
        ["get-status"] => WORKSPACE_GET_STATUS,
        ["import"] => WORKSPACE_IMPORT,
        ["mkdirs"] => WORKSPACE_MKDIRS,
        ["delete"] => WORKSPACE_DELETE,
        _ => return unknown(req),
    };
    classified(action, req.query_asset("path", AssetKind::Workspace))
}

fn jobs(req: &Request<'_>) -> Classification {
    let action = match req.words {
        ["runs", "get-output", ..] => JOBS_RUNS_GET_OUTPUT,
        ["runs", "export", ..] => JOBS_RUNS_EXPORT,
        ["runs", "get"] => JOBS_RUNS_GET,
        ["runs", "list"] => JOBS_RUNS_LIST,
        ["runs", "submit"] => JOBS_RUNS_SUBMIT,
        ["runs", "cancel" | "cancel-all" | "delete" | "repair"] => JOBS_RUNS_MANAGE,
        ["list"] => JOBS_LIST,
        ["get"] => JOBS_GET,
        ["run-now"] => JOBS_RUN_NOW,
        ["create" | "reset" | "update" | "delete"] => JOBS_MANAGE,
        _ => return unknown(req),
    };
    classified(action, req.query_asset("run_id", AssetKind::Run))
}

/// `/api/{version}/sql/…`: statement execution and warehouses.
fn sql(req: &Request<'_>) -> Classification {
    let statement = || req.seg_asset(1, AssetKind::Statement);
    let warehouse = || req.seg_asset(1, AssetKind::Warehouse);
    match req.words {
        ["statements"] => {
            // Some gateways bind request fields from the query as well as the body.
            if req.query_any("disposition", |v| !is_inline_disposition(v)) {
                return Classification::new(SQL_EXTERNAL_LINKS);
            }
            Classification::new(SQL_STATEMENTS_EXECUTE).with_body_check(BodyCheck::SqlStatement)
        }
        ["statements", _, "result", ..] => classified(SQL_STATEMENTS_RESULT_CHUNK, statement()),
        ["statements", _] if req.is(Method::GET) => classified(SQL_STATEMENTS_GET, statement()),
        ["statements", _, "cancel"] => classified(SQL_STATEMENTS_CANCEL, statement()),
        ["warehouses"] if req.is(Method::GET) => Classification::new(SQL_WAREHOUSES_LIST),
        ["warehouses"] if req.is(Method::POST) => Classification::new(SQL_WAREHOUSES_MANAGE),
        ["warehouses", _] if req.is(Method::GET) => classified(SQL_WAREHOUSES_GET, warehouse()),
        ["warehouses", _] if req.is(Method::DELETE) => {
            classified(SQL_WAREHOUSES_MANAGE, warehouse())
        }
        ["warehouses", _, "start" | "stop" | "edit"] => {
            classified(SQL_WAREHOUSES_MANAGE, warehouse())
        }
        _ => unknown(req),
    }
}

/// `/api/1.2/contexts/…` and `/api/1.2/commands/…`: remote code execution.
fn commands(req: &Request<'_>) -> Classification {
    let cluster = || req.query_asset("clusterId", AssetKind::Cluster);
    match req.words {
        ["commands", "execute", ..] => {
            if req.query_any("command", command_uses_fs) {
                return classified(COMMAND_FS, cluster());
            }
            classified(COMMANDS_EXECUTE, cluster()).with_body_check(BodyCheck::Command)
        }
        ["commands", "status", ..] => classified(COMMANDS_STATUS, cluster()),
        ["commands", "cancel"] => classified(COMMANDS_CANCEL, cluster()),
        ["contexts", "create"] => classified(COMMANDS_CONTEXTS_CREATE, cluster()),
        ["contexts", "status"] => classified(COMMANDS_CONTEXTS_STATUS, cluster()),
        ["contexts", "destroy"] => classified(COMMANDS_CONTEXTS_DESTROY, cluster()),
        _ => unknown(req),
    }
}

/// `/api/{version}/mlflow/…`.
fn mlflow(req: &Request<'_>) -> Classification {
    // Credential and artifact words are blocked wherever they appear under `mlflow/`, so a
    // new nesting of an old route stays blocked; a blocked word anywhere outranks an upload
    // word elsewhere in the path.
    let mut upload_credentials = false;
    for word in req.words {
        if word.contains("temporary-credentials") {
            return Classification::new(MLFLOW_UC_TEMPORARY_CREDENTIALS);
        }
        if matches!(*word, "get-artifact" | "get-trace-artifact") {
            return classified(
                MLFLOW_ARTIFACTS_DOWNLOAD,
                req.query_asset("path", AssetKind::Artifact),
            );
        }
        let presigned = word.starts_with("presigned-");
        if presigned || word.starts_with("credentials-for-") {
            let reads = word.contains("read") || word.contains("download");
            let writes = word.contains("write") || word.contains("upload");
            if reads || !writes {
                let action = if presigned {
                    MLFLOW_ARTIFACTS_PRESIGNED_DOWNLOAD_URL
                } else {
                    MLFLOW_ARTIFACTS_CREDENTIALS
                };
                return classified(action, mlflow_object(req));
            }
            upload_credentials = true;
        }
    }
    if upload_credentials {
        return classified(MLFLOW_ARTIFACTS_UPLOAD_CREDENTIALS, mlflow_object(req));
    }
    match req.words {
        ["artifacts", "list"] => classified(
            MLFLOW_ARTIFACTS_LIST,
            req.query_asset("run_id", AssetKind::Artifact),
        ),
        ["model-versions", "get-download-uri"] => Classification::new(MLFLOW_DOWNLOAD_URI),
        ["experiments" | "runs" | "metrics" | "registered-models" | "model-versions", _]
        | ["databricks", _, _] => Classification::new(MLFLOW_TRACKING),
        _ => unknown(req),
    }
}

/// The run, logged model or trace an MLflow credential call names in its path, if any.
fn mlflow_object(req: &Request<'_>) -> Option<Asset> {
    match req.words {
        ["logged-models" | "traces", ..] => req.seg_asset(1, AssetKind::Artifact),
        _ => None,
    }
}

/// `/api/{version}/mlflow-artifacts/…`: the artifact proxy, blocked for every method.
fn mlflow_artifacts(req: &Request<'_>) -> Classification {
    let artifact = match req.words {
        ["mlflow-artifacts", "artifacts", ..] => req.tail_asset(2, AssetKind::Artifact),
        _ => None,
    };
    let artifact = artifact.or_else(|| req.query_asset("path", AssetKind::Artifact));
    classified(MLFLOW_ARTIFACTS_DOWNLOAD, artifact)
}

/// `/api/{version}/unity-catalog/…`.
fn unity_catalog(req: &Request<'_>) -> Classification {
    // `temporary-{table,path,volume,service}-credentials`, and any nesting of the same words.
    let vends = |word: &&str| word.contains("temporary-") && word.contains("credential");
    if req.words.iter().any(vends) {
        return Classification::new(UC_TEMPORARY_CREDENTIALS);
    }
    let get = req.is(Method::GET);
    match req.words {
        ["public", ..] => Classification::new(SHARING_ACTIVATION),
        ["recipients", ..] => sharing_recipients(req),
        // Adding objects to a share or granting it to a recipient publishes data outside.
        ["shares", ..] if get => Classification::new(SHARING_SHARES_READ),
        ["shares", ..] => Classification::new(SHARING_CREATE),
        ["secrets", ..] => uc_secrets(req),
        ["catalogs"] if get => Classification::new(UC_CATALOGS_LIST),
        ["catalogs", _] if get => Classification::new(UC_CATALOGS_GET),
        ["schemas"] if get => Classification::new(UC_SCHEMAS_LIST),
        ["schemas", _] if get => Classification::new(UC_SCHEMAS_GET),
        ["tables"] if get => Classification::new(UC_TABLES_LIST),
        ["tables", _] | ["tables", _, "exists"] if get => {
            classified(UC_TABLES_GET, req.seg_asset(1, AssetKind::Table))
        }
        ["volumes"] if get => Classification::new(UC_VOLUMES_LIST),
        ["volumes", _] if get => Classification::new(UC_VOLUMES_GET),
        _ => unknown(req),
    }
}

/// Delta Sharing recipients (`unity-catalog/recipients/…`, `data-sharing/recipients/…`):
/// reading one returns its activation link, writing one grants access outside the platform.
fn sharing_recipients(req: &Request<'_>) -> Classification {
    let action = if req.is(Method::GET) {
        SHARING_RECIPIENTS_READ
    } else {
        SHARING_CREATE
    };
    Classification::new(action)
}

/// `unity-catalog/secrets[/{name}]`: the value comes back when `include_value` is set, on
/// any occurrence and any value but `false`, as a lenient binder would read it.
fn uc_secrets(req: &Request<'_>) -> Classification {
    let name = req.seg_asset(1, AssetKind::Secret);
    if req.query_any("include_value", |v| !eq_folded(v.trim(), "false")) {
        return classified(SECRETS_GET, name);
    }
    match req.words {
        ["secrets"] if req.is(Method::GET) => Classification::new(UC_SECRETS_LIST),
        ["secrets", _] if req.is(Method::GET) => classified(UC_SECRETS_GET, name),
        _ => unknown(req),
    }
}

/// `/api/{version}/secrets/…`.
fn secrets(req: &Request<'_>) -> Classification {
    match req.words {
        ["get", ..] => classified(SECRETS_GET, secret_asset(req)),
        ["list"] | ["scopes", "list"] | ["acls", "list" | "get"] => {
            classified(SECRETS_LIST, secret_asset(req))
        }
        ["put" | "delete"] | ["scopes", "create" | "delete"] | ["acls", "put" | "delete"] => {
            classified(SECRETS_MANAGE, secret_asset(req))
        }
        _ => unknown(req),
    }
}

/// `/api/{version}/serving-endpoints/…`: endpoint management. Configuration writes match
/// method and path exactly, because people may be allowed exactly these and nothing near them.
fn serving(req: &Request<'_>) -> Classification {
    let method = req.method;
    let action = match req.words {
        [] if *method == Method::GET => SERVING_CONFIG_READ,
        [] | ["pt"] if *method == Method::POST => SERVING_CREATE,
        [_] if *method == Method::GET => SERVING_CONFIG_READ,
        [_] if *method == Method::DELETE => SERVING_DELETE,
        [_, "config"] if *method == Method::PUT => SERVING_CONFIG_UPDATE,
        ["pt", _, "config"] if *method == Method::PUT => {
            return classified(SERVING_CONFIG_UPDATE, req.seg_asset(1, AssetKind::Endpoint));
        }
        [_, "rate-limits"] if *method == Method::PUT => SERVING_RATE_LIMITS_UPDATE,
        [_, "ai-gateway"] if *method == Method::PUT => SERVING_AI_GATEWAY_UPDATE,
        [_, "tags"] if *method == Method::PATCH => SERVING_TAGS_UPDATE,
        [_, .., "invocations"] => SERVING_INVOCATIONS,
        _ => return unknown(req),
    };
    classified(action, req.seg_asset(0, AssetKind::Endpoint))
}

/// `/api/{version}/settings/…`.
fn settings(req: &Request<'_>) -> Classification {
    match req.words {
        ["types", name, ..] if DOWNLOAD_SWITCHES.contains(name) => {
            if req.is(Method::GET) {
                Classification::new(SETTINGS_READ)
            } else {
                Classification::new(SETTINGS_DOWNLOAD_SWITCH)
            }
        }
        ["types", _, "names", _] if req.is(Method::GET) => Classification::new(SETTINGS_READ),
        ["types", _, "names", _] if req.is(Method::PATCH) || req.is(Method::DELETE) => {
            Classification::new(SETTINGS_UPDATE)
        }
        _ => unknown(req),
    }
}

/// `/api/{version}/workspace-conf`: the older switchboard. Its writes carry
/// `enableResultsDownloading` and friends in a body this module does not read, so every write
/// counts as flipping a download switch.
fn workspace_conf(req: &Request<'_>) -> Classification {
    match req.words {
        ["workspace-conf"] if req.is(Method::GET) => Classification::new(SETTINGS_READ),
        _ => Classification::new(SETTINGS_DOWNLOAD_SWITCH),
    }
}

/// `/api/{version}/clusters/…`.
fn clusters(req: &Request<'_>) -> Classification {
    let action = match req.words {
        ["list" | "list-node-types" | "list-zones" | "spark-versions"] => CLUSTERS_LIST,
        ["get"] => CLUSTERS_GET,
        ["events"] => CLUSTERS_EVENTS,
        ["create" | "edit" | "start" | "restart" | "delete" | "permanent-delete" | "resize"
        | "pin" | "unpin"] => CLUSTERS_MANAGE,
        _ => return unknown(req),
    };
    classified(action, req.query_asset("cluster_id", AssetKind::Cluster))
}

/// `/api/{version}/[preview/]scim/v2/…`.
fn scim(req: &Request<'_>) -> Classification {
    match req.words {
        ["me"] => Classification::new(SCIM_ME),
        ["users" | "groups" | "serviceprincipals", ..] if req.is(Method::GET) => {
            Classification::new(SCIM_READ)
        }
        _ => unknown(req),
    }
}

/// An `/api/…` path with no name. Genie result downloads are recognised here, wherever
/// `genie` sits in the path, because their routes nest ids at varying depths.
fn unknown(req: &Request<'_>) -> Classification {
    if let Some(at) = req.segs.iter().position(|s| eq_folded(s, "genie")) {
        let downloads = req.segs[at + 1..].iter().any(|s| {
            eq_folded(s, "downloads")
                || eq_folded(s, "query-result")
                || eq_folded(s, "execute-query")
                || starts_folded(s, "download")
        });
        if downloads {
            return Classification::new(GENIE_DOWNLOAD);
        }
    }
    Classification::new(Action::UNKNOWN_API)
}

fn classified(action: Action, asset: Option<Asset>) -> Classification {
    Classification {
        action,
        asset,
        body_check: BodyCheck::None,
    }
}

/// Folds up to `MAX_WORDS` segments into `bufs`; a segment that cannot be a route word
/// becomes `OPAQUE`. Returns the words and how many there are.
fn fold_words<'b>(
    segs: &[&str],
    bufs: &'b mut [[u8; WORD_CAP]; MAX_WORDS],
) -> ([&'b str; MAX_WORDS], usize) {
    let mut words = [OPAQUE; MAX_WORDS];
    for ((word, buf), seg) in words.iter_mut().zip(bufs.iter_mut()).zip(segs) {
        *word = fold_word(seg, buf).unwrap_or(OPAQUE);
    }
    (words, segs.len().min(MAX_WORDS))
}

fn fold_word<'b>(seg: &str, buf: &'b mut [u8; WORD_CAP]) -> Option<&'b str> {
    if seg.is_ascii() {
        let word = buf.get_mut(..seg.len())?;
        word.copy_from_slice(seg.as_bytes());
        word.make_ascii_lowercase();
        return std::str::from_utf8(word).ok();
    }
    let mut len = 0;
    for c in seg.chars() {
        *buf.get_mut(len)? = fold_char(c)?;
        len += 1;
    }
    let buf: &'b [u8; WORD_CAP] = buf;
    std::str::from_utf8(&buf[..len]).ok()
}

/// `2.0`, `2.1`, `1.2`, `3.0`, … : digits with dot-separated digit groups.
fn is_version(word: &str) -> bool {
    word.split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

fn major_version(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

fn is_warehouse_word(word: &str) -> bool {
    matches!(word, "warehouses" | "endpoints")
}

/// Whether `text` starts with what folds to `lower_prefix` (lowercase ASCII).
fn starts_folded(text: &str, lower_prefix: &str) -> bool {
    let mut chars = text.chars();
    lower_prefix
        .bytes()
        .all(|want| chars.next().and_then(fold_char) == Some(want))
}

/// The segments from `from` on, joined with `/`, with a leading `/`.
fn tail(segs: &[&str], from: usize) -> Option<String> {
    let rest = segs.get(from..).filter(|rest| !rest.is_empty())?;
    let mut out = String::with_capacity(rest.iter().map(|s| s.len() + 1).sum());
    for seg in rest {
        out.push('/');
        out.push_str(seg);
    }
    Some(out)
}

/// `/fs/files/{path}` and `/fs/directories/{path}`: a Volume when the path is under
/// `/Volumes`, DBFS otherwise.
fn files_asset(req: &Request<'_>) -> Option<Asset> {
    let path = tail(req.segs, 1)?;
    let volume = req.segs.get(1).is_some_and(|s| eq_folded(s, "volumes"));
    Some(if volume {
        Asset::new(AssetKind::Volume, path)
    } else {
        Asset::new(AssetKind::Dbfs, format!("dbfs:{path}"))
    })
}

/// A DBFS `path` parameter (decoded), with or without the `dbfs:` scheme, resolved and
/// recorded as `dbfs:/…`, or as a Volume path when it points under `/Volumes` once resolved.
pub fn dbfs_asset(value: &str) -> Result<Asset, AssetPathError> {
    let bare = match value.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("dbfs:") => &value[5..],
        _ => value,
    };
    // DBFS paths are absolute: `dbfs:x` and `x` are `/x`. A `//` stays one: `dbfs://x` names
    // a host to a URI reader, and is refused.
    let resolved = if bare.starts_with('/') {
        asset_path::normalize_asset_path(bare)?
    } else {
        asset_path::normalize_asset_path(&format!("/{bare}"))?
    };
    let under_volumes = resolved
        .split('/')
        .nth(1)
        .is_some_and(|first| first.eq_ignore_ascii_case("volumes"));
    Ok(if under_volumes {
        Asset::new(AssetKind::Volume, resolved)
    } else {
        Asset::new(AssetKind::Dbfs, format!("dbfs:{resolved}"))
    })
}

/// A download exception's asset prefix in the form the classifier gives assets, so the two
/// compare: `DBFS:/FileStore//approved/` is `dbfs:/FileStore/approved/`, `dbfs:/Volumes/…` is
/// `/Volumes/…`. A trailing `/` is kept, for whoever reads the exception.
pub fn asset_prefix(prefix: &str) -> Result<String, AssetPathError> {
    let prefix = prefix.trim();
    let mut resolved = match prefix.get(..5) {
        Some(scheme) if scheme.eq_ignore_ascii_case("dbfs:") => dbfs_asset(prefix)?.path,
        _ => asset_path::normalize_asset_path(prefix)?,
    };
    if prefix.ends_with('/') && !resolved.ends_with('/') {
        resolved.push('/');
    }
    Ok(resolved)
}

/// `secrets/get?scope=…&key=…` → `scope/key` (never the value, which this call returns).
fn secret_asset(req: &Request<'_>) -> Option<Asset> {
    let scope = req.param("scope");
    let key = req.param("key");
    let path = match (scope, key) {
        (Some(scope), Some(key)) => format!("{scope}/{key}"),
        (Some(scope), None) => scope,
        (None, Some(key)) => format!("/{key}"),
        (None, None) => return None,
    };
    Some(Asset::new(AssetKind::Secret, path))
}

#[cfg(test)]
mod tests;
