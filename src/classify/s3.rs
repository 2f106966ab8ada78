//! An S3 request → the S3 operation it performs, the bucket and key it names, the source of a
//! copy, and the access key that claims to have signed it.
//!
//! Three pure steps, each usable alone, all following `reference/s3.md`: [`target`] reads the
//! bucket and key from the authority and the raw path (virtual-hosted, path style, or a
//! configured access point); [`classify`] names the operation from the method, the
//! sub-resources in the query and two headers (`x-amz-copy-source`, `content-type`);
//! [`access_key`] reads the access key id from whichever signature carries it.
//!
//! Every reading is the one S3 itself makes: the path is percent-decoded exactly once, `+`
//! stays a plus, `//`, `.` and `..` stay in keys, and sub-resource names match exactly, as S3
//! matches them. Where a request has two plausible readings (a sub-resource in another
//! spelling, two sub-resources naming different operations, two credentials, a copy source
//! that does not parse, a host that could name two buckets) the answer is an error for the
//! caller to refuse, never a guess. This module never decides, never does I/O and never
//! rewrites anything: S3 signatures cover the raw path, the query and the signed headers.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, CONTENT_TYPE};
use http::Method;

use super::text::{fold_char, form_decode, hex_value};
use super::{Action, Category};

/// What an S3 operation does with data, as the bucket rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S3Access {
    /// Returns object bytes: `GetObject`, `SelectObjectContent`, `GetObjectTorrent`,
    /// `RestoreObject`, `CreateSession`, and the source side of every copy.
    ReadData,
    /// Lists keys, versions, uploads or parts.
    List,
    /// Reads object or bucket metadata and settings, never object bytes.
    ReadMetadata,
    /// Creates, replaces or deletes objects, or changes an object's tags, ACL or locks.
    WriteData,
    /// Creates or deletes a bucket, or changes one of its settings.
    ChangeBucket,
    /// `ListBuckets`: the caller's bucket names.
    ListBuckets,
}

/// An S3 operation: its AWS name (`GetObject`) as an [`Action`], and its [`S3Access`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Operation {
    pub action: Action,
    pub access: S3Access,
}

/// The bucket and key a request names, as S3 reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct S3Target {
    /// `None` for a service-level request (`ListBuckets`).
    pub bucket: Option<String>,
    /// `None` for a bucket-level request. Decoded once; never normalised.
    pub key: Option<String>,
}

/// The source of `CopyObject` / `UploadPartCopy`, from `x-amz-copy-source`. The copy reads it
/// ([`S3Access::ReadData`]), so the policy decides on it as well as on the destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CopySource {
    /// `None` when the source is an access point ARN: no bucket is guessed for it, and a copy
    /// whose source names no bucket is to be denied.
    pub bucket: Option<String>,
    /// The access point name from an access point ARN (`arn:…:accesspoint/{name}/object/…`).
    pub access_point: Option<String>,
    pub key: String,
    pub version_id: Option<String>,
}

/// The classifier's answer for one S3 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Classification {
    /// `name` is the AWS operation name; the category follows from `access`.
    pub action: Action,
    pub access: S3Access,
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// Present whenever the request carries `x-amz-copy-source`, whatever the operation, so
    /// that a server which copies more eagerly than S3 still has its source decided.
    pub copy_source: Option<CopySource>,
    /// The query carries a presigned credential or signature (SigV4 or SigV2).
    pub presigned: bool,
    /// The request carries Object Lock headers (`x-amz-object-lock-mode`,
    /// `-retain-until-date`, `-legal-hold`, `x-amz-bucket-object-lock-enabled`, …): whatever
    /// the operation, it may lock what it writes against deletion.
    pub object_lock: bool,
    /// Why the request's headers may grant access beyond the bucket owner, if they may: a
    /// canned ACL other than `private` / `bucket-owner-full-control`, any `x-amz-grant-*`,
    /// or an ACL in the body of `PutObjectAcl` / `PutBucketAcl`.
    pub public_grant: Option<&'static str>,
}

/// The canned ACLs that grant nobody but the bucket owner (and the writer, its own object).
const OWNER_ONLY_ACLS: [&[u8]; 2] = [b"private", b"bucket-owner-full-control"];

/// Whether a request could make what it names reachable by someone other than the bucket
/// owner, straight from S3 and outside the gateway. The gateway cannot tell a grantee that
/// is the bucket owner from any other (it does not know canonical ids), and the owner holds
/// full control already, so every explicit grant is taken as foreign.
pub fn public_grant(action: &Action, headers: &HeaderMap) -> Option<&'static str> {
    let mut canned = headers.get_all("x-amz-acl").iter();
    match (canned.next(), canned.next()) {
        (Some(_), Some(_)) => return Some("the request has several x-amz-acl headers"),
        (Some(v), None) if !OWNER_ONLY_ACLS.contains(&v.as_bytes()) => {
            return Some("its canned ACL (x-amz-acl) grants access beyond the bucket owner; only private and bucket-owner-full-control are accepted")
        }
        _ => {}
    }
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("x-amz-grant-"))
    {
        return Some("it grants access to named grantees (x-amz-grant-*); objects and buckets are reachable by the bucket owner only");
    }
    let acl_body = matches!(action.name, "PutObjectAcl" | "PutBucketAcl")
        && (headers.contains_key(http::header::TRANSFER_ENCODING)
            || headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"));
    if acl_body {
        return Some(
            "it sets an access control list from its body; set x-amz-acl: private instead",
        );
    }
    None
}

/// How a request carries its access key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigScheme {
    /// `Authorization: AWS4-HMAC-SHA256 Credential=…`
    SigV4Header,
    /// `Authorization: AWS4-ECDSA-P256-SHA256 Credential=…`
    SigV4aHeader,
    /// `?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=…`
    SigV4Presigned,
    /// `?X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256&X-Amz-Credential=…`
    SigV4aPresigned,
    /// `Authorization: AWS {id}:{signature}`
    SigV2Header,
    /// `?AWSAccessKeyId=…&Signature=…&Expires=…`
    SigV2Presigned,
}

/// The access key id a request claims to be signed with. A claim until the upstream accepts
/// the signature; its verdict belongs in the completion record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessKeyClaim {
    pub id: String,
    pub scheme: SigScheme,
    /// STS credentials: a security token is present (header or query), or the id is `ASIA…`.
    pub temporary: bool,
    /// A security token is present (`x-amz-security-token` header or query parameter).
    pub session_token: bool,
}

/// Configured S3 endpoints: exact names (path style), `*.suffix` patterns (virtual-hosted,
/// the bucket left of the suffix) and access-point hosts mapped to buckets.
#[derive(Debug, Clone, Default)]
pub struct S3Hosts {
    /// Lower case, without brackets or a trailing dot.
    exact: Vec<String>,
    /// `*.suffix` stored as `.suffix`, longest first, so the most specific pattern wins.
    suffixes: Vec<String>,
    /// Access-point host → bucket.
    access_points: Vec<(String, String)>,
}

/// Why a request could not be read as S3. Messages reach clients, so they never echo input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum S3Error {
    /// The host is not a configured S3 endpoint (an IP must be configured exactly).
    UnknownHost,
    /// The host names an access point that the configuration does not map to a bucket.
    UnmappedAccessPoint,
    /// A virtual-hosted name whose bucket part holds an S3 endpoint label (`b.s3.…`): two
    /// readings of the bucket are possible, usually from too broad a `*.` pattern.
    AmbiguousHost,
    /// Not a bucket name by S3's rules (3–63 of `a-z 0-9 . -`, letter or digit at both ends,
    /// no `..`, not an IPv4 address, no reserved prefix).
    InvalidBucketName,
    /// An access point alias (`…-s3alias`, `…--ol-s3`, `….mrap`) where a bucket belongs.
    AccessPointAlias,
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// The decoded bucket or key is not UTF-8.
    InvalidUtf8,
    /// A C0 control byte or DEL in the decoded key.
    ControlByte,
    /// A key longer than S3's 1024 bytes.
    KeyTooLong,
    /// A method S3 does not serve (only GET, HEAD, PUT, POST and DELETE).
    UnsupportedMethod,
    /// The method and sub-resources name no S3 operation at this level.
    UnknownOperation,
    /// Sub-resources that name more than one operation, or a sub-resource in another case
    /// (`?ACL`), which S3 ignores but a lenient server might not.
    AmbiguousQuery,
    /// `x-amz-copy-source` or `content-type` given more than once.
    AmbiguousHeader,
    /// `x-amz-copy-source` does not name a bucket and a key, or an access point ARN and a key.
    BadCopySource,
}

/// Why a request's credential was refused. Either way the caller must deny, not fall back to
/// network attribution: the upstream may read a credential this module could not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialError {
    /// More than one credential: header and query, SigV4 and SigV2 query parameters, or one
    /// carrier repeated with different values.
    Ambiguous,
    /// A credential-bearing header or parameter that does not parse, or lacks its signature.
    Malformed,
}

use S3Access::{ChangeBucket, List, ListBuckets, ReadData, ReadMetadata, WriteData};

// Service level.
pub const LIST_BUCKETS: Operation = Operation::new("ListBuckets", ListBuckets);

// Bucket level: listings and heads.
pub const LIST_OBJECTS: Operation = Operation::new("ListObjects", List);
pub const LIST_OBJECTS_V2: Operation = Operation::new("ListObjectsV2", List);
pub const LIST_OBJECT_VERSIONS: Operation = Operation::new("ListObjectVersions", List);
pub const LIST_MULTIPART_UPLOADS: Operation = Operation::new("ListMultipartUploads", List);
pub const HEAD_BUCKET: Operation = Operation::new("HeadBucket", ReadMetadata);
pub const CREATE_BUCKET: Operation = Operation::new("CreateBucket", ChangeBucket);
pub const DELETE_BUCKET: Operation = Operation::new("DeleteBucket", ChangeBucket);
pub const DELETE_OBJECTS: Operation = Operation::new("DeleteObjects", WriteData);
pub const POST_OBJECT: Operation = Operation::new("PostObject", WriteData);
/// Vends session credentials for a directory bucket: as good as a read.
pub const CREATE_SESSION: Operation = Operation::new("CreateSession", ReadData);

