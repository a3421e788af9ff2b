//! The wire contracts: task messages on the queue and result lines in the store.
//!
//! Both carry a version (`v`). A reader refuses a version it does not know instead of
//! guessing, so a rolling upgrade never silently misreads a message.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::analyses::{Category, Colors, Crop, CropRequest, MAX_COLORS, MAX_CROPS};
use crate::{S3Location, TaskId};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// One queue message: a chunk of images of one job, analysed the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    pub v: u32,
    pub job_id: String,
    pub task_id: String,
    pub tenant: String,
    pub analyses: Vec<Analysis>,
    /// `name@version` of the model that must run, so a worker with another model refuses.
    pub model: String,
    #[serde(default)]
    pub options: TaskOptions,
    /// The client's own location (`s3://bucket/prefix/`) the results go to; with
    /// `retain: false` they go only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<S3Location>,
    /// When the message was made ([`TaskPlan::messages`]). Workers refuse a task older
    /// than the retention: its results could not be kept, and its job's record may be
    /// gone. Added to v1 as an optional field: a message written before it has none, and
    /// runs only while its job's state object says so (no record, no age: refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    pub items: Vec<TaskItem>,
}

impl TaskMessage {
    /// Parses and validates a message body.
    pub fn from_json(body: &[u8]) -> Result<Self, SchemaError> {
        let msg: TaskMessage =
            serde_json::from_slice(body).map_err(|e| SchemaError::Malformed(e.to_string()))?;
        if msg.v != SCHEMA_VERSION {
            return Err(SchemaError::Version(msg.v));
        }
        if msg.items.is_empty() {
            return Err(SchemaError::Malformed("task has no items".into()));
        }
        if msg.analyses.is_empty() {
            return Err(SchemaError::Malformed("task asks for no analysis".into()));
        }
        msg.options.validate()?;
        Ok(msg)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a task message always serialises")
    }
}

/// What every task of one job shares. [`TaskPlan::messages`] is the one place refs are
/// chunked into task messages and task ids are handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    pub job_id: String,
    pub tenant: String,
    pub analyses: Vec<Analysis>,
    pub model: String,
    pub options: TaskOptions,
    pub output: Option<S3Location>,
}

impl TaskPlan {
    /// The task messages of `refs` in round `round` (0 for the job's first publication),
    /// `chunk_size` refs each, stamped with the time they are made.
    pub fn messages(&self, round: usize, refs: &[String], chunk_size: usize) -> Vec<TaskMessage> {
        let created_at = Utc::now();
        refs.chunks(chunk_size.max(1))
            .zip(1u32..)
            .map(|(chunk, n)| TaskMessage {
                v: SCHEMA_VERSION,
                job_id: self.job_id.clone(),
                task_id: TaskId::new(round, n).to_string(),
                tenant: self.tenant.clone(),
                analyses: self.analyses.clone(),
                model: self.model.clone(),
                options: self.options.clone(),
                output: self.output.clone(),
                created_at: Some(created_at),
                items: chunk
                    .iter()
                    .map(|r| TaskItem {
                        reference: r.clone(),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// What a worker reports when a task's result object is durable, on the progress queue.
/// Redelivered tasks report again; the scheduler counts each task id once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressMessage {
    pub v: u32,
    pub tenant: String,
    pub job_id: String,
    pub task_id: String,
    /// Images of the task with a result.
    pub ok: u32,
    /// Images of the task that ended in an error line.
    pub failed: u32,
    /// Set when the task was given up (its last delivery failed, or it failed for a
    /// reason retrying cannot fix): none of its images has a result, and its message
    /// went to the dead-letter queue. `ok` and `failed` are then 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_up: Option<GivenUp>,
}

/// Why a worker gave a task up. A fixed set of reasons: a report carries no free text,
/// which could name an image.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GivenUp {
    /// Every delivery of the task failed (a failing device, a worker that died on it).
    Attempts,
    /// The job's output location refused the write (not allowed, no such bucket, access
    /// denied): retrying cannot help.
    OutputRefused,
    /// The fleet's store refused the write for good (access denied, no such bucket).
    StoreRefused,
    /// No worker that took the task knew its tenant (a secrets file without it).
    UnknownTenant,
    /// The worker cannot run what the task asks for: a categorizer it does not have, or
    /// categories or parent tags of a model without a taxonomy.
    Unsupported,
}

impl GivenUp {
    pub fn name(self) -> &'static str {
        match self {
            GivenUp::Attempts => "attempts",
            GivenUp::OutputRefused => "output_refused",
            GivenUp::StoreRefused => "store_refused",
            GivenUp::UnknownTenant => "unknown_tenant",
            GivenUp::Unsupported => "unsupported",
        }
    }

    /// What a job's record says about images of tasks given up for this reason.
    pub fn explanation(self) -> &'static str {
        match self {
            GivenUp::Attempts => "every delivery of their task failed",
            GivenUp::OutputRefused => "the job's output location refused the results",
            GivenUp::StoreRefused => "the fleet's store refused the results",
            GivenUp::UnknownTenant => {
                "no worker knew the job's tenant (check the workers' secrets)"
            }
            GivenUp::Unsupported => {
                "the workers cannot run what the job asks for (check their categorizers)"
            }
        }
    }
}

impl ProgressMessage {
    pub fn from_json(body: &[u8]) -> Result<Self, SchemaError> {
        let msg: ProgressMessage =
            serde_json::from_slice(body).map_err(|e| SchemaError::Malformed(e.to_string()))?;
        if msg.v != SCHEMA_VERSION {
            return Err(SchemaError::Version(msg.v));
        }
        Ok(msg)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a progress message always serialises")
    }
}

/// Why a message body was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchemaError {
    #[error("malformed task message: {0}")]
    Malformed(String),
    #[error("unsupported task message version {0} (this build reads v{SCHEMA_VERSION})")]
    Version(u32),
    #[error("invalid option {field}: {reason}")]
    Option { field: &'static str, reason: String },
}

/// An analysis a task may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Analysis {
    /// Top-k labels of the classifier with their confidence (and WordNet synset).
    Tags,
    /// The L2-normalised feature vector, for visual search.
    Embedding,
    /// The categories of `options.categorizer` with the probability mass under each.
    Categories,
    /// Dominant colors of the image, its background and its foreground, named.
    Colors,
    /// For each of `options.crops`, the box that keeps the most salient content.
    Crops,
}

impl Analysis {
    pub const ALL: [Analysis; 5] = [
        Analysis::Tags,
        Analysis::Embedding,
        Analysis::Categories,
        Analysis::Colors,
        Analysis::Crops,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Analysis::Tags => "tags",
            Analysis::Embedding => "embedding",
            Analysis::Categories => "categories",
            Analysis::Colors => "colors",
            Analysis::Crops => "crops",
        }
    }
}