// Bucket settings, by sub-resource.
pub const GET_BUCKET_ACL: Operation = Operation::new("GetBucketAcl", ReadMetadata);
pub const PUT_BUCKET_ACL: Operation = Operation::new("PutBucketAcl", ChangeBucket);
pub const GET_BUCKET_CORS: Operation = Operation::new("GetBucketCors", ReadMetadata);
pub const PUT_BUCKET_CORS: Operation = Operation::new("PutBucketCors", ChangeBucket);
pub const DELETE_BUCKET_CORS: Operation = Operation::new("DeleteBucketCors", ChangeBucket);
pub const GET_BUCKET_ENCRYPTION: Operation = Operation::new("GetBucketEncryption", ReadMetadata);
pub const PUT_BUCKET_ENCRYPTION: Operation = Operation::new("PutBucketEncryption", ChangeBucket);
pub const DELETE_BUCKET_ENCRYPTION: Operation =
    Operation::new("DeleteBucketEncryption", ChangeBucket);
pub const GET_BUCKET_LIFECYCLE_CONFIGURATION: Operation =
    Operation::new("GetBucketLifecycleConfiguration", ReadMetadata);
pub const PUT_BUCKET_LIFECYCLE_CONFIGURATION: Operation =
    Operation::new("PutBucketLifecycleConfiguration", ChangeBucket);
pub const DELETE_BUCKET_LIFECYCLE: Operation =
    Operation::new("DeleteBucketLifecycle", ChangeBucket);
pub const GET_BUCKET_LOCATION: Operation = Operation::new("GetBucketLocation", ReadMetadata);
pub const GET_BUCKET_LOGGING: Operation = Operation::new("GetBucketLogging", ReadMetadata);
pub const PUT_BUCKET_LOGGING: Operation = Operation::new("PutBucketLogging", ChangeBucket);
pub const GET_BUCKET_NOTIFICATION_CONFIGURATION: Operation =
    Operation::new("GetBucketNotificationConfiguration", ReadMetadata);
pub const PUT_BUCKET_NOTIFICATION_CONFIGURATION: Operation =
    Operation::new("PutBucketNotificationConfiguration", ChangeBucket);
pub const GET_BUCKET_OWNERSHIP_CONTROLS: Operation =
    Operation::new("GetBucketOwnershipControls", ReadMetadata);
pub const PUT_BUCKET_OWNERSHIP_CONTROLS: Operation =
    Operation::new("PutBucketOwnershipControls", ChangeBucket);
pub const DELETE_BUCKET_OWNERSHIP_CONTROLS: Operation =
    Operation::new("DeleteBucketOwnershipControls", ChangeBucket);
pub const GET_BUCKET_POLICY: Operation = Operation::new("GetBucketPolicy", ReadMetadata);
pub const PUT_BUCKET_POLICY: Operation = Operation::new("PutBucketPolicy", ChangeBucket);
pub const DELETE_BUCKET_POLICY: Operation = Operation::new("DeleteBucketPolicy", ChangeBucket);
pub const GET_BUCKET_POLICY_STATUS: Operation =
    Operation::new("GetBucketPolicyStatus", ReadMetadata);
pub const GET_BUCKET_REPLICATION: Operation = Operation::new("GetBucketReplication", ReadMetadata);
pub const PUT_BUCKET_REPLICATION: Operation = Operation::new("PutBucketReplication", ChangeBucket);
pub const DELETE_BUCKET_REPLICATION: Operation =
    Operation::new("DeleteBucketReplication", ChangeBucket);
pub const GET_BUCKET_REQUEST_PAYMENT: Operation =
    Operation::new("GetBucketRequestPayment", ReadMetadata);
pub const PUT_BUCKET_REQUEST_PAYMENT: Operation =
    Operation::new("PutBucketRequestPayment", ChangeBucket);
pub const GET_BUCKET_TAGGING: Operation = Operation::new("GetBucketTagging", ReadMetadata);
pub const PUT_BUCKET_TAGGING: Operation = Operation::new("PutBucketTagging", ChangeBucket);
pub const DELETE_BUCKET_TAGGING: Operation = Operation::new("DeleteBucketTagging", ChangeBucket);
pub const GET_BUCKET_VERSIONING: Operation = Operation::new("GetBucketVersioning", ReadMetadata);
pub const PUT_BUCKET_VERSIONING: Operation = Operation::new("PutBucketVersioning", ChangeBucket);
pub const GET_BUCKET_WEBSITE: Operation = Operation::new("GetBucketWebsite", ReadMetadata);
pub const PUT_BUCKET_WEBSITE: Operation = Operation::new("PutBucketWebsite", ChangeBucket);
pub const DELETE_BUCKET_WEBSITE: Operation = Operation::new("DeleteBucketWebsite", ChangeBucket);
pub const GET_OBJECT_LOCK_CONFIGURATION: Operation =
    Operation::new("GetObjectLockConfiguration", ReadMetadata);
pub const PUT_OBJECT_LOCK_CONFIGURATION: Operation =
    Operation::new("PutObjectLockConfiguration", ChangeBucket);
pub const GET_PUBLIC_ACCESS_BLOCK: Operation = Operation::new("GetPublicAccessBlock", ReadMetadata);
pub const PUT_PUBLIC_ACCESS_BLOCK: Operation = Operation::new("PutPublicAccessBlock", ChangeBucket);
pub const DELETE_PUBLIC_ACCESS_BLOCK: Operation =
    Operation::new("DeletePublicAccessBlock", ChangeBucket);
pub const GET_BUCKET_ACCELERATE_CONFIGURATION: Operation =
    Operation::new("GetBucketAccelerateConfiguration", ReadMetadata);
pub const PUT_BUCKET_ACCELERATE_CONFIGURATION: Operation =
    Operation::new("PutBucketAccelerateConfiguration", ChangeBucket);
pub const GET_BUCKET_ANALYTICS_CONFIGURATION: Operation =
    Operation::new("GetBucketAnalyticsConfiguration", ReadMetadata);
pub const LIST_BUCKET_ANALYTICS_CONFIGURATIONS: Operation =
    Operation::new("ListBucketAnalyticsConfigurations", ReadMetadata);
pub const PUT_BUCKET_ANALYTICS_CONFIGURATION: Operation =
    Operation::new("PutBucketAnalyticsConfiguration", ChangeBucket);
pub const DELETE_BUCKET_ANALYTICS_CONFIGURATION: Operation =
    Operation::new("DeleteBucketAnalyticsConfiguration", ChangeBucket);
pub const GET_BUCKET_INTELLIGENT_TIERING_CONFIGURATION: Operation =
    Operation::new("GetBucketIntelligentTieringConfiguration", ReadMetadata);
pub const LIST_BUCKET_INTELLIGENT_TIERING_CONFIGURATIONS: Operation =
    Operation::new("ListBucketIntelligentTieringConfigurations", ReadMetadata);
pub const PUT_BUCKET_INTELLIGENT_TIERING_CONFIGURATION: Operation =
    Operation::new("PutBucketIntelligentTieringConfiguration", ChangeBucket);
pub const DELETE_BUCKET_INTELLIGENT_TIERING_CONFIGURATION: Operation =
    Operation::new("DeleteBucketIntelligentTieringConfiguration", ChangeBucket);
pub const GET_BUCKET_INVENTORY_CONFIGURATION: Operation =
    Operation::new("GetBucketInventoryConfiguration", ReadMetadata);
pub const LIST_BUCKET_INVENTORY_CONFIGURATIONS: Operation =
    Operation::new("ListBucketInventoryConfigurations", ReadMetadata);
pub const PUT_BUCKET_INVENTORY_CONFIGURATION: Operation =
    Operation::new("PutBucketInventoryConfiguration", ChangeBucket);
pub const DELETE_BUCKET_INVENTORY_CONFIGURATION: Operation =
    Operation::new("DeleteBucketInventoryConfiguration", ChangeBucket);
pub const GET_BUCKET_METRICS_CONFIGURATION: Operation =
    Operation::new("GetBucketMetricsConfiguration", ReadMetadata);
pub const LIST_BUCKET_METRICS_CONFIGURATIONS: Operation =
    Operation::new("ListBucketMetricsConfigurations", ReadMetadata);
pub const PUT_BUCKET_METRICS_CONFIGURATION: Operation =
    Operation::new("PutBucketMetricsConfiguration", ChangeBucket);
pub const DELETE_BUCKET_METRICS_CONFIGURATION: Operation =
    Operation::new("DeleteBucketMetricsConfiguration", ChangeBucket);
pub const GET_BUCKET_METADATA_TABLE_CONFIGURATION: Operation =
    Operation::new("GetBucketMetadataTableConfiguration", ReadMetadata);
pub const CREATE_BUCKET_METADATA_TABLE_CONFIGURATION: Operation =
    Operation::new("CreateBucketMetadataTableConfiguration", ChangeBucket);
pub const DELETE_BUCKET_METADATA_TABLE_CONFIGURATION: Operation =
    Operation::new("DeleteBucketMetadataTableConfiguration", ChangeBucket);
pub const GET_BUCKET_METADATA_CONFIGURATION: Operation =
    Operation::new("GetBucketMetadataConfiguration", ReadMetadata);
pub const CREATE_BUCKET_METADATA_CONFIGURATION: Operation =
    Operation::new("CreateBucketMetadataConfiguration", ChangeBucket);
pub const DELETE_BUCKET_METADATA_CONFIGURATION: Operation =
    Operation::new("DeleteBucketMetadataConfiguration", ChangeBucket);

// Object level.
pub const GET_OBJECT: Operation = Operation::new("GetObject", ReadData);
pub const GET_OBJECT_TORRENT: Operation = Operation::new("GetObjectTorrent", ReadData);
pub const SELECT_OBJECT_CONTENT: Operation = Operation::new("SelectObjectContent", ReadData);
pub const RESTORE_OBJECT: Operation = Operation::new("RestoreObject", ReadData);
pub const HEAD_OBJECT: Operation = Operation::new("HeadObject", ReadMetadata);
pub const GET_OBJECT_ATTRIBUTES: Operation = Operation::new("GetObjectAttributes", ReadMetadata);
pub const GET_OBJECT_ACL: Operation = Operation::new("GetObjectAcl", ReadMetadata);
pub const GET_OBJECT_LEGAL_HOLD: Operation = Operation::new("GetObjectLegalHold", ReadMetadata);
pub const GET_OBJECT_RETENTION: Operation = Operation::new("GetObjectRetention", ReadMetadata);
pub const GET_OBJECT_TAGGING: Operation = Operation::new("GetObjectTagging", ReadMetadata);
pub const LIST_PARTS: Operation = Operation::new("ListParts", List);
pub const PUT_OBJECT: Operation = Operation::new("PutObject", WriteData);
pub const COPY_OBJECT: Operation = Operation::new("CopyObject", WriteData);
pub const UPLOAD_PART: Operation = Operation::new("UploadPart", WriteData);
pub const UPLOAD_PART_COPY: Operation = Operation::new("UploadPartCopy", WriteData);
pub const CREATE_MULTIPART_UPLOAD: Operation = Operation::new("CreateMultipartUpload", WriteData);
pub const COMPLETE_MULTIPART_UPLOAD: Operation =
    Operation::new("CompleteMultipartUpload", WriteData);
pub const ABORT_MULTIPART_UPLOAD: Operation = Operation::new("AbortMultipartUpload", WriteData);
pub const DELETE_OBJECT: Operation = Operation::new("DeleteObject", WriteData);
pub const PUT_OBJECT_ACL: Operation = Operation::new("PutObjectAcl", WriteData);
pub const PUT_OBJECT_LEGAL_HOLD: Operation = Operation::new("PutObjectLegalHold", WriteData);
pub const PUT_OBJECT_RETENTION: Operation = Operation::new("PutObjectRetention", WriteData);
pub const PUT_OBJECT_TAGGING: Operation = Operation::new("PutObjectTagging", WriteData);
pub const DELETE_OBJECT_TAGGING: Operation = Operation::new("DeleteObjectTagging", WriteData);

/// Operations that change who may reach a bucket or an object (policies, ACLs, public
/// access blocks, ownership controls), for rules that forbid governance changes.
pub const PERMISSION_CHANGES: &[Operation] = &[
    PUT_BUCKET_POLICY,
    DELETE_BUCKET_POLICY,
    PUT_BUCKET_ACL,
    PUT_PUBLIC_ACCESS_BLOCK,
    DELETE_PUBLIC_ACCESS_BLOCK,
    PUT_BUCKET_OWNERSHIP_CONTROLS,
    DELETE_BUCKET_OWNERSHIP_CONTROLS,
    PUT_OBJECT_ACL,
];

/// Every operation [`classify`] can return, for configuration checks and documentation.
pub const CATALOG: &[Operation] = &[
    LIST_BUCKETS,
    LIST_OBJECTS,
    LIST_OBJECTS_V2,
    LIST_OBJECT_VERSIONS,
    LIST_MULTIPART_UPLOADS,
    HEAD_BUCKET,
    CREATE_BUCKET,
    DELETE_BUCKET,
    DELETE_OBJECTS,
    POST_OBJECT,
    CREATE_SESSION,
    GET_BUCKET_ACL,
    PUT_BUCKET_ACL,
    GET_BUCKET_CORS,
    PUT_BUCKET_CORS,
    DELETE_BUCKET_CORS,
    GET_BUCKET_ENCRYPTION,
    PUT_BUCKET_ENCRYPTION,
    DELETE_BUCKET_ENCRYPTION,
    GET_BUCKET_LIFECYCLE_CONFIGURATION,
    PUT_BUCKET_LIFECYCLE_CONFIGURATION,
    DELETE_BUCKET_LIFECYCLE,
    GET_BUCKET_LOCATION,
    GET_BUCKET_LOGGING,
    PUT_BUCKET_LOGGING,
    GET_BUCKET_NOTIFICATION_CONFIGURATION,
    PUT_BUCKET_NOTIFICATION_CONFIGURATION,
    GET_BUCKET_OWNERSHIP_CONTROLS,
    PUT_BUCKET_OWNERSHIP_CONTROLS,
    DELETE_BUCKET_OWNERSHIP_CONTROLS,
    GET_BUCKET_POLICY,
    PUT_BUCKET_POLICY,
    DELETE_BUCKET_POLICY,
    GET_BUCKET_POLICY_STATUS,
    GET_BUCKET_REPLICATION,
    PUT_BUCKET_REPLICATION,
    DELETE_BUCKET_REPLICATION,
    GET_BUCKET_REQUEST_PAYMENT,
    PUT_BUCKET_REQUEST_PAYMENT,
    GET_BUCKET_TAGGING,
    PUT_BUCKET_TAGGING,
    DELETE_BUCKET_TAGGING,
    GET_BUCKET_VERSIONING,
    PUT_BUCKET_VERSIONING,
    GET_BUCKET_WEBSITE,
    PUT_BUCKET_WEBSITE,
    DELETE_BUCKET_WEBSITE,
    GET_OBJECT_LOCK_CONFIGURATION,
    PUT_OBJECT_LOCK_CONFIGURATION,
    GET_PUBLIC_ACCESS_BLOCK,
    PUT_PUBLIC_ACCESS_BLOCK,
    DELETE_PUBLIC_ACCESS_BLOCK,
    GET_BUCKET_ACCELERATE_CONFIGURATION,
    PUT_BUCKET_ACCELERATE_CONFIGURATION,
    GET_BUCKET_ANALYTICS_CONFIGURATION,
    LIST_BUCKET_ANALYTICS_CONFIGURATIONS,
    PUT_BUCKET_ANALYTICS_CONFIGURATION,
    DELETE_BUCKET_ANALYTICS_CONFIGURATION,
    GET_BUCKET_INTELLIGENT_TIERING_CONFIGURATION,
    LIST_BUCKET_INTELLIGENT_TIERING_CONFIGURATIONS,
    PUT_BUCKET_INTELLIGENT_TIERING_CONFIGURATION,
    DELETE_BUCKET_INTELLIGENT_TIERING_CONFIGURATION,
    GET_BUCKET_INVENTORY_CONFIGURATION,
    LIST_BUCKET_INVENTORY_CONFIGURATIONS,
    PUT_BUCKET_INVENTORY_CONFIGURATION,
    DELETE_BUCKET_INVENTORY_CONFIGURATION,
    GET_BUCKET_METRICS_CONFIGURATION,
    LIST_BUCKET_METRICS_CONFIGURATIONS,
    PUT_BUCKET_METRICS_CONFIGURATION,
    DELETE_BUCKET_METRICS_CONFIGURATION,
    GET_BUCKET_METADATA_TABLE_CONFIGURATION,
    CREATE_BUCKET_METADATA_TABLE_CONFIGURATION,
    DELETE_BUCKET_METADATA_TABLE_CONFIGURATION,
    GET_BUCKET_METADATA_CONFIGURATION,
    CREATE_BUCKET_METADATA_CONFIGURATION,
    DELETE_BUCKET_METADATA_CONFIGURATION,
    GET_OBJECT,
    GET_OBJECT_TORRENT,
    SELECT_OBJECT_CONTENT,
    RESTORE_OBJECT,
    HEAD_OBJECT,
    GET_OBJECT_ATTRIBUTES,
    GET_OBJECT_ACL,
    GET_OBJECT_LEGAL_HOLD,
    GET_OBJECT_RETENTION,
    GET_OBJECT_TAGGING,
    LIST_PARTS,
    PUT_OBJECT,
    COPY_OBJECT,
    UPLOAD_PART,
    UPLOAD_PART_COPY,
    CREATE_MULTIPART_UPLOAD,
    COMPLETE_MULTIPART_UPLOAD,
    ABORT_MULTIPART_UPLOAD,
    DELETE_OBJECT,
    PUT_OBJECT_ACL,
    PUT_OBJECT_LEGAL_HOLD,
    PUT_OBJECT_RETENTION,
    PUT_OBJECT_TAGGING,
    DELETE_OBJECT_TAGGING,
];

/// A bucket sub-resource and the operation it names for each method.
struct BucketSubresource {
    name: &'static str,
    get: Option<Operation>,
    /// `GET` without `id`: the configurations are listed rather than one read.
    list: Option<Operation>,
    put: Option<Operation>,
    post: Option<Operation>,
    delete: Option<Operation>,
}