impl std::str::FromStr for Analysis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Analysis::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let valid: Vec<_> = Analysis::ALL.iter().map(|a| a.name()).collect();
                format!("unknown analysis {s:?} (valid: {})", valid.join(", "))
            })
    }
}

/// Per-task knobs. Defaults match what a user gets without asking.
///
/// Options added after the first release are left out of a message while they hold their
/// default, so a message that does not use them still reads on workers that predate them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TaskOptions {
    /// How many tags to report at most.
    pub top_k: usize,
    /// Tags (and categories) with a lower confidence (0..1) are left out.
    pub threshold: f32,
    /// `false` is the "keep nothing" option: results must not stay in our store.
    pub retain: bool,
    /// Adds the WordNet hypernyms of each tag ("tabby" also yields "cat", "feline",
    /// "animal"), each with the probability mass of every class under it.
    #[serde(skip_serializing_if = "is_false")]
    pub parents: bool,
    /// The categorizer the `categories` analysis sorts into: `general`, `retail`, or one
    /// an operator added.
    #[serde(skip_serializing_if = "is_default_categorizer")]
    pub categorizer: String,
    /// How many colors each list of the `colors` analysis reports at most (1..=16).
    #[serde(skip_serializing_if = "is_default_colors")]
    pub colors: usize,
    /// The crops the `crops` analysis suggests: aspect ratios ("16:9") or sizes
    /// ("300x200"), at most 16.
    #[serde(skip_serializing_if = "is_default_crops")]
    pub crops: Vec<CropRequest>,
}

/// The categorizer jobs get unless they ask for another.
pub const DEFAULT_CATEGORIZER: &str = "general";
const DEFAULT_COLORS: usize = 5;

fn default_crops() -> Vec<CropRequest> {
    vec![CropRequest::Aspect { w: 1, h: 1 }]
}

fn is_false(b: &bool) -> bool {
    !b
}

fn is_default_categorizer(c: &String) -> bool {
    c == DEFAULT_CATEGORIZER
}

fn is_default_colors(n: &usize) -> bool {
    *n == DEFAULT_COLORS
}

fn is_default_crops(c: &Vec<CropRequest>) -> bool {
    *c == default_crops()
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            top_k: 5,
            threshold: 0.05,
            retain: true,
            parents: false,
            categorizer: DEFAULT_CATEGORIZER.to_owned(),
            colors: DEFAULT_COLORS,
            crops: default_crops(),
        }
    }
}