/// Bucket sub-resources, `reference/s3.md` first, then the newer configuration families.
/// Their position is their bit in [`Scan::present`].
const BUCKET_SUBRESOURCES: &[BucketSubresource] = &[
    sub("acl", GET_BUCKET_ACL, Some(PUT_BUCKET_ACL), None),
    sub(
        "cors",
        GET_BUCKET_CORS,
        Some(PUT_BUCKET_CORS),
        Some(DELETE_BUCKET_CORS),
    ),
    sub(
        "encryption",
        GET_BUCKET_ENCRYPTION,
        Some(PUT_BUCKET_ENCRYPTION),
        Some(DELETE_BUCKET_ENCRYPTION),
    ),
    sub(
        "lifecycle",
        GET_BUCKET_LIFECYCLE_CONFIGURATION,
        Some(PUT_BUCKET_LIFECYCLE_CONFIGURATION),
        Some(DELETE_BUCKET_LIFECYCLE),
    ),
    sub("location", GET_BUCKET_LOCATION, None, None),
    sub(
        "logging",
        GET_BUCKET_LOGGING,
        Some(PUT_BUCKET_LOGGING),
        None,
    ),
    sub(
        "notification",
        GET_BUCKET_NOTIFICATION_CONFIGURATION,
        Some(PUT_BUCKET_NOTIFICATION_CONFIGURATION),
        None,
    ),
    sub(
        "ownershipControls",
        GET_BUCKET_OWNERSHIP_CONTROLS,
        Some(PUT_BUCKET_OWNERSHIP_CONTROLS),
        Some(DELETE_BUCKET_OWNERSHIP_CONTROLS),
    ),
    sub(
        "policy",
        GET_BUCKET_POLICY,
        Some(PUT_BUCKET_POLICY),
        Some(DELETE_BUCKET_POLICY),
    ),
    sub("policyStatus", GET_BUCKET_POLICY_STATUS, None, None),
    sub(
        "replication",
        GET_BUCKET_REPLICATION,
        Some(PUT_BUCKET_REPLICATION),
        Some(DELETE_BUCKET_REPLICATION),
    ),
    sub(
        "requestPayment",
        GET_BUCKET_REQUEST_PAYMENT,
        Some(PUT_BUCKET_REQUEST_PAYMENT),
        None,
    ),
    sub(
        "tagging",
        GET_BUCKET_TAGGING,
        Some(PUT_BUCKET_TAGGING),
        Some(DELETE_BUCKET_TAGGING),
    ),
    sub(
        "versioning",
        GET_BUCKET_VERSIONING,
        Some(PUT_BUCKET_VERSIONING),
        None,
    ),
    sub(
        "website",
        GET_BUCKET_WEBSITE,
        Some(PUT_BUCKET_WEBSITE),
        Some(DELETE_BUCKET_WEBSITE),
    ),
    sub(
        "object-lock",
        GET_OBJECT_LOCK_CONFIGURATION,
        Some(PUT_OBJECT_LOCK_CONFIGURATION),
        None,
    ),
    sub(
        "publicAccessBlock",
        GET_PUBLIC_ACCESS_BLOCK,
        Some(PUT_PUBLIC_ACCESS_BLOCK),
        Some(DELETE_PUBLIC_ACCESS_BLOCK),
    ),
    sub(
        "accelerate",
        GET_BUCKET_ACCELERATE_CONFIGURATION,
        Some(PUT_BUCKET_ACCELERATE_CONFIGURATION),
        None,
    ),
    family(
        "analytics",
        GET_BUCKET_ANALYTICS_CONFIGURATION,
        LIST_BUCKET_ANALYTICS_CONFIGURATIONS,
        PUT_BUCKET_ANALYTICS_CONFIGURATION,
        DELETE_BUCKET_ANALYTICS_CONFIGURATION,
    ),
    family(
        "intelligent-tiering",
        GET_BUCKET_INTELLIGENT_TIERING_CONFIGURATION,
        LIST_BUCKET_INTELLIGENT_TIERING_CONFIGURATIONS,
        PUT_BUCKET_INTELLIGENT_TIERING_CONFIGURATION,
        DELETE_BUCKET_INTELLIGENT_TIERING_CONFIGURATION,
    ),
    family(
        "inventory",
        GET_BUCKET_INVENTORY_CONFIGURATION,
        LIST_BUCKET_INVENTORY_CONFIGURATIONS,
        PUT_BUCKET_INVENTORY_CONFIGURATION,
        DELETE_BUCKET_INVENTORY_CONFIGURATION,
    ),
    family(
        "metrics",
        GET_BUCKET_METRICS_CONFIGURATION,
        LIST_BUCKET_METRICS_CONFIGURATIONS,
        PUT_BUCKET_METRICS_CONFIGURATION,
        DELETE_BUCKET_METRICS_CONFIGURATION,
    ),
    created(
        "metadataTable",
        GET_BUCKET_METADATA_TABLE_CONFIGURATION,
        CREATE_BUCKET_METADATA_TABLE_CONFIGURATION,
        DELETE_BUCKET_METADATA_TABLE_CONFIGURATION,
    ),
    created(
        "metadataConfiguration",
        GET_BUCKET_METADATA_CONFIGURATION,
        CREATE_BUCKET_METADATA_CONFIGURATION,
        DELETE_BUCKET_METADATA_CONFIGURATION,
    ),
    sub("session", CREATE_SESSION, None, None),
];

/// Query names that select object-level operations or qualify them. Their bits follow the
/// bucket sub-resources'.
const OTHER_NAMES: &[&str] = &[
    "uploads",
    "versions",
    "list-type",
    "attributes",
    "legal-hold",
    "retention",
    "torrent",
    "uploadId",
    "partNumber",
    "select",
    "restore",
    "delete",
    "id",
];

const BUCKET_MASK: u64 = (1 << BUCKET_SUBRESOURCES.len()) - 1;
const ACL: u64 = bit("acl");
const TAGGING: u64 = bit("tagging");
const UPLOADS: u64 = bit("uploads");
const VERSIONS: u64 = bit("versions");
const LIST_TYPE: u64 = bit("list-type");
const ATTRIBUTES: u64 = bit("attributes");
const LEGAL_HOLD: u64 = bit("legal-hold");
const RETENTION: u64 = bit("retention");
const TORRENT: u64 = bit("torrent");
const UPLOAD_ID: u64 = bit("uploadId");
const PART_NUMBER: u64 = bit("partNumber");
const SELECT: u64 = bit("select");
const RESTORE: u64 = bit("restore");
const DELETE: u64 = bit("delete");
const ID: u64 = bit("id");
/// Not a query name: stands for `partNumber` and `uploadId` together (an upload part).
const PART: u64 = 1 << 63;

/// Room for the longest query name this module reads (`metadataConfiguration`,
/// `x-amz-security-token`); longer names are none of them, in any spelling.
const MAX_NAME: usize = 24;

static COPY_SOURCE: HeaderName = HeaderName::from_static("x-amz-copy-source");
static SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");

/// S3's limit on a key's UTF-8 length.
const MAX_KEY: usize = 1024;

/// Reads the bucket and key of a request from its `Host` / `:authority` and its raw path
/// (no query).
///
/// A mapped access-point host names its bucket (key: the whole path); an exact host or IP is
/// path style (first segment: bucket, rest: key); `X.suffix` for a `*.suffix` pattern is
/// virtual-hosted (bucket `X`, lower-cased; key: the whole path). `bucket.vpce-…` hosts of VPC
/// interface endpoints are path style and `X.bucket.vpce-…` virtual-hosted, as AWS names them.
/// Any other access-point host is [`S3Error::UnmappedAccessPoint`]; a host no entry matches
/// is [`S3Error::UnknownHost`].
pub fn target(hosts: &S3Hosts, authority: &str, raw_path: &str) -> Result<S3Target, S3Error> {
    let host = host_of(authority).ok_or(S3Error::UnknownHost)?;
    let rest = raw_path.strip_prefix('/').ok_or(S3Error::NotAbsolute)?;
    match hosts.addressing(host)? {
        Addressing::PathStyle => path_style(rest),
        Addressing::VirtualHosted(label) => {
            let bucket = label.to_ascii_lowercase();
            check_bucket(&bucket)?;
            Ok(S3Target {
                bucket: Some(bucket),
                key: decode_key(rest)?,
            })
        }
        Addressing::AccessPoint(bucket) => Ok(S3Target {
            bucket: Some(bucket.to_owned()),
            key: decode_key(rest)?,
        }),
    }
}

/// Names the S3 operation of a request whose bucket and key `target` has read. `query` is the
/// raw query string (no `?`).
///
/// Returns an error, never a guess, when the request has no single reading: a method or a
/// sub-resource combination S3 does not define, sub-resources that name different operations,
/// a sub-resource in another spelling, or an `x-amz-copy-source` that does not parse. The
/// caller refuses those requests.
pub fn classify(
    method: &Method,
    target: &S3Target,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<S3Classification, S3Error> {
    let scan = Scan::of(query)?;
    let copy_source = copy_source(headers)?;
    let level = match (&target.bucket, &target.key) {
        (None, _) => Level::Service,
        (Some(_), None) => Level::Bucket,
        (Some(_), Some(_)) => Level::Object,
    };
    let op = operation(method, level, &scan, copy_source.is_some(), headers)?;
    Ok(S3Classification {
        action: op.action,
        access: op.access,
        bucket: target.bucket.clone(),
        key: target.key.clone(),
        copy_source,
        presigned: scan.presigned,
        object_lock: headers.keys().any(|name| {
            let name = name.as_str();
            name.starts_with("x-amz-object-lock") || name.starts_with("x-amz-bucket-object-lock")
        }),
        public_grant: public_grant(&op.action, headers),
    })
}

/// Whether the query carries a presigned credential or signature (names in any case).
pub fn is_presigned(query: Option<&str>) -> bool {
    let Some(query) = query else {
        return false;
    };
    query_pairs(query)
        .any(|(name, _)| matches!(query_name(name), QueryName::Credential(p) if p.presigns()))
}

/// The access key id a request claims, from the `Authorization` header (SigV4, SigV4a,
/// SigV2) or a presigned query (`X-Amz-Credential`, `AWSAccessKeyId`).
///
/// `Ok(None)`: no credential at all (anonymous, or a `PostObject` whose credential is a form
/// field). `Err`: more than one credential, or one that does not parse; the caller refuses
/// the request rather than attributing it some other way.
pub fn access_key(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<AccessKeyClaim>, CredentialError> {
    let header = header_credential(headers)?;
    let presigned = match query {
        Some(query) => QueryCredential::of(query)?,
        None => QueryCredential::default(),
    };
    let (id, scheme) = match header {
        Some(_) if presigned.any() => return Err(CredentialError::Ambiguous),
        Some((id, scheme)) => (Cow::Borrowed(id), scheme),
        None => match presigned.claim()? {
            Some(claim) => claim,
            None => return Ok(None),
        },
    };
    if !is_key_id(&id) {
        return Err(CredentialError::Malformed);
    }
    let session_token = presigned.token || headers.contains_key(&SECURITY_TOKEN);
    Ok(Some(AccessKeyClaim {
        temporary: session_token || id.starts_with("ASIA"),
        id: id.into_owned(),
        scheme,
        session_token,
    }))
}

/// S3's bucket naming rules, for configuration checks as well as requests.
pub fn is_valid_bucket_name(name: &str) -> bool {
    check_bucket(name).is_ok()
}

/// Parses an `x-amz-copy-source` value: `bucket/key` with an optional leading `/`,
/// percent-decoded once (`+` literal), optionally followed by `?versionId=…`; or an access
/// point ARN `arn:{partition}:s3:{region}:{account}:accesspoint/{name}/object/{key}`, reported
/// by its access point name with no bucket.
pub fn parse_copy_source(value: &str) -> Result<CopySource, S3Error> {
    let (path, version_id) = match value.split_once('?') {
        Some((path, query)) => (path, Some(version_id(query)?)),
        None => (value, None),
    };
    let decoded = decode(path).map_err(|_| S3Error::BadCopySource)?;
    // An encoded `?versionId=` has two readings: part of the key, or the version.
    if decoded.contains("?versionId=") || decoded.bytes().any(is_control) {
        return Err(S3Error::BadCopySource);
    }
    let (bucket, access_point, key) = match decoded.strip_prefix("arn:") {
        Some(arn) => {
            let (name, key) = access_point_arn(arn).ok_or(S3Error::BadCopySource)?;
            (None, Some(name.to_owned()), key)
        }
        None => {
            let bare = decoded.strip_prefix('/').unwrap_or(&decoded);
            let (bucket, key) = bare.split_once('/').ok_or(S3Error::BadCopySource)?;
            check_bucket(bucket).map_err(|_| S3Error::BadCopySource)?;
            (Some(bucket.to_owned()), None, key)
        }
    };
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(S3Error::BadCopySource);
    }
    Ok(CopySource {
        bucket,
        access_point,
        key: key.to_owned(),
        version_id,
    })
}

impl S3Access {
    /// The category the policy decides by first.
    pub const fn category(self) -> Category {
        match self {
            ReadData => Category::Download,
            List | ReadMetadata | ListBuckets => Category::Metadata,
            WriteData => Category::Upload,
            ChangeBucket => Category::Config,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReadData => "read_data",
            List => "list",
            ReadMetadata => "read_metadata",
            WriteData => "write_data",
            ChangeBucket => "change_bucket",
            ListBuckets => "list_buckets",
        }
    }
}

impl fmt::Display for S3Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Operation {
    pub const fn new(name: &'static str, access: S3Access) -> Operation {
        Operation {
            action: Action::new(name, access.category()),
            access,
        }
    }

    pub fn name(&self) -> &'static str {
        self.action.name
    }
}

impl S3Classification {
    /// Whether the request changes who may reach a bucket or object ([`PERMISSION_CHANGES`]).
    pub fn changes_permissions(&self) -> bool {
        PERMISSION_CHANGES.iter().any(|op| op.action == self.action)
    }
}

impl CopySource {
    /// `bucket/key` (`accesspoint:{name}/key` for an access point), for the record.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(self.key.len() + 64);
        match (&self.bucket, &self.access_point) {
            (Some(bucket), _) => out.push_str(bucket),
            (None, Some(name)) => {
                out.push_str("accesspoint:");
                out.push_str(name);
            }
            (None, None) => {}
        }
        out.push('/');
        out.push_str(&self.key);
        if let Some(version) = &self.version_id {
            out.push_str("?versionId=");
            out.push_str(version);
        }
        out
    }
}

impl SigScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            SigScheme::SigV4Header => "sigv4",
            SigScheme::SigV4aHeader => "sigv4a",
            SigScheme::SigV4Presigned => "sigv4-presigned",
            SigScheme::SigV4aPresigned => "sigv4a-presigned",
            SigScheme::SigV2Header => "sigv2",
            SigScheme::SigV2Presigned => "sigv2-presigned",
        }
    }

    pub fn is_presigned(self) -> bool {
        matches!(
            self,
            SigScheme::SigV4Presigned | SigScheme::SigV4aPresigned | SigScheme::SigV2Presigned
        )
    }
}

impl fmt::Display for SigScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl S3Hosts {
    /// `hosts`: exact names (`s3.eu-west-2.amazonaws.com`, `localhost`, `127.0.0.1`) and
    /// `*.suffix` patterns; `access_points`: access-point host → bucket. Names are compared
    /// without case, brackets or a trailing dot; the configuration validates them.
    pub fn new(hosts: &[String], access_points: &[(String, String)]) -> S3Hosts {
        let mut table = S3Hosts::default();
        for host in hosts {
            let host = canonical_host(host);
            match host.strip_prefix("*.") {
                Some("") => {}
                Some(suffix) => table.suffixes.push(format!(".{suffix}")),
                None if host.is_empty() => {}
                None => table.exact.push(host),
            }
        }
        table
            .suffixes
            .sort_by_key(|suffix| std::cmp::Reverse(suffix.len()));
        table.access_points = access_points
            .iter()
            .map(|(host, bucket)| (canonical_host(host), bucket.clone()))
            .collect();
        table
    }

    /// Whether `authority` (`host[:port]`, any case) is one of these endpoints. True also for
    /// an unmapped access point under a configured pattern: [`target`] refuses it.
    pub fn matches(&self, authority: &str) -> bool {
        host_of(authority).is_some_and(|host| self.entry(host).is_some())
    }

    /// Which entry `host` matches, if any: a mapped access point, an exact name, or a `*.`
    /// pattern (with the part of `host` left of its suffix). IPs match exact names only.
    fn entry<'h>(&self, host: &'h str) -> Option<Entry<'h, '_>> {
        if let Some((_, bucket)) = self
            .access_points
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
        {
            return Some(Entry::AccessPoint(bucket));
        }
        if self
            .exact
            .iter()
            .any(|name| name.eq_ignore_ascii_case(host))
        {
            return Some(Entry::Exact);
        }
        if is_ip(host) {
            return None;
        }
        self.suffixes.iter().find_map(|suffix| {
            let at = host.len().checked_sub(suffix.len()).filter(|&at| at > 0)?;
            let tail = host.get(at..)?;
            let label = host.get(..at)?;
            tail.eq_ignore_ascii_case(suffix)
                .then_some(Entry::Pattern(label))
        })
    }

    fn addressing<'h>(&'h self, host: &'h str) -> Result<Addressing<'h>, S3Error> {
        let label = match self.entry(host).ok_or(S3Error::UnknownHost)? {
            Entry::AccessPoint(bucket) => return Ok(Addressing::AccessPoint(bucket)),
            Entry::Exact => None,
            Entry::Pattern(label) => Some(label),
        };
        let labels = HostLabels::of(host, label.map_or(0, str::len));
        if labels.access_point {
            return Err(S3Error::UnmappedAccessPoint);
        }
        let Some(label) = label else {
            return Ok(Addressing::PathStyle);
        };
        if let Some(at) = labels.vpce {
            // `bucket.vpce-…` is the endpoint itself; `X.bucket.vpce-…` names bucket X.
            let before = host[..at].strip_suffix('.').unwrap_or("");
            return match before.rsplit_once('.') {
                None if before.eq_ignore_ascii_case("bucket") => Ok(Addressing::PathStyle),
                Some((bucket, qualifier)) if qualifier.eq_ignore_ascii_case("bucket") => {
                    Ok(Addressing::VirtualHosted(bucket))
                }
                _ => Err(S3Error::UnknownHost),
            };
        }
        if labels.endpoint_in_bucket {
            return Err(S3Error::AmbiguousHost);
        }
        Ok(Addressing::VirtualHosted(label))
    }
}

impl S3Error {
    fn message(self) -> &'static str {
        match self {
            S3Error::UnknownHost => "the host is not a configured S3 endpoint",
            S3Error::UnmappedAccessPoint => {
                "the host names an S3 access point that the gateway does not map to a bucket"
            }
            S3Error::AmbiguousHost => "the host could name more than one bucket",
            S3Error::InvalidBucketName => "the bucket name is not a valid S3 bucket name",
            S3Error::AccessPointAlias => "the bucket name is an access point alias, not a bucket",
            S3Error::NotAbsolute => "request path must start with '/'",
            S3Error::BadPercentEncoding => "request path has a malformed percent-encoding",
            S3Error::InvalidUtf8 => "request path is not valid UTF-8 once decoded",
            S3Error::ControlByte => "request path contains a control character",
            S3Error::KeyTooLong => "the object key is longer than 1024 bytes",
            S3Error::UnsupportedMethod => "S3 does not serve this method",
            S3Error::UnknownOperation => "the method and sub-resources name no S3 operation",
            S3Error::AmbiguousQuery => {
                "the query names more than one S3 operation, or a sub-resource in another spelling"
            }
            S3Error::AmbiguousHeader => "x-amz-copy-source or content-type is repeated",
            S3Error::BadCopySource => "x-amz-copy-source does not name a bucket and a key",
        }
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for S3Error {}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialError::Ambiguous => "the request carries more than one S3 credential",
            CredentialError::Malformed => "the request's S3 credential does not parse",
        })
    }
}

impl std::error::Error for CredentialError {}