impl TaskOptions {
    /// Checks every option against its range. Whether `categorizer` names one that exists
    /// is for whoever knows the categorizers (the scheduler, the worker).
    pub fn validate(&self) -> Result<(), SchemaError> {
        let invalid = |field, reason| Err(SchemaError::Option { field, reason });
        if self.top_k == 0 || self.top_k > 1000 {
            return invalid("top_k", format!("{} is outside 1..=1000", self.top_k));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return invalid("threshold", format!("{} is outside 0..=1", self.threshold));
        }
        if !is_categorizer_name(&self.categorizer) {
            return invalid(
                "categorizer",
                format!(
                    "{:?} is not a categorizer name (1 to 64 of a-z, 0-9, - and _)",
                    self.categorizer
                ),
            );
        }
        if self.colors == 0 || self.colors > MAX_COLORS {
            return invalid(
                "colors",
                format!("{} is outside 1..={MAX_COLORS}", self.colors),
            );
        }
        if self.crops.is_empty() || self.crops.len() > MAX_CROPS {
            return invalid(
                "crops",
                format!(
                    "{} crops asked for; 1 to {MAX_CROPS} are allowed",
                    self.crops.len()
                ),
            );
        }
        Ok(())
    }
}

/// What a categorizer may be called: it is a file name, so nothing that walks paths.
pub fn is_categorizer_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One image of a task. `ref` is a location (`file:///…`, `s3://…`): it never leaves the
/// worker's memory, results name the image by its pseudonym only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskItem {
    #[serde(rename = "ref")]
    pub reference: String,
}

/// One line of a result object: what one image gave.
///
/// Version 1 grows only by optional fields, left out when empty: a reader must ignore
/// fields it does not know. A field's meaning never changes within a version; removing or
/// renaming one makes version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResultLine {
    pub v: u32,
    /// Pseudonym of the image: HMAC-SHA256(tenant key, canonical ref), hex.
    pub image: String,
    /// Which tenant key made the pseudonym, so keys can rotate.
    pub key_id: String,
    pub status: Status,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<Category>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub colors: Option<Colors>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crops: Option<Vec<Crop>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ImageError>,
    /// Milliseconds spent per stage (`fetch`, `decode`, `queue`, `inference`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub timings_ms: BTreeMap<String, f64>,
}

impl ResultLine {
    /// The line for an image that failed at some stage.
    pub fn failed(image: String, key_id: String, model: String, error: ImageError) -> Self {
        Self {
            v: SCHEMA_VERSION,
            image,
            key_id,
            status: Status::Error,
            model,
            width: None,
            height: None,
            tags: None,
            embedding: None,
            categories: None,
            colors: None,
            crops: None,
            error: Some(error),
            timings_ms: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Error,
}

/// A label and the model's confidence in it (softmax probability).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tag {
    pub label: String,
    pub confidence: f32,
    /// The label's WordNet 3.0 noun synset (`tabby.n.01`), where the model has a taxonomy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synset: Option<String>,
    /// A hypernym of the model's tags (`options.parents`), not a class of the model: its
    /// confidence is the probability mass of every class under it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub parent: bool,
}

/// Why one image has no analysis. Never names the image: messages are written for a
/// person, but must not carry paths, URLs or metadata of the input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error, utoipa::ToSchema)]
#[error("{kind}: {message}")]
pub struct ImageError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ImageError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The fixed set of failure kinds a result line can report.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The bytes could not be read.
    Fetch,
    /// Over the byte or pixel limit; refused before decoding.
    TooLarge,
    /// Not an image format we decode.
    Unsupported,
    /// A known format, but the data is broken.
    Decode,
    /// The model failed on this image's batch.
    Inference,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Fetch,
        ErrorKind::TooLarge,
        ErrorKind::Unsupported,
        ErrorKind::Decode,
        ErrorKind::Inference,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Fetch => "fetch",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Decode => "decode",
            ErrorKind::Inference => "inference",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> TaskMessage {
        TaskMessage {
            v: SCHEMA_VERSION,
            job_id: "j1".into(),
            task_id: "t000001".into(),
            tenant: "local".into(),
            analyses: vec![Analysis::Tags],
            model: "efficientnet-lite0@1".into(),
            options: TaskOptions::default(),
            output: None,
            created_at: Some("2026-03-01T10:00:00Z".parse().unwrap()),
            items: vec![TaskItem {
                reference: "file:///photos/cat.png".into(),
            }],
        }
    }