/// Which configured entry a host matched.
enum Entry<'h, 't> {
    AccessPoint(&'t str),
    Exact,
    /// The part left of a `*.` pattern's suffix.
    Pattern(&'h str),
}

/// Where the bucket of a request is named.
enum Addressing<'a> {
    /// The first path segment.
    PathStyle,
    /// The host, left of the endpoint (not yet validated).
    VirtualHosted(&'a str),
    /// A configured access point's bucket.
    AccessPoint(&'a str),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Service,
    Bucket,
    Object,
}

/// The query names a request carries that can select or qualify an operation, in one pass.
#[derive(Debug, Default)]
struct Scan {
    /// Bits: [`BUCKET_SUBRESOURCES`] by position, then [`OTHER_NAMES`].
    present: u64,
    /// `list-type=2` on any occurrence.
    list_v2: bool,
    presigned: bool,
}

impl Scan {
    fn of(query: Option<&str>) -> Result<Scan, S3Error> {
        let mut scan = Scan::default();
        let Some(query) = query else {
            return Ok(scan);
        };
        for (raw_name, raw_value) in query_pairs(query) {
            match query_name(raw_name) {
                QueryName::Selector(bit) => {
                    scan.present |= bit;
                    if bit == LIST_TYPE && form_decode(raw_value) == "2" {
                        scan.list_v2 = true;
                    }
                }
                QueryName::NearMiss => return Err(S3Error::AmbiguousQuery),
                QueryName::Credential(param) => scan.presigned |= param.presigns(),
                QueryName::Other => {}
            }
        }
        if scan.has(PART_NUMBER) && scan.has(UPLOAD_ID) {
            scan.present |= PART;
        }
        Ok(scan)
    }

    fn has(&self, bit: u64) -> bool {
        self.present & bit != 0
    }

    /// The one selector among `mask` the request carries, if any; two or more are ambiguous.
    fn selector(&self, mask: u64) -> Result<Option<u64>, S3Error> {
        let found = self.present & mask;
        match found.count_ones() {
            0 => Ok(None),
            1 => Ok(Some(found)),
            _ => Err(S3Error::AmbiguousQuery),
        }
    }
}

/// What the presigned-credential parameters of a query say.
#[derive(Debug, Default)]
struct QueryCredential<'q> {
    v4_credential: Option<Cow<'q, str>>,
    v4_algorithm: Option<Cow<'q, str>>,
    v4_signature: bool,
    v2_key: Option<Cow<'q, str>>,
    v2_signature: bool,
    v2_expires: bool,
    token: bool,
}

impl<'q> QueryCredential<'q> {
    fn of(query: &'q str) -> Result<QueryCredential<'q>, CredentialError> {
        let mut found = QueryCredential::default();
        for (raw_name, raw_value) in query_pairs(query) {
            let QueryName::Credential(param) = query_name(raw_name) else {
                continue;
            };
            match param {
                Param::V4Credential => once(&mut found.v4_credential, raw_value)?,
                Param::V4Algorithm => once(&mut found.v4_algorithm, raw_value)?,
                Param::V4Signature => found.v4_signature = true,
                Param::V2Key => once(&mut found.v2_key, raw_value)?,
                Param::V2Signature => found.v2_signature = true,
                Param::V2Expires => found.v2_expires = true,
                Param::SecurityToken => found.token = true,
            }
        }
        Ok(found)
    }

    /// Whether any presigning parameter is present (a credential or a signature).
    fn any(&self) -> bool {
        self.v4_credential.is_some()
            || self.v4_algorithm.is_some()
            || self.v4_signature
            || self.v2_key.is_some()
            || self.v2_signature
    }

    fn claim(&self) -> Result<Option<(Cow<'q, str>, SigScheme)>, CredentialError> {
        let v4 = self.v4_credential.is_some() || self.v4_algorithm.is_some() || self.v4_signature;
        let v2 = self.v2_key.is_some() || self.v2_signature;
        if v4 && v2 {
            return Err(CredentialError::Ambiguous);
        }
        if v4 {
            let (Some(credential), Some(algorithm), true) =
                (&self.v4_credential, &self.v4_algorithm, self.v4_signature)
            else {
                return Err(CredentialError::Malformed);
            };
            let (scheme, parts) = match &**algorithm {
                "AWS4-HMAC-SHA256" => (SigScheme::SigV4Presigned, 5),
                "AWS4-ECDSA-P256-SHA256" => (SigScheme::SigV4aPresigned, 4),
                _ => return Err(CredentialError::Malformed),
            };
            // The id ends before an ASCII `/`, so its length is a character boundary.
            let len = scope_key_id(credential.as_bytes(), parts)?.len();
            let id = match credential {
                Cow::Borrowed(all) => {
                    let all: &'q str = all;
                    Cow::Borrowed(&all[..len])
                }
                Cow::Owned(all) => Cow::Owned(all[..len].to_owned()),
            };
            return Ok(Some((id, scheme)));
        }
        if v2 {
            return match (&self.v2_key, self.v2_signature && self.v2_expires) {
                (Some(key), true) => Ok(Some((key.clone(), SigScheme::SigV2Presigned))),
                _ => Err(CredentialError::Malformed),
            };
        }
        Ok(None)
    }
}

/// Records a credential parameter; a repeat must carry the same value.
fn once<'q>(slot: &mut Option<Cow<'q, str>>, raw: &'q [u8]) -> Result<(), CredentialError> {
    let value = form_decode(raw);
    match slot {
        Some(seen) if *seen != value => Err(CredentialError::Ambiguous),
        Some(_) => Ok(()),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// The credential in the `Authorization` header. Repeats must be identical.
fn header_credential(headers: &HeaderMap) -> Result<Option<(&str, SigScheme)>, CredentialError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|other| other != first) {
        return Err(CredentialError::Ambiguous);
    }
    let value = std::str::from_utf8(first.as_bytes()).map_err(|_| CredentialError::Malformed)?;
    let found = if let Some(rest) = value.strip_prefix("AWS4-HMAC-SHA256 ") {
        (v4_header_key_id(rest, 5)?, SigScheme::SigV4Header)
    } else if let Some(rest) = value.strip_prefix("AWS4-ECDSA-P256-SHA256 ") {
        (v4_header_key_id(rest, 4)?, SigScheme::SigV4aHeader)
    } else if let Some(rest) = value.strip_prefix("AWS ") {
        match rest.trim_ascii().rsplit_once(':') {
            Some((id, signature)) if !signature.is_empty() => (id, SigScheme::SigV2Header),
            _ => return Err(CredentialError::Malformed),
        }
    } else {
        return Err(CredentialError::Malformed);
    };
    Ok(Some(found))
}

/// `Credential=…, SignedHeaders=…, Signature=…` → the key id of the credential scope.
fn v4_header_key_id(components: &str, scope_parts: usize) -> Result<&str, CredentialError> {
    let mut credential = None;
    let (mut signed_headers, mut signature) = (false, false);
    for component in components.split(',') {
        let (name, value) = component
            .trim_ascii()
            .split_once('=')
            .ok_or(CredentialError::Malformed)?;
        match name {
            "Credential" if credential.is_some() => return Err(CredentialError::Ambiguous),
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = !value.is_empty(),
            "Signature" => signature = !value.is_empty(),
            _ => return Err(CredentialError::Malformed),
        }
    }
    match (credential, signed_headers && signature) {
        (Some(scope), true) => {
            // The id ends before an ASCII `/`, so its length is a character boundary.
            let len = scope_key_id(scope.as_bytes(), scope_parts)?.len();
            Ok(&scope[..len])
        }
        _ => Err(CredentialError::Malformed),
    }
}

/// `AKID/date/region/service/aws4_request` (SigV4, 5 parts) or `AKID/date/service/aws4_request`
/// (SigV4a, 4 parts) → `AKID`.
fn scope_key_id(scope: &[u8], parts: usize) -> Result<&[u8], CredentialError> {
    let mut pieces = scope.split(|&b| b == b'/');
    let id = pieces.next().unwrap_or_default();
    let mut count = 1;
    let mut last = id;
    for piece in pieces {
        if piece.is_empty() {
            return Err(CredentialError::Malformed);
        }
        count += 1;
        last = piece;
    }
    if count != parts || last != b"aws4_request" || id.is_empty() {
        return Err(CredentialError::Malformed);
    }
    Ok(id)
}

/// An access key id as AWS and S3-compatible servers issue them.
fn is_key_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `name=value` pairs of a query, raw (still encoded), empty pairs skipped.
fn query_pairs(query: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name.as_bytes(), value.as_bytes())
        })
}

/// What a query parameter name means to this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryName {
    /// A sub-resource or qualifier spelled exactly, by its bit in [`Scan::present`].
    Selector(u64),
    /// A selector's name in another case or spelling (`ACL`, `ſelect`): S3 ignores it, a
    /// lenient server might act on it, so the request has two readings.
    NearMiss,
    /// A presigning or security-token parameter, in any case.
    Credential(Param),
    Other,
}

/// Query parameters that carry a credential, a signature or a security token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    V4Credential,
    V4Algorithm,
    V4Signature,
    V2Key,
    V2Signature,
    V2Expires,
    SecurityToken,
}

impl Param {
    /// Whether the parameter makes a presigned request (a credential or a signature).
    fn presigns(self) -> bool {
        !matches!(self, Param::V2Expires | Param::SecurityToken)
    }
}

/// Reads one raw query name: decoded once (`+` as space), folded for the lookup, then held
/// to its exact spelling if it names a selector.
fn query_name(raw: &[u8]) -> QueryName {
    let decoded;
    let name = if raw.iter().any(|&b| b == b'%' || b == b'+') {
        decoded = form_decode(raw);
        decoded.as_bytes()
    } else {
        raw
    };
    let mut buf = [0u8; MAX_NAME];
    let Some(folded) = fold_name(name, &mut buf) else {
        return QueryName::Other;
    };
    match folded_name(folded) {
        QueryName::Selector(bit) if name != spelling(bit).as_bytes() => QueryName::NearMiss,
        other => other,
    }
}

/// Lower-cases `name` into `buf` the way a lenient server compares names ([`fold_char`]);
/// `None` when it cannot be any name this module reads.
fn fold_name<'b>(name: &[u8], buf: &'b mut [u8; MAX_NAME]) -> Option<&'b [u8]> {
    if name.is_ascii() {
        let folded = buf.get_mut(..name.len())?;
        folded.copy_from_slice(name);
        folded.make_ascii_lowercase();
        return Some(folded);
    }
    let mut len = 0;
    for c in std::str::from_utf8(name).ok()?.chars() {
        *buf.get_mut(len)? = fold_char(c)?;
        len += 1;
    }
    let buf: &'b [u8; MAX_NAME] = buf;
    Some(&buf[..len])
}

/// A folded query name → what it names. Selectors here must match the tables above (a test
/// checks every entry both ways).
fn folded_name(folded: &[u8]) -> QueryName {
    use QueryName::{Credential, Other, Selector};
    match folded {
        b"acl" => Selector(ACL),
        b"cors" => Selector(const { bit("cors") }),
        b"encryption" => Selector(const { bit("encryption") }),
        b"lifecycle" => Selector(const { bit("lifecycle") }),
        b"location" => Selector(const { bit("location") }),
        b"logging" => Selector(const { bit("logging") }),
        b"notification" => Selector(const { bit("notification") }),
        b"ownershipcontrols" => Selector(const { bit("ownershipControls") }),
        b"policy" => Selector(const { bit("policy") }),
        b"policystatus" => Selector(const { bit("policyStatus") }),
        b"replication" => Selector(const { bit("replication") }),
        b"requestpayment" => Selector(const { bit("requestPayment") }),
        b"tagging" => Selector(TAGGING),
        b"versioning" => Selector(const { bit("versioning") }),
        b"website" => Selector(const { bit("website") }),
        b"object-lock" => Selector(const { bit("object-lock") }),
        b"publicaccessblock" => Selector(const { bit("publicAccessBlock") }),
        b"accelerate" => Selector(const { bit("accelerate") }),
        b"analytics" => Selector(const { bit("analytics") }),
        b"intelligent-tiering" => Selector(const { bit("intelligent-tiering") }),
        b"inventory" => Selector(const { bit("inventory") }),
        b"metrics" => Selector(const { bit("metrics") }),
        b"metadatatable" => Selector(const { bit("metadataTable") }),
        b"metadataconfiguration" => Selector(const { bit("metadataConfiguration") }),
        b"session" => Selector(const { bit("session") }),
        b"uploads" => Selector(UPLOADS),
        b"versions" => Selector(VERSIONS),
        b"list-type" => Selector(LIST_TYPE),
        b"attributes" => Selector(ATTRIBUTES),
        b"legal-hold" => Selector(LEGAL_HOLD),
        b"retention" => Selector(RETENTION),
        b"torrent" => Selector(TORRENT),
        b"uploadid" => Selector(UPLOAD_ID),
        b"partnumber" => Selector(PART_NUMBER),
        b"select" => Selector(SELECT),
        b"restore" => Selector(RESTORE),
        b"delete" => Selector(DELETE),
        b"id" => Selector(ID),
        b"x-amz-credential" => Credential(Param::V4Credential),
        b"x-amz-algorithm" => Credential(Param::V4Algorithm),
        b"x-amz-signature" => Credential(Param::V4Signature),
        b"awsaccesskeyid" => Credential(Param::V2Key),
        b"signature" => Credential(Param::V2Signature),
        b"expires" => Credential(Param::V2Expires),
        b"x-amz-security-token" => Credential(Param::SecurityToken),
        _ => Other,
    }
}

/// The exact spelling of the name with `bit`.
fn spelling(bit: u64) -> &'static str {
    let at = bit.trailing_zeros() as usize;
    match BUCKET_SUBRESOURCES.get(at) {
        Some(sub) => sub.name,
        None => OTHER_NAMES
            .get(at - BUCKET_SUBRESOURCES.len())
            .copied()
            .unwrap_or_default(),
    }
}

/// The bit of `name` in [`Scan::present`]; a name missing from the tables fails the build.
const fn bit(name: &str) -> u64 {
    let mut at = 0;
    while at < BUCKET_SUBRESOURCES.len() {
        if const_eq(BUCKET_SUBRESOURCES[at].name, name) {
            return 1 << at;
        }
        at += 1;
    }
    let mut at = 0;
    while at < OTHER_NAMES.len() {
        if const_eq(OTHER_NAMES[at], name) {
            return 1 << (BUCKET_SUBRESOURCES.len() + at);
        }
        at += 1;
    }
    panic!("not a recognised query name")
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut at = 0;
    while at < a.len() {
        if a[at] != b[at] {
            return false;
        }
        at += 1;
    }
    true
}

const _: () = assert!(BUCKET_SUBRESOURCES.len() + OTHER_NAMES.len() < 63);

const fn sub(
    name: &'static str,
    get: Operation,
    put: Option<Operation>,
    delete: Option<Operation>,
) -> BucketSubresource {
    BucketSubresource {
        name,
        get: Some(get),
        list: None,
        put,
        post: None,
        delete,
    }
}

/// A configuration family addressed by `id` (`?analytics&id=…`), listed without one.
const fn family(
    name: &'static str,
    get: Operation,
    list: Operation,
    put: Operation,
    delete: Operation,
) -> BucketSubresource {
    BucketSubresource {
        name,
        get: Some(get),
        list: Some(list),
        put: Some(put),
        post: None,
        delete: Some(delete),
    }
}

/// A configuration created with `POST`.
const fn created(
    name: &'static str,
    get: Operation,
    post: Operation,
    delete: Operation,
) -> BucketSubresource {
    BucketSubresource {
        name,
        get: Some(get),
        list: None,
        put: None,
        post: Some(post),
        delete: Some(delete),
    }
}

/// The operation table of `reference/s3.md`, by method and level.
fn operation(
    method: &Method,
    level: Level,
    scan: &Scan,
    copy: bool,
    headers: &HeaderMap,
) -> Result<Operation, S3Error> {
    let method = match *method {
        Method::GET => Verb::Get,
        Method::HEAD => Verb::Head,
        Method::PUT => Verb::Put,
        Method::POST => Verb::Post,
        Method::DELETE => Verb::Delete,
        _ => return Err(S3Error::UnsupportedMethod),
    };
    match (level, method) {
        (Level::Service, Verb::Get) => Ok(LIST_BUCKETS),
        (Level::Service, _) => Err(S3Error::UnknownOperation),
        (Level::Bucket, Verb::Head) => Ok(HEAD_BUCKET),
        (Level::Bucket, Verb::Get) => bucket_get(scan),
        (Level::Bucket, Verb::Put) => bucket_setting(scan, |s| s.put, CREATE_BUCKET),
        (Level::Bucket, Verb::Delete) => bucket_setting(scan, |s| s.delete, DELETE_BUCKET),
        (Level::Bucket, Verb::Post) => bucket_post(scan, headers),
        (Level::Object, Verb::Head) => Ok(HEAD_OBJECT),
        (Level::Object, Verb::Get) => object_get(scan),
        (Level::Object, Verb::Put) => object_put(scan, copy),
        (Level::Object, Verb::Post) => object_post(scan),
        (Level::Object, Verb::Delete) => object_delete(scan),
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

fn subresource(bit: u64) -> &'static BucketSubresource {
    &BUCKET_SUBRESOURCES[bit.trailing_zeros() as usize]
}

fn bucket_get(scan: &Scan) -> Result<Operation, S3Error> {
    Ok(
        match scan.selector(BUCKET_MASK | UPLOADS | VERSIONS | LIST_TYPE)? {
            None => LIST_OBJECTS,
            Some(UPLOADS) => LIST_MULTIPART_UPLOADS,
            Some(VERSIONS) => LIST_OBJECT_VERSIONS,
            Some(LIST_TYPE) if scan.list_v2 => LIST_OBJECTS_V2,
            Some(LIST_TYPE) => LIST_OBJECTS,
            Some(bit) => {
                let sub = subresource(bit);
                match sub.list {
                    Some(list) if !scan.has(ID) => list,
                    _ => sub.get.ok_or(S3Error::UnknownOperation)?,
                }
            }
        },
    )
}

/// `PUT` / `DELETE` on a bucket: a setting by its sub-resource, else the bucket itself. A
/// sub-resource with no such operation is refused rather than read as the bucket.
fn bucket_setting(
    scan: &Scan,
    pick: fn(&BucketSubresource) -> Option<Operation>,
    bare: Operation,
) -> Result<Operation, S3Error> {
    match scan.selector(BUCKET_MASK)? {
        None => Ok(bare),
        Some(bit) => pick(subresource(bit)).ok_or(S3Error::UnknownOperation),
    }
}

fn bucket_post(scan: &Scan, headers: &HeaderMap) -> Result<Operation, S3Error> {
    match scan.selector(BUCKET_MASK | DELETE)? {
        Some(DELETE) => Ok(DELETE_OBJECTS),
        Some(bit) => subresource(bit).post.ok_or(S3Error::UnknownOperation),
        None if is_form_upload(headers)? => Ok(POST_OBJECT),
        None => Err(S3Error::UnknownOperation),
    }
}

fn object_get(scan: &Scan) -> Result<Operation, S3Error> {
    let mask = ATTRIBUTES | ACL | LEGAL_HOLD | RETENTION | TAGGING | TORRENT | UPLOAD_ID;
    Ok(match scan.selector(mask)? {
        None => GET_OBJECT,
        Some(ATTRIBUTES) => GET_OBJECT_ATTRIBUTES,
        Some(ACL) => GET_OBJECT_ACL,
        Some(LEGAL_HOLD) => GET_OBJECT_LEGAL_HOLD,
        Some(RETENTION) => GET_OBJECT_RETENTION,
        Some(TAGGING) => GET_OBJECT_TAGGING,
        Some(TORRENT) => GET_OBJECT_TORRENT,
        Some(_) => LIST_PARTS,
    })
}

fn object_put(scan: &Scan, copy: bool) -> Result<Operation, S3Error> {
    Ok(
        match scan.selector(ACL | LEGAL_HOLD | RETENTION | TAGGING | PART)? {
            None if copy => COPY_OBJECT,
            None => PUT_OBJECT,
            Some(ACL) => PUT_OBJECT_ACL,
            Some(LEGAL_HOLD) => PUT_OBJECT_LEGAL_HOLD,
            Some(RETENTION) => PUT_OBJECT_RETENTION,
            Some(TAGGING) => PUT_OBJECT_TAGGING,
            Some(_) if copy => UPLOAD_PART_COPY,
            Some(_) => UPLOAD_PART,
        },
    )
}

fn object_post(scan: &Scan) -> Result<Operation, S3Error> {
    match scan.selector(SELECT | UPLOADS | RESTORE | UPLOAD_ID)? {
        Some(SELECT) => Ok(SELECT_OBJECT_CONTENT),
        Some(UPLOADS) => Ok(CREATE_MULTIPART_UPLOAD),
        Some(RESTORE) => Ok(RESTORE_OBJECT),
        Some(_) => Ok(COMPLETE_MULTIPART_UPLOAD),
        None => Err(S3Error::UnknownOperation),
    }
}

fn object_delete(scan: &Scan) -> Result<Operation, S3Error> {
    Ok(match scan.selector(TAGGING | UPLOAD_ID)? {
        None => DELETE_OBJECT,
        Some(TAGGING) => DELETE_OBJECT_TAGGING,
        Some(_) => ABORT_MULTIPART_UPLOAD,
    })
}

/// `content-type: multipart/form-data; boundary=…` (the media type in any case).
fn is_form_upload(headers: &HeaderMap) -> Result<bool, S3Error> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(false);
    };
    if values.next().is_some() {
        return Err(S3Error::AmbiguousHeader);
    }
    let bytes = value.as_bytes();
    let media = bytes
        .split(|&b| b == b';')
        .next()
        .unwrap_or(bytes)
        .trim_ascii();
    Ok(media.eq_ignore_ascii_case(b"multipart/form-data"))
}