    #[test]
    fn messages_are_stamped_when_made_and_older_ones_still_parse() {
        let plan = TaskPlan {
            job_id: "j1".into(),
            tenant: "local".into(),
            analyses: vec![Analysis::Tags],
            model: "m@1".into(),
            options: TaskOptions::default(),
            output: None,
        };
        let before = Utc::now();
        let messages = plan.messages(0, &["file:///a.png".into(), "file:///b.png".into()], 1);
        assert_eq!(messages.len(), 2);
        for m in &messages {
            let at = m.created_at.expect("stamped");
            assert!(at >= before && at <= Utc::now(), "{at}");
            let json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
            assert!(
                json["created_at"].as_str().unwrap().ends_with('Z'),
                "{json}"
            );
        }
        // A message from before the field: it parses, with no creation time.
        let mut old = serde_json::to_value(message()).unwrap();
        old.as_object_mut().unwrap().remove("created_at");
        let parsed = TaskMessage::from_json(old.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.created_at, None);
        assert!(
            !String::from_utf8(parsed.to_json())
                .unwrap()
                .contains("created_at")
        );
    }

    #[test]
    fn task_message_round_trips() {
        let msg = message();
        assert_eq!(TaskMessage::from_json(&msg.to_json()).unwrap(), msg);
    }

    #[test]
    fn unknown_version_is_refused() {
        let mut msg = message();
        msg.v = 2;
        let err = TaskMessage::from_json(&msg.to_json()).unwrap_err();
        assert!(matches!(err, SchemaError::Version(2)), "{err}");
    }

    #[test]
    fn bad_options_name_the_field() {
        let mut msg = message();
        msg.options.threshold = 1.5;
        let err = TaskMessage::from_json(&msg.to_json())
            .unwrap_err()
            .to_string();
        assert!(err.contains("threshold"), "{err}");
    }

    #[test]
    fn new_options_name_the_field_when_out_of_range() {
        for (options, field) in [
            (r#"{"categorizer":"../etc/passwd"}"#, "categorizer"),
            (r#"{"categorizer":""}"#, "categorizer"),
            (r#"{"colors":0}"#, "colors"),
            (r#"{"colors":17}"#, "colors"),
            (r#"{"crops":[]}"#, "crops"),
        ] {
            let options: TaskOptions = serde_json::from_str(options).unwrap();
            let err = options.validate().unwrap_err();
            assert!(
                matches!(err, SchemaError::Option { field: f, .. } if f == field),
                "{err}"
            );
        }
        let many = format!(r#"{{"crops":[{}]}}"#, vec!["\"1:1\""; 17].join(","));
        let options: TaskOptions = serde_json::from_str(&many).unwrap();
        assert!(
            options
                .validate()
                .unwrap_err()
                .to_string()
                .contains("17 crops")
        );
        let bad_crop = serde_json::from_str::<TaskOptions>(r#"{"crops":["16:0"]}"#).unwrap_err();
        assert!(bad_crop.to_string().contains("16:0"), "{bad_crop}");
    }

    #[test]
    fn options_left_at_their_default_stay_out_of_the_message() {
        // Workers from before these options refuse unknown fields: a message that does not
        // use them must read exactly as it did.
        let json = serde_json::to_value(TaskOptions::default()).unwrap();
        let fields: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["retain", "threshold", "top_k"]);
        let asked = TaskOptions {
            parents: true,
            categorizer: "retail".into(),
            colors: 3,
            crops: vec!["16:9".parse().unwrap(), "300x200".parse().unwrap()],
            ..TaskOptions::default()
        };
        let json = serde_json::to_string(&asked).unwrap();
        assert!(
            json.contains(r#""crops":["16:9","300x200"]"#) && json.contains(r#""parents":true"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<TaskOptions>(&json).unwrap(), asked);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut value = serde_json::to_value(message()).unwrap();
        value["colour"] = serde_json::json!("red");
        let err = TaskMessage::from_json(value.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn analysis_parse_lists_valid_names() {
        assert_eq!(
            "embedding".parse::<Analysis>().unwrap(),
            Analysis::Embedding
        );
        let err = "faces".parse::<Analysis>().unwrap_err();
        assert!(
            err.contains("tags, embedding, categories, colors, crops"),
            "{err}"
        );
    }

    #[test]
    fn error_kinds_serialise_as_documented() {
        let names: Vec<String> = ErrorKind::ALL
            .iter()
            .map(|k| {
                serde_json::to_value(k)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            ["fetch", "too_large", "unsupported", "decode", "inference"]
        );
        assert!(
            ErrorKind::ALL
                .iter()
                .all(|k| names.contains(&k.name().to_owned()))
        );
    }
}