/// The request's `x-amz-copy-source`, parsed; present on any operation.
fn copy_source(headers: &HeaderMap) -> Result<Option<CopySource>, S3Error> {
    let mut values = headers.get_all(&COPY_SOURCE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(S3Error::AmbiguousHeader);
    }
    let value = value.to_str().map_err(|_| S3Error::BadCopySource)?;
    parse_copy_source(value).map(Some)
}

/// The `versionId=…` after a copy source's `?`: exactly that parameter, once, not empty.
fn version_id(query: &str) -> Result<String, S3Error> {
    let raw = query
        .strip_prefix("versionId=")
        .filter(|v| !v.is_empty() && !v.contains(['&', '=', '?']))
        .ok_or(S3Error::BadCopySource)?;
    let decoded = decode(raw).map_err(|_| S3Error::BadCopySource)?;
    if decoded.bytes().any(is_control) {
        return Err(S3Error::BadCopySource);
    }
    Ok(decoded.into_owned())
}

/// `{partition}:s3:{region}:{account}:accesspoint/{name}/object/{key}` (after `arn:`) →
/// `(name, key)`.
fn access_point_arn(arn: &str) -> Option<(&str, &str)> {
    let mut fields = arn.splitn(5, ':');
    let partition = fields.next()?;
    let service = fields.next()?;
    let region = fields.next()?;
    let account = fields.next()?;
    let resource = fields.next()?;
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let valid = word(partition)
        && service == "s3"
        && word(region)
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return None;
    }
    let (name, key) = resource
        .strip_prefix("accesspoint/")?
        .split_once("/object/")?;
    ((3..=50).contains(&name.len()) && word(name)).then_some((name, key))
}

/// The path after the bucket, decoded once, as the key; `None` when empty.
fn decode_key(raw: &str) -> Result<Option<String>, S3Error> {
    if raw.is_empty() {
        return Ok(None);
    }
    let key = if raw.as_bytes().contains(&b'%') {
        decode(raw)?.into_owned()
    } else {
        raw.to_owned()
    };
    if key.bytes().any(is_control) {
        return Err(S3Error::ControlByte);
    }
    if key.len() > MAX_KEY {
        return Err(S3Error::KeyTooLong);
    }
    Ok(Some(key))
}

/// Path style: `bucket[/key]`; empty is the service.
fn path_style(rest: &str) -> Result<S3Target, S3Error> {
    if rest.is_empty() {
        return Ok(S3Target::default());
    }
    let (raw_bucket, raw_key) = match rest.as_bytes().iter().position(|&b| b == b'/') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, ""),
    };
    // Decoded on its own, so an encoded `/` stays inside the bucket name and fails it.
    let bucket = decode(raw_bucket)?;
    check_bucket(&bucket)?;
    Ok(S3Target {
        bucket: Some(bucket.into_owned()),
        key: decode_key(raw_key)?,
    })
}

/// Percent-decodes once; `+` stays a plus.
fn decode(raw: &str) -> Result<Cow<'_, str>, S3Error> {
    let bytes = raw.as_bytes();
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let high = bytes.get(at + 1).copied().and_then(hex_value);
            let low = bytes.get(at + 2).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(S3Error::BadPercentEncoding);
            };
            out.push((high << 4) | low);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| S3Error::InvalidUtf8)
}

fn is_control(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7F
}

/// S3's bucket naming rules (general purpose buckets), in one pass.
fn check_bucket(name: &str) -> Result<(), S3Error> {
    const ALIAS_SUFFIXES: &[&str] = &["-s3alias", "--ol-s3", ".mrap"];
    const RESERVED_PREFIXES: &[&str] = &["xn--", "sthree-"];
    let bytes = name.as_bytes();
    let alphanumeric =
        |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let mut valid = (3..=63).contains(&bytes.len())
        && alphanumeric(bytes.first())
        && alphanumeric(bytes.last());
    let mut numeric = true;
    let mut previous = 0;
    for &b in bytes {
        match b {
            b'a'..=b'z' | b'-' => numeric = false,
            b'0'..=b'9' => {}
            b'.' => valid &= previous != b'.',
            _ => valid = false,
        }
        previous = b;
    }
    // Only digits and dots can spell an IPv4 address.
    if !valid
        || (numeric && name.parse::<Ipv4Addr>().is_ok())
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Err(S3Error::InvalidBucketName);
    }
    if ALIAS_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Err(S3Error::AccessPointAlias);
    }
    Ok(())
}

/// The host of an authority, without port or one trailing dot; `None` when implausible.
fn host_of(authority: &str) -> Option<&str> {
    let bytes = authority.as_bytes();
    let host = if bytes.first() == Some(&b'[') {
        let end = bytes.iter().position(|&b| b == b']')?;
        match &authority[end + 1..] {
            "" => &authority[1..end],
            after => match after.strip_prefix(':') {
                Some(port) if is_port(port) => &authority[1..end],
                _ => return None,
            },
        }
    } else {
        match bytes.iter().rposition(|&b| b == b':') {
            Some(at) if is_port(&authority[at + 1..]) && !bytes[..at].contains(&b':') => {
                &authority[..at]
            }
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let plausible = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
    plausible.then_some(host)
}

fn is_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// A configured name as [`host_of`] compares it: trimmed, lower case, no brackets or dot.
fn canonical_host(name: &str) -> String {
    let name = name.trim();
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn is_ip(host: &str) -> bool {
    host.contains(':') || host.parse::<Ipv4Addr>().is_ok()
}

/// What the labels of a host say, read in one pass. Only labels after the first can mark an
/// access point or an endpoint, because those forms need a name in front of them.
#[derive(Default)]
struct HostLabels {
    /// A label that only access points have: `s3-accesspoint[-fips]`, `accesspoint` (VPC
    /// endpoints, multi-region), `s3-object-lambda`, `s3-outposts`, `s3-global`.
    access_point: bool,
    /// Byte offset of the `vpce-…` label of a VPC endpoint name (`….vpce-….s3.{region}.vpce.…`).
    vpce: Option<usize>,
    /// An S3 endpoint label (`s3`, `s3-fips`, `s3-eu-west-1` …) after the first label of the
    /// part that names the bucket: the bucket could end before it.
    endpoint_in_bucket: bool,
}

impl HostLabels {
    /// Reads `host`, whose first `bucket_len` bytes name the bucket (0: none do).
    fn of(host: &str, bucket_len: usize) -> HostLabels {
        let mut labels = HostLabels::default();
        let mut vpce_label = None;
        let mut at = 0;
        for label in host.as_bytes().split(|&b| b == b'.') {
            if at > 0 {
                labels.access_point |= starts_folded(label, b"s3-accesspoint")
                    || starts_folded(label, b"s3-object-lambda")
                    || starts_folded(label, b"s3-outposts")
                    || label.eq_ignore_ascii_case(b"accesspoint")
                    || label.eq_ignore_ascii_case(b"s3-global");
                labels.endpoint_in_bucket |= at + label.len() <= bucket_len
                    && (label.eq_ignore_ascii_case(b"s3") || starts_folded(label, b"s3-"));
            }
            if vpce_label.is_none() && starts_folded(label, b"vpce-") {
                vpce_label = Some(at);
            } else if label.eq_ignore_ascii_case(b"vpce") && labels.vpce.is_none() {
                labels.vpce = vpce_label;
            }
            at += label.len() + 1;
        }
        labels
    }
}

fn starts_folded(text: &[u8], lower_prefix: &[u8]) -> bool {
    text.get(..lower_prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(lower_prefix))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
